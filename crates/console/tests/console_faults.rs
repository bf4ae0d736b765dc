//! Bad viewers are closed one by one, never disturbing the others: a wrong password, a
//! malformed message, an unusable pixel format; a view-only viewer's keys are ignored; a
//! non-shared viewer disconnects the others (RFC 6143 §7.3.1).

mod console_support;

use console_support::*;
use rfb::{
    ClientConfig, ClientHandshake, ClientMessage, Limits, PixelFormat, SecurityType, Version,
};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A handshake done by hand, leaving the raw socket for hostile bytes.
async fn raw_viewer(addr: std::net::SocketAddr, password: &str) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    let mut hs = ClientHandshake::new(ClientConfig {
        version: Version::V3_8,
        security: vec![SecurityType::VncAuth],
        password: Some(rfb::Password(password.as_bytes().to_vec())),
        shared: true,
        limits: Limits::default(),
    });
    let mut buf = vec![0; 4096];
    loop {
        while let Some(out) = hs.poll_output() {
            s.write_all(&out).await?;
        }
        if hs.poll_done().is_some() {
            return Ok(s);
        }
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "console closed during the handshake");
        hs.feed(buf.get(..n).unwrap_or_default())?;
    }
}

/// Reads until the console closes the socket.
async fn closed_by_console(s: &mut TcpStream) -> anyhow::Result<()> {
    let mut buf = vec![0; 1 << 16];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => {}
            Err(_) => anyhow::bail!("the console never closed the bad viewer"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_bad_viewers_are_closed_and_others_carry_on() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("dmI-").tempdir()?;
    let mut vm = launch_vm(dir.path(), false).await?;
    let console =
        ConsoleProc::spawn_with(&vm, dir.path(), "c", (Some("secret"), Some("look")), None).await?;
    let good = Viewer::tcp(console.addr, Some("secret")).await?;
    good.type_text("ab").await?;
    assert_eq!(read_keys(&mut vm, 4).await?, expected_keys("ab"));

    // Wrong password: refused in the handshake.
    let wrong = Viewer::tcp(console.addr, Some("guess")).await;
    assert!(wrong.is_err(), "a wrong password was accepted");

    // Malformed message (type 7 does not exist): closed.
    let mut bad = raw_viewer(console.addr, "secret").await?;
    bad.write_all(&[7, 1, 2, 3]).await?;
    closed_by_console(&mut bad).await?;

    // Unusable pixel format (12 bits per pixel): closed.
    let mut odd = raw_viewer(console.addr, "secret").await?;
    let mut pf = PixelFormat::RGBX32_LE;
    pf.bits_per_pixel = 12;
    let mut bytes = Vec::new();
    ClientMessage::SetPixelFormat(pf).encode(&mut bytes);
    odd.write_all(&bytes).await?;
    closed_by_console(&mut odd).await?;

    // View-only: its keys never reach the guest (the next reports are the good viewer's).
    // Its keys are followed by a full update request: once the console answered that, it
    // had handled the keys (one viewer's messages are handled in order).
    let viewer_only = Viewer::tcp(console.addr, Some("look")).await?;
    let sent = |s: &serde_json::Value| s["viewer_list"][1]["updates_sent"].as_u64().unwrap_or(0);
    let before = sent(
        &console
            .wait_status("two viewers", |s| s["viewers"] == 2)
            .await?,
    );
    let keysym = guest::keymap::keysym('v').unwrap_or(0x76);
    viewer_only
        .send(vec![
            ClientMessage::KeyEvent { down: true, keysym },
            ClientMessage::KeyEvent {
                down: false,
                keysym,
            },
            ClientMessage::FramebufferUpdateRequest {
                incremental: false,
                x: 0,
                y: 0,
                width: 16,
                height: 16,
            },
        ])
        .await?;
    console
        .wait_status("the view-only viewer's keys handled", |s| sent(s) > before)
        .await?;
    good.type_text("cd").await?;
    assert_eq!(read_keys(&mut vm, 4).await?, expected_keys("cd"));
    assert!(viewer_only.alive() && good.alive());
    let direct = Viewer::direct(&vm).await?;
    screens_match(&direct, &[&good, &viewer_only]).await?;

    // A non-shared viewer disconnects the others.
    let s = TcpStream::connect(console.addr).await?;
    let alone = connect_viewer_shared(s, Some("secret"), false).await?;
    let deadline = Instant::now() + DEADLINE;
    while good.alive() || viewer_only.alive() {
        anyhow::ensure!(Instant::now() < deadline, "the shared viewers stayed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    alone.type_text("e").await?;
    assert_eq!(read_keys(&mut vm, 2).await?, expected_keys("e"));
    let s = console.status().await?;
    assert_eq!(s["viewers"], 1, "{s}");
    Ok(())
}
