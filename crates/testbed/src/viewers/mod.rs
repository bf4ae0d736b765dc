//! Real, unmodified VNC viewers for end-to-end tests: the TigerVNC viewer in a headless X
//! server (Xvfb), and `vncdotool`'s `vncdo`.
//!
//! What a viewer shows is read back as pixels (an `xwd` dump of the viewer's window, or
//! `vncdo capture`), never from the server's own logs, so a test sees what a person would.

mod image;
mod tigervnc;
mod vncdo;

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

pub use image::{decode_png, parse_ppm, parse_xwd, Image};
pub use tigervnc::{TigerVnc, ViewerAuth, Xvfb, FULL_COLOUR};
pub use vncdo::{Vncdo, VncdoEncoding, VNCDO};

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
