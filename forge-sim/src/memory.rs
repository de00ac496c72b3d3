//! Forge's memory management as plain functions: the `[GPU Setting]` /
//! `[Low VRAM Warning]` decision, where a model's weights go when it loads,
//! how much slower swapping makes sampling, and when a pass runs out of
//! memory. No state and no I/O; `backend` applies them.

/// What the simulated machine reports as `total_vram` when it has no GPU:
/// Forge then runs on the CPU and counts system RAM (64 GiB here).
pub const CPU_TOTAL_MIB: u64 = 65536;

/// Memory the CUDA context takes on the card before any model loads.
pub const CUDA_CONTEXT_MIB: f64 = 300.0;

/// The line `refresh_memory_management_settings` prints, and whether it is
/// the low-VRAM warning.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuSetting {
    pub line: String,
    pub low_vram: bool,
}

/// Forge's rule: a warning when `inference_memory < min(512, total_vram * 0.05)`.
pub fn is_low_vram(total_vram_mib: f64, inference_mib: f64) -> bool {
    inference_mib < f64::min(512.0, total_vram_mib * 0.05)
}

/// The message Forge prints after applying memory settings, with
/// `W = total - inference` MiB for the weights.
pub fn gpu_setting(total_vram_mib: f64, inference_mib: f64) -> GpuSetting {
    let weights = total_vram_mib - inference_mib;
    if is_low_vram(total_vram_mib, inference_mib) {
        GpuSetting {
            line: format!(
                "[Low VRAM Warning] You just set Forge to use 100% GPU memory ({weights:.2} MB) to load model weights."
            ),
            low_vram: true,
        }
    } else {
        let compute = inference_mib / total_vram_mib * 100.0;
        GpuSetting {
            line: format!(
                "[GPU Setting] You will use {:.2}% GPU memory ({weights:.2} MB) to load weights, and use {compute:.2}% GPU memory ({inference_mib:.2} MB) to do matrix computation.",
                100.0 - compute
            ),
            low_vram: false,
        }
    }
}

/// Where a model's weights ended up when it loaded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    /// MiB of weights resident on the GPU.
    pub gpu_weights_mib: f64,
    /// Fraction of the weights left on the CPU, swapped in at every step.
    pub cpu_fraction: f64,
    /// Factor on the step time: `1 + 9 * cpu_fraction` (10x when all swap).
    pub slowdown: f64,
}

/// Forge loads as much of the weights as fits in `total - inference_memory`
/// and swaps the rest from the CPU. `total_vram_mib == 0` means no GPU: all
/// weights stay on the CPU.
pub fn place(total_vram_mib: u64, inference_mib: f64, weights_mib: u64) -> Placement {
    let weights = weights_mib as f64;
    let room = (total_vram_mib as f64 - inference_mib).max(0.0);
    let gpu_weights_mib = if total_vram_mib == 0 {
        0.0
    } else {
        weights.min(room)
    };
    let cpu_fraction = if weights > 0.0 {
        (weights - gpu_weights_mib) / weights
    } else {
        0.0
    };
    Placement {
        gpu_weights_mib,
        cpu_fraction,
        slowdown: 1.0 + 9.0 * cpu_fraction,
    }
}

/// A pass that does not fit: what it tried to allocate and what was free.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutOfMemory {
    pub need_mib: f64,
    pub free_mib: f64,
    pub total_mib: f64,
    pub allocated_mib: f64,
}

impl OutOfMemory {
    /// PyTorch's message, shortened.
    pub fn message(&self) -> String {
        format!(
            "CUDA out of memory. Tried to allocate {}. GPU 0 has a total capacity of {} of which {} is free. \
             Of the allocated memory {} is allocated by PyTorch, and 0 bytes is reserved by PyTorch but unallocated. \
             If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
             to avoid fragmentation.  See documentation for Memory Management  \
             (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
            torch_size(self.need_mib),
            torch_size(self.total_mib),
            torch_size(self.free_mib),
            torch_size(self.allocated_mib),
        )
    }
}

/// A sampling pass needing `need_mib` besides the weights runs out of memory
/// when that exceeds `total - gpu_weights`. Without a GPU nothing does.
pub fn check_fits(
    total_vram_mib: u64,
    placement: &Placement,
    need_mib: f64,
) -> Result<(), OutOfMemory> {
    if total_vram_mib == 0 {
        return Ok(());
    }
    let total = total_vram_mib as f64;
    let free = (total - placement.gpu_weights_mib).max(0.0);
    if need_mib > free {
        Err(OutOfMemory {
            need_mib,
            free_mib: free,
            total_mib: total,
            allocated_mib: placement.gpu_weights_mib,
        })
    } else {
        Ok(())
    }
}

/// Sizes as PyTorch prints them: `2.00 GiB`, `512.00 MiB`.
fn torch_size(mib: f64) -> String {
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.2} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_256_on_12_gib_card_is_low_vram() {
        let setting = gpu_setting(12288.0, 256.0);
        assert!(setting.low_vram);
        assert_eq!(
            setting.line,
            "[Low VRAM Warning] You just set Forge to use 100% GPU memory (12032.00 MB) to load model weights."
        );
    }

    #[test]
    fn inference_1024_on_12_gib_card_is_a_gpu_setting() {
        let setting = gpu_setting(12288.0, 1024.0);
        assert!(!setting.low_vram);
        assert_eq!(
            setting.line,
            "[GPU Setting] You will use 91.67% GPU memory (11264.00 MB) to load weights, and use 8.33% GPU memory (1024.00 MB) to do matrix computation."
        );
    }

    #[test]
    fn low_vram_threshold_is_five_percent_on_small_cards() {
        // min(512, 4096 * 0.05) = 204.8
        assert!(is_low_vram(4096.0, 204.0));
        assert!(!is_low_vram(4096.0, 205.0));
        // min(512, 24576 * 0.05) = 512
        assert!(is_low_vram(24576.0, 511.0));
        assert!(!is_low_vram(24576.0, 512.0));
    }

    #[test]
    fn weights_that_fit_stay_on_the_gpu() {
        let p = place(12288, 1024.0, 2000);
        assert_eq!(p.gpu_weights_mib, 2000.0);
        assert_eq!(p.slowdown, 1.0);
    }

    #[test]
    fn flux_with_4096_inference_swaps_part_of_its_weights() {
        let p = place(12288, 4096.0, 11500);
        assert_eq!(p.gpu_weights_mib, 8192.0);
        let f = (11500.0 - 8192.0) / 11500.0;
        assert!((p.slowdown - (1.0 + 9.0 * f)).abs() < 1e-9);
    }

    #[test]
    fn no_gpu_means_everything_swaps_and_nothing_runs_out() {
        let p = place(0, 1024.0, 6656);
        assert_eq!(p.gpu_weights_mib, 0.0);
        assert_eq!(p.slowdown, 10.0);
        assert!(check_fits(0, &p, 1e9).is_ok());
    }

    #[test]
    fn flux_with_1024_inference_on_12_gib_runs_out_of_memory() {
        let p = place(12288, 1024.0, 11500);
        let oom = check_fits(12288, &p, 3300.0).unwrap_err();
        assert_eq!(oom.free_mib, 1024.0);
        assert!(oom
            .message()
            .starts_with("CUDA out of memory. Tried to allocate 3.22 GiB."));
        assert!(check_fits(12288, &place(12288, 4096.0, 11500), 3300.0).is_ok());
    }
}
