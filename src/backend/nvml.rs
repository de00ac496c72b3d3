//! Reading a backend's GPU live through NVML (via the `nvml-wrapper` crate).
//!
//! This module only gathers readings; what memory to give Forge for a reading is decided
//! elsewhere, from plain data. NVML calls block (they talk to the driver), so async code
//! uses [`Nvml::read`], which runs them on tokio's blocking threads.
//!
//! Tests load `fake-nvml`, a stand-in `libnvidia-ml.so` from this workspace, through the
//! very same code: [`Nvml::load`] with its path.

use std::ffi::OsStr;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError as WrapperError;
use nvml_wrapper::Device;

/// The library loaded when none is configured. The versioned name, because the unversioned
/// `libnvidia-ml.so` comes only with development packages, and the NVIDIA container
/// runtime mounts only `libnvidia-ml.so.1`.
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

const MIB: u64 = 1 << 20;

/// Which GPU: by index or UUID (config `gpu = 0` / `gpu = "GPU-…"`).
///
/// A UUID survives reboots and `CUDA_VISIBLE_DEVICES` reordering; an index is what most
/// people know from `nvidia-smi`. NVML's index is its own (PCI bus order), which is not
/// always CUDA's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum GpuSelector {
    Index(u32),
    Uuid(String),
}

impl fmt::Display for GpuSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Index(index) => write!(f, "{index}"),
            Self::Uuid(uuid) => f.write_str(uuid),
        }
    }
}

/// From a flag or an environment variable, where everything is a string: digits are an
/// index, anything else a UUID.
impl FromStr for GpuSelector {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text.parse::<u32>() {
            Ok(index) => Self::Index(index),
            Err(_) => Self::Uuid(text.to_string()),
        })
    }
}

/// One GPU's memory as NVML reported it at one moment, in MiB (rounded down).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GpuReading {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub total_mib: u64,
    /// `total_mib - free_mib`: what is not available to a new allocation, the driver's
    /// reserved memory included (as `nvidia-smi` and NVML's v1 call count it), so that
    /// `used_mib + free_mib == total_mib` always holds.
    pub used_mib: u64,
    pub free_mib: u64,
    /// Other processes on the card (Forge among them). Empty when the driver will not say,
    /// as some consumer cards and containers do.
    pub processes: Vec<GpuProcess>,
}

/// A process holding memory on the GPU.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// `None` where NVML reports "not available" (Windows WDDM, some containers).
    pub used_mib: Option<u64>,
}

/// Why a GPU could not be read. The texts are written for the person running the proxy.
#[derive(Debug, thiserror::Error)]
pub enum NvmlError {
    #[error("cannot load the NVML library {library}: {reason}")]
    Load { library: String, reason: String },

    #[error("NVML has no GPU {index} (it sees {count})")]
    NoGpuAtIndex { index: u32, count: u32 },

    #[error("NVML has no GPU with UUID {uuid}")]
    NoGpuWithUuid { uuid: String },

    /// `error` is part of the message rather than a `#[source]`, so that reporters that
    /// print the chain do not print NVML's text twice.
    #[error("NVML call {call} failed: {error}")]
    Call {
        call: &'static str,
        error: WrapperError,
    },

    /// The blocking task that read the GPU panicked or was cancelled at shutdown.
    #[error("reading the GPU was interrupted: {0}")]
    Interrupted(String),
}

/// Tags a failed NVML call with the C function's name, which is what NVIDIA's docs and
/// forums use.
fn call(name: &'static str) -> impl FnOnce(WrapperError) -> NvmlError {
    move |error| NvmlError::Call { call: name, error }
}

/// A loaded and initialized NVML, shared by every reader.
///
/// Cheap to clone. NVML is shut down and the library closed when the last clone is dropped.
#[derive(Clone)]
pub struct Nvml {
    inner: Arc<nvml_wrapper::Nvml>,
    /// The path or name it was loaded from, for logs and the status page.
    library: Arc<str>,
}

impl fmt::Debug for Nvml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nvml")
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

