//! `query-migrate`'s answer, read without trusting its shape.

use std::fmt;

use serde_json::Value;

/// A migration's status as QEMU names it (`MigrationStatus` in QEMU's schema); names this
/// code does not know are kept in [`MigrationStatus::Other`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MigrationStatus {
    /// No migration yet (`none`, or no `status` at all).
    #[default]
    None,
    /// `setup`
    Setup,
    /// `active`
    Active,
    /// `pre-switchover`: the source is paused, waiting for `migrate-continue`.
    PreSwitchover,
    /// `device`: device state is being sent (source paused).
    Device,
    /// `completed`
    Completed,
    /// `failed`
    Failed,
    /// `cancelling`
    Cancelling,
    /// `cancelled`
    Cancelled,
    /// Anything else (postcopy states, `colo`, `wait-unplug`, ...).
    Other(String),
}

impl MigrationStatus {
    /// Parses QEMU's name for a status.
    pub fn from_name(name: &str) -> Self {
        match name {
            "none" => Self::None,
            "setup" => Self::Setup,
            "active" => Self::Active,
            "pre-switchover" => Self::PreSwitchover,
            "device" => Self::Device,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelling" => Self::Cancelling,
            "cancelled" => Self::Cancelled,
            other => Self::Other(other.to_string()),
        }
    }

    /// QEMU's name for the status.
    pub fn name(&self) -> &str {
        match self {
            Self::None => "none",
            Self::Setup => "setup",
            Self::Active => "active",
            Self::PreSwitchover => "pre-switchover",
            Self::Device => "device",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::Other(s) => s,
        }
    }

    /// Whether the migration is over, one way or the other.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The parts of `query-migrate` the testbed reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateInfo {
    /// `status`
    pub status: MigrationStatus,
    /// `total-time` (ms)
    pub total_time_ms: Option<u64>,
    /// `downtime` (ms)
    pub downtime_ms: Option<u64>,
    /// `setup-time` (ms)
    pub setup_time_ms: Option<u64>,
    /// `ram.transferred` (bytes)
    pub ram_transferred: Option<u64>,
    /// `ram.remaining` (bytes)
    pub ram_remaining: Option<u64>,
    /// `error-desc`, when the migration failed
    pub error_desc: Option<String>,
}

/// Longest `error-desc` kept; QEMU's are one line.
const MAX_ERROR_DESC: usize = 4096;

impl MigrateInfo {
    /// Reads `query-migrate`'s return value. Missing fields stay `None`; a value that is not
    /// an object, or a field of the wrong type, is an error.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let obj = v
            .as_object()
            .ok_or_else(|| format!("not an object: {}", short(v)))?;
        let num = |o: &serde_json::Map<String, Value>, k: &str| -> Result<Option<u64>, String> {
            match o.get(k) {
                None => Ok(None),
                Some(x) => x
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| format!("`{k}` is not a count: {}", short(x))),
            }
        };
        let status = match obj.get("status") {
            None => MigrationStatus::None,
            Some(Value::String(s)) => MigrationStatus::from_name(s),
            Some(x) => return Err(format!("`status` is not a string: {}", short(x))),
        };
        let (ram_transferred, ram_remaining) = match obj.get("ram") {
            None => (None, None),
            Some(Value::Object(ram)) => (num(ram, "transferred")?, num(ram, "remaining")?),
            Some(x) => return Err(format!("`ram` is not an object: {}", short(x))),
        };
        let error_desc = obj.get("error-desc").and_then(Value::as_str).map(|s| {
            let mut end = s.len().min(MAX_ERROR_DESC);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_string()
        });
        Ok(MigrateInfo {
            status,
            total_time_ms: num(obj, "total-time")?,
            downtime_ms: num(obj, "downtime")?,
            setup_time_ms: num(obj, "setup-time")?,
            ram_transferred,
            ram_remaining,
            error_desc,
        })
    }
}

/// A value for an error message, cut short.
fn short(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn completed_migration_is_read_with_its_figures() {
        let v = json!({"status": "completed", "total-time": 240, "downtime": 12,
            "setup-time": 3, "ram": {"transferred": 1234, "remaining": 0, "total": 9}});
        let info = MigrateInfo::from_json(&v).unwrap();
        assert_eq!(info.status, MigrationStatus::Completed);
        assert_eq!(info.total_time_ms, Some(240));
        assert_eq!(info.downtime_ms, Some(12));
        assert_eq!(info.setup_time_ms, Some(3));
        assert_eq!(info.ram_transferred, Some(1234));
        assert!(info.status.is_final());
    }

    #[test]
    fn empty_answer_means_no_migration() {
        let info = MigrateInfo::from_json(&json!({})).unwrap();
        assert_eq!(info.status, MigrationStatus::None);
        assert!(!info.status.is_final());
    }

    #[test]
    fn unknown_status_is_kept() {
        let info = MigrateInfo::from_json(&json!({"status": "postcopy-active"})).unwrap();
        assert_eq!(
            info.status,
            MigrationStatus::Other("postcopy-active".into())
        );
        assert_eq!(info.status.to_string(), "postcopy-active");
    }

    #[test]
    fn wrong_shapes_are_errors_not_panics() {
        for v in [
            json!([]),
            json!({"status": 3}),
            json!({"status": "active", "total-time": -1}),
            json!({"status": "active", "ram": "lots"}),
            json!({"status": "active", "ram": {"transferred": "x"}}),
        ] {
            assert!(MigrateInfo::from_json(&v).is_err(), "{v}");
        }
    }

    #[test]
    fn failure_reason_is_kept_and_bounded() {
        let long = "é".repeat(5000);
        let v = json!({"status": "failed", "error-desc": long});
        let info = MigrateInfo::from_json(&v).unwrap();
        assert_eq!(info.status, MigrationStatus::Failed);
        assert!(info.error_desc.unwrap().len() <= MAX_ERROR_DESC);
    }

    #[test]
    fn names_round_trip() {
        for n in [
            "none",
            "setup",
            "active",
            "pre-switchover",
            "device",
            "completed",
            "failed",
            "cancelling",
            "cancelled",
            "colo",
        ] {
            assert_eq!(MigrationStatus::from_name(n).name(), n);
        }
    }
}
