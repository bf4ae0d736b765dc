//! Shared harness of the `console_*` tests: a console *process* (this test binary re-executed
//! into [`console_child`], killed on drop), scripted viewers on the RFB crate, the test guest
//! on real QEMU (testbed's launcher) with a trace of its PS/2 keyboard queue ([`ps2`]), and
//! guest key reports.
#![allow(dead_code)]

#[path = "../ps2_support/mod.rs"]
pub mod ps2;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use guest::report::Report;
use rfb::framebuffer::Framebuffer;
use rfb::{ClientConfig, ClientMessage, Encoding, Limits, SecurityType, Version};
use testbed::qemu::{Qemu, QemuConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, watch};

/// Bound on any single wait (a guard against hanging, not a timed assertion).
pub const DEADLINE: Duration = Duration::from_secs(60);

const CHILD_ENV: &str = "DMORE_TEST_CONSOLE";

/// The console process's entry point: runs only when re-executed by [`ConsoleProc::spawn`].
#[test]
fn console_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&spec).expect("console spec");
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let link = console::back::LinkConfig::new(s("vnc").expect("vnc"), s("qmp").expect("qmp"));
    let config = console::front::ConsoleConfig {
        link,
        listen: "127.0.0.1:0".parse().expect("addr"),
        access: console::front::Access {
            password: s("password").map(|p| rfb::Password(p.into_bytes())),
            view_only_password: s("view_only_password").map(|p| rfb::Password(p.into_bytes())),
            all_view_only: false,
            insecure_no_auth: s("password").is_none(),
        },
        name: "dmore-test".into(),
        control: s("control").map(PathBuf::from),
        restore_from: s("restore_from").map(PathBuf::from),
        migration: None,
        qemu_wait: v
            .get("qemu_wait_ms")
            .and_then(serde_json::Value::as_u64)
            .map_or(console::front::DEFAULT_QEMU_WAIT, Duration::from_millis),
        lossy: false,
        serial: None,
        gateway: None,
    };
    tracing_subscriber_init();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    match rt.block_on(console::front::run(config)) {
        Ok(exit) => {
            eprintln!("console child: {exit:?}");
            std::process::exit(0)
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("console child failed: {msg}");
            std::process::exit(3)
        }
    }
}

fn tracing_subscriber_init() {}

/// A console process; killed and reaped on drop.
pub struct ConsoleProc {
    child: Child,
    /// Where viewers connect.
    pub addr: SocketAddr,
    /// Its control socket.
    pub control: PathBuf,
}

impl Drop for ConsoleProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ConsoleProc {
    /// Starts a console on `vm`'s VNC socket and second QMP monitor. `restore_from`: take
    /// over from that console's control socket.
    pub async fn spawn(
        vm: &Qemu,
        dir: &Path,
        name: &str,
        password: Option<&str>,
        restore_from: Option<&Path>,
    ) -> anyhow::Result<ConsoleProc> {
        Self::spawn_with(vm, dir, name, (password, None), restore_from).await
    }

    /// [`ConsoleProc::spawn`] with a (full, view-only) password pair.
    pub async fn spawn_with(
        vm: &Qemu,
        dir: &Path,
        name: &str,
        (password, view_only): (Option<&str>, Option<&str>),
        restore_from: Option<&Path>,
    ) -> anyhow::Result<ConsoleProc> {
        Self::spawn_spec(vm, dir, name, |spec| {
            spec["password"] = password.into();
            spec["view_only_password"] = view_only.into();
            spec["restore_from"] = restore_from
                .map(|p| p.to_string_lossy().into_owned())
                .into();
        })
        .await
    }