impl Nvml {
    /// Loads NVML (blocking: call from spawn_blocking or before the runtime). `library`: a
    /// path, else the system's libnvidia-ml.so.1.
    pub fn load(library: Option<&Path>) -> Result<Self, NvmlError> {
        let path = library.map_or(OsStr::new(DEFAULT_LIBRARY), Path::as_os_str);
        let name = path.to_string_lossy();
        let inner = nvml_wrapper::Nvml::builder()
            .lib_path(path)
            .init()
            .map_err(|error| NvmlError::Load {
                reason: load_failure(&name, error),
                library: name.to_string(),
            })?;
        Ok(Self {
            inner: Arc::new(inner),
            library: Arc::from(name.as_ref()),
        })
    }

    /// Every GPU NVML sees (blocking).
    pub fn list(&self) -> Result<Vec<GpuReading>, NvmlError> {
        let count = self
            .inner
            .device_count()
            .map_err(call("nvmlDeviceGetCount_v2"))?;
        (0..count)
            .map(|index| {
                let device = self
                    .inner
                    .device_by_index(index)
                    .map_err(call("nvmlDeviceGetHandleByIndex_v2"))?;
                read_device(&device)
            })
            .collect()
    }

    /// One GPU's reading, blocking.
    pub fn read_blocking(&self, gpu: &GpuSelector) -> Result<GpuReading, NvmlError> {
        let device = match gpu {
            GpuSelector::Index(index) => match self.inner.device_by_index(*index) {
                Ok(device) => device,
                // Asked only on failure, to keep the common path to the calls it needs.
                Err(WrapperError::InvalidArg) => {
                    let count = self
                        .inner
                        .device_count()
                        .map_err(call("nvmlDeviceGetCount_v2"))?;
                    return Err(NvmlError::NoGpuAtIndex {
                        index: *index,
                        count,
                    });
                }
                Err(error) => return Err(call("nvmlDeviceGetHandleByIndex_v2")(error)),
            },
            GpuSelector::Uuid(uuid) => match self.inner.device_by_uuid(uuid.as_str()) {
                Ok(device) => device,
                // NVML answers InvalidArg for a malformed UUID and NotFound for an unknown
                // one; a NUL inside never reaches it. All mean: no such GPU.
                Err(
                    WrapperError::NotFound | WrapperError::InvalidArg | WrapperError::NulError(_),
                ) => {
                    return Err(NvmlError::NoGpuWithUuid { uuid: uuid.clone() });
                }
                Err(error) => return Err(call("nvmlDeviceGetHandleByUUID")(error)),
            },
        };
        read_device(&device)
    }

    /// One GPU's reading, off the async threads (tokio::task::spawn_blocking).
    pub async fn read(&self, gpu: &GpuSelector) -> Result<GpuReading, NvmlError> {
        let nvml = self.clone();
        let gpu = gpu.clone();
        tokio::task::spawn_blocking(move || nvml.read_blocking(&gpu))
            .await
            .map_err(|error| NvmlError::Interrupted(error.to_string()))?
    }
}

