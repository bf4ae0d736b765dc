//! A console serving resumable sessions itself ([`Pipe`]), moving: an echo application on
//! console A is stopped between two reads, its session exported, handed off with a Moved
//! frame naming console B, and imported there, three times back and forth while a viewer
//! streams bytes through the gateway. The gateway knows only A's address: it reaches B
//! through the Moved frames alone. The viewer gets back exactly its bytes.

use std::net::SocketAddr;
use std::time::Duration;

use gateway::accept::Router;
use gateway::dial::{serve_viewers, Dial};
use gateway::pipe::Pipe;
use resume::{Config, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

const PSK: &[u8] = b"0123456789abcdef0123456789abcdef";
const TOTAL: usize = 1 << 20;
const MOVES: usize = 3;

/// A console's listener: every new session's pipe goes to `pipes`.
async fn console(router: Router) -> (SocketAddr, mpsc::Receiver<Pipe>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let (conn, _) = l.accept().await.unwrap();
            let (router, tx) = (router.clone(), tx.clone());
            tokio::spawn(async move {
                if let Some(pipe) = Pipe::accept(&router, conn).await {
                    let _ = tx.send(pipe.unwrap()).await;
                }
            });
        }
    });
    (addr, rx)
}

/// Echoes until told to stop (never in the middle of a write), then hands the pipe back.
async fn echo(mut pipe: Pipe, mut stop: oneshot::Receiver<()>) -> Pipe {
    let mut buf = vec![0; 8192];
    loop {
        let n = tokio::select! {
            _ = &mut stop => return pipe,
            r = pipe.read(&mut buf) => r.unwrap(),
        };
        if n == 0 {
            return pipe;
        }
        pipe.write_all(&buf[..n]).await.unwrap();
    }
}

#[tokio::test]
async fn a_session_follows_its_console_through_moved_frames() {
    let config = Config::new(Role::Console, PSK);
    let routers = [Router::new(config.clone()), Router::new(config)];
    let (a, mut a_pipes) = console(routers[0].clone()).await;
    let (b, _b_pipes) = console(routers[1].clone()).await;
    let addrs = [a, b];
    let gw = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_addr = gw.local_addr().unwrap();
    tokio::spawn(serve_viewers(
        gw,
        Dial {
            stream: Config::new(Role::Gateway, PSK),
            consoles: vec![a],
            max_attempts: 5,
            retry_after: Duration::from_millis(50),
        },
    ));
    let viewer = TcpStream::connect(gw_addr).await.unwrap();
    let (mut vr, mut vw) = viewer.into_split();
    let sent: Vec<u8> = (0..TOTAL).map(|i| (i * 7 % 251) as u8).collect();
    let to_send = sent.clone();
    let writer = tokio::spawn(async move {
        for chunk in to_send.chunks(4096) {
            vw.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        vw
    });
    let mut pipe = a_pipes.recv().await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0; 65536];
    for m in 0..=MOVES {
        let (stop, stop_rx) = oneshot::channel();
        let app = tokio::spawn(echo(pipe, stop_rx));
        let until = (m + 1) * TOTAL / (MOVES + 1);
        while got.len() < until {
            let n = tokio::time::timeout(Duration::from_secs(20), vr.read(&mut buf))
                .await
                .expect("the echo keeps coming")
                .unwrap();
            assert!(n > 0, "the gateway closed the viewer");
            got.extend_from_slice(&buf[..n]);
        }
        let _ = stop.send(());
        let old = app.await.unwrap();
        if m == MOVES {
            break;
        }
        // The move: export, tell the gateway where, import there.
        let to = addrs[(m + 1) % 2];
        let state = old.export();
        let _ = old.hand_off(Some(to));
        pipe = Pipe::import(&routers[(m + 1) % 2], state).unwrap();
    }
    assert_eq!(got.len(), TOTAL);
    assert!(got == sent, "the viewer got back exactly its bytes");
    drop(writer.await.unwrap());
}
