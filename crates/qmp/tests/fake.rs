//! The tokio shell against a scripted fake QMP server on a unix socket: failure paths QEMU
//! itself does not produce.

use std::time::Duration;

use qmp::{CloseReason, Connection, Error, ProtocolError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

const GREETING: &[u8] =
    b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n";

/// Serves one connection with `script`, which gets the lines the client sent.
async fn serve<F, Fut>(script: F) -> (tempfile::TempDir, std::path::PathBuf)
where
    F: FnOnce(tokio::net::UnixStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        script(stream).await;
    });
    (dir, path)
}

async fn read_line(reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    line
}

#[tokio::test]
async fn malformed_greeting_is_a_handshake_error() {
    let (_dir, path) = serve(|mut s| async move {
        s.write_all(b"{\"QMP\": {\"capabilities\": []}}\n")
            .await
            .unwrap();
    })
    .await;
    let err = Connection::connect(&path).await.unwrap_err();
    match err {
        Error::Handshake {
            reason: CloseReason::Protocol(ProtocolError::MalformedGreeting { .. }),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn eof_before_greeting_is_a_handshake_error() {
    let (_dir, path) = serve(|s| async move { drop(s) }).await;
    let err = Connection::connect(&path).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Handshake {
                reason: CloseReason::Eof,
                ..
            }
        ),
        "{err:?}"
    );
}

/// Events before a bad line are delivered, then the stream ends; the waiting command fails
/// with the protocol error; close() reports it.
#[tokio::test]
async fn garbage_line_fails_pending_commands_after_delivering_earlier_events() {
    let (_dir, path) = serve(|s| async move {
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(GREETING).await.unwrap();
        assert_eq!(
            read_line(&mut r).await,
            "{\"execute\":\"qmp_capabilities\"}\n"
        );
        w.write_all(b"{\"return\": {}}\r\n").await.unwrap();
        assert_eq!(read_line(&mut r).await, "{\"execute\":\"query-status\"}\n");
        w.write_all(b"{\"event\": \"STOP\"}\r\nnot json\r\n")
            .await
            .unwrap();
        // Keep the socket open: the client must give up on its own.
        let _ = read_line(&mut r).await;
    })
    .await;
    let (conn, mut events) = Connection::connect(&path).await.unwrap();
    let err = conn.client().query_status().await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Closed { command, reason: CloseReason::Protocol(ProtocolError::Json(_)) }
                if command == "query-status"
        ),
        "{err:?}"
    );
    let stop = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap();
    assert_eq!(stop.map(|e| e.name), Some("STOP".to_owned()));
    assert!(events.recv().await.is_none());
    let err = conn.close().await.unwrap_err();
    assert!(
        matches!(err, Error::Connection(CloseReason::Protocol(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn overlong_line_ends_the_connection() {
    let (_dir, path) = serve(|s| async move {
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(GREETING).await.unwrap();
        read_line(&mut r).await;
        w.write_all(b"{\"return\": {}}\r\n").await.unwrap();
        read_line(&mut r).await;
        // 2 KiB with no newline, against a 1 KiB limit.
        let _ = w.write_all(&[b' '; 2048]).await;
        let _ = read_line(&mut r).await;
    })
    .await;
    let config = qmp::Config {
        max_line: 1024,
        ..qmp::Config::default()
    };
    let (conn, _events) = Connection::connect_with(&path, config).await.unwrap();
    let err = conn
        .client()
        .execute("query-status", serde_json::Value::Null)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Closed {
                reason: CloseReason::Protocol(ProtocolError::LineTooLong { max: 1024 }),
                ..
            }
        ),
        "{err:?}"
    );
}