    /// A console without passwords that outlives its QEMU for `wait` (`qemu_wait`).
    pub async fn spawn_qemu_wait(
        vm: &Qemu,
        dir: &Path,
        name: &str,
        wait: Duration,
    ) -> anyhow::Result<ConsoleProc> {
        Self::spawn_spec(vm, dir, name, |spec| {
            spec["qemu_wait_ms"] = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).into();
        })
        .await
    }

    async fn spawn_spec(
        vm: &Qemu,
        dir: &Path,
        name: &str,
        fill: impl FnOnce(&mut serde_json::Value),
    ) -> anyhow::Result<ConsoleProc> {
        let control = dir.join(format!("{name}.ctl"));
        let mut spec = serde_json::json!({
            "vnc": vm.vnc_path(),
            "qmp": vm.qmp2_path().context("no second QMP monitor")?,
            "control": control,
        });
        fill(&mut spec);
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--exact",
                "console_support::console_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, spec.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                const MARK: &str = "dmore console: listening on ";
                if let Some(at) = line.find(MARK) {
                    let _ = tx.send(line.get(at + MARK.len()..).unwrap_or_default().to_owned());
                }
            }
        });
        let mut proc = ConsoleProc {
            child,
            addr: "0.0.0.0:0".parse()?,
            control,
        };
        let deadline = Instant::now() + DEADLINE;
        let addr = loop {
            if let Ok(a) = rx.try_recv() {
                break a;
            }
            if let Some(status) = proc.child.try_wait()? {
                bail!("console exited before listening: {status}");
            }
            anyhow::ensure!(Instant::now() < deadline, "console never listened");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        proc.addr = addr.parse()?;
        Ok(proc)
    }

    /// The process id (for /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, KiB (`VmRSS`).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse()?)
    }

    /// The console's `status` as JSON.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        let mut s = UnixStream::connect(&self.control).await?;
        s.write_all(b"status\n").await?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Polls `status` until `pred` holds.
    pub async fn wait_status(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let s = self.status().await?;
            if pred(&s) {
                return Ok(s);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "console never reached {what}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for the process to exit; its status.
    pub async fn wait_exit(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            anyhow::ensure!(Instant::now() < deadline, "console never exited");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The test guest on real QEMU (KVM+qboot where it works, else TCG) with a second QMP
/// monitor for the console, tracing its PS/2 queue into [`ps2_log`]`(dir)`.
pub async fn launch_vm(dir: &Path, animate: bool) -> anyhow::Result<Qemu> {
    let guest = guest::GuestOptions {
        animate,
        ..guest::GuestOptions::default()
    };
    launch_vm_with(dir, guest, Vec::new()).await
}

/// [`launch_vm`] with the guest's options and more QEMU arguments (e.g. trace events).
pub async fn launch_vm_with(
    dir: &Path,
    guest: guest::GuestOptions,
    extra_args: Vec<std::ffi::OsString>,
) -> anyhow::Result<Qemu> {
    let mut cfg = QemuConfig::new(dir.join("vm"));
    cfg.key_delay_ms = Some(0);
    cfg.extra_qmp = true;
    cfg.guest = guest;
    cfg.extra_args.extend(ps2::qemu_args(&ps2_log(dir)));
    cfg.extra_args.extend(extra_args);
    let mut vm = Qemu::launch(cfg).await?;
    vm.wait_ready(DEADLINE).await?;
    Ok(vm)
}

/// Commands to a viewer task.
enum Cmd {
    Send(Vec<ClientMessage>),
}

/// A scripted viewer on the RFB crate: a task reads every update (asking for the next one
/// each time) and publishes the framebuffer; the test sends input through it.
pub struct Viewer {
    cmd: mpsc::Sender<Cmd>,
    fb: watch::Receiver<Option<Framebuffer>>,
    /// The desktop name: ServerInit's, then each DesktopName the server sent.
    name: watch::Receiver<String>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects an RFB-crate client over any stream (TCP to a console, unix to QEMU).
pub async fn connect_viewer<S>(stream: S, password: Option<&str>) -> anyhow::Result<Viewer>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    connect_viewer_shared(stream, password, true).await
}

/// [`connect_viewer`] with ClientInit's shared flag.
pub async fn connect_viewer_shared<S>(
    stream: S,
    password: Option<&str>,
    shared: bool,
) -> anyhow::Result<Viewer>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    connect_viewer_with(stream, password, shared, &vnc::client::Setup::default()).await
}

/// [`connect_viewer_shared`] announcing `setup`'s encodings.
pub async fn connect_viewer_with<S>(
    stream: S,
    password: Option<&str>,
    shared: bool,
    setup: &vnc::client::Setup,
) -> anyhow::Result<Viewer>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = ClientConfig {
        version: Version::V3_8,
        security: vec![SecurityType::None, SecurityType::VncAuth],
        password: password.map(|p| rfb::Password(p.as_bytes().to_vec())),
        shared,
        limits: Limits::default(),
    };
    let (done, mut reader, mut writer) = vnc::client::connect(stream, config, setup).await?;
    let (w, h) = (done.server_init.width, done.server_init.height);
    writer.request_update(false, w, h).await?;
    let (cmd, mut cmd_rx) = mpsc::channel(64);
    let (fb_tx, fb) = watch::channel(None);
    let (name_tx, name) = watch::channel(done.server_init.name.clone());
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                m = reader.read_message() => {
                    if let rfb::ServerMessage::FramebufferUpdate(rects) = m? {
                        for r in &rects {
                            if let rfb::RectPayload::DesktopName(n) = &r.payload {
                                let _ = name_tx.send(String::from_utf8_lossy(n).into_owned());
                            }
                        }
                        let f = reader.framebuffer();
                        let _ = fb_tx.send(Some(f.clone()));
                        writer.request_update(true, f.width(), f.height()).await?;
                    }
                }
                c = cmd_rx.recv() => match c {
                    Some(Cmd::Send(msgs)) => writer.send_all(&msgs).await?,
                    None => return Ok(()),
                },
            }
        }
    });
    Ok(Viewer {
        cmd,
        fb,
        name,
        task,
    })
}

