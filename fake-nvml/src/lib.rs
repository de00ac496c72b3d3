//! fake-nvml: a stand-in for NVIDIA's `libnvidia-ml.so`, for tests only.
//!
//! Built as a `cdylib`, it exports (C ABI, NVML's names and signatures) the NVML functions
//! that the `nvml-wrapper` crate calls to find GPUs and read their memory and processes.
//! Load it with `nvml_wrapper::Nvml::builder().lib_path(...)`, or point the proxy's NVML
//! library setting at it, and the code under test runs its real NVML path with no GPU.
//!
//! The GPUs come from the JSON file named by `FAKE_NVML_DEVICES` (see [`devices`]), read
//! again on every call so a test can change the "live" reading while a process runs.
//!
//! # Errors, as NVML reports them
//! - device file missing, unreadable or invalid: `NVML_ERROR_UNKNOWN` from `nvmlInit_v2`
//!   (and from any later call that finds it so). `NVML_ERROR_UNKNOWN` rather than
//!   `NVML_ERROR_LIBRARY_NOT_FOUND`: the library *was* found; what is missing is its data.
//!   `nvmlErrorString(NVML_ERROR_UNKNOWN)` then names the cause, and the cause is also
//!   printed on standard error, because `nvml-wrapper` never calls `nvmlErrorString`.
//! - a call before `nvmlInit_v2` or after the last `nvmlShutdown`: `NVML_ERROR_UNINITIALIZED`.
//! - an index or handle past the last GPU, or a null pointer: `NVML_ERROR_INVALID_ARGUMENT`.
//! - an unknown UUID: `NVML_ERROR_NOT_FOUND`.
//! - a buffer too small: `NVML_ERROR_INSUFFICIENT_SIZE` (for process lists, with the
//!   needed count written back, as NVML does).
//! - `"processes_supported": false`: `NVML_ERROR_NOT_SUPPORTED` from both process lists.
//!
//! The C ABI cannot be written without raw pointers, so this crate, alone in the workspace,
//! allows `unsafe` code.

use std::collections::BTreeSet;
use std::ffi::{c_char, c_uint, CStr, CString};
use std::io::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

pub mod devices;

use devices::{load_devices, FakeDevice, FakeError, ProcessKind, MIB};

/// `nvmlReturn_t`: a C enum, 32 bits wide.
pub type NvmlReturn = c_uint;

pub const NVML_SUCCESS: NvmlReturn = 0;
pub const NVML_ERROR_UNINITIALIZED: NvmlReturn = 1;
pub const NVML_ERROR_INVALID_ARGUMENT: NvmlReturn = 2;
pub const NVML_ERROR_NOT_SUPPORTED: NvmlReturn = 3;
pub const NVML_ERROR_NOT_FOUND: NvmlReturn = 6;
pub const NVML_ERROR_INSUFFICIENT_SIZE: NvmlReturn = 7;
pub const NVML_ERROR_ARGUMENT_VERSION_MISMATCH: NvmlReturn = 25;
pub const NVML_ERROR_UNKNOWN: NvmlReturn = 999;

/// `NVML_VALUE_NOT_AVAILABLE` as an unsigned long long: "this process's memory is unknown".
pub const NVML_VALUE_NOT_AVAILABLE: u64 = u64::MAX;

/// Reported as the driver version. It parses as a pre-580 driver (so `nvml-wrapper` picks
/// its usual field-ID scheme) and says plainly that it is not one.
pub const DRIVER_VERSION: &str = "550.00-fake-nvml";
pub const NVML_VERSION: &str = "12.550.00-fake-nvml";

/// `nvmlDevice_t`: an opaque pointer. Ours are `index + 1` cast to a pointer, never
/// dereferenced, so a null handle stays invalid.
pub type NvmlDevice = *mut std::ffi::c_void;

