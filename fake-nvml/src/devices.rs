//! The fake GPUs: a JSON file named by `FAKE_NVML_DEVICES`, read again on every call.
//!
//! Reading the file each time (rather than once at `nvmlInit`) is the point of the fake: a
//! test rewrites the file while the process under test runs, and the next NVML call sees the
//! new "live" memory reading, as it would on a real card.

use std::path::PathBuf;

use serde::Deserialize;

/// The environment variable that names the JSON file describing the fake GPUs.
pub const DEVICES_ENV: &str = "FAKE_NVML_DEVICES";

/// Bytes in a MiB: NVML reports bytes, the file speaks MiB.
pub const MIB: u64 = 1 << 20;

/// One fake GPU, as written in the JSON file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeDevice {
    /// NVML's UUID, e.g. `GPU-8f6a…`; `nvmlDeviceGetHandleByUUID` matches it exactly.
    pub uuid: String,
    pub name: String,
    pub total_mib: u64,
    pub used_mib: u64,
    /// Processes holding memory on this GPU; none when absent.
    #[serde(default)]
    pub processes: Vec<FakeProcess>,
    /// `false` makes both process-list calls answer `NVML_ERROR_NOT_SUPPORTED`, as some
    /// GeForce cards and drivers do, so callers can test that a reading survives it.
    #[serde(default = "supported_by_default")]
    pub processes_supported: bool,
}

fn supported_by_default() -> bool {
    true
}

/// One process on a fake GPU.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeProcess {
    pub pid: u32,
    /// `null` or absent: NVML's "not available" (`NVML_VALUE_NOT_AVAILABLE`), which real
    /// drivers report under Windows WDDM and in some containers.
    #[serde(default)]
    pub used_mib: Option<u64>,
    /// Which of NVML's two lists the process appears in.
    #[serde(default)]
    pub kind: ProcessKind,
}

/// NVML lists compute (CUDA) and graphics (OpenGL, Vulkan) contexts separately; a process
/// with both appears in both lists, which is why callers must merge them by pid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessKind {
    #[default]
    Compute,
    Graphics,
    Both,
}

impl ProcessKind {
    pub fn in_compute_list(self) -> bool {
        matches!(self, Self::Compute | Self::Both)
    }

    pub fn in_graphics_list(self) -> bool {
        matches!(self, Self::Graphics | Self::Both)
    }
}

/// Why the fake has no devices to show. The text reaches users through `nvmlErrorString`
/// and standard error, so it names the variable, the file and the fault.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("fake-nvml: {DEVICES_ENV} is not set (it must name a JSON file of fake GPUs)")]
    EnvUnset,

    #[error("fake-nvml: cannot read {DEVICES_ENV} file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("fake-nvml: {DEVICES_ENV} file {} is not a valid device list: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },

    #[error("fake-nvml: {DEVICES_ENV} file {}: GPU {index}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        index: usize,
        reason: String,
    },
}

/// Reads and checks the device file named by [`DEVICES_ENV`], now.
pub fn load_devices() -> Result<Vec<FakeDevice>, FakeError> {
    let path = PathBuf::from(std::env::var_os(DEVICES_ENV).ok_or(FakeError::EnvUnset)?);
    let text = std::fs::read_to_string(&path).map_err(|source| FakeError::Read {
        path: path.clone(),
        source,
    })?;
    let devices: Vec<FakeDevice> =
        serde_json::from_str(&text).map_err(|source| FakeError::Parse {
            path: path.clone(),
            source,
        })?;
    for (index, device) in devices.iter().enumerate() {
        if let Err(reason) = check(device) {
            return Err(FakeError::Invalid {
                path,
                index,
                reason,
            });
        }
    }
    Ok(devices)
}

/// Rejects what real NVML could never report, so a typo in a test fixture fails loudly
/// instead of producing a reading the proxy would never see.
fn check(device: &FakeDevice) -> Result<(), String> {
    if device.uuid.contains('\0') || device.name.contains('\0') {
        return Err("uuid and name must not contain NUL characters".into());
    }
    if device.used_mib > device.total_mib {
        return Err(format!(
            "used_mib {} exceeds total_mib {}",
            device.used_mib, device.total_mib
        ));
    }
    if device.total_mib.checked_mul(MIB).is_none() {
        return Err(format!("total_mib {} is too large", device.total_mib));
    }
    for process in &device.processes {
        if process
            .used_mib
            .is_some_and(|mib| mib.checked_mul(MIB).is_none())
        {
            return Err(format!("process {}: used_mib is too large", process.pid));
        }
    }
    Ok(())
}

impl FakeDevice {
    pub fn total_bytes(&self) -> u64 {
        self.total_mib * MIB
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_mib * MIB
    }

    pub fn free_bytes(&self) -> u64 {
        (self.total_mib - self.used_mib) * MIB
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_default_to_an_empty_supported_compute_list() {
        let devices: Vec<FakeDevice> = serde_json::from_str(
            r#"[{"uuid": "GPU-a", "name": "RTX", "total_mib": 12288, "used_mib": 900}]"#,
        )
        .expect("valid fixture");
        assert_eq!(devices[0].processes, vec![]);
        assert!(devices[0].processes_supported);
        assert_eq!(devices[0].free_bytes(), (12288 - 900) * MIB);
    }

    #[test]
    fn a_process_without_used_mib_is_not_available_and_compute_by_default() {
        let process: FakeProcess = serde_json::from_str(r#"{"pid": 7}"#).expect("valid fixture");
        assert_eq!(process.used_mib, None);
        assert_eq!(process.kind, ProcessKind::Compute);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let error = serde_json::from_str::<Vec<FakeDevice>>(
            r#"[{"uuid": "GPU-a", "name": "RTX", "total_mib": 1, "used_mib": 0, "totl": 2}]"#,
        )
        .expect_err("typo must fail");
        assert!(
            error.to_string().contains("unknown field `totl`"),
            "{error}"
        );
    }

    #[test]
    fn used_above_total_is_refused() {
        let device = FakeDevice {
            uuid: "GPU-a".into(),
            name: "RTX".into(),
            total_mib: 100,
            used_mib: 101,
            processes: vec![],
            processes_supported: true,
        };
        assert_eq!(
            check(&device),
            Err("used_mib 101 exceeds total_mib 100".to_string())
        );
    }
}
