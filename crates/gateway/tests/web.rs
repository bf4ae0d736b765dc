//! The gateway's web side on loopback: static files from a web root and nothing outside it;
//! the WebSocket upgrade with the `binary` subprotocol carrying bytes through a resumable
//! session to an echo service; and one refusal, byte for byte the same, for a missing, wrong,
//! expired or other console's token. And all of it over TLS (https, wss) with a certificate
//! made by `openssl` for the test.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{echo, listener, PSK};
use futures_util::{SinkExt as _, StreamExt as _};
use gateway::accept::serve_sessions;
use gateway::dial::Dial;
use gateway::tokens::issue;
use gateway::web::{serve_web, SerialLanes, Web};
use resume::{Config, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "not for browsers";
const REFUSED: &[u8] = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// A gateway serving `dir/www`, consoles vm1 and vm2 (both the same echo service behind an
/// endpoint), tokens: vm1's, vm1's expired, vm2's.
struct Bed {
    web: SocketAddr,
    vm1: String,
    vm1_expired: String,
    vm2: String,
    _dir: tempfile::TempDir,
}

async fn bed() -> Bed {
    bed_over(None).await
}

async fn bed_over(tls: Option<tokio_rustls::TlsAcceptor>) -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(root.join("core")).unwrap();
    std::fs::write(root.join("vnc.html"), "<html>noVNC</html>").unwrap();
    std::fs::write(root.join("core/rfb.js"), "export default 1;").unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();

    let (service, service_addr) = listener().await;
    tokio::spawn(echo(service));
    let (endpoint, endpoint_addr) = listener().await;
    tokio::spawn(serve_sessions(
        endpoint,
        Config::new(Role::Console, PSK.to_vec()),
        service_addr,
    ));
    let dial = Dial {
        stream: Config::new(Role::Gateway, PSK.to_vec()),
        consoles: vec![endpoint_addr],
        max_attempts: 5,
        retry_after: Duration::from_millis(50),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (vm1, l1) = issue(rand::random(), "vm1", now + 600);
    let (vm1_expired, l2) = issue(rand::random(), "vm1", now - 1);
    let (vm2, l3) = issue(rand::random(), "vm2", now + 600);
    let token_file = dir.path().join("tokens");
    std::fs::write(&token_file, format!("{l1}{l2}{l3}")).unwrap();
    let web = Web {
        root,
        index: "vnc.html".into(),
        token_file,
        consoles: HashMap::from([("vm1".into(), dial.clone()), ("vm2".into(), dial)]),
        serial: Some(SerialLanes {
            consoles: HashSet::from(["vm1".to_owned()]),
            service: Arc::new(|console, pipe| Box::pin(serial_echo(console, pipe))),
        }),
    };
    let (l, addr) = listener().await;
    tokio::spawn(serve_web(l, web, tls));
    Bed {
        web: addr,
        vm1,
        vm1_expired,
        vm2,
        _dir: dir,
    }
}

/// A serial lane stand-in: names the console, then echoes.
async fn serial_echo(console: String, mut pipe: Box<dyn gateway::serial::SerialPipe>) {
    let _ = pipe
        .write_all(format!("serial {console}\n").as_bytes())
        .await;
    let (mut from, mut to) = tokio::io::split(pipe);
    let _ = tokio::io::copy(&mut from, &mut to).await;
}

/// Opens the WebSocket at `path`, offering the `binary` subprotocol, which it must get.
async fn open_ws(web: SocketAddr, path: &str) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let mut request = format!("ws://{web}{path}").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "binary".parse().unwrap());
    let tcp = TcpStream::connect(web).await.unwrap();
    let (ws, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    assert_eq!(
        response.headers().get("Sec-WebSocket-Protocol").unwrap(),
        "binary"
    );
    ws
}

/// Sends `request` and returns everything the gateway answered until it closed.
async fn raw(addr: SocketAddr, request: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
}

fn upgrade(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: binary\r\n\r\n"
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads binary messages from `ws` until `len` bytes came (20 s for each message).
async fn read_binary<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, len: usize) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut got = Vec::new();
    while got.len() < len {
        let message = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Binary(bytes) = message {
            got.extend_from_slice(&bytes);
        }
    }
    got
}

#[tokio::test]
async fn serves_the_web_root_and_nothing_outside_it() {
    let bed = bed().await;
    let page = text(&raw(bed.web, &get("/vnc.html")).await);
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("Content-Type: text/html"), "{page}");
    assert!(page.ends_with("<html>noVNC</html>"), "{page}");
    assert_eq!(text(&raw(bed.web, &get("/")).await), page);
    let js = text(&raw(bed.web, &get("/core/rfb.js")).await);
    assert!(js.contains("Content-Type: text/javascript"), "{js}");
    let head = text(&raw(bed.web, "HEAD /vnc.html HTTP/1.1\r\n\r\n").await);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"));
    assert!(text(&raw(bed.web, &get("/missing.js")).await).starts_with("HTTP/1.1 404"));
    for escape in [
        "/../secret",
        "/%2e%2e/secret",
        "/core/%2e%2e/%2e%2e/secret",
        "/core/..%2f..%2fsecret",
        "/%2fetc%2fpasswd",
        "//etc/passwd",
        "/core",
    ] {
        let answer = text(&raw(bed.web, &get(escape)).await);
        assert!(
            answer.starts_with("HTTP/1.1 404") || answer.starts_with("HTTP/1.1 400"),
            "{escape}: {answer}"
        );
        assert!(!answer.contains(SECRET) && !answer.contains("root:"));
    }
    let post = text(&raw(bed.web, "POST /vnc.html HTTP/1.1\r\n\r\n").await);
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let garbage = text(&raw(bed.web, "HELLO\r\n\r\n").await);
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
}