/// `nvmlMemory_t` (v1).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NvmlMemory {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlMemory_v2_t`, which `nvml-wrapper` 0.13 uses for `Device::memory_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NvmlMemoryV2 {
    pub version: c_uint,
    pub total: u64,
    pub reserved: u64,
    pub free: u64,
    pub used: u64,
}

/// `NVML_STRUCT_VERSION(Memory, 2)`: the caller must set it, as with real NVML.
pub const NVML_MEMORY_V2: c_uint = (std::mem::size_of::<NvmlMemoryV2>() | (2 << 24)) as c_uint;

/// `nvmlProcessInfo_t` as the `_v3` process-list functions fill it.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NvmlProcessInfo {
    pub pid: c_uint,
    pub used_gpu_memory: u64,
    pub gpu_instance_id: c_uint,
    pub compute_instance_id: c_uint,
}

/// "Not a MIG instance", NVML's marker for both instance ids.
const NO_INSTANCE: c_uint = 0xFFFF_FFFF;

/// How many `nvmlInit` calls are not yet matched by `nvmlShutdown`; NVML counts the same way.
static INIT_COUNT: AtomicU32 = AtomicU32::new(0);

/// Strings handed out by `nvmlErrorString`, and the last cause of `NVML_ERROR_UNKNOWN`.
static MESSAGES: Mutex<Messages> = Mutex::new(Messages {
    interned: BTreeSet::new(),
    last_unknown: None,
});

struct Messages {
    /// Kept for the library's lifetime: NVML's strings are static, so callers may hold the
    /// pointer indefinitely. Moving a `CString` does not move its bytes.
    interned: BTreeSet<CString>,
    last_unknown: Option<CString>,
}

fn messages() -> std::sync::MutexGuard<'static, Messages> {
    MESSAGES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Remembers why the device file could not be used, for `nvmlErrorString` and the user.
fn fail_unknown(error: &FakeError) -> NvmlReturn {
    let text = error.to_string();
    // Not `eprintln!`: it panics when stderr is closed, and a panic cannot cross the C ABI.
    let _ = writeln!(std::io::stderr(), "{text}");
    // `FakeError` texts hold no NUL (paths and io errors could, in theory: drop it then).
    messages().last_unknown = CString::new(text).ok();
    NVML_ERROR_UNKNOWN
}

/// The current devices, for a call that needs NVML initialized.
fn current_devices() -> Result<Vec<FakeDevice>, NvmlReturn> {
    if INIT_COUNT.load(Ordering::SeqCst) == 0 {
        return Err(NVML_ERROR_UNINITIALIZED);
    }
    load_devices().map_err(|error| fail_unknown(&error))
}

/// The device a handle names, read afresh.
fn device_of(handle: NvmlDevice) -> Result<FakeDevice, NvmlReturn> {
    let devices = current_devices()?;
    let index = handle
        .addr()
        .checked_sub(1)
        .ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    devices
        .into_iter()
        .nth(index)
        .ok_or(NVML_ERROR_INVALID_ARGUMENT)
}

fn handle_of(index: usize) -> NvmlDevice {
    std::ptr::without_provenance_mut(index + 1)
}

fn code(result: Result<(), NvmlReturn>) -> NvmlReturn {
    result.err().unwrap_or(NVML_SUCCESS)
}

/// Copies `text` and its NUL into a caller's buffer of `length` bytes.
///
/// # Safety
/// `buffer` must be null or valid for `length` bytes of writes.
unsafe fn write_c_string(buffer: *mut c_char, length: c_uint, text: &str) -> NvmlReturn {
    if buffer.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    let bytes = text.as_bytes();
    if bytes.len() + 1 > length as usize {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    // SAFETY: the caller vouches for `length` bytes at `buffer`, and we write `len + 1`
    // of them, which is not more; `text` is our own memory, so the two do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer.cast::<u8>(), bytes.len());
        *buffer.add(bytes.len()) = 0;
    }
    NVML_SUCCESS
}

fn init() -> NvmlReturn {
    match load_devices() {
        Ok(_) => {
            INIT_COUNT.fetch_add(1, Ordering::SeqCst);
            NVML_SUCCESS
        }
        Err(error) => fail_unknown(&error),
    }
}