impl Viewer {
    /// Connects to a console over TCP.
    pub async fn tcp(addr: SocketAddr, password: Option<&str>) -> anyhow::Result<Viewer> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        connect_viewer(s, password).await
    }

    /// Connects straight to QEMU's VNC socket (the reference screen).
    pub async fn direct(vm: &Qemu) -> anyhow::Result<Viewer> {
        connect_viewer(UnixStream::connect(vm.vnc_path()).await?, None).await
    }

    /// Sends messages in one write.
    pub async fn send(&self, msgs: Vec<ClientMessage>) -> anyhow::Result<()> {
        self.cmd
            .send(Cmd::Send(msgs))
            .await
            .map_err(|_| anyhow::anyhow!("viewer task ended: {:?}", self.task.is_finished()))
    }

    /// Types `text` as KeyEvents (press and release per character).
    pub async fn type_text(&self, text: &str) -> anyhow::Result<()> {
        let mut msgs = Vec::new();
        for c in text.chars() {
            let keysym = guest::keymap::keysym(c).context("no keysym")?;
            msgs.push(ClientMessage::KeyEvent { down: true, keysym });
            msgs.push(ClientMessage::KeyEvent {
                down: false,
                keysym,
            });
        }
        self.send(msgs).await
    }

    /// Waits until the server has handled everything sent before: re-announces the default
    /// encodings and waits for the next update, which QEMU sends at once (the extended key
    /// event ack) even with the VM paused. Meant for a viewer straight on QEMU's VNC.
    pub async fn fence(&mut self) -> anyhow::Result<()> {
        self.fb.borrow_and_update();
        let encodings = vnc::client::Setup::default().encodings;
        self.send(vec![ClientMessage::SetEncodings(encodings)])
            .await?;
        tokio::time::timeout(DEADLINE, self.fb.changed())
            .await
            .context("no update after SetEncodings")??;
        Ok(())
    }

    /// Connects to a console over TCP announcing DesktopName (-307) too.
    pub async fn tcp_named(addr: SocketAddr) -> anyhow::Result<Viewer> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut setup = vnc::client::Setup::default();
        setup.encodings.push(Encoding::DesktopName);
        connect_viewer_with(s, None, true, &setup).await
    }

    /// Waits until the desktop name satisfies `pred`; the name.
    pub async fn wait_name(&mut self, pred: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let name = tokio::time::timeout(DEADLINE, self.name.wait_for(|n| pred(n)))
            .await
            .context("the desktop name never matched")?
            .context("viewer task ended")?;
        Ok(name.clone())
    }

    /// The latest framebuffer.
    pub fn framebuffer(&self) -> Option<Framebuffer> {
        self.fb.borrow().clone()
    }

    /// Whether the viewer's task is still running (no decode error, connection up).
    pub fn alive(&self) -> bool {
        !self.task.is_finished()
    }

    /// How the task ended, once it has (`None` while it runs).
    pub async fn ended(&mut self) -> Option<anyhow::Result<()>> {
        if !self.task.is_finished() {
            return None;
        }
        Some(
            (&mut self.task)
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r),
        )
    }
}

/// The make codes (set 1) the guest reports for typing `text`: press and release each.
pub fn expected_keys(text: &str) -> Vec<(bool, u16)> {
    text.chars()
        .flat_map(|c| {
            let code = u16::from(guest::keymap::scancode(c).unwrap_or(0));
            [(true, code), (false, code)]
        })
        .collect()
}

/// Reads `n` key reports from the guest; fails on anything else than keys.
pub async fn read_keys(vm: &mut Qemu, n: usize) -> anyhow::Result<Vec<(bool, u16)>> {
    let mut out = Vec::new();
    while out.len() < n {
        match vm.serial().next(DEADLINE, "key reports").await? {
            Report::Key { down, code, .. } => out.push((down, code)),
            Report::Leds(_) | Report::Options { .. } | Report::Ready => {}
            other => bail!("unexpected report {other:?}"),
        }
    }
    Ok(out)
}

/// Where [`launch_vm`]`(dir)`'s QEMU traces its PS/2 keyboard queue.
pub fn ps2_log(dir: &Path) -> PathBuf {
    dir.join("ps2-trace.log")
}

