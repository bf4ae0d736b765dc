//! Headless Chromium for the browser tests: a page driven by one of `tests/web`'s Node
//! drivers (`novnc.cjs`, `terminal.cjs`: one JSON request per line, one JSON line back), and
//! the servers around it (child processes in the bed's namespaces, `dmore` as nobody).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use scenarios::cobed::{CoBed, NOBODY};
use scenarios::steady::tally::longest_gap;
use testbed::hosts::Host;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Bound on each wait (a guard against hanging, not a timed assertion).
pub const WAIT: Duration = Duration::from_secs(120);

/// The directory `.ci/setup` installs the npm packages into.
pub fn web_dir() -> PathBuf {
    std::env::var_os("DMORE_WEB").map_or_else(|| PathBuf::from("/opt/dmore-web"), PathBuf::from)
}

/// The repository's `tests/web`: the drivers and dmore's own pages.
pub fn repo_web() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/web")
}

/// A child process on `host`, killed on drop (the testbed sweeps what is left in its
/// namespaces); stdin and stdout piped, or none and its stderr into `log`.
pub fn spawn_in(
    host: &Host,
    program: &str,
    args: &[&str],
    log: Option<&Path>,
) -> anyhow::Result<Child> {
    let mut cmd = Command::from(host.command(program));
    cmd.args(args).kill_on_drop(true);
    match log {
        None => cmd.stdin(Stdio::piped()).stdout(Stdio::piped()),
        // dmore's own servers log everything they would (the token must not be in it).
        Some(log) => cmd
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?),
    };
    cmd.spawn().with_context(|| format!("starting {program}"))
}