/// `nvmlInit_v2`: succeeds when the device file can be read, else `NVML_ERROR_UNKNOWN`.
#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> NvmlReturn {
    init()
}

/// `nvmlInitWithFlags`: the flags (no GPUs, no attach) change nothing here; a fake with
/// zero GPUs initializes either way.
#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> NvmlReturn {
    init()
}

/// `nvmlShutdown`: required by `nvml-wrapper`, whose `Drop` calls it unconditionally.
#[no_mangle]
pub extern "C" fn nvmlShutdown() -> NvmlReturn {
    match INIT_COUNT.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
        Ok(_) => NVML_SUCCESS,
        Err(_) => NVML_ERROR_UNINITIALIZED,
    }
}

/// `nvmlErrorString`: NVML's text for a code; for `NVML_ERROR_UNKNOWN`, also the cause
/// the fake last met (e.g. "FAKE_NVML_DEVICES is not set").
#[no_mangle]
pub extern "C" fn nvmlErrorString(result: NvmlReturn) -> *const c_char {
    let fixed: &'static CStr = match result {
        NVML_SUCCESS => c"Success",
        NVML_ERROR_UNINITIALIZED => c"Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT => c"Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED => c"Not Supported",
        NVML_ERROR_NOT_FOUND => c"Not Found",
        NVML_ERROR_INSUFFICIENT_SIZE => c"Insufficient Size",
        NVML_ERROR_ARGUMENT_VERSION_MISMATCH => c"Argument Version Mismatch",
        NVML_ERROR_UNKNOWN => return unknown_error_text(),
        _ => c"Unknown Error (a code the fake never returns)",
    };
    fixed.as_ptr()
}

/// "Unknown Error: <the last cause>", kept alive for good once handed out.
fn unknown_error_text() -> *const c_char {
    let mut messages = messages();
    let text = messages
        .last_unknown
        .as_ref()
        .and_then(|cause| CString::new(format!("Unknown Error: {}", cause.to_string_lossy())).ok());
    let Some(text) = text else {
        return c"Unknown Error".as_ptr();
    };
    if let Some(kept) = messages.interned.get(&text) {
        return kept.as_ptr();
    }
    let pointer = text.as_ptr();
    messages.interned.insert(text);
    pointer
}

/// `nvmlSystemGetDriverVersion`.
///
/// # Safety
/// `version` must be null or valid for `length` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    if INIT_COUNT.load(Ordering::SeqCst) == 0 {
        return NVML_ERROR_UNINITIALIZED;
    }
    // SAFETY: passed on from our caller's contract.
    unsafe { write_c_string(version, length, DRIVER_VERSION) }
}

/// `nvmlSystemGetNVMLVersion`: like NVML's, works without `nvmlInit`.
///
/// # Safety
/// `version` must be null or valid for `length` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    // SAFETY: passed on from our caller's contract.
    unsafe { write_c_string(version, length, NVML_VERSION) }
}

/// `nvmlDeviceGetCount_v2`: the number of GPUs in the file now.
///
/// # Safety
/// `count` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> NvmlReturn {
    code((|| {
        let devices = current_devices()?;
        if count.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let n = c_uint::try_from(devices.len()).map_err(|_| NVML_ERROR_UNKNOWN)?;
        // SAFETY: non-null, and the caller vouches for it.
        unsafe { *count = n };
        Ok(())
    })())
}

/// `nvmlDeviceGetHandleByIndex_v2`: `NVML_ERROR_INVALID_ARGUMENT` past the last GPU.
///
/// # Safety
/// `device` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut NvmlDevice,
) -> NvmlReturn {
    code((|| {
        let devices = current_devices()?;
        if device.is_null() || index as usize >= devices.len() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-null, and the caller vouches for it.
        unsafe { *device = handle_of(index as usize) };
        Ok(())
    })())
}

