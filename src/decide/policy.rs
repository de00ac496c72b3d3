//! What `forge_inference_memory` a generation needs: a pure function of the profile's
//! policy, the GPU reading and the request's size. No I/O here.
//!
//! Forge splits the card in two: GPU Weights (model weights kept on the GPU) and inference
//! memory (kept free for computation); `weights = total - inference`. Every figure is MiB.

use serde::Serialize;

/// Pixels in one "megapixel" here: 1024 × 1024, so a 1024² image is exactly 1.0.
pub const PIXELS_PER_MEGAPIXEL: f64 = 1024.0 * 1024.0;
/// Forge warns "[Low VRAM Warning]" below `min(512, 5% of total)` of inference memory.
pub const LOW_VRAM_FLOOR_MIB: f64 = 512.0;
pub const LOW_VRAM_FRACTION: f64 = 0.05;

/// How a profile chooses its memory split.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum MemoryPolicy {
    /// A fixed `forge_inference_memory`, as in the seed article (Flux 4096, SD 10240).
    Fixed { inference_mib: u64 },
    /// A fixed GPU Weights value; inference = total - weights.
    Weights { gpu_weights_mib: u64 },
    /// GPU Weights as a share of the card.
    WeightsPercent { gpu_weights_percent: f64 },
    /// Weights = the model's size, capped so a compute reserve stays free; the reserve
    /// grows with the request's pixels beyond `reference_megapixels`.
    Auto {
        weights_mib: u64,
        min_inference_mib: u64,
        inference_per_megapixel_mib: u64,
        reference_megapixels: f64,
    },
}

/// The part of a generation request that decides how much compute memory it needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RequestSize {
    pub width: u32,
    pub height: u32,
    pub batch_size: u32,
    /// Output size of the hires-fix pass, when `enable_hr`.
    pub hires: Option<(u32, u32)>,
}

impl Default for RequestSize {
    /// Forge's API defaults: 512 × 512, one image.
    fn default() -> Self {
        Self {
            width: 512,
            height: 512,
            batch_size: 1,
            hires: None,
        }
    }
}

impl RequestSize {
    /// Megapixels computed at once: the largest pass (hires output when enabled) × batch.
    pub fn megapixels(&self) -> f64 {
        let (w, h) = self.hires.unwrap_or((self.width, self.height));
        let (w, h) = (w.max(self.width), h.max(self.height));
        f64::from(w) * f64::from(h) * f64::from(self.batch_size.max(1)) / PIXELS_PER_MEGAPIXEL
    }
}

/// The result: the value for Forge and how it came about. `gpu_weights_mib` is what Forge's
/// "GPU Weights" slider shows for it: `total - inference`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryDecision {
    pub inference_mib: u64,
    pub gpu_weights_mib: u64,
    /// The card size the split was computed on (total, less other processes when counted).
    pub usable_mib: u64,
    /// The compute reserve the request needs (auto policy only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserve_mib: Option<u64>,
    /// Set when a limit changed the value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clamped: Option<Clamp>,
}

/// The limit that changed a computed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clamp {
    /// Raised to Forge's low-VRAM threshold.
    LowVramFloor,
    /// Lowered to what the card has.
    CardSize,
}

/// Forge's low-VRAM threshold for a card: `min(512, 5% of total)`, rounded up.
pub fn low_vram_threshold_mib(total_mib: u64) -> u64 {
    LOW_VRAM_FLOOR_MIB
        .min(total_mib as f64 * LOW_VRAM_FRACTION)
        .ceil() as u64
}

/// Decides the inference memory for a card of `total_mib`, of which `other_processes_mib`
/// is taken by other programs (0 when not counted).
pub fn decide(
    policy: &MemoryPolicy,
    total_mib: u64,
    other_processes_mib: u64,
    size: &RequestSize,
) -> MemoryDecision {
    let usable = total_mib.saturating_sub(other_processes_mib);
    let mut reserve_mib = None;
    let wanted_inference: i128 = match policy {
        MemoryPolicy::Fixed { inference_mib } => i128::from(*inference_mib),
        MemoryPolicy::Weights { gpu_weights_mib } => {
            i128::from(usable) - i128::from(*gpu_weights_mib)
        }
        MemoryPolicy::WeightsPercent {
            gpu_weights_percent,
        } => {
            let weights = (usable as f64 * gpu_weights_percent / 100.0).round() as i128;
            i128::from(usable) - weights
        }
        MemoryPolicy::Auto {
            weights_mib,
            min_inference_mib,
            inference_per_megapixel_mib,
            reference_megapixels,
        } => {
            let extra_mp = (size.megapixels() - reference_megapixels).max(0.0);
            // Saturating: a request of absurd size asks for the whole card, it does not wrap.
            let reserve = min_inference_mib
                .saturating_add((extra_mp * *inference_per_megapixel_mib as f64).ceil() as u64);
            reserve_mib = Some(reserve);
            let weights = (*weights_mib).min(usable.saturating_sub(reserve));
            i128::from(usable) - i128::from(weights)
        }
    };
    // The split is computed on the usable part of the card: Forge loads weights into
    // `free - inference`, and other programs' memory is not free.
    let wanted = wanted_inference;
    let floor = i128::from(low_vram_threshold_mib(total_mib));
    // Other programs' memory is not the proxy's to give, but the floor holds even when they
    // leave less than it.
    let ceiling = i128::from(usable).max(floor);
    let (inference, clamped) = if wanted < floor {
        (floor, Some(Clamp::LowVramFloor))
    } else if wanted > ceiling {
        (ceiling, Some(Clamp::CardSize))
    } else {
        (wanted, None)
    };
    let inference_mib = u64::try_from(inference).unwrap_or(usable);
    MemoryDecision {
        inference_mib,
        gpu_weights_mib: total_mib.saturating_sub(inference_mib),
        usable_mib: usable,
        reserve_mib,
        clamped,
    }
}

