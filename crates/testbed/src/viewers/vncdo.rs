//! `vncdotool`'s command-line client, `vncdo`.

use std::path::Path;

use super::{decode_png, run_output, spawn_error, Image, Result};

/// Where `.ci/setup` installs vncdotool (in a virtualenv of its own).
pub const VNCDO: &str = "/opt/dmore-venv/bin/vncdo";

/// The pixel encoding `vncdo` asks for. vncdotool announces Raw alone unless told otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VncdoEncoding {
    /// Raw pixels: vncdotool's default.
    Raw,
    /// ZRLE, which vncdotool decodes but does not ask for by itself.
    Zrle,
    /// Hextile, likewise.
    Hextile,
}

/// `vncdotool`'s command-line client, `vncdo`: a scripted viewer that knows nothing of dmore.
pub struct Vncdo {
    server: String,
    password: Option<String>,
    encoding: VncdoEncoding,
}

impl Vncdo {
    /// A `vncdo` aimed at `server` (`HOST::PORT`), with an optional VNC password.
    pub fn new(
        server: impl Into<String>,
        password: Option<String>,
        encoding: VncdoEncoding,
    ) -> Vncdo {
        Vncdo {
            server: server.into(),
            password,
            encoding,
        }
    }

    /// Runs one `vncdo` session with these actions (e.g. `["type", "abc", "key", "enter"]`).
    pub async fn run(&self, actions: &[&str]) -> Result<()> {
        let python = Path::new(VNCDO).with_file_name("python3");
        let python = python.display().to_string();
        // vncdo's own entry point, with the client's class attribute set to the encoding.
        let encoding = match self.encoding {
            VncdoEncoding::Raw => "RAW",
            VncdoEncoding::Zrle => "ZRLE",
            VncdoEncoding::Hextile => "HEXTILE",
        };
        let script = format!(
            "import sys; from vncdotool import rfb, client, command; \
             client.VNCDoToolClient.encoding = rfb.Encoding.{encoding}; \
             sys.exit(command.vncdo(sys.argv[1:]))"
        );
        let mut args = vec![
            "-c",
            script.as_str(),
            "-s",
            self.server.as_str(),
            "-t",
            "60",
        ];
        if let Some(password) = &self.password {
            args.extend(["-p", password.as_str()]);
        }
        args.extend_from_slice(actions);
        run_output(&python, "vncdotool (pip, via .ci/setup)", &args, None).await?;
        Ok(())
    }

    /// Types `text` (vncdotool sends keysyms only: no scancodes).
    pub async fn type_text(&self, text: &str) -> Result<()> {
        self.run(&["type", text]).await
    }

    /// Connects, receives a full frame, and returns it as vncdotool saw it.
    pub async fn capture(&self) -> Result<Image> {
        let dir = tempfile::Builder::new()
            .prefix("dmore-vncdo")
            .tempdir()
            .map_err(|source| spawn_error("mktemp", "coreutils", source))?;
        let file = dir.path().join("capture.png");
        let file_arg = file.display().to_string();
        self.run(&["--nocursor", "capture", &file_arg]).await?;
        let data = tokio::fs::read(&file)
            .await
            .map_err(|source| spawn_error("vncdo capture", "vncdotool", source))?;
        decode_png(&data)
    }
}