/// The reason a load failed, without the library's path twice: `dlopen`'s own text starts
/// with the path, and our message already names it.
fn load_failure(library: &str, error: WrapperError) -> String {
    let text = match error {
        WrapperError::LibloadingError(error) => error.to_string(),
        other => other.to_string(),
    };
    match text
        .strip_prefix(library)
        .and_then(|rest| rest.strip_prefix(": "))
    {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

fn read_device(device: &Device<'_>) -> Result<GpuReading, NvmlError> {
    let index = device.index().map_err(call("nvmlDeviceGetIndex"))?;
    let uuid = device.uuid().map_err(call("nvmlDeviceGetUUID"))?;
    let name = device.name().map_err(call("nvmlDeviceGetName"))?;
    // nvml-wrapper 0.13 reads memory through the v2 call only (NVIDIA driver R510 or later).
    let memory = device
        .memory_info()
        .map_err(call("nvmlDeviceGetMemoryInfo_v2"))?;
    let total_mib = memory.total / MIB;
    let free_mib = memory.free / MIB;
    Ok(GpuReading {
        index,
        uuid,
        name,
        total_mib,
        used_mib: total_mib.saturating_sub(free_mib),
        free_mib,
        processes: running_processes(device),
    })
}

/// Compute and graphics processes, merged by pid (a process with both contexts is in both
/// lists). A list the driver refuses is left out: the memory reading matters, the process
/// list only refines it.
fn running_processes(device: &Device<'_>) -> Vec<GpuProcess> {
    let lists = [
        (
            "nvmlDeviceGetComputeRunningProcesses_v3",
            device.running_compute_processes(),
        ),
        (
            "nvmlDeviceGetGraphicsRunningProcesses_v3",
            device.running_graphics_processes(),
        ),
    ];
    let mut merged: Vec<GpuProcess> = Vec::new();
    for (call, list) in lists {
        let list = match list {
            Ok(list) => list,
            Err(error) => {
                tracing::debug!(call, %error, "GPU process list unavailable, reading without it");
                continue;
            }
        };
        for info in list {
            let used_mib = match info.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => Some(bytes / MIB),
                UsedGpuMemory::Unavailable => None,
            };
            match merged.iter_mut().find(|p| p.pid == info.pid) {
                Some(known) => known.used_mib = known.used_mib.max(used_mib),
                None => merged.push(GpuProcess {
                    pid: info.pid,
                    used_mib,
                }),
            }
        }
    }
    merged
}

/// The `forge-vram-proxy gpus` output: a table (index, UUID, name, total/used/free MiB).
///
/// The UUID is there to be copied into the config, where it is the stable way to name a GPU.
pub fn format_gpus(readings: &[GpuReading]) -> String {
    if readings.is_empty() {
        return "NVML sees no GPU\n".to_string();
    }
    let rows: Vec<[String; 6]> = readings
        .iter()
        .map(|r| {
            [
                r.index.to_string(),
                r.uuid.clone(),
                r.name.clone(),
                r.total_mib.to_string(),
                r.used_mib.to_string(),
                r.free_mib.to_string(),
            ]
        })
        .collect();
    let header = ["INDEX", "UUID", "NAME", "TOTAL MiB", "USED MiB", "FREE MiB"];
    // Text columns read left-aligned, numbers right-aligned so their digits line up.
    let right_aligned = [false, false, false, true, true, true];
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let mut out = String::new();
    for line in std::iter::once(header.map(String::from)).chain(rows) {
        let cells: Vec<String> = line
            .iter()
            .zip(widths)
            .zip(right_aligned)
            .map(|((cell, width), right)| {
                if right {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::{Mutex, MutexGuard, PoisonError};

    use super::*;

    /// `FAKE_NVML_DEVICES` is process-wide and the fake reads it on every call, so tests that
    /// set it take turns.
    static FAKE_NVML_ENV: Mutex<()> = Mutex::new(());

    /// The fake NVML library built in this workspace, found from the test binary (in
    /// `target/<profile>/deps/`), so `CARGO_TARGET_DIR`, `--release` and `--target` all work.
    /// `deps/` first: `cargo test` writes the cdylib there and copies it up only on
    /// `cargo build`, so the copy one level up may be stale.
    fn fake_library() -> PathBuf {
        let exe = std::env::current_exe().expect("the test binary knows its path");
        let deps = exe.parent().expect("the test binary lives in a folder");
        let name = format!(
            "{}fake_nvml{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        );
        let candidates = [deps.join(&name), deps.join("..").join(&name)];
        candidates
            .iter()
            .find(|path| path.is_file())
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "the fake NVML library is missing (looked for {} and {}): \
                     run `cargo build -p fake-nvml` (`cargo test --workspace` builds it too)",
                    candidates[0].display(),
                    candidates[1].display()
                )
            })
    }

    /// A device file for the fake, and the turn to use it.
    struct FakeGpus {
        _turn: MutexGuard<'static, ()>,
        file: PathBuf,
    }

    impl FakeGpus {
        fn new(json: &str) -> Self {
            let turn = FAKE_NVML_ENV.lock().unwrap_or_else(PoisonError::into_inner);
            let file = std::env::temp_dir().join(format!(
                "forge-vram-proxy-nvml-test-{}.json",
                std::process::id()
            ));
            let gpus = Self { _turn: turn, file };
            gpus.write(json);
            std::env::set_var("FAKE_NVML_DEVICES", &gpus.file);
            gpus
        }

        fn write(&self, json: &str) {
            std::fs::write(&self.file, json).expect("write the fake's device file");
        }

        fn load(&self) -> Nvml {
            Nvml::load(Some(&fake_library())).expect("the fake NVML loads")
        }
    }

    impl Drop for FakeGpus {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.file);
        }
    }

    const RTX_3060_UUID: &str = "GPU-8f6a3c1e-2b4d-4e5f-9a7b-0c1d2e3f4a5b";

    fn two_gpus(used_mib: u64) -> String {
        format!(
            r#"[
              {{"uuid": "{RTX_3060_UUID}", "name": "NVIDIA GeForce RTX 3060",
                "total_mib": 12288, "used_mib": {used_mib},
                "processes": [{{"pid": 4242, "used_mib": 800}},
                              {{"pid": 7, "kind": "graphics", "used_mib": 60}},
                              {{"pid": 99, "kind": "both"}}]}},
              {{"uuid": "GPU-00000000-1111-2222-3333-444444444444",
                "name": "NVIDIA GeForce RTX 4090", "total_mib": 24564, "used_mib": 0,
                "processes_supported": false}}
            ]"#
        )
    }

    fn rtx_3060(used_mib: u64, processes: Vec<GpuProcess>) -> GpuReading {
        GpuReading {
            index: 0,
            uuid: RTX_3060_UUID.to_string(),
            name: "NVIDIA GeForce RTX 3060".to_string(),
            total_mib: 12288,
            used_mib,
            free_mib: 12288 - used_mib,
            processes,
        }
    }

    fn rtx_3060_processes() -> Vec<GpuProcess> {
        vec![
            GpuProcess {
                pid: 4242,
                used_mib: Some(800),
            },
            GpuProcess {
                pid: 99,
                used_mib: None,
            },
            GpuProcess {
                pid: 7,
                used_mib: Some(60),
            },
        ]
    }

    #[test]
    fn reads_a_gpu_by_index_with_merged_processes() {
        let gpus = FakeGpus::new(&two_gpus(900));
        let nvml = gpus.load();
        let reading = nvml.read_blocking(&GpuSelector::Index(0)).expect("GPU 0");
        assert_eq!(reading, rtx_3060(900, rtx_3060_processes()));
    }

    #[test]
    fn reads_a_gpu_by_uuid() {
        let gpus = FakeGpus::new(&two_gpus(900));
        let nvml = gpus.load();
        let reading = nvml
            .read_blocking(&GpuSelector::Uuid(RTX_3060_UUID.to_string()))
            .expect("GPU by UUID");
        assert_eq!(reading, rtx_3060(900, rtx_3060_processes()));
        // The second card by its UUID: not simply the first one.
        let second = nvml
            .read_blocking(&GpuSelector::Uuid(
                "GPU-00000000-1111-2222-3333-444444444444".to_string(),
            ))
            .expect("GPU 1 by UUID");
        assert_eq!((second.index, second.total_mib), (1, 24564));
    }

    #[test]
    fn a_refused_process_list_still_gives_the_memory_reading() {
        let gpus = FakeGpus::new(&two_gpus(900));
        let reading = gpus
            .load()
            .read_blocking(&GpuSelector::Index(1))
            .expect("GPU 1 reads without processes");
        assert_eq!(
            (reading.index, reading.total_mib, reading.free_mib),
            (1, 24564, 24564)
        );
        assert_eq!(reading.processes, vec![]);
    }

    #[tokio::test]
    async fn the_next_read_sees_a_rewritten_reading() {
        let gpus = FakeGpus::new(&two_gpus(900));
        let nvml = gpus.load();
        let gpu = GpuSelector::Index(0);
        assert_eq!(nvml.read(&gpu).await.expect("first").used_mib, 900);
        gpus.write(&two_gpus(11000));
        let reading = nvml.read(&gpu).await.expect("second");
        assert_eq!((reading.used_mib, reading.free_mib), (11000, 1288));
    }

    #[test]
    fn lists_every_gpu_in_index_order() {
        let gpus = FakeGpus::new(&two_gpus(900));
        let readings = gpus.load().list().expect("list");
        let summary: Vec<(u32, &str)> = readings
            .iter()
            .map(|r| (r.index, r.name.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (0, "NVIDIA GeForce RTX 3060"),
                (1, "NVIDIA GeForce RTX 4090")
            ]
        );
    }

    #[test]
    fn an_index_past_the_last_gpu_names_how_many_there_are() {
        let gpus = FakeGpus::new(&two_gpus(900));
        let error = gpus
            .load()
            .read_blocking(&GpuSelector::Index(3))
            .expect_err("no GPU 3");
        assert_eq!(error.to_string(), "NVML has no GPU 3 (it sees 2)");
    }

    #[test]
    fn an_unknown_uuid_is_named_in_the_error() {
        let gpus = FakeGpus::new(&two_gpus(900));
        let error = gpus
            .load()
            .read_blocking(&GpuSelector::Uuid("GPU-nope".to_string()))
            .expect_err("unknown UUID");
        assert_eq!(error.to_string(), "NVML has no GPU with UUID GPU-nope");
    }

    #[test]
    fn a_failed_nvml_call_names_the_function() {
        let gpus = FakeGpus::new(&two_gpus(900));
        let nvml = gpus.load();
        // The handle is taken while the file is good; then the file breaks.
        let device = nvml.inner.device_by_index(0).expect("GPU 0");
        gpus.write("not json");
        let error = read_device(&device).expect_err("unreadable device file");
        assert_eq!(
            error.to_string(),
            "NVML call nvmlDeviceGetIndex failed: an internal driver error occurred"
        );
    }

    #[test]
    fn a_missing_library_is_named_with_the_loader_reason() {
        let missing = Path::new("/nonexistent/forge-vram-proxy/libnvidia-ml.so.1");
        let error = Nvml::load(Some(missing)).expect_err("no such file");
        assert_eq!(
            error.to_string(),
            "cannot load the NVML library /nonexistent/forge-vram-proxy/libnvidia-ml.so.1: \
             cannot open shared object file: No such file or directory"
        );
    }

    #[test]
    fn a_library_whose_init_fails_is_a_load_error() {
        let _gpus = FakeGpus::new("not json");
        let library = fake_library();
        let error = Nvml::load(Some(&library)).expect_err("init fails");
        assert_eq!(
            error.to_string(),
            format!(
                "cannot load the NVML library {}: an internal driver error occurred",
                library.display()
            )
        );
    }

    #[test]
    fn selectors_read_from_config_and_flags_and_print_back() {
        let index: GpuSelector = serde_json::from_str("0").expect("index");
        let uuid: GpuSelector = serde_json::from_str(r#""GPU-abc""#).expect("uuid");
        assert_eq!(index, GpuSelector::Index(0));
        assert_eq!(uuid, GpuSelector::Uuid("GPU-abc".to_string()));
        assert_eq!(
            ("1".parse(), "GPU-abc".parse()),
            (Ok(GpuSelector::Index(1)), Ok(uuid.clone()))
        );
        assert_eq!(
            (index.to_string(), uuid.to_string()),
            ("0".to_string(), "GPU-abc".to_string())
        );
    }

    #[test]
    fn format_gpus_prints_an_aligned_table() {
        let readings = [
            rtx_3060(900, vec![]),
            GpuReading {
                index: 1,
                uuid: "GPU-00000000-1111-2222-3333-444444444444".to_string(),
                name: "NVIDIA GeForce RTX 4090".to_string(),
                total_mib: 24564,
                used_mib: 22000,
                free_mib: 2564,
                processes: vec![],
            },
        ];
        assert_eq!(
            format_gpus(&readings),
            "\
INDEX  UUID                                      NAME                     TOTAL MiB  USED MiB  FREE MiB
0      GPU-8f6a3c1e-2b4d-4e5f-9a7b-0c1d2e3f4a5b  NVIDIA GeForce RTX 3060      12288       900     11388
1      GPU-00000000-1111-2222-3333-444444444444  NVIDIA GeForce RTX 4090      24564     22000      2564
"
        );
    }

    #[test]
    fn format_gpus_says_when_there_is_none() {
        assert_eq!(format_gpus(&[]), "NVML sees no GPU\n");
    }
}
