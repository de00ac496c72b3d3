//! Where a backend's VRAM reading comes from: NVML on this host (live, per call), else the
//! backend's own `/sdapi/v1/memory`. This module gathers the reading; `policy` decides.

use serde::Serialize;

use crate::backend::forge::Forge;
use crate::backend::nvml::{GpuReading, GpuSelector, Nvml};
use crate::config::{BackendConfig, VramPreference};

/// Where a reading came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadingSource {
    /// NVML on this host.
    Nvml,
    /// The backend's `/sdapi/v1/memory`.
    Backend,
}

impl ReadingSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadingSource::Nvml => "nvml",
            ReadingSource::Backend => "backend",
        }
    }
}

/// A reading, whichever source gave it. Every figure is MiB.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VramReading {
    pub source: ReadingSource,
    pub total_mib: u64,
    pub used_mib: u64,
    pub free_mib: u64,
    /// Memory held by processes other than Forge (NVML only; 0 when unknown).
    pub other_processes_mib: u64,
    /// The GPU's name, when NVML gives it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_name: Option<String>,
}

/// How one backend's memory is read, chosen once at start-up.
#[derive(Clone)]
pub enum VramSource {
    Nvml {
        nvml: Nvml,
        gpu: GpuSelector,
    },
    /// The backend's `/sdapi/v1/memory`; `why` says why not NVML.
    Backend {
        why: String,
    },
}

impl VramSource {
    /// Picks NVML when it is loaded and sees the backend's GPU; says why not otherwise.
    pub fn choose(backend: &BackendConfig, nvml: &Result<Nvml, String>) -> Self {
        match (backend.vram, nvml) {
            (VramPreference::Backend, _) => Self::Backend {
                why: "configured: vram_source = \"backend\"".to_owned(),
            },
            (VramPreference::Auto, Err(e)) => Self::Backend {
                why: format!("NVML unavailable: {e}"),
            },
            (VramPreference::Auto, Ok(nvml)) => match nvml.read_blocking(&backend.gpu) {
                Ok(_) => Self::Nvml {
                    nvml: nvml.clone(),
                    gpu: backend.gpu.clone(),
                },
                Err(e) => Self::Backend {
                    why: format!("NVML cannot read GPU {}: {e}", backend.gpu),
                },
            },
        }
    }

    /// Where its readings come from.
    pub fn kind(&self) -> ReadingSource {
        match self {
            Self::Nvml { .. } => ReadingSource::Nvml,
            Self::Backend { .. } => ReadingSource::Backend,
        }
    }

    /// Reads now. NVML runs on the blocking pool; the backend is asked over HTTP.
    pub async fn read(&self, forge: &Forge<'_>) -> Result<VramReading, String> {
        match self {
            Self::Nvml { nvml, gpu } => nvml
                .read(gpu)
                .await
                .map(|reading| from_nvml(&reading))
                .map_err(|e| e.to_string()),
            Self::Backend { .. } => forge
                .memory()
                .await
                .map(|m| VramReading {
                    source: ReadingSource::Backend,
                    total_mib: m.total_mib,
                    used_mib: m.used_mib,
                    free_mib: m.free_mib,
                    other_processes_mib: 0,
                    gpu_name: None,
                })
                .map_err(|e| e.to_string()),
        }
    }
}

/// Other processes: every process on the card except Forge, taken to be the one holding
/// the most memory (the proxy does not know Forge's process id, which may live in another
/// container).
fn from_nvml(reading: &GpuReading) -> VramReading {
    let mut used: Vec<u64> = reading
        .processes
        .iter()
        .filter_map(|p| p.used_mib)
        .collect();
    used.sort_unstable();
    used.pop();
    VramReading {
        source: ReadingSource::Nvml,
        total_mib: reading.total_mib,
        used_mib: reading.used_mib,
        free_mib: reading.free_mib,
        other_processes_mib: used.iter().sum(),
        gpu_name: Some(reading.name.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::nvml::GpuProcess;

    #[test]
    fn other_processes_leave_out_the_largest_which_is_forge() {
        let reading = GpuReading {
            index: 0,
            uuid: "GPU-1".into(),
            name: "Card".into(),
            total_mib: 12288,
            used_mib: 9000,
            free_mib: 3288,
            processes: vec![
                GpuProcess {
                    pid: 1,
                    used_mib: Some(300),
                },
                GpuProcess {
                    pid: 2,
                    used_mib: Some(7000),
                },
                GpuProcess {
                    pid: 3,
                    used_mib: None,
                },
                GpuProcess {
                    pid: 4,
                    used_mib: Some(500),
                },
            ],
        };
        let vram = from_nvml(&reading);
        assert_eq!(vram.other_processes_mib, 800);
        assert_eq!(
            (vram.total_mib, vram.free_mib, vram.source),
            (12288, 3288, ReadingSource::Nvml)
        );
    }
}
