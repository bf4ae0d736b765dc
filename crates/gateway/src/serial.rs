//! What carries a serial console's user to the console's serial lane, whatever the user came
//! by: an SSH channel ([`crate::ssh`]) or a browser terminal's WebSocket ([`crate::web`]).
//! The caller (`dmore gateway serve`) gives the service; both sides hand it a byte pipe.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

/// A serial user's bytes, both ways.
pub trait SerialPipe: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> SerialPipe for T {}

/// Carries one user's pipe to the named console's serial lane; done when the pipe is.
pub type SerialService = Arc<
    dyn Fn(String, Box<dyn SerialPipe>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync,
>;