/// `nvmlDeviceGetHandleByUUID`: exact match, `NVML_ERROR_NOT_FOUND` for an unknown UUID.
///
/// # Safety
/// `uuid` must be null or a NUL-terminated string; `device` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut NvmlDevice,
) -> NvmlReturn {
    code((|| {
        let devices = current_devices()?;
        if uuid.is_null() || device.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-null and NUL-terminated, as the caller vouches.
        let wanted = unsafe { CStr::from_ptr(uuid) };
        let index = devices
            .iter()
            .position(|d| d.uuid.as_bytes() == wanted.to_bytes())
            .ok_or(NVML_ERROR_NOT_FOUND)?;
        // SAFETY: non-null, and the caller vouches for it.
        unsafe { *device = handle_of(index) };
        Ok(())
    })())
}

/// `nvmlDeviceGetIndex`.
///
/// # Safety
/// `index` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: NvmlDevice, index: *mut c_uint) -> NvmlReturn {
    code((|| {
        device_of(device)?;
        if index.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // The handle is `index + 1` and `device_of` accepted it, so this cannot underflow
        // and fits the `c_uint` count.
        let value = c_uint::try_from(device.addr() - 1).map_err(|_| NVML_ERROR_UNKNOWN)?;
        // SAFETY: non-null, and the caller vouches for it.
        unsafe { *index = value };
        Ok(())
    })())
}

/// `nvmlDeviceGetUUID`.
///
/// # Safety
/// `uuid` must be null or valid for `length` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: NvmlDevice,
    uuid: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    match device_of(device) {
        // SAFETY: passed on from our caller's contract.
        Ok(d) => unsafe { write_c_string(uuid, length, &d.uuid) },
        Err(code) => code,
    }
}

/// `nvmlDeviceGetName`.
///
/// # Safety
/// `name` must be null or valid for `length` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: NvmlDevice,
    name: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    match device_of(device) {
        // SAFETY: passed on from our caller's contract.
        Ok(d) => unsafe { write_c_string(name, length, &d.name) },
        Err(code) => code,
    }
}

/// `nvmlDeviceGetMemoryInfo` (v1): total, free = total - used, used; in bytes.
///
/// # Safety
/// `memory` must be null or valid for a write of an `nvmlMemory_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: NvmlDevice,
    memory: *mut NvmlMemory,
) -> NvmlReturn {
    code((|| {
        let d = device_of(device)?;
        if memory.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let info = NvmlMemory {
            total: d.total_bytes(),
            free: d.free_bytes(),
            used: d.used_bytes(),
        };
        // SAFETY: non-null, and the caller vouches for it.
        unsafe { memory.write(info) };
        Ok(())
    })())
}

/// `nvmlDeviceGetMemoryInfo_v2`: as v1, with `reserved` = 0. Like NVML, refuses a struct
/// whose `version` is not `NVML_STRUCT_VERSION(Memory, 2)`.
///
/// # Safety
/// `memory` must be null or valid for reads and writes of an `nvmlMemory_v2_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: NvmlDevice,
    memory: *mut NvmlMemoryV2,
) -> NvmlReturn {
    code((|| {
        let d = device_of(device)?;
        if memory.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-null, and the caller vouches for it.
        let version = unsafe { (*memory).version };
        if version != NVML_MEMORY_V2 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let info = NvmlMemoryV2 {
            version,
            total: d.total_bytes(),
            reserved: 0,
            free: d.free_bytes(),
            used: d.used_bytes(),
        };
        // SAFETY: as above.
        unsafe { memory.write(info) };
        Ok(())
    })())
}

