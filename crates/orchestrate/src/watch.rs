//! Progress from the migration driver's own polls: a [`Monitor`] that passes every command
//! through and reads each `query-migrate` answer on the way back, so the progress costs no
//! extra QMP round trip and needs no hook in [`migrate::vm::Migration`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use migrate::vm::{Monitor, MonitorError};
use serde_json::Value;

use crate::Progress;

/// Wraps the source QEMU's monitor and reports [`Progress`] from its `query-migrate` answers
/// ([`Progress::Switchover`] once, however many paused statuses the polls see).
pub(crate) struct Watch<'a, M, P> {
    inner: &'a M,
    progress: &'a Mutex<P>,
    switchover: AtomicBool,
}

impl<'a, M: Monitor, P: FnMut(&Progress)> Watch<'a, M, P> {
    /// Watches `inner`, reporting to `progress`.
    pub(crate) fn new(inner: &'a M, progress: &'a Mutex<P>) -> Self {
        Watch {
            inner,
            progress,
            switchover: AtomicBool::new(false),
        }
    }

    /// Reports [`Progress::Switchover`] unless it was already: a migration can complete
    /// between two polls without any poll seeing it paused.
    pub(crate) fn switchover(&self) {
        if !self.switchover.swap(true, Ordering::Relaxed) {
            emit(self.progress, &Progress::Switchover);
        }
    }
}

impl<M: Monitor, P: FnMut(&Progress)> Monitor for Watch<'_, M, P> {
    async fn execute(&self, command: &str, args: Value) -> Result<Value, MonitorError> {
        let reply = self.inner.execute(command, args).await?;
        if command == "query-migrate" {
            match progress_of(&reply) {
                Some(Progress::Switchover) => self.switchover(),
                Some(p) => emit(self.progress, &p),
                None => {}
            }
        }
        Ok(reply)
    }
}

/// Calls the progress callback (a poisoned lock only means an earlier callback panicked;
/// the callback itself is still usable).
pub(crate) fn emit<P: FnMut(&Progress)>(progress: &Mutex<P>, p: &Progress) {
    let mut f = progress.lock().unwrap_or_else(|e| e.into_inner());
    f(p);
}

/// The progress a `query-migrate` answer shows: RAM figures while pre-copying, the
/// switchover once the source is paused for it; `None` for every other status.
pub(crate) fn progress_of(reply: &Value) -> Option<Progress> {
    let ram = |key: &str| {
        reply
            .get("ram")
            .and_then(|r| r.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    match reply.get("status").and_then(Value::as_str)? {
        "setup" | "active" => Some(Progress::Precopy {
            transferred: ram("transferred"),
            total: ram("total"),
            remaining: ram("remaining"),
        }),
        "pre-switchover" | "device" => Some(Progress::Switchover),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn precopy_reads_the_ram_figures() {
        let v = json!({"status": "active",
            "ram": {"transferred": 1000, "total": 134_217_728u64, "remaining": 500}});
        assert_eq!(
            progress_of(&v),
            Some(Progress::Precopy {
                transferred: 1000,
                total: 134_217_728,
                remaining: 500
            })
        );
        // QEMU sends no `ram` during setup.
        assert_eq!(
            progress_of(&json!({"status": "setup"})),
            Some(Progress::Precopy {
                transferred: 0,
                total: 0,
                remaining: 0
            })
        );
    }

    #[test]
    fn paused_statuses_are_the_switchover_and_the_rest_say_nothing() {
        assert_eq!(
            progress_of(&json!({"status": "pre-switchover"})),
            Some(Progress::Switchover)
        );
        assert_eq!(
            progress_of(&json!({"status": "device"})),
            Some(Progress::Switchover)
        );
        for v in [
            json!({"status": "completed", "ram": {"transferred": 5}}),
            json!({"status": "failed"}),
            json!({"status": 7}),
            json!([]),
            json!({}),
        ] {
            assert_eq!(progress_of(&v), None, "{v}");
        }
    }

    #[test]
    fn wrong_ram_shapes_read_as_zero() {
        let v = json!({"status": "active", "ram": {"transferred": -4, "total": "big"}});
        assert_eq!(
            progress_of(&v),
            Some(Progress::Precopy {
                transferred: 0,
                total: 0,
                remaining: 0
            })
        );
    }
}
