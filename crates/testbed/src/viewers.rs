//! Real, unmodified VNC viewers for end-to-end tests: the TigerVNC viewer in a headless X
//! server (Xvfb), and `vncdotool`'s `vncdo`.
//!
//! What a viewer shows is read back as pixels (an `xwd` dump of the viewer's window, or
//! `vncdo capture`), never from the server's own logs, so a test sees what a person would.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Where `.ci/setup` installs vncdotool (in a virtualenv of its own).
pub const VNCDO: &str = "/opt/dmore-venv/bin/vncdo";

/// Why a viewer could not be started or read.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    /// A program is not installed.
    #[error(
        "`{program}` was not found: install the Debian package `{package}` (or run .ci/setup)"
    )]
    Missing {
        /// The program looked for.
        program: String,
        /// The package that has it.
        package: &'static str,
    },
    /// A program could not be run.
    #[error("running `{program}` failed")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A program ran and failed.
    #[error("`{program}` failed: {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// A screenshot could not be decoded.
    #[error("bad image from {program}: {reason}")]
    BadImage {
        /// The program that made it.
        program: &'static str,
        /// What was wrong.
        reason: String,
    },
}

type Result<T> = std::result::Result<T, ViewerError>;

/// An RGB image read back from a viewer, one `0x00RRGGBB` word per pixel, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Pixels, `0x00RRGGBB`, row-major.
    pub pixels: Vec<u32>,
}

impl Image {
    /// The pixel at (x, y), if inside the image.
    pub fn pixel(&self, x: usize, y: usize) -> Option<u32> {
        if x < self.width && y < self.height {
            self.pixels.get(y * self.width + x).copied()
        } else {
            None
        }
    }

    /// The sub-image at (x, y) of size w×h, if it lies inside the image.
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Option<Image> {
        if x + w > self.width || y + h > self.height {
            return None;
        }
        let pixels = (y..y + h)
            .flat_map(|row| {
                let start = row * self.width + x;
                self.pixels[start..start + w].iter().copied()
            })
            .collect();
        Some(Image {
            width: w,
            height: h,
            pixels,
        })
    }

    /// How many distinct colours the image has (a blank screen has one).
    pub fn colour_count(&self) -> usize {
        let mut colours = self.pixels.clone();
        colours.sort_unstable();
        colours.dedup();
        colours.len()
    }
}