/// The shared body of both `_v3` process lists, with NVML's size protocol: when
/// `*count` is smaller than the list, write the needed count and answer
/// `NVML_ERROR_INSUFFICIENT_SIZE`; otherwise fill `infos` and write how many.
///
/// # Safety
/// `count` null or valid for reads and writes; `infos` null or valid for `*count` writes.
unsafe fn running_processes(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut NvmlProcessInfo,
    listed: fn(ProcessKind) -> bool,
) -> NvmlReturn {
    code((|| {
        let d = device_of(device)?;
        if count.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        if !d.processes_supported {
            return Err(NVML_ERROR_NOT_SUPPORTED);
        }
        let list: Vec<NvmlProcessInfo> = d
            .processes
            .iter()
            .filter(|p| listed(p.kind))
            .map(|p| NvmlProcessInfo {
                pid: p.pid,
                used_gpu_memory: p.used_mib.map_or(NVML_VALUE_NOT_AVAILABLE, |m| m * MIB),
                gpu_instance_id: NO_INSTANCE,
                compute_instance_id: NO_INSTANCE,
            })
            .collect();
        let needed = c_uint::try_from(list.len()).map_err(|_| NVML_ERROR_UNKNOWN)?;
        // SAFETY: non-null, and the caller vouches for it.
        let room = unsafe { *count };
        // SAFETY: as above.
        unsafe { *count = needed };
        if room < needed {
            return Err(NVML_ERROR_INSUFFICIENT_SIZE);
        }
        if list.is_empty() {
            return Ok(());
        }
        if infos.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: the caller vouches for `room` entries at `infos`, and `needed <= room`.
        unsafe { std::ptr::copy_nonoverlapping(list.as_ptr(), infos, list.len()) };
        Ok(())
    })())
}

/// `nvmlDeviceGetComputeRunningProcesses_v3`: processes of kind `compute` or `both`.
///
/// # Safety
/// `count` null or valid for reads and writes; `infos` null or valid for `*count` writes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut NvmlProcessInfo,
) -> NvmlReturn {
    // SAFETY: passed on from our caller's contract.
    unsafe { running_processes(device, count, infos, ProcessKind::in_compute_list) }
}

