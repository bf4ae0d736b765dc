//! Real byte streams, recorded by `fuzz/seeds/record.py` and committed as fuzz seeds, decode
//! completely: QEMU 7.2's VNC server as seen by our client, and a TigerVNC 1.12 viewer as seen
//! by our server. Each seed file starts with one fuzz selector byte, skipped here.

use rfb::{
    ClientConfig, ClientHandshake, ClientMessage, ClientMessageDecoder, Limits, PixelFormat,
    RectPayload, SecurityType, ServerConfig, ServerHandshake, ServerInit, ServerMessage,
    ServerMessageDecoder, Version,
};

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../fuzz/seeds/{target}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    bytes[1..].to_vec()
}

fn qemu_stream(name: &str) -> (ServerInit, Vec<ServerMessage>) {
    let mut hs = ClientHandshake::new(ClientConfig::no_auth());
    hs.feed(&seed("client_handshake", name)).unwrap();
    let done = hs.poll_done().expect("handshake completes");
    let mut dec = ServerMessageDecoder::new(done.server_init.pixel_format, Limits::default());
    dec.feed(&done.leftover);
    let mut msgs = Vec::new();
    while let Some(m) = dec.next_message().unwrap() {
        msgs.push(m);
    }
    assert!(
        dec.buffered().is_empty(),
        "{} bytes left",
        dec.buffered().len()
    );
    (done.server_init, msgs)
}

fn rect_payloads(msgs: &[ServerMessage]) -> Vec<&RectPayload> {
    msgs.iter()
        .flat_map(|m| match m {
            ServerMessage::FramebufferUpdate(r) => r.iter().map(|r| &r.payload).collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn qemu_zrle_session_decodes() {
    let (init, msgs) = qemu_stream("qemu-zrle");
    assert_eq!(init.name, "QEMU");
    assert_eq!(init.pixel_format, PixelFormat::RGBX32_LE);
    let payloads = rect_payloads(&msgs);
    assert!(payloads.iter().any(|p| matches!(p, RectPayload::Zrle(_))));
    assert!(payloads.contains(&&RectPayload::QemuExtendedKeyEvent));
    assert!(payloads
        .iter()
        .any(|p| matches!(p, RectPayload::ExtendedDesktopSize(s) if s.len() == 1)));
    // Every message re-encodes to the very bytes QEMU sent.
    let wire: Vec<u8> = msgs.iter().flat_map(|m| m.to_bytes()).collect();
    assert!(seed("client_handshake", "qemu-zrle").ends_with(&wire));
}

#[test]
fn qemu_raw_session_decodes() {
    let (_, msgs) = qemu_stream("qemu-raw");
    let raw: usize = rect_payloads(&msgs)
        .iter()
        .map(|p| match p {
            RectPayload::Raw(px) => px.len(),
            _ => 0,
        })
        .sum();
    assert!(raw >= 32 * 16 * 4, "{raw} bytes of Raw pixels");
}

#[test]
fn tigervnc_session_decodes() {
    let mut hs = ServerHandshake::new(ServerConfig {
        version: Version::V3_8,
        security: vec![SecurityType::None],
        password: None,
        challenge: [0; 16],
        init: ServerInit {
            width: 64,
            height: 48,
            pixel_format: PixelFormat::RGBX32_LE,
            name: "dmore-seed".into(),
        },
    })
    .unwrap();
    hs.feed(&seed("server_handshake", "tigervnc")).unwrap();
    let done = hs.poll_done().expect("handshake completes");
    assert!(
        !done.shared,
        "TigerVNC asks for exclusive access unless run with -Shared"
    );
    let mut dec = ClientMessageDecoder::new(Limits::default());
    dec.feed(&done.leftover);
    let mut msgs = Vec::new();
    while let Some(m) = dec.next_message().unwrap() {
        msgs.push(m);
    }
    assert!(dec.buffered().is_empty());
    assert!(matches!(msgs.first(), Some(ClientMessage::SetEncodings(_))));
    assert!(msgs.iter().any(|m| matches!(m, ClientMessage::Fence(_))));
    assert!(msgs
        .iter()
        .any(|m| matches!(m, ClientMessage::EnableContinuousUpdates { .. })));
    assert!(msgs.contains(&ClientMessage::KeyEvent {
        down: true,
        keysym: u32::from(b'd')
    }));
    assert!(msgs
        .iter()
        .any(|m| matches!(m, ClientMessage::PointerEvent { buttons: 1, .. })));
    let wire: Vec<u8> = msgs.iter().flat_map(|m| m.to_bytes()).collect();
    assert_eq!(
        wire, done.leftover,
        "re-encoding gives TigerVNC's bytes back"
    );
}