/// Runs `program args…` and returns its stdout, or its stderr as the error.
async fn run_output(
    program: &str,
    package: &'static str,
    args: &[&str],
    display: Option<&str>,
) -> Result<Vec<u8>> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    if let Some(display) = display {
        cmd.env("DISPLAY", display);
    }
    let out = cmd
        .output()
        .await
        .map_err(|source| spawn_error(program, package, source))?;
    if !out.status.success() {
        return Err(ViewerError::Failed {
            program: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

fn spawn_error(program: &str, package: &'static str, source: std::io::Error) -> ViewerError {
    if source.kind() == std::io::ErrorKind::NotFound {
        ViewerError::Missing {
            program: program.to_owned(),
            package,
        }
    } else {
        ViewerError::Spawn {
            program: program.to_owned(),
            source,
        }
    }
}

/// Polls `check` every 50 ms until it yields a value or `timeout` passes.
async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if start.elapsed() > timeout {
            return Err(ViewerError::Timeout {
                what: what.to_owned(),
                waited: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A headless X server (Xvfb) for graphical viewers; killed on drop.
pub struct Xvfb {
    display: String,
    _child: Child,
}

impl Xvfb {
    /// Starts Xvfb (1280x1024 at 24 bits) on a display number it picks itself (`-displayfd`),
    /// so parallel tests never race for one.
    pub async fn start() -> Result<Xvfb> {
        use std::os::fd::{AsRawFd, OwnedFd};
        use tokio::io::AsyncReadExt;
        const DISPLAY_FD: i32 = 3;
        let (read_end, write_end): (OwnedFd, OwnedFd) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| spawn_error("Xvfb", "xvfb", e.into()))?;
        let write_raw = write_end.as_raw_fd();
        let mut cmd = Command::new("Xvfb");
        cmd.args([
            "-displayfd",
            "3",
            "-screen",
            "0",
            "1280x1024x24",
            "-nolisten",
            "tcp",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        // SAFETY: dup2 is async-signal-safe; the child gets the pipe's write end as fd 3
        // (dup2 clears close-on-exec on the copy).
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(write_raw, DISPLAY_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|source| spawn_error("Xvfb", "xvfb", source))?;
        drop(write_end);
        let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end)
            .map_err(|source| spawn_error("Xvfb", "xvfb", source))?;
        let mut text = String::new();
        let read = pipe.read_to_string(&mut text);
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(Ok(_)) => {}
            Ok(Err(source)) => return Err(spawn_error("Xvfb", "xvfb", source)),
            Err(_) => {
                return Err(ViewerError::Timeout {
                    what: "Xvfb to report its display".into(),
                    waited: Duration::from_secs(10),
                })
            }
        }
        let number: u32 = text.trim().parse().map_err(|_| ViewerError::Failed {
            program: "Xvfb".into(),
            stderr: format!("reported display {text:?}"),
        })?;
        Ok(Xvfb {
            display: format!(":{number}"),
            _child: child,
        })
    }

    /// The `DISPLAY` value of this server, e.g. `:90`.
    pub fn display(&self) -> &str {
        &self.display
    }
}

/// How a viewer authenticates.
#[derive(Debug, Clone)]
pub enum ViewerAuth {
    /// Security type None.
    None,
    /// VNC Authentication with this password.
    Password(String),
}

/// A TigerVNC viewer (`vncviewer`) connected to a server, in an [`Xvfb`]; killed on drop.
pub struct TigerVnc {
    display: String,
    window: String,
    child: Child,
    _password_dir: Option<tempfile::TempDir>,
}

impl TigerVnc {
    /// Starts `vncviewer` against `server` (`HOST::PORT`, or a `HOST:DISPLAY`) and waits until
    /// its window, titled by the server's desktop `name`, exists. `netns` runs the viewer in
    /// that network namespace (the X server's socket is a file, so it reaches across).
    pub async fn connect(
        xvfb: &Xvfb,
        server: &str,
        auth: ViewerAuth,
        desktop_name: &str,
        netns: Option<&str>,
    ) -> Result<TigerVnc> {
        let mut args: Vec<String> = Vec::new();
        let password_dir = match &auth {
            ViewerAuth::None => {
                args.extend(["-SecurityTypes".into(), "None".into()]);
                None
            }
            ViewerAuth::Password(password) => {
                let dir = tempfile::Builder::new()
                    .prefix("dmore-vncpasswd")
                    .tempdir()
                    .map_err(|source| spawn_error("mktemp", "coreutils", source))?;
                let file = dir.path().join("passwd");
                write_vnc_password_file(&file, password).await?;
                args.extend([
                    "-SecurityTypes".into(),
                    "VncAuth".into(),
                    "-PasswordFile".into(),
                    file.display().to_string(),
                ]);
                Some(dir)
            }
        };
        // Full-colour, so the screenshot shows the server's pixels unchanged.
        args.extend(["-AutoSelect=0".into(), "-FullColor".into(), server.into()]);
        let mut cmd = match netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "vncviewer"]);
                cmd
            }
            None => Command::new("vncviewer"),
        };
        let mut child = cmd
            .args(&args)
            .env("DISPLAY", xvfb.display())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| spawn_error("vncviewer", "tigervnc-viewer", source))?;
        let display = xvfb.display().to_owned();
        let window = poll_until("the vncviewer window", Duration::from_secs(20), || {
            let display = display.clone();
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            async move {
                if exited {
                    return Some(None);
                }
                let out = run_output(
                    "xdotool",
                    "xdotool",
                    &["search", "--name", desktop_name],
                    Some(&display),
                )
                .await
                .ok()?;
                let text = String::from_utf8_lossy(&out);
                text.lines().next().map(|w| Some(w.trim().to_owned()))
            }
        })
        .await?;
        let Some(window) = window else {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = pipe.read_to_string(&mut stderr).await;
            }
            return Err(ViewerError::Failed {
                program: "vncviewer".into(),
                stderr,
            });
        };
        Ok(TigerVnc {
            display,
            window,
            child,
            _password_dir: password_dir,
        })
    }

    /// Types `text` into the viewer's window with `xdotool`, as a person at the keyboard would.
    pub async fn type_text(&self, text: &str) -> Result<()> {
        run_output(
            "xdotool",
            "xdotool",
            &["windowfocus", "--sync", &self.window],
            Some(&self.display),
        )
        .await?;
        run_output(
            "xdotool",
            "xdotool",
            &["type", "--delay", "30", text],
            Some(&self.display),
        )
        .await?;
        Ok(())
    }

    /// What the viewer's window shows, read with `xwd`.
    pub async fn screenshot(&self) -> Result<Image> {
        let out = run_output(
            "xwd",
            "x11-apps",
            &["-silent", "-id", &self.window],
            Some(&self.display),
        )
        .await?;
        parse_xwd(&out)
    }

    /// Whether the viewer process is still running (it exits when its connection drops).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Writes a TigerVNC password file (the obfuscated form `vncpasswd -f` makes).
