//! Helpers shared by the gateway's loopback tests.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// The pre-shared key both sides of every test session use.
pub const PSK: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A listener on a free loopback port, and its address.
pub async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Echoes every connection back to itself.
pub async fn echo(l: TcpListener) {
    loop {
        let (mut s, _) = l.accept().await.unwrap();
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}
