//! The operator's interrupt (Ctrl-C in `dmore migrate`), as a future the co-migration watches
//! beside each step it may cut short.

use std::future::Future;
use std::pin::Pin;

/// A signal that fires at most once: [`Interrupt::fired`] completes when it comes and never
/// again after, so a step raced against it keeps working once the interrupt was handled.
pub(crate) struct Interrupt<F> {
    signal: Option<Pin<Box<F>>>,
}

impl<F: Future<Output = ()>> Interrupt<F> {
    pub(crate) fn new(signal: F) -> Self {
        Interrupt {
            signal: Some(Box::pin(signal)),
        }
    }

    /// Completes when the signal comes (once). Cancel-safe: dropped before that, the signal
    /// is still watched by the next call.
    pub(crate) async fn fired(&mut self) {
        match self.signal.as_mut() {
            Some(signal) => {
                signal.as_mut().await;
                self.signal = None;
            }
            None => std::future::pending().await,
        }
    }
}
