//! The QEMU an input guest runs in, as the bench needs it: its own VNC server on TCP with
//! `key-delay-ms=0`, a second QMP monitor for the console, and a trace of the PS/2 keyboard
//! queue ([`ps2trace`]). Shared by every [`InputGuest`](super::InputGuest).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use testbed::qemu::{Qemu, QemuConfig};

use super::ps2trace::{self, Ps2Trace};
use crate::bench::{free_vnc_port, BenchError, ConsoleSockets};

/// A QEMU with the bench's VNC display, monitor and PS/2 trace.
#[derive(Debug)]
pub(super) struct TracedQemu {
    /// The QEMU.
    pub(super) vm: Qemu,
    direct: SocketAddr,
    trace: PathBuf,
    qmp2: PathBuf,
}

impl TracedQemu {
    /// Starts QEMU as `cfg` says plus the bench's VNC display, monitor and trace (the trace
    /// in its runtime directory); does not wait for the guest.
    pub(super) async fn launch(mut cfg: QemuConfig) -> Result<TracedQemu, BenchError> {
        let direct = SocketAddr::from(([127, 0, 0, 1], free_vnc_port()?));
        let trace = cfg.runtime_dir.join("ps2-trace.log");
        cfg.key_delay_ms = Some(0);
        cfg.extra_qmp = true;
        cfg.vnc_tcp = Some(direct);
        cfg.extra_args.extend(ps2trace::qemu_args(&trace));
        let vm = Qemu::launch(cfg).await?;
        let qmp2 = vm
            .qmp2_path()
            .ok_or(BenchError::Timeout("QEMU's second QMP monitor"))?
            .to_path_buf();
        Ok(TracedQemu {
            vm,
            direct,
            trace,
            qmp2,
        })
    }

    /// QEMU's own VNC server (TCP).
    pub(super) fn direct(&self) -> SocketAddr {
        self.direct
    }

    /// The VNC and QMP sockets for the console.
    pub(super) fn console_sockets(&self) -> ConsoleSockets<'_> {
        ConsoleSockets {
            vnc: self.vm.vnc_path(),
            qmp: &self.qmp2,
        }
    }

    /// Stops QEMU (which flushes its trace) and replays the PS/2 keyboard queue from it.
    pub(super) async fn finish(self) -> Result<Ps2Trace, BenchError> {
        let _ = self.vm.shutdown(Duration::from_secs(5)).await;
        let log = std::fs::read_to_string(&self.trace)
            .map_err(|e| BenchError::Scratch(self.trace.clone(), e))?;
        Ok(ps2trace::tally(&log))
    }
}