/// Whether a new value is worth a model reload, given what the backend has now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The backend already has this value.
    Same,
    /// Different, but by less than `min_change_mib`: not worth a reload.
    WithinHysteresis,
    Apply,
}

pub fn change_needed(current_mib: Option<f64>, new_mib: u64, min_change_mib: u64) -> Change {
    match current_mib {
        None => Change::Apply,
        Some(current) if (current - new_mib as f64).abs() < 0.5 => Change::Same,
        Some(current) if (current - new_mib as f64).abs() < min_change_mib as f64 => {
            Change::WithinHysteresis
        }
        Some(_) => Change::Apply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded profiles' policies, as the proxy runs them.
    fn embedded(name: &str) -> MemoryPolicy {
        let config = crate::Config::default();
        let profile = config.profiles.iter().find(|p| p.name == name);
        profile.map(|p| p.policy.clone()).expect("embedded profile")
    }

    fn flux() -> MemoryPolicy {
        embedded("flux")
    }

    fn sdxl() -> MemoryPolicy {
        embedded("sdxl")
    }

    fn sd15() -> MemoryPolicy {
        embedded("sd15")
    }

    fn at_default_size(policy: &MemoryPolicy, total: u64) -> u64 {
        decide(policy, total, 0, &RequestSize::default()).inference_mib
    }

    #[test]
    fn flux_on_12_gib_card_reserves_4096_and_sd15_10240() {
        assert_eq!(at_default_size(&flux(), 12288), 4096);
        assert_eq!(at_default_size(&sd15(), 12288), 10240);
        assert_eq!(at_default_size(&sdxl(), 12288), 5632);
    }

    #[test]
    fn flux_on_24_gib_card_reserves_12288_and_sd15_22528() {
        assert_eq!(at_default_size(&flux(), 24576), 12288);
        assert_eq!(at_default_size(&sd15(), 24576), 22528);
        assert_eq!(at_default_size(&sdxl(), 24576), 17920);
    }

    #[test]
    fn flux_on_8_gib_card_reserves_4096_and_sd15_6144() {
        assert_eq!(at_default_size(&flux(), 8192), 4096);
        assert_eq!(at_default_size(&sd15(), 8192), 6144);
        assert_eq!(at_default_size(&sdxl(), 8192), 2048);
    }

    #[test]
    fn reserve_grows_with_pixels_batch_and_hires_output() {
        let big = RequestSize {
            width: 1024,
            height: 1024,
            batch_size: 2,
            hires: None,
        };
        // 2.0 MP, 1.0 beyond the reference: 4096 + 1536 reserved, weights capped to the rest.
        let d = decide(&flux(), 12288, 0, &big);
        assert_eq!(d.reserve_mib, Some(5632));
        assert_eq!(d.inference_mib, 5632);
        let hires = RequestSize {
            width: 1024,
            height: 1024,
            batch_size: 1,
            hires: Some((2048, 2048)),
        };
        assert_eq!(hires.megapixels(), 4.0);
        assert_eq!(
            decide(&flux(), 12288, 0, &hires).inference_mib,
            4096 + 3 * 1536
        );
    }

    #[test]
    fn fixed_and_weights_policies() {
        let fixed = MemoryPolicy::Fixed {
            inference_mib: 4096,
        };
        assert_eq!(at_default_size(&fixed, 12288), 4096);
        let weights = MemoryPolicy::Weights {
            gpu_weights_mib: 8192,
        };
        assert_eq!(at_default_size(&weights, 12288), 4096);
        let percent = MemoryPolicy::WeightsPercent {
            gpu_weights_percent: 75.0,
        };
        assert_eq!(at_default_size(&percent, 12288), 3072);
    }

    #[test]
    fn never_below_the_low_vram_threshold() {
        let greedy = MemoryPolicy::Weights {
            gpu_weights_mib: 99_999,
        };
        let d = decide(&greedy, 24576, 0, &RequestSize::default());
        assert_eq!(
            (d.inference_mib, d.clamped),
            (512, Some(Clamp::LowVramFloor))
        );
        // A 4 GiB card: 5% is 204.8, rounded up.
        let d = decide(&greedy, 4096, 0, &RequestSize::default());
        assert_eq!((d.inference_mib, d.gpu_weights_mib), (205, 3891));
        assert_eq!(low_vram_threshold_mib(12288), 512);
    }

    #[test]
    fn never_above_the_card() {
        let fixed = MemoryPolicy::Fixed {
            inference_mib: 50_000,
        };
        let d = decide(&fixed, 12288, 0, &RequestSize::default());
        assert_eq!(
            (d.inference_mib, d.gpu_weights_mib, d.clamped),
            (12288, 0, Some(Clamp::CardSize))
        );
    }

    #[test]
    fn other_processes_memory_is_left_to_them() {
        // 2 GiB used by another program: the split is made on the 10 GiB left, so Flux's
        // weights shrink by that much and its compute reserve stays whole.
        let d = decide(&flux(), 12288, 2048, &RequestSize::default());
        assert_eq!(d.usable_mib, 10240);
        assert_eq!(d.inference_mib, 4096);
        let alone = decide(&flux(), 12288, 0, &RequestSize::default());
        assert_eq!(alone.inference_mib, 4096);
        // With a 1 MP reserve and more taken by others, the weights give way, not the reserve.
        let crowded = decide(&flux(), 12288, 6144, &RequestSize::default());
        assert_eq!((crowded.usable_mib, crowded.inference_mib), (6144, 4096));
        // SD 1.5's reserve is whatever its weights leave: 2 GiB less with 2 GiB taken.
        let sd = decide(&sd15(), 12288, 2048, &RequestSize::default());
        assert_eq!(sd.inference_mib, 8192);
    }

    proptest::proptest! {
        /// Whatever the request's size and the card, the value is a split Forge accepts:
        /// at least its low-VRAM threshold, at most the card, and nothing panics or wraps.
        #[test]
        fn any_request_on_any_card_gets_a_value_between_the_floor_and_the_card(
            width in proptest::prelude::any::<u32>(),
            height in proptest::prelude::any::<u32>(),
            batch_size in proptest::prelude::any::<u32>(),
            hires in proptest::option::of((proptest::prelude::any::<u32>(), proptest::prelude::any::<u32>())),
            total in 0u64..(1 << 24),
            other_share in 0.0f64..=1.5,
            which in 0usize..7,
            knob in proptest::prelude::any::<u64>(),
            percent in -50.0f64..250.0,
        ) {
            let size = RequestSize { width, height, batch_size, hires };
            let policy = match which {
                0 => flux(),
                1 => sdxl(),
                2 => sd15(),
                3 => MemoryPolicy::Fixed { inference_mib: knob },
                4 => MemoryPolicy::Weights { gpu_weights_mib: knob },
                5 => MemoryPolicy::WeightsPercent { gpu_weights_percent: percent },
                _ => MemoryPolicy::Auto {
                    weights_mib: knob,
                    min_inference_mib: knob.rotate_left(17),
                    inference_per_megapixel_mib: knob.rotate_left(31),
                    reference_megapixels: 0.0,
                },
            };
            let other = (total as f64 * other_share) as u64;
            let d = decide(&policy, total, other, &size);
            proptest::prop_assert!(d.inference_mib >= low_vram_threshold_mib(total));
            proptest::prop_assert!(d.inference_mib <= total);
            proptest::prop_assert_eq!(d.gpu_weights_mib, total - d.inference_mib);
        }
    }

    #[test]
    fn an_absurd_request_asks_for_the_whole_card() {
        let absurd = RequestSize {
            width: u32::MAX,
            height: u32::MAX,
            batch_size: u32::MAX,
            hires: Some((u32::MAX, u32::MAX)),
        };
        let d = decide(&flux(), 12288, 0, &absurd);
        assert_eq!(d.reserve_mib, Some(u64::MAX));
        assert_eq!((d.inference_mib, d.gpu_weights_mib), (12288, 0));
    }

    #[test]
    fn hysteresis_skips_small_changes() {
        assert_eq!(change_needed(None, 4096, 256), Change::Apply);
        assert_eq!(change_needed(Some(4096.0), 4096, 256), Change::Same);
        assert_eq!(
            change_needed(Some(4000.0), 4096, 256),
            Change::WithinHysteresis
        );
        assert_eq!(change_needed(Some(3840.0), 4096, 256), Change::Apply);
        assert_eq!(change_needed(Some(1024.0), 4096, 0), Change::Apply);
    }
}
