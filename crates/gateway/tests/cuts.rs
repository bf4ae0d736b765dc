//! A viewer relayed through the gateway's side and the console's side to an echo service,
//! with the TCP connection between the two sides cut again and again mid-stream (after a
//! given number of bytes, not a given time): the viewer gets back exactly what it sent. And a
//! gateway with the wrong key never reaches the service.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{echo, listener, PSK};
use gateway::accept::serve_sessions;
use gateway::dial::{serve_viewer, serve_viewers, Dial};
use gateway::GatewayError;
use resume::{Config, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes the viewer sends (and gets back).
const TOTAL: usize = 2 << 20;
/// The link is cut after every this many forwarded bytes...
const CUT_EVERY: usize = 300_000;
/// ...this many times.
const CUTS: usize = 6;

/// Forwards connections to `to`, dropping a connection whenever the bytes forwarded by all
/// connections together pass the next multiple of CUT_EVERY (up to CUTS times).
async fn cutting_proxy(l: TcpListener, to: SocketAddr, cuts: Arc<AtomicUsize>) {
    let forwarded = Arc::new(AtomicUsize::new(0));
    loop {
        let (mut a, _) = l.accept().await.unwrap();
        let (cuts, forwarded) = (cuts.clone(), forwarded.clone());
        tokio::spawn(async move {
            let Ok(mut b) = TcpStream::connect(to).await else {
                return;
            };
            let (mut ab, mut ba) = (vec![0; 8192], vec![0; 8192]);
            loop {
                let n = tokio::select! {
                    r = a.read(&mut ab) => match r {
                        Ok(n) if n > 0 && b.write_all(&ab[..n]).await.is_ok() => n,
                        _ => return,
                    },
                    r = b.read(&mut ba) => match r {
                        Ok(n) if n > 0 && a.write_all(&ba[..n]).await.is_ok() => n,
                        _ => return,
                    },
                };
                let total = forwarded.fetch_add(n, Ordering::SeqCst) + n;
                let done = cuts.load(Ordering::SeqCst);
                if done < CUTS && total >= (done + 1) * CUT_EVERY {
                    cuts.fetch_add(1, Ordering::SeqCst);
                    return; // both sockets dropped: whatever was in flight is lost
                }
            }
        });
    }
}

#[tokio::test]
async fn a_viewer_gets_back_exactly_its_bytes_through_repeated_cuts() {
    let (echo_l, echo_addr) = listener().await;
    let (console_l, console_addr) = listener().await;
    let (proxy_l, proxy_addr) = listener().await;
    let (gateway_l, gateway_addr) = listener().await;
    let cuts = Arc::new(AtomicUsize::new(0));

    let mut console_config = Config::new(Role::Console, PSK);
    console_config.replay_cap = 64 * 1024;
    let mut gateway_config = Config::new(Role::Gateway, PSK);
    gateway_config.replay_cap = 64 * 1024;
    let dial = Dial {
        stream: gateway_config,
        consoles: vec![proxy_addr],
        max_attempts: 50,
        retry_after: Duration::from_millis(20),
    };
    let tasks = [
        tokio::spawn(echo(echo_l)),
        tokio::spawn(async move {
            serve_sessions(console_l, console_config, echo_addr)
                .await
                .unwrap()
        }),
        tokio::spawn(cutting_proxy(proxy_l, console_addr, cuts.clone())),
        tokio::spawn(async move { serve_viewers(gateway_l, dial).await.unwrap() }),
    ];

    let sent: Vec<u8> = (0..TOTAL).map(|i| (i * 7 + i / 251) as u8).collect();
    let viewer = TcpStream::connect(gateway_addr).await.unwrap();
    let (mut r, mut w) = viewer.into_split();
    let to_send = sent.clone();
    let writer = tokio::spawn(async move {
        for chunk in to_send.chunks(10_000) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    // A guard against a hang, not a performance assertion.
    tokio::time::timeout(Duration::from_secs(300), r.read_to_end(&mut got))
        .await
        .expect("the echo never ended")
        .unwrap();
    writer.await.unwrap();
    for t in tasks {
        t.abort();
    }
    assert_eq!(cuts.load(Ordering::SeqCst), CUTS, "the link was cut");
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "bytes lost, repeated or reordered");
}

#[tokio::test]
async fn a_wrongly_keyed_gateway_never_reaches_the_service() {
    let (service_l, service_addr) = listener().await;
    let (console_l, console_addr) = listener().await;
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let tasks = [
        tokio::spawn(async move {
            while service_l.accept().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }),
        tokio::spawn(async move {
            serve_sessions(console_l, Config::new(Role::Console, PSK), service_addr)
                .await
                .unwrap()
        }),
    ];
    let dial = Dial {
        stream: Config::new(Role::Gateway, b"another key, 16+ bytes".to_vec()),
        consoles: vec![console_addr],
        max_attempts: 3,
        retry_after: Duration::from_millis(10),
    };
    let (viewer, _viewer_peer) = tokio::io::duplex(1024);
    let res = serve_viewer(viewer, &dial).await;
    assert!(
        matches!(res, Err(GatewayError::NoConsole { attempts: 3, .. })),
        "{res:?}"
    );
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the service was reached");
    for t in tasks {
        t.abort();
    }
}