async fn write_vnc_password_file(path: &Path, password: &str) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new("vncpasswd")
        .arg("-f")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| spawn_error("vncpasswd", "tigervnc-tools", source))?;
    if let Some(mut stdin) = child.stdin.take() {
        let input = format!("{password}\n{password}\n");
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|source| spawn_error("vncpasswd", "tigervnc-tools", source))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| spawn_error("vncpasswd", "tigervnc-tools", source))?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(ViewerError::Failed {
            program: "vncpasswd -f".into(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    tokio::fs::write(path, &out.stdout)
        .await
        .map_err(|source| spawn_error("vncpasswd", "tigervnc-tools", source))
}

/// Decodes an X window dump (`xwd`, ZPixmap, 24/32 bits per pixel, TrueColor).
pub fn parse_xwd(data: &[u8]) -> Result<Image> {
    let bad = |reason: &str| ViewerError::BadImage {
        program: "xwd",
        reason: reason.to_owned(),
    };
    let word = |index: usize| -> Result<u32> {
        let at = index * 4;
        data.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad("truncated header"))
    };
    let to_usize = |v: u32| usize::try_from(v).map_err(|_| bad("size overflows"));
    let header_size = to_usize(word(0)?)?;
    let (format, width, height) = (word(2)?, to_usize(word(4)?)?, to_usize(word(5)?)?);
    let byte_order = word(7)?;
    let bits_per_pixel = word(11)?;
    let bytes_per_line = to_usize(word(12)?)?;
    let ncolors = to_usize(word(19)?)?;
    if format != 2 || bits_per_pixel != 32 {
        return Err(bad(&format!(
            "unsupported format {format} at {bits_per_pixel} bpp (want ZPixmap, 32 bpp)"
        )));
    }
    if (word(14)?, word(15)?, word(16)?) != (0x00ff_0000, 0x0000_ff00, 0x0000_00ff) {
        return Err(bad("colour masks are not 8-bit RGB"));
    }
    let start = header_size + ncolors * 12;
    let needed = bytes_per_line
        .checked_mul(height)
        .and_then(|n| n.checked_add(start))
        .ok_or_else(|| bad("size overflows"))?;
    if data.len() < needed || bytes_per_line < width * 4 {
        return Err(bad("truncated pixel data"));
    }
    let mut pixels = Vec::with_capacity(width * height);
    for row in 0..height {
        let line = &data[start + row * bytes_per_line..][..width * 4];
        pixels.extend(line.chunks_exact(4).map(|p| {
            let value = if byte_order == 0 {
                u32::from_le_bytes([p[0], p[1], p[2], p[3]])
            } else {
                u32::from_be_bytes([p[0], p[1], p[2], p[3]])
            };
            value & 0x00ff_ffff
        }));
    }
    Ok(Image {
        width,
        height,
        pixels,
    })
}

/// The pixel encoding `vncdo` asks for. vncdotool announces Raw alone unless told otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VncdoEncoding {
    /// Raw pixels: vncdotool's default.
    Raw,
    /// ZRLE, which vncdotool decodes but does not ask for by itself.
    Zrle,
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

/// Decodes an 8-bit RGB or RGBA PNG into an [`Image`].
pub fn decode_png(data: &[u8]) -> Result<Image> {
    let bad = |reason: String| ViewerError::BadImage {
        program: "vncdo",
        reason,
    };
    let mut decoder = png::Decoder::new(data);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| bad(e.to_string()))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(e.to_string()))?;
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => return Err(bad(format!("unexpected colour type {other:?}"))),
    };
    let (width, height) = (info.width as usize, info.height as usize);
    let pixels = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]))
        .collect();
    Ok(Image {
        width,
        height,
        pixels,
    })
}

