//! The built `libfake_nvml.so`, loaded the way the proxy loads NVML: through `nvml-wrapper`.
//!
//! `cargo test` builds this package's library, cdylib included, before it runs any of its
//! tests, so the `.so` in `target/<profile>/deps/` is always the current one.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

const MIB: u64 = 1 << 20;

/// `FAKE_NVML_DEVICES` is process-wide and the fake reads it on every call: one test at a time.
static ENV: Mutex<()> = Mutex::new(());

/// The fake NVML library this test run built, found from the test binary itself (in
/// `target/<profile>/deps/`), so `CARGO_TARGET_DIR`, `--release` and `--target` all work.
///
/// `deps/` first: `cargo test` writes the cdylib there (a local cdylib's name carries no
/// hash) but copies it up to `target/<profile>/` only on `cargo build`, so the copy up
/// there may be older than the code under test.
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
                 run `cargo build -p fake-nvml`",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

struct Fixture {
    _guard: MutexGuard<'static, ()>,
    file: PathBuf,
}

impl Fixture {
    fn new(json: &str) -> Self {
        let guard = ENV.lock().unwrap_or_else(PoisonError::into_inner);
        let file = std::env::temp_dir().join(format!("fake-nvml-it-{}.json", std::process::id()));
        let fixture = Self {
            _guard: guard,
            file,
        };
        fixture.write(json);
        std::env::set_var("FAKE_NVML_DEVICES", &fixture.file);
        fixture
    }

    fn write(&self, json: &str) {
        let mut f = std::fs::File::create(&self.file).expect("create temp device file");
        f.write_all(json.as_bytes())
            .expect("write temp device file");
    }

    fn nvml(&self) -> Nvml {
        let library = fake_library();
        Nvml::builder()
            .lib_path(library.as_os_str())
            .init()
            .expect("nvml-wrapper initializes the fake")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

const TWO_GPUS: &str = r#"[
  {"uuid": "GPU-11111111-2222-3333-4444-555555555555", "name": "NVIDIA GeForce RTX 3060",
   "total_mib": 12288, "used_mib": 900,
   "processes": [{"pid": 1234, "used_mib": 800}, {"pid": 77, "kind": "graphics"}]},
  {"uuid": "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", "name": "NVIDIA GeForce RTX 4090",
   "total_mib": 24564, "used_mib": 0}
]"#;

#[test]
fn nvml_wrapper_reads_devices_memory_and_processes() {
    let fx = Fixture::new(TWO_GPUS);
    let nvml = fx.nvml();
    assert_eq!(nvml.device_count().expect("count"), 2);
    assert_eq!(
        nvml.sys_driver_version().expect("driver"),
        "550.00-fake-nvml"
    );

    let gpu = nvml.device_by_index(0).expect("GPU 0");
    assert_eq!(gpu.index().expect("index"), 0);
    assert_eq!(
        gpu.uuid().expect("uuid"),
        "GPU-11111111-2222-3333-4444-555555555555"
    );
    assert_eq!(gpu.name().expect("name"), "NVIDIA GeForce RTX 3060");
    let memory = gpu.memory_info().expect("memory");
    assert_eq!(
        (memory.total, memory.used, memory.free),
        (12288 * MIB, 900 * MIB, (12288 - 900) * MIB)
    );

    let compute = gpu.running_compute_processes().expect("compute list");
    assert_eq!(compute.len(), 1);
    assert_eq!(compute[0].pid, 1234);
    assert_eq!(compute[0].used_gpu_memory, UsedGpuMemory::Used(800 * MIB));
    let graphics = gpu.running_graphics_processes().expect("graphics list");
    assert_eq!(graphics.len(), 1);
    assert_eq!(graphics[0].pid, 77);
    assert_eq!(graphics[0].used_gpu_memory, UsedGpuMemory::Unavailable);

    let by_uuid = nvml
        .device_by_uuid("GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
        .expect("GPU by UUID");
    assert_eq!(by_uuid.index().expect("index"), 1);
    assert!(by_uuid
        .running_compute_processes()
        .expect("empty list")
        .is_empty());
}

#[test]
fn a_rewritten_file_is_the_next_reading() {
    let fx = Fixture::new(TWO_GPUS);
    let nvml = fx.nvml();
    let gpu = nvml.device_by_index(0).expect("GPU 0");
    assert_eq!(gpu.memory_info().expect("memory").used, 900 * MIB);

    fx.write(
        r#"[{"uuid": "GPU-11111111-2222-3333-4444-555555555555", "name": "NVIDIA GeForce RTX 3060",
             "total_mib": 12288, "used_mib": 11000}]"#,
    );
    assert_eq!(gpu.memory_info().expect("memory").used, 11000 * MIB);
    assert_eq!(nvml.device_count().expect("count"), 1);
}

#[test]
fn lookups_fail_as_nvml_does() {
    let fx = Fixture::new(TWO_GPUS);
    let nvml = fx.nvml();
    assert!(matches!(
        nvml.device_by_index(2),
        Err(NvmlError::InvalidArg)
    ));
    assert!(matches!(
        nvml.device_by_uuid("GPU-nope"),
        Err(NvmlError::NotFound)
    ));
}

#[test]
fn unsupported_process_lists_answer_not_supported() {
    let fx = Fixture::new(
        r#"[{"uuid": "GPU-x", "name": "x", "total_mib": 8192, "used_mib": 10,
             "processes_supported": false}]"#,
    );
    let nvml = fx.nvml();
    let gpu = nvml.device_by_index(0).expect("GPU 0");
    assert!(matches!(
        gpu.running_compute_processes(),
        Err(NvmlError::NotSupported)
    ));
    assert!(matches!(
        gpu.running_graphics_processes(),
        Err(NvmlError::NotSupported)
    ));
    assert_eq!(
        gpu.memory_info().expect("memory still reads").used,
        10 * MIB
    );
}

#[test]
fn init_fails_with_unknown_when_the_file_is_invalid() {
    let _fx = Fixture::new("not json");
    let library = fake_library();
    let result = Nvml::builder().lib_path(library.as_os_str()).init();
    assert!(matches!(result, Err(NvmlError::Unknown)), "{result:?}");
}