/// `nvmlDeviceGetGraphicsRunningProcesses_v3`: processes of kind `graphics` or `both`.
///
/// # Safety
/// `count` null or valid for reads and writes; `infos` null or valid for `*count` writes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v3(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut NvmlProcessInfo,
) -> NvmlReturn {
    // SAFETY: passed on from our caller's contract.
    unsafe { running_processes(device, count, infos, ProcessKind::in_graphics_list) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;
    use std::ptr;

    /// `FAKE_NVML_DEVICES` and the init count are process-wide: one test at a time.
    static ENV: Mutex<()> = Mutex::new(());

    struct Fixture {
        _guard: std::sync::MutexGuard<'static, ()>,
        file: PathBuf,
    }

    impl Fixture {
        fn new(json: &str) -> Self {
            let guard = ENV.lock().unwrap_or_else(PoisonError::into_inner);
            let file = std::env::temp_dir().join(format!(
                "fake-nvml-unit-{}-{:?}.json",
                std::process::id(),
                std::thread::current().id()
            ));
            let fixture = Self {
                _guard: guard,
                file,
            };
            fixture.write(json);
            std::env::set_var(devices::DEVICES_ENV, &fixture.file);
            assert_eq!(nvmlInit_v2(), NVML_SUCCESS, "fixture must initialize");
            fixture
        }

        fn write(&self, json: &str) {
            let mut f = std::fs::File::create(&self.file).expect("temp file");
            f.write_all(json.as_bytes()).expect("write temp file");
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            nvmlShutdown();
            let _ = std::fs::remove_file(&self.file);
        }
    }

    const ONE_GPU: &str = r#"[{"uuid": "GPU-one", "name": "NVIDIA GeForce RTX 3060",
        "total_mib": 12288, "used_mib": 900,
        "processes": [{"pid": 10, "used_mib": 800},
                      {"pid": 11, "kind": "graphics", "used_mib": 50},
                      {"pid": 12, "kind": "both"}]}]"#;

    fn handle(index: c_uint) -> NvmlDevice {
        let mut device = ptr::null_mut();
        // SAFETY: a valid out-pointer.
        let rc = unsafe { nvmlDeviceGetHandleByIndex_v2(index, &mut device) };
        assert_eq!(rc, NVML_SUCCESS);
        device
    }

    fn error_string(rc: NvmlReturn) -> String {
        // SAFETY: nvmlErrorString returns a static NUL-terminated string.
        unsafe { CStr::from_ptr(nvmlErrorString(rc)) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn memory_is_reported_in_bytes_with_free_as_total_minus_used() {
        let _fx = Fixture::new(ONE_GPU);
        let mut memory = NvmlMemoryV2 {
            version: NVML_MEMORY_V2,
            ..Default::default()
        };
        // SAFETY: a valid, versioned struct.
        let rc = unsafe { nvmlDeviceGetMemoryInfo_v2(handle(0), &mut memory) };
        assert_eq!(rc, NVML_SUCCESS);
        assert_eq!(memory.total, 12288 * MIB);
        assert_eq!(memory.used, 900 * MIB);
        assert_eq!(memory.free, (12288 - 900) * MIB);
    }

    #[test]
    fn memory_v2_without_its_version_is_refused_like_nvml() {
        let _fx = Fixture::new(ONE_GPU);
        let mut memory = NvmlMemoryV2::default();
        // SAFETY: a valid struct.
        let rc = unsafe { nvmlDeviceGetMemoryInfo_v2(handle(0), &mut memory) };
        assert_eq!(rc, NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    }

    #[test]
    fn each_call_rereads_the_file() {
        let fx = Fixture::new(ONE_GPU);
        let device = handle(0);
        fx.write(r#"[{"uuid": "GPU-one", "name": "x", "total_mib": 12288, "used_mib": 4000}]"#);
        let mut memory = NvmlMemory::default();
        // SAFETY: a valid struct.
        let rc = unsafe { nvmlDeviceGetMemoryInfo(device, &mut memory) };
        assert_eq!(rc, NVML_SUCCESS);
        assert_eq!(memory.used, 4000 * MIB);
    }

    #[test]
    fn an_index_past_the_last_gpu_is_an_invalid_argument() {
        let _fx = Fixture::new(ONE_GPU);
        let mut device = ptr::null_mut();
        // SAFETY: a valid out-pointer.
        let rc = unsafe { nvmlDeviceGetHandleByIndex_v2(1, &mut device) };
        assert_eq!(rc, NVML_ERROR_INVALID_ARGUMENT);
    }

    #[test]
    fn an_unknown_uuid_is_not_found() {
        let _fx = Fixture::new(ONE_GPU);
        let mut device = ptr::null_mut();
        // SAFETY: a NUL-terminated string and a valid out-pointer.
        let rc = unsafe { nvmlDeviceGetHandleByUUID(c"GPU-two".as_ptr(), &mut device) };
        assert_eq!(rc, NVML_ERROR_NOT_FOUND);
        // SAFETY: as above.
        let rc = unsafe { nvmlDeviceGetHandleByUUID(c"GPU-one".as_ptr(), &mut device) };
        assert_eq!(rc, NVML_SUCCESS);
        assert_eq!(device, handle(0));
    }

    #[test]
    fn a_small_name_buffer_is_insufficient_size() {
        let _fx = Fixture::new(ONE_GPU);
        let mut name = [0 as c_char; 8];
        // SAFETY: 8 writable bytes.
        let rc = unsafe { nvmlDeviceGetName(handle(0), name.as_mut_ptr(), 8) };
        assert_eq!(rc, NVML_ERROR_INSUFFICIENT_SIZE);
        let mut name = [0 as c_char; 96];
        // SAFETY: 96 writable bytes.
        let rc = unsafe { nvmlDeviceGetName(handle(0), name.as_mut_ptr(), 96) };
        assert_eq!(rc, NVML_SUCCESS);
        // SAFETY: written NUL-terminated just above.
        let name = unsafe { CStr::from_ptr(name.as_ptr()) };
        assert_eq!(name.to_str(), Ok("NVIDIA GeForce RTX 3060"));
    }

    #[test]
    fn process_lists_report_the_needed_count_then_fill_by_kind() {
        let _fx = Fixture::new(ONE_GPU);
        let device = handle(0);
        let mut count = 0;
        // SAFETY: a valid count; a null list is allowed with a count of 0.
        let rc =
            unsafe { nvmlDeviceGetComputeRunningProcesses_v3(device, &mut count, ptr::null_mut()) };
        assert_eq!((rc, count), (NVML_ERROR_INSUFFICIENT_SIZE, 2));

        let mut infos = [NvmlProcessInfo::default(); 4];
        count = 4;
        // SAFETY: 4 writable entries.
        let rc = unsafe {
            nvmlDeviceGetComputeRunningProcesses_v3(device, &mut count, infos.as_mut_ptr())
        };
        assert_eq!((rc, count), (NVML_SUCCESS, 2));
        assert_eq!((infos[0].pid, infos[0].used_gpu_memory), (10, 800 * MIB));
        assert_eq!(
            (infos[1].pid, infos[1].used_gpu_memory),
            (12, NVML_VALUE_NOT_AVAILABLE)
        );

        count = 4;
        // SAFETY: 4 writable entries.
        let rc = unsafe {
            nvmlDeviceGetGraphicsRunningProcesses_v3(device, &mut count, infos.as_mut_ptr())
        };
        assert_eq!((rc, count), (NVML_SUCCESS, 2));
        assert_eq!([infos[0].pid, infos[1].pid], [11, 12]);
    }

    #[test]
    fn process_lists_can_be_made_unsupported() {
        let _fx = Fixture::new(
            r#"[{"uuid": "GPU-a", "name": "x", "total_mib": 8, "used_mib": 1,
                 "processes_supported": false}]"#,
        );
        let mut count = 0;
        // SAFETY: a valid count.
        let rc = unsafe {
            nvmlDeviceGetGraphicsRunningProcesses_v3(handle(0), &mut count, ptr::null_mut())
        };
        assert_eq!(rc, NVML_ERROR_NOT_SUPPORTED);
    }

    #[test]
    fn a_broken_file_fails_with_unknown_error_naming_the_cause() {
        let fx = Fixture::new(ONE_GPU);
        fx.write("[{]");
        let mut count = 0;
        // SAFETY: a valid out-pointer.
        let rc = unsafe { nvmlDeviceGetCount_v2(&mut count) };
        assert_eq!(rc, NVML_ERROR_UNKNOWN);
        let text = error_string(rc);
        assert!(
            text.starts_with(&format!(
                "Unknown Error: fake-nvml: FAKE_NVML_DEVICES file {} is not a valid device list: ",
                fx.file.display()
            )),
            "{text}"
        );
    }

    #[test]
    fn init_without_the_variable_fails_and_says_so() {
        let _guard = ENV.lock().unwrap_or_else(PoisonError::into_inner);
        std::env::remove_var(devices::DEVICES_ENV);
        let rc = nvmlInit_v2();
        assert_eq!(rc, NVML_ERROR_UNKNOWN);
        assert_eq!(
            error_string(rc),
            "Unknown Error: fake-nvml: FAKE_NVML_DEVICES is not set \
             (it must name a JSON file of fake GPUs)"
        );
    }

    #[test]
    fn calls_after_the_last_shutdown_are_uninitialized() {
        let _fx = Fixture::new(ONE_GPU);
        assert_eq!(nvmlShutdown(), NVML_SUCCESS);
        let mut count = 0;
        // SAFETY: a valid out-pointer.
        let rc = unsafe { nvmlDeviceGetCount_v2(&mut count) };
        assert_eq!(rc, NVML_ERROR_UNINITIALIZED);
        assert_eq!(nvmlShutdown(), NVML_ERROR_UNINITIALIZED);
        assert_eq!(
            nvmlInit_v2(),
            NVML_SUCCESS,
            "re-init for the fixture's own shutdown"
        );
    }
}
