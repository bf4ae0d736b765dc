//! The `rfb` crate's client role against QEMU's own VNC server on a unix socket, with security
//! None and with VNC Authentication (`password=on`, the password set over QMP): the handshake
//! completes and the framebuffer received equals QEMU's own `screendump`, pixel for pixel.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use rfb::{ClientConfig, ClientDone, Limits, Password, SecurityType, ServerMessage, Version};
use testbed::qemu::{Qemu, QemuConfig};
use tokio::net::UnixStream;
use vnc::client::{ClientReader, ClientWriter, Setup};

const PASSWORD: &str = "pa55wd";

/// Boots the test guest with a second VNC display on `vnc-auth.sock` that requires a password.
async fn boot(dir: &Path) -> anyhow::Result<Qemu> {
    let mut cfg = QemuConfig::new(dir);
    let auth_socket = dir.join("vnc-auth.sock");
    cfg.extra_args = vec![
        "-vnc".into(),
        format!("unix:{},id=auth,password=on", auth_socket.display()).into(),
    ];
    let mut qemu = Qemu::launch(cfg).await?;
    qemu.wait_ready(Duration::from_secs(30)).await?;
    println!("QEMU runs the guest on {:?}", qemu.accel());
    Ok(qemu)
}

fn client_config(security: SecurityType, password: Option<&str>) -> ClientConfig {
    ClientConfig {
        version: Version::V3_8,
        security: vec![security],
        password: password.map(|p| Password(p.as_bytes().to_vec())),
        shared: true,
        limits: Limits::DEFAULT,
    }
}

/// Reads updates until the next FramebufferUpdate has been applied.
async fn next_update(reader: &mut ClientReader<UnixStream>) -> anyhow::Result<()> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), reader.read_message())
            .await
            .context("no update from QEMU within 10 s")??;
        if matches!(message, ServerMessage::FramebufferUpdate(_)) {
            return Ok(());
        }
    }
}

/// Asks for the whole screen, then compares it to QEMU's `screendump`. The guest's screen may
/// change between the two (the VGA text cursor blinks), so a mismatch is retried after
/// catching up with incremental updates.
async fn assert_matches_screendump(
    qemu: &Qemu,
    done: &ClientDone,
    reader: &mut ClientReader<UnixStream>,
    writer: &mut ClientWriter<UnixStream>,
    dir: &Path,
) -> anyhow::Result<()> {
    let (width, height) = (done.server_init.width, done.server_init.height);
    writer.request_update(false, width, height).await?;
    next_update(reader).await?;
    let dump = dir.join("screen.ppm");
    let mut last_difference = String::new();
    for _attempt in 0..20 {
        qemu.qmp()
            .execute("screendump", serde_json::json!({"filename": dump}))
            .await?;
        let testbed::viewers::Image {
            width: w,
            height: h,
            pixels,
        } = testbed::viewers::parse_ppm(&std::fs::read(&dump)?)?;
        let fb = reader.framebuffer();
        ensure!(
            (w, h) == (usize::from(fb.width()), usize::from(fb.height())),
            "screendump is {w}x{h}, the VNC framebuffer {}x{}",
            fb.width(),
            fb.height()
        );
        let wrong = pixels
            .iter()
            .zip(fb.pixels())
            .filter(|(a, b)| a != b)
            .count();
        if wrong == 0 {
            println!("framebuffer {w}x{h} equals QEMU's screendump");
            return Ok(());
        }
        last_difference = format!("{wrong} of {} pixels differ", pixels.len());
        writer.request_update(true, width, height).await?;
        next_update(reader).await?;
    }
    bail!("the VNC framebuffer never matched QEMU's screendump: {last_difference}")
}

#[tokio::test]
async fn client_role_against_qemu_with_security_none() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let qemu = boot(dir.path()).await?;
    let stream = UnixStream::connect(qemu.vnc_path()).await?;
    let (done, mut reader, mut writer) = vnc::client::connect(
        stream,
        client_config(SecurityType::None, None),
        &Setup::default(),
    )
    .await?;
    assert_eq!(
        (done.version, done.security),
        (Version::V3_8, SecurityType::None)
    );
    assert_eq!(done.server_init.name, "QEMU");
    assert_matches_screendump(&qemu, &done, &mut reader, &mut writer, dir.path()).await?;
    qemu.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test]
async fn client_role_against_qemu_with_vnc_authentication() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let qemu = boot(dir.path()).await?;
    let set = serde_json::json!({"protocol": "vnc", "password": PASSWORD, "display": "auth"});
    qemu.qmp().execute("set_password", set).await?;
    let socket = dir.path().join("vnc-auth.sock");

    // A wrong password is refused by QEMU, and the crate says so.
    let stream = UnixStream::connect(&socket).await?;
    let wrong = client_config(SecurityType::VncAuth, Some("wrong"));
    match vnc::client::connect(stream, wrong, &Setup::default()).await {
        Err(vnc::Error::Handshake(e)) => println!("wrong password refused: {e}"),
        Err(other) => bail!("a wrong password failed otherwise: {other}"),
        Ok(_) => bail!("QEMU accepted a wrong password"),
    }

    let stream = UnixStream::connect(&socket).await?;
    let right = client_config(SecurityType::VncAuth, Some(PASSWORD));
    let (done, mut reader, mut writer) =
        vnc::client::connect(stream, right, &Setup::default()).await?;
    assert_eq!(done.security, SecurityType::VncAuth);
    assert_matches_screendump(&qemu, &done, &mut reader, &mut writer, dir.path()).await?;
    qemu.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}
