//! Cleanup on SIGINT/SIGTERM: the handler only writes the signal number to a pipe (the one
//! async-signal-safe thing it needs); a thread reading that pipe removes every live testbed of
//! the process, restores the default action and re-raises the signal, so the process still
//! dies of it. Installed only where the signal has its default action (a program with its own
//! handler keeps it, and relies on `Drop` and the next run's sweep).

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, Once};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Live runs of this process: (run id, run directory).
static LIVE: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

/// Write end of the self-pipe, or -1 before installation.
static PIPE_WR: AtomicI32 = AtomicI32::new(-1);

static INSTALL: Once = Once::new();

const SIGNALS: [Signal; 2] = [Signal::SIGINT, Signal::SIGTERM];

/// Records a live run so that a signal cleans it.
pub(super) fn register(run_id: &str, dir: &Path) {
    if let Ok(mut live) = LIVE.lock() {
        live.push((run_id.to_string(), dir.to_path_buf()));
    }
}

/// Forgets a run that its `Drop` has removed.
pub(super) fn unregister(run_id: &str) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|(id, _)| id != run_id);
    }
}

/// Installs the handlers once per process (best effort: failures are logged).
pub(super) fn install_once() {
    INSTALL.call_once(|| {
        if let Err(e) = install() {
            tracing::warn!(error = %e, "no SIGINT/SIGTERM cleanup; the next run's sweep will do");
        }
    });
}

extern "C" fn on_signal(signo: libc::c_int) {
    let fd = PIPE_WR.load(Ordering::Relaxed);
    let byte = u8::try_from(signo).unwrap_or(0);
    // SAFETY: write(2) on a non-blocking pipe is async-signal-safe; a full pipe just drops it.
    unsafe {
        libc::write(fd, (&byte as *const u8).cast(), 1);
    }
}

fn install() -> nix::Result<()> {
    let (rd, wr): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    fcntl(wr.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    PIPE_WR.store(wr.into_raw_fd(), Ordering::Relaxed);
    std::thread::Builder::new()
        .name("testbed-signals".into())
        .spawn(move || wait_and_clean(rd))
        .map_err(|_| nix::Error::EAGAIN)?;
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in SIGNALS {
        // SAFETY: the handler is async-signal-safe (see `on_signal`).
        let old = unsafe { signal::sigaction(sig, &action)? };
        if old.handler() != SigHandler::SigDfl {
            // Someone else handles it: put theirs back.
            // SAFETY: restoring the action that was installed before.
            unsafe { signal::sigaction(sig, &old)? };
        }
    }
    Ok(())
}

fn wait_and_clean(rd: OwnedFd) {
    let mut buf = [0u8; 1];
    let signo = match nix::unistd::read(rd.as_raw_fd(), &mut buf) {
        Ok(1) => buf[0],
        _ => return,
    };
    let live = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
    for (id, dir) in &live {
        crate::sweep::remove_run(id, dir);
    }
    let Ok(sig) = Signal::try_from(i32::from(signo)) else {
        return;
    };
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: restoring the default action; then the signal ends the process as it would have.
    unsafe {
        let _ = signal::sigaction(sig, &dfl);
    }
    let _ = signal::raise(sig);
}
