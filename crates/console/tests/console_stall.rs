//! A viewer that stops reading entirely (tiny receive buffer, continuous updates on, a changing
//! screen) does not slow another viewer's typing, and the console's memory stays bounded.

mod console_support;

use console_support::*;
use rfb::{ClientConfig, ClientMessage, Encoding, PixelFormat};
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_stalled_viewer_does_not_block_typing_and_memory_stays_bounded(
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("dmI-").tempdir()?;
    let mut vm = launch_vm(dir.path(), true).await?;
    let console = ConsoleProc::spawn(&vm, dir.path(), "c", None, None).await?;

    // The staller: a 4 KiB receive buffer, Raw pixels, continuous updates, then no reads.
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    let stream = sock.connect(console.addr).await?;
    let setup = vnc::client::Setup {
        pixel_format: Some(PixelFormat::RGBX32_LE),
        encodings: vec![Encoding::Raw, Encoding::ContinuousUpdates],
    };
    let config = ClientConfig::no_auth();
    let (done, _stalled_reader, mut stalled) = vnc::client::connect(stream, config, &setup).await?;
    let (w, h) = (done.server_init.width, done.server_init.height);
    stalled
        .send_all(&[
            ClientMessage::FramebufferUpdateRequest {
                incremental: false,
                x: 0,
                y: 0,
                width: w,
                height: h,
            },
            ClientMessage::EnableContinuousUpdates {
                enable: true,
                x: 0,
                y: 0,
                width: w,
                height: h,
            },
        ])
        .await?;
    let typer = Viewer::tcp(console.addr, None).await?;

    // Full-screen requests (1.1 MB of Raw each) until the staller's writer is stuck on a full
    // socket: it never reads, so once stuck it stays stuck.
    let stuck = |s: &serde_json::Value| s["viewer_list"][0]["writer_idle"] == false;
    let full = ClientMessage::FramebufferUpdateRequest {
        incremental: false,
        x: 0,
        y: 0,
        width: w,
        height: h,
    };
    let sent = |s: &serde_json::Value| s["viewer_list"][0]["updates_sent"].as_u64().unwrap_or(0);
    // 16 x 1.1 MB is far beyond the socket buffers (4 MiB send, 4 KiB receive): once these are
    // answered or merged, the writer is stuck for good.
    for _ in 0..16 {
        let before = sent(&console.status().await?);
        stalled.send(&full).await?;
        console
            .wait_status("the request answered", |s| stuck(s) || sent(s) > before)
            .await?;
    }
    let s0 = console
        .wait_status("the staller's writer stuck", stuck)
        .await?;
    let rss0 = console.rss_kib()?;
    let updates0 = s0["updates"].as_u64().unwrap_or(0);

    // Type 400 keys (800 events, and a marker after each 40) while the screen keeps changing.
    let text: String = "abcdefghijklmnopqrstuvwxyz0123456789"
        .chars()
        .cycle()
        .take(400)
        .collect();
    let started = Instant::now();
    for chunk in text.as_bytes().chunks(40) {
        let chunk = std::str::from_utf8(chunk)?;
        let mark = ps2_mark(dir.path())?;
        typer.type_text(chunk).await?;
        // Each chunk ends with a marker the text has not.
        let got = read_keys_through(&mut vm, &typer, "-").await?;
        let typed = expected_keys(&format!("{chunk}-"));
        check_keys(
            dir.path(),
            "40 keys beside a stalled viewer",
            mark,
            &typed,
            &got,
        )?;
    }
    let typing = started.elapsed();
    // Let QEMU's screen change a few hundred more times with the staller still stuck.
    let s1 = console
        .wait_status("more screen updates", |s| {
            s["updates"].as_u64().unwrap_or(0) > updates0 + 300
        })
        .await?;
    let rss1 = console.rss_kib()?;
    eprintln!(
        "typing 400 keys took {typing:?}; console RSS {rss0} KiB -> {rss1} KiB over {} QEMU \
         updates; staller: {}",
        s1["updates"].as_u64().unwrap_or(0) - updates0,
        s1["viewer_list"][0]
    );
    assert!(stuck(&s1), "the staller was never stuck: {s1}");
    assert_eq!(s1["viewers"], 2, "{s1}");
    // Bounded: a stalled viewer holds one batch in its writer and a tile map, nothing per update.
    assert!(
        rss1 < rss0 + 8 * 1024,
        "console RSS grew from {rss0} KiB to {rss1} KiB"
    );
    // The typing viewer still gets every change: its screen ends as QEMU's.
    let direct = Viewer::direct(&vm).await?;
    // (Except the guest's animated cells, which change every millisecond.)
    screens_match_except(&direct, &[&typer], Some(ANIMATION)).await?;
    Ok(())
}
