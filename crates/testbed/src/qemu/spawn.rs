//! Starting QEMU so that it dies with the test process.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
//! Async runtimes fork from whatever worker or blocking-pool thread runs the task, and those
//! threads come and go. So every QEMU is forked from one long-lived spawner thread that lives
//! as long as the process: QEMU gets SIGKILL exactly when the test process dies (even by
//! SIGKILL), and not before.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use tokio::sync::oneshot;

type Request = (Command, oneshot::Sender<io::Result<Child>>);

static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();

fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        let spawned = std::thread::Builder::new()
            .name("testbed-qemu-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_here(&mut cmd));
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the QEMU spawner thread: {e}");
        }
        Mutex::new(tx)
    })
}

/// Forks `cmd` on this (the spawner) thread with the parent-death signal set.
fn spawn_here(cmd: &mut Command) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody would send the signal.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::other("the test process died during the spawn"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Spawns `cmd` from the long-lived spawner thread.
pub(crate) async fn spawn(cmd: Command) -> io::Result<Child> {
    let (tx, rx) = oneshot::channel();
    let sent = match spawner().lock() {
        Ok(sender) => sender.send((cmd, tx)).is_ok(),
        Err(_) => false,
    };
    if !sent {
        return Err(io::Error::other("the QEMU spawner thread is gone"));
    }
    rx.await
        .unwrap_or_else(|_| Err(io::Error::other("the QEMU spawner thread is gone")))
}