/// QEMU's key events so far ([`launch_vm`]`(dir)`'s trace): where the keys typed next start,
/// for [`check_keys`].
pub fn ps2_mark(dir: &Path) -> anyhow::Result<usize> {
    ps2::mark(&ps2_log(dir))
}

/// [`ps2::check_keys`] on [`launch_vm`]`(dir)`'s trace: the guest reported every key `typed`
/// since `mark`, or the trace forgives what is missing.
pub fn check_keys(
    dir: &Path,
    what: &str,
    mark: usize,
    typed: &[(bool, u16)],
    reported: &[(bool, u16)],
) -> anyhow::Result<()> {
    ps2::check_keys(&ps2_log(dir), what, mark, typed, reported)
}

/// Types `marker` through `viewer` and reads key reports until they end with its keys: every
/// report since the last one read, the marker's included (keys may be missing: see
/// [`check_keys`]). `marker` must not occur in what came before.
pub async fn read_keys_through(
    vm: &mut Qemu,
    viewer: &Viewer,
    marker: &str,
) -> anyhow::Result<Vec<(bool, u16)>> {
    viewer.type_text(marker).await?;
    let end = expected_keys(marker);
    let mut got = Vec::new();
    while !got.ends_with(&end) {
        got.extend(read_keys(vm, 1).await?);
    }
    Ok(got)
}

/// No further key report arrives while the guest handles a marker key: types `marker` through
/// `viewer` and checks the next reports are exactly its press and release.
pub async fn assert_no_more_keys(
    vm: &mut Qemu,
    viewer: &Viewer,
    marker: &str,
) -> anyhow::Result<()> {
    viewer.type_text(marker).await?;
    let got = read_keys(vm, 2 * marker.len()).await?;
    anyhow::ensure!(
        got == expected_keys(marker),
        "extra keys before the marker: {got:?}"
    );
    Ok(())
}

/// The guest's animated region (top right 8 text cells of 720x400): x >= 648, y < 16.
pub const ANIMATION: (u16, u16) = (648, 16);

/// Waits until every viewer's framebuffer equals the direct one's (pixel-exact).
pub async fn screens_match(direct: &Viewer, viewers: &[&Viewer]) -> anyhow::Result<()> {
    screens_match_except(direct, viewers, None).await
}

fn same(f: &Framebuffer, w: &Framebuffer, except: Option<(u16, u16)>) -> bool {
    if (f.width(), f.height()) != (w.width(), w.height()) {
        return false;
    }
    let Some((x0, y1)) = except else {
        return f.pixels() == w.pixels();
    };
    let width = usize::from(w.width()).max(1);
    f.pixels()
        .iter()
        .zip(w.pixels())
        .enumerate()
        .all(|(i, (a, b))| a == b || (i % width >= usize::from(x0) && i / width < usize::from(y1)))
}

/// [`screens_match`] ignoring the region right of x and above y given by `except`.
pub async fn screens_match_except(
    direct: &Viewer,
    viewers: &[&Viewer],
    except: Option<(u16, u16)>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(want) = direct.framebuffer() {
            let all = viewers
                .iter()
                .all(|v| v.framebuffer().is_some_and(|f| same(&f, &want, except)));
            if all {
                return Ok(());
            }
        }
        for v in viewers {
            anyhow::ensure!(v.alive(), "a viewer's connection ended");
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "viewers' screens never matched QEMU's: {:?}",
                viewers
                    .iter()
                    .map(|v| describe_diff(v.framebuffer().as_ref(), direct.framebuffer().as_ref()))
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Unused import guard for encodings in tests.
pub const ZRLE: Encoding = Encoding::Zrle;

/// Where two framebuffers differ, for failure messages.
pub fn describe_diff(got: Option<&Framebuffer>, want: Option<&Framebuffer>) -> String {
    let (Some(f), Some(w)) = (got, want) else {
        return "no framebuffer yet".into();
    };
    if (f.width(), f.height()) != (w.width(), w.height()) {
        return format!(
            "size {}x{} vs {}x{}",
            f.width(),
            f.height(),
            w.width(),
            w.height()
        );
    }
    let width = usize::from(w.width()).max(1);
    let bad: Vec<usize> = f
        .pixels()
        .iter()
        .zip(w.pixels())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect();
    let x = (
        bad.iter().map(|i| i % width).min(),
        bad.iter().map(|i| i % width).max(),
    );
    let y = (
        bad.iter().map(|i| i / width).min(),
        bad.iter().map(|i| i / width).max(),
    );
    format!("{} pixels differ, x {x:?}, y {y:?}", bad.len())
}