/// Waits until `child` accepts connections on `addr` from `host`.
pub async fn wait_listening(host: &Host, addr: &str, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while scenarios::typist::connect_from(host, addr.parse()?)
        .await
        .is_err()
    {
        if let Some(status) = child.try_wait()? {
            bail!("the server for {addr} exited: {status}");
        }
        ensure!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `dmore` as the test runs its servers: as root, the bed's own copy (which nobody can reach)
/// as nobody without capabilities through `setpriv`; otherwise as the test's user.
pub struct Dmore {
    program: String,
    prefix: Vec<String>,
    as_root: bool,
}

impl Dmore {
    /// For `bed`; `dmore` is the test's own executable.
    pub fn unprivileged(bed: &CoBed, dmore: &str) -> anyhow::Result<Dmore> {
        let as_root = nix::unistd::geteuid().is_root();
        if !as_root {
            return Ok(Dmore {
                program: dmore.to_owned(),
                prefix: Vec::new(),
                as_root,
            });
        }
        let copy = bed.testbed().run_dir().join("dmore");
        let (uid, gid) = NOBODY;
        Ok(Dmore {
            program: "setpriv".into(),
            prefix: vec![
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "--inh-caps=-all".into(),
                "--".into(),
                copy.to_str().context("dmore path")?.to_owned(),
            ],
            as_root,
        })
    }

    /// `dmore ARGS` on `host`, its stderr (at `trace`) into `log`.
    pub fn spawn(&self, host: &Host, args: &[&str], log: &Path) -> anyhow::Result<Child> {
        let mut all: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        spawn_in(host, &self.program, &all, Some(log))
    }

    /// Gives `path` to the user the servers run as.
    pub fn give(&self, path: &Path) -> anyhow::Result<()> {
        if self.as_root {
            let (uid, gid) = NOBODY;
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// A gateway's files in `dir`, theirs to read: the key it shares with its endpoints, and
    /// a token file with a token for `console` (issued by `dmore`); answers (key, token
    /// file, token).
    pub fn gateway_files(
        &self,
        dir: &Path,
        dmore: &str,
        console: &str,
    ) -> anyhow::Result<(PathBuf, PathBuf, String)> {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let key = dir.join("gateway.key");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n")?;
        self.give(&key)?;
        let tokens = dir.join("tokens");
        let token = scenarios::cobed::issue_token(Path::new(dmore), &tokens, console)?;
        self.give(&tokens)?;
        Ok((key, tokens, token))
    }

    /// Whether the servers run as nobody (the test runs as root).
    pub fn is_nobody(&self) -> bool {
        self.as_root
    }
}

/// A page in Chromium, driven by a `tests/web` driver.
pub struct Page {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Page {
    /// Opens `url` from `host` with the driver `script` (in `tests/web`) and waits until the
    /// page is connected; Chromium's profile goes to a fresh directory in `dir` (removed with
    /// it, kept with it when a test fails).
    pub async fn open(script: &str, host: &Host, url: &str, dir: &Path) -> anyhow::Result<Page> {
        let script = repo_web().join(script);
        let script = script.to_str().context("driver path")?;
        let profile = tempfile::Builder::new()
            .prefix("chromium-")
            .tempdir_in(dir)?
            .keep();
        let profile = profile.to_str().context("profile path")?;
        let mut child = spawn_in(host, "node", &[script, url, profile], None)?;
        let stdin = child.stdin.take().context("driver stdin")?;
        let stdout = child.stdout.take().context("driver stdout")?;
        let mut page = Page {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        let ready = page.answer().await.context("opening the page")?;
        ensure!(ready["ready"] == true, "the page did not connect: {ready}");
        Ok(page)
    }

    async fn answer(&mut self) -> anyhow::Result<serde_json::Value> {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .context("the driver did not answer")??
            .context("the driver exited")?;
        let value: serde_json::Value = serde_json::from_str(&line)?;
        ensure!(value.get("error").is_none(), "the driver failed: {value}");
        Ok(value)
    }

    /// Sends `request`, returns the driver's answer.
    pub async fn ask(&mut self, request: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        self.stdin
            .write_all(format!("{request}\n").as_bytes())
            .await?;
        self.answer().await
    }

    /// The longest pause between the server's messages (framebuffer updates, terminal
    /// output) the page saw within each of `windows`, edges included.
    pub async fn update_gaps(
        &mut self,
        windows: &[(Instant, Instant)],
    ) -> anyhow::Result<Vec<Duration>> {
        let answer = self.ask(serde_json::json!({ "cmd": "updates" })).await?;
        // The page's Date.now() is this machine's wall clock: map it onto Instants.
        let (here, wall) = (Instant::now(), std::time::SystemTime::now());
        let wall_ms = u64::try_from(wall.duration_since(std::time::UNIX_EPOCH)?.as_millis())?;
        let times: Vec<u64> = serde_json::from_value(answer["times"].clone())
            .with_context(|| format!("the page's update times: {}", answer["now"]))?;
        let times: Vec<Instant> = times
            .into_iter()
            .map(|t| here - Duration::from_millis(wall_ms.saturating_sub(t)))
            .collect();
        Ok(windows
            .iter()
            .map(|&(from, to)| longest_gap(&times, from, to))
            .collect())
    }

    /// Closes the page and waits for the driver to exit cleanly.
    pub async fn quit(mut self) -> anyhow::Result<()> {
        self.stdin.write_all(b"{\"cmd\":\"quit\"}\n").await?;
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .context("the driver did not exit")??;
        ensure!(status.success(), "the driver exited with {status}");
        Ok(())
    }
}

/// Has `page` type (a key every `pace_ms`) while `bed` co-migrates `moves` times (with none:
/// for 6 s), then stops it; prints each move (or the 6 s) with the page's longest pause
/// between the server's messages then, named by `label` and `pause` (what those messages
/// are). Answers the driver's answer to `stop_typing`.
pub async fn type_through_moves(
    bed: &mut CoBed,
    page: &mut Page,
    label: &str,
    moves: usize,
    pace_ms: u64,
    pause: &str,
) -> anyhow::Result<serde_json::Value> {
    page.ask(serde_json::json!({ "cmd": "start_typing", "pace_ms": pace_ms }))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut lines, mut windows) = (Vec::new(), Vec::new());
    if moves == 0 {
        // The pause a viewer sees with no move at all, for the moves' to be read against.
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(6)).await;
        windows.push((started, Instant::now()));
        lines.push(format!("{label} 6 s with no move"));
    }
    for n in 1..=moves {
        let (from, to) = (bed.home(), bed.other());
        let started = Instant::now();
        let t = bed.migrate(false).await?;
        windows.push((started, Instant::now()));
        lines.push(format!(
            "{label} migration {n} {from:?}->{to:?}: VM downtime {:?} ms, freeze->takeover {:?}",
            t.vm_downtime_ms, t.freeze_to_takeover
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let stopped = page
        .ask(serde_json::json!({ "cmd": "stop_typing" }))
        .await?;
    for (line, gap) in lines.iter().zip(page.update_gaps(&windows).await?) {
        println!("{line}, the page's longest pause {pause} {gap:?}");
    }
    Ok(stopped)
}

/// One bed at a time: each runs two QEMUs, two consoles and a browser on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `test` in a fresh directory, one bed at a time, and says how long it took; on failure
/// the directory is kept and named.
pub async fn in_kept_dir<F, Fut>(label: &str, test: F) -> anyhow::Result<()>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let _turn = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    match test(dir.path().to_path_buf()).await {
        Ok(()) => {
            println!("{label}: passed in {:?}", started.elapsed());
            Ok(())
        }
        Err(e) => {
            let kept = dir.keep();
            Err(e.context(format!("files kept in {}", kept.display())))
        }
    }
}