#[tokio::test]
async fn a_token_opens_its_console_over_the_websocket() {
    let bed = bed().await;
    for path in [
        format!("/websockify?token={}", bed.vm1),
        format!("/websockify?token={}&console=vm2", bed.vm2),
    ] {
        let mut ws = open_ws(bed.web, &path).await;
        // 300 KB in binary messages of up to 7 KB, echoed back through the session.
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for chunk in sent.chunks(7000) {
            ws.send(Message::binary(chunk.to_vec())).await.unwrap();
        }
        let got = read_binary(&mut ws, sent.len()).await;
        assert!(got == sent, "the echo differs");
        ws.close(None).await.unwrap();
    }
}

#[tokio::test]
async fn wrong_expired_and_other_consoles_tokens_get_one_refusal() {
    let bed = bed().await;
    let wrong = "0".repeat(64);
    for path in [
        "/websockify".to_owned(),
        "/websockify?token=".to_owned(),
        format!("/websockify?token={wrong}"),
        format!("/websockify?token={}", bed.vm1_expired),
        format!("/websockify?token={}&console=vm1", bed.vm2),
        format!("/websockify?token={}x", bed.vm1),
    ] {
        assert_eq!(
            text(&raw(bed.web, &upgrade(&path)).await),
            text(REFUSED),
            "{path}"
        );
    }
    // The same token is good, and a non-WebSocket request to the path is a bad request.
    let ok = text(&raw_head(bed.web, &upgrade(&format!("/websockify?token={}", bed.vm1))).await);
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
    assert!(
        ok.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{ok}"
    );
    let plain = text(&raw(bed.web, &get(&format!("/websockify?token={}", bed.vm1))).await);
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
}

#[tokio::test]
async fn a_token_opens_its_consoles_serial_lane_and_no_other() {
    let bed = bed().await;
    let mut ws = open_ws(bed.web, &format!("/serial?token={}", bed.vm1)).await;
    assert_eq!(read_binary(&mut ws, 11).await, b"serial vm1\n");
    let sent: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect();
    for chunk in sent.chunks(3000) {
        ws.send(Message::binary(chunk.to_vec())).await.unwrap();
    }
    assert!(
        read_binary(&mut ws, sent.len()).await == sent,
        "the echo differs"
    );
    ws.close(None).await.unwrap();
    // vm2 is a console here, but its serial lane is not served: refused like a wrong token.
    for path in [
        format!("/serial?token={}", bed.vm2),
        format!("/serial?token={}", bed.vm1_expired),
        format!("/serial?token={}&console=vm1", bed.vm2),
    ] {
        assert_eq!(
            text(&raw(bed.web, &upgrade(&path)).await),
            text(REFUSED),
            "{path}"
        );
    }
}

/// The response head only (the connection stays open after a 101).
async fn raw_head(addr: SocketAddr, request: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut byte = [0; 1];
    while !out.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(n == 1, "closed after {}", text(&out));
        out.push(byte[0]);
    }
    out
}

/// A self-signed certificate for `localhost` and its key (PEM), made by `openssl`.
fn certificate(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (Debian's openssl package)");
    assert!(status.success());
    (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
}

#[tokio::test]
async fn over_tls_the_page_and_the_websocket() {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    assert!(gateway::tls::acceptor(b"no pem here", &key).is_err());
    assert!(gateway::tls::acceptor(&cert, b"no pem here").is_err());
    let bed = bed_over(Some(gateway::tls::acceptor(&cert, &key).unwrap())).await;

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&cert) {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)] // no post-quantum key exchange: as the gateway's (tls.rs)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let connect = || async {
        let tcp = TcpStream::connect(bed.web).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.unwrap()
    };

    let mut tls = connect().await;
    tls.write_all(get("/vnc.html").as_bytes()).await.unwrap();
    let mut page = Vec::new();
    let _ = tls.read_to_end(&mut page).await;
    let page = text(&page);
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n") && page.ends_with("<html>noVNC</html>"));

    let url = format!("wss://localhost/websockify?token={}", bed.vm1);
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "binary".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(request, connect().await)
        .await
        .unwrap();
    let sent: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(sent.clone())).await.unwrap();
    let got = read_binary(&mut ws, sent.len()).await;
    assert!(got == sent, "the echo over wss differs");

    // A plain-text client gets no page from a TLS listener.
    let plain = raw(bed.web, &get("/vnc.html")).await;
    assert!(!text(&plain).contains("noVNC"));
}