impl Image {
    /// Writes the image as a PNG file (for a person to look at when a test fails).
    pub fn save_png(&self, path: &Path) -> std::io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let width = u32::try_from(self.width).map_err(std::io::Error::other)?;
        let height = u32::try_from(self.height).map_err(std::io::Error::other)?;
        let mut encoder = png::Encoder::new(file, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        let data: Vec<u8> = self
            .pixels
            .iter()
            .flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8])
            .collect();
        writer
            .write_image_data(&data)
            .map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2x2 ZPixmap dump as `xwd` writes it: a 100-byte header, two colour-map entries,
    /// then rows padded to 12 bytes.
    fn xwd_2x2(byte_order: u32, pixels: [u32; 4]) -> Vec<u8> {
        let mut header = [0u32; 25];
        header[0] = 100; // header size (no window name)
        header[2] = 2; // ZPixmap
        header[4] = 2; // width
        header[5] = 2; // height
        header[7] = byte_order;
        header[11] = 32; // bits per pixel
        header[12] = 12; // bytes per line: 8 of pixels + 4 of padding
        header[14] = 0x00ff_0000;
        header[15] = 0x0000_ff00;
        header[16] = 0x0000_00ff;
        header[19] = 2; // colour-map entries that follow the header
        let mut data: Vec<u8> = header.iter().flat_map(|w| w.to_be_bytes()).collect();
        data.extend([0xee; 24]);
        for row in pixels.chunks(2) {
            for &p in row {
                let bytes = if byte_order == 0 {
                    p.to_le_bytes()
                } else {
                    p.to_be_bytes()
                };
                data.extend(bytes);
            }
            data.extend([0xaa; 4]);
        }
        data
    }

    #[test]
    fn xwd_pixels_skip_colour_map_and_row_padding_in_both_byte_orders() {
        let pixels = [0xff11_2233, 0x0044_5566, 0x0077_8899, 0x00aa_bbcc];
        for byte_order in [0, 1] {
            let image = parse_xwd(&xwd_2x2(byte_order, pixels)).expect("valid dump");
            assert_eq!((image.width, image.height), (2, 2));
            assert_eq!(
                image.pixels,
                vec![0x0011_2233, 0x0044_5566, 0x0077_8899, 0x00aa_bbcc]
            );
        }
    }

    #[test]
    fn truncated_xwd_is_an_error_not_a_panic() {
        let data = xwd_2x2(0, [0; 4]);
        for len in [0, 10, 99, 120, data.len() - 1] {
            assert!(parse_xwd(&data[..len]).is_err(), "length {len} accepted");
        }
    }

    #[test]
    fn crop_and_colour_count() {
        let image = Image {
            width: 3,
            height: 2,
            pixels: vec![1, 2, 3, 4, 5, 6],
        };
        let cropped = image.crop(1, 0, 2, 2).expect("inside");
        assert_eq!(cropped.pixels, vec![2, 3, 5, 6]);
        assert!(image.crop(2, 0, 2, 1).is_none());
        assert_eq!(image.colour_count(), 6);
    }
}
