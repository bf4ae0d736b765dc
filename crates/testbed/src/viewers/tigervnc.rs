//! The TigerVNC viewer (`vncviewer`) in a headless X server (Xvfb).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{parse_xwd, poll_until, run_output, spawn_error, Image, Result, ViewerError};

/// A headless X server (Xvfb) for graphical viewers; killed on drop.
pub struct Xvfb {
    display: String,
    _child: Child,
}

impl Xvfb {
    /// Starts Xvfb (1280x1024 at 24 bits) on a display number drawn at random among 30,000,
    /// so parallel servers do not meet on one; `-displayfd` says when it is ready. (Left to
    /// pick itself, Xvfb took `:0` every time on these machines: it wrote no
    /// `/tmp/.X0-lock` while it ran, so a second server on `:0` replaced the first's socket
    /// and its viewer failed with "Can't open display: :0".)
    pub async fn start() -> Result<Xvfb> {
        use std::os::fd::{AsRawFd, OwnedFd};
        use tokio::io::AsyncReadExt;
        const DISPLAY_FD: i32 = 3;
        let (read_end, write_end): (OwnedFd, OwnedFd) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| spawn_error("Xvfb", "xvfb", e.into()))?;
        let write_raw = write_end.as_raw_fd();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let display = format!(":{}", 1000 + (nanos ^ std::process::id()) % 30_000);
        let mut cmd = Command::new("Xvfb");
        cmd.args([
            display.as_str(),
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

/// TigerVNC parameters that make the viewer keep the server's pixels unchanged: full colour,
/// no automatic choice of colour level and quality (JPEG stays on at quality 8, TigerVNC's
/// default; a server sends it only where it chooses lossy).
pub const FULL_COLOUR: &[&str] = &["-AutoSelect=0", "-FullColor"];

/// A TigerVNC viewer (`vncviewer`) connected to a server, in an [`Xvfb`]; killed on drop.
pub struct TigerVnc {
    display: String,
    window: String,
    child: Child,
    /// Holds the viewer's log (its stderr) and the password file, if any.
    dir: tempfile::TempDir,
}

impl TigerVnc {
    /// Starts `vncviewer` against `server` (`HOST::PORT`, or a `HOST:DISPLAY`) and waits until
    /// its window, titled by the server's desktop `name`, exists. `netns` runs the viewer in
    /// that network namespace (the X server's socket is a file, so it reaches across).
    /// `parameters` are TigerVNC's own (e.g. [`FULL_COLOUR`]; none: its defaults).
    pub async fn connect(
        xvfb: &Xvfb,
        server: &str,
        auth: ViewerAuth,
        desktop_name: &str,
        netns: Option<&str>,
        parameters: &[&str],
    ) -> Result<TigerVnc> {
        let dir = tempfile::Builder::new()
            .prefix("dmore-tigervnc")
            .tempdir()
            .map_err(|source| spawn_error("mktemp", "coreutils", source))?;
        let mut args: Vec<String> = Vec::new();
        match &auth {
            ViewerAuth::None => args.extend(["-SecurityTypes".into(), "None".into()]),
            ViewerAuth::Password(password) => {
                let file = dir.path().join("passwd");
                write_vnc_password_file(&file, password).await?;
                args.extend([
                    "-SecurityTypes".into(),
                    "VncAuth".into(),
                    "-PasswordFile".into(),
                    file.display().to_string(),
                ]);
            }
        }
        args.extend(parameters.iter().map(|p| (*p).to_owned()));
        args.push(server.into());
        let log_path = dir.path().join("vncviewer.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|source| spawn_error("vncviewer", "tigervnc-viewer", source))?;
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
            .stderr(log)
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
            return Err(ViewerError::Failed {
                program: "vncviewer".into(),
                stderr: std::fs::read_to_string(&log_path).unwrap_or_default(),
            });
        };
        Ok(TigerVnc {
            display,
            window,
            child,
            dir,
        })
    }

    /// What the viewer logged so far (its stderr: TigerVNC says there which encoding and
    /// pixel format it uses, e.g. `CConn: Using Tight encoding`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vncviewer.log")).unwrap_or_default()
    }

    /// Types `text` into the viewer's window with `xdotool`, as a person at the keyboard would
    /// (a key every 30 ms).
    pub async fn type_text(&self, text: &str) -> Result<()> {
        self.type_keys(text, Duration::from_millis(30)).await
    }

    /// Types `text` into the viewer's window with `xdotool`, a key every `every` (xdotool
    /// holds each key half of it).
    pub async fn type_keys(&self, text: &str, every: Duration) -> Result<()> {
        run_output(
            "xdotool",
            "xdotool",
            &["windowfocus", "--sync", &self.window],
            Some(&self.display),
        )
        .await?;
        let delay = every.as_millis().to_string();
        run_output(
            "xdotool",
            "xdotool",
            &["type", "--delay", &delay, text],
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
