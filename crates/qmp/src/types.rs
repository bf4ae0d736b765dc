//! Typed replies of the commands dmore uses. Unknown members are ignored, so newer QEMUs
//! that add members still decode.

use serde::Deserialize;

/// `query-status`'s reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// True while the guest CPUs run (`running`, `suspended` is false here).
    pub running: bool,
    /// QEMU's `RunState`: `running`, `paused`, `prelaunch`, `inmigrate`, `finish-migrate`,
    /// `postmigrate`, `shutdown`, ...
    pub status: String,
}

/// One entry of `query-mice`'s reply: a pointer device QEMU routes motion to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MouseInfo {
    /// The device's name (`QEMU PS/2 Mouse`, `QEMU HID Tablet`, ...).
    pub name: String,
    /// QEMU's handle for the device.
    pub index: i64,
    /// It gets motion now: the most recently activated device (QEMU's VNC server picks
    /// absolute or relative motion by this one).
    pub current: bool,
    /// It takes absolute positions (`abs`); otherwise relative motion (`rel`).
    pub absolute: bool,
}

/// `query-migrate`'s reply (`{}` before any migration: every member is optional).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// `setup`, `active`, `pre-switchover`, `device`, `completed`, `failed`, `cancelled`, ...
    pub status: Option<String>,
    /// Milliseconds since the migration started (total when completed).
    pub total_time: Option<u64>,
    /// Milliseconds the VM was stopped (when completed).
    pub downtime: Option<u64>,
    /// Estimated downtime in milliseconds (while active).
    pub expected_downtime: Option<u64>,
    /// Milliseconds spent in setup.
    pub setup_time: Option<u64>,
    /// RAM transfer statistics.
    pub ram: Option<RamStats>,
    /// Why the migration failed, if it did.
    pub error_desc: Option<String>,
}

/// RAM statistics of `query-migrate`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RamStats {
    /// Bytes transferred.
    pub transferred: Option<u64>,
    /// Bytes remaining.
    pub remaining: Option<u64>,
    /// Guest RAM size in bytes.
    pub total: Option<u64>,
    /// Zero pages sent as such.
    pub duplicate: Option<u64>,
    /// Pages sent in full.
    pub normal: Option<u64>,
    /// Bytes of pages sent in full.
    pub normal_bytes: Option<u64>,
    /// Dirty pages per second.
    pub dirty_pages_rate: Option<u64>,
    /// Throughput in Mbit/s.
    pub mbps: Option<f64>,
    /// Times the dirty bitmap was synchronised.
    pub dirty_sync_count: Option<u64>,
    /// Page size in bytes.
    pub page_size: Option<u64>,
    /// Pages sent per second.
    pub pages_per_second: Option<u64>,
    /// Bytes sent while the VM ran.
    pub precopy_bytes: Option<u64>,
    /// Bytes sent while the VM was stopped.
    pub downtime_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_completed_migration() {
        let v = serde_json::json!({
            "status": "completed", "total-time": 240, "downtime": 12, "setup-time": 1,
            "ram": {"transferred": 1000, "remaining": 0, "total": 134217728, "mbps": 4.5,
                    "page-size": 4096, "new-member": true},
        });
        let info: MigrationInfo = serde_json::from_value(v).unwrap();
        assert_eq!(info.status.as_deref(), Some("completed"));
        assert_eq!((info.total_time, info.downtime), (Some(240), Some(12)));
        let ram = info.ram.unwrap();
        assert_eq!(
            (ram.total, ram.mbps, ram.page_size),
            (Some(134217728), Some(4.5), Some(4096))
        );
        assert_eq!(
            serde_json::from_value::<MigrationInfo>(serde_json::json!({})).unwrap(),
            MigrationInfo::default()
        );
    }

    #[test]
    fn decodes_query_mice() {
        let v = serde_json::json!([
            {"name": "QEMU HID Tablet", "index": 1, "current": true, "absolute": true},
            {"name": "QEMU PS/2 Mouse", "index": 0, "current": false, "absolute": false,
             "new-member": 1},
        ]);
        let mice: Vec<MouseInfo> = serde_json::from_value(v).unwrap();
        assert_eq!(mice.len(), 2);
        assert!(mice[0].current && mice[0].absolute);
        assert_eq!(mice[1].name, "QEMU PS/2 Mouse");
        assert!(serde_json::from_value::<Vec<MouseInfo>>(serde_json::json!({})).is_err());
    }

    #[test]
    fn wrong_types_are_errors_not_panics() {
        assert!(serde_json::from_value::<StatusInfo>(serde_json::json!({"running": 1})).is_err());
        assert!(
            serde_json::from_value::<MigrationInfo>(serde_json::json!({"downtime": -1})).is_err()
        );
    }
}
