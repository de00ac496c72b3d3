//! Model families and the per-family numbers of the timing and memory model.
//!
//! Every number here is documented, with its source, in the crate's README
//! ("Timing and memory model"). They describe an RTX 3090-class card.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The architecture family of a checkpoint: what decides its size, speed and
/// the memory a generation needs besides the weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Stable Diffusion 1.x.
    Sd15,
    /// Stable Diffusion XL and its descendants (Pony, Illustrious, NoobAI).
    Sdxl,
    /// Flux.1.
    Flux,
}

/// One megapixel, as the timing model counts it: a 1024x1024 image.
const MEGAPIXEL: f64 = 1024.0 * 1024.0;

impl Family {
    /// Guesses the family from a checkpoint's file name, the way a person
    /// reading a model folder would.
    pub fn guess(file: &str) -> Family {
        let name = file.to_ascii_lowercase();
        if name.contains("flux") {
            Family::Flux
        } else if ["xl", "pony", "illustrious", "noobai"]
            .iter()
            .any(|hint| name.contains(hint))
        {
            Family::Sdxl
        } else {
            Family::Sd15
        }
    }

    /// Weights (MiB) of a checkpoint of this family when the spec does not
    /// say, from FORGE.md's "Model families and rough weight sizes".
    pub fn default_weights_mib(self) -> u64 {
        match self {
            Family::Sd15 => 2000,
            Family::Sdxl => 6656,
            // Flux.1-dev GGUF Q4_0 (6 800) + T5-XXL fp8 (4 700).
            Family::Flux => 11500,
        }
    }

    /// Sampling cost in milliseconds per step per megapixel of one image,
    /// with all weights on the GPU.
    pub fn step_ms_per_megapixel(self) -> f64 {
        match self {
            Family::Sd15 => 280.0,
            Family::Sdxl => 320.0,
            Family::Flux => 1500.0,
        }
    }

    /// Memory (MiB) a sampling pass needs besides the weights: a fixed part
    /// plus a part per megapixel of the whole batch.
    pub fn compute_need_mib(self, width: u32, height: u32, batch_size: u32) -> f64 {
        let (base, per_megapixel) = match self {
            Family::Sd15 => (500.0, 900.0),
            Family::Sdxl => (1000.0, 1000.0),
            Family::Flux => (1500.0, 1800.0),
        };
        base + per_megapixel * megapixels(width, height) * f64::from(batch_size)
    }

    /// Unscaled duration of one sampling step for a batch, in milliseconds.
    pub fn step_ms(self, width: u32, height: u32, batch_size: u32, slowdown: f64) -> f64 {
        self.step_ms_per_megapixel() * megapixels(width, height) * f64::from(batch_size) * slowdown
    }

    /// The name used on the command line and in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Sd15 => "sd15",
            Family::Sdxl => "sdxl",
            Family::Flux => "flux",
        }
    }
}

/// Megapixels of one image of this size.
pub fn megapixels(width: u32, height: u32) -> f64 {
    f64::from(width) * f64::from(height) / MEGAPIXEL
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Family {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sd15" | "sd1.5" | "sd1" | "sd" => Ok(Family::Sd15),
            "sdxl" | "xl" => Ok(Family::Sdxl),
            "flux" => Ok(Family::Flux),
            other => Err(format!(
                "unknown model family {other:?} (expected sd15, sdxl or flux)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_is_guessed_from_the_file_name() {
        assert_eq!(Family::guess("flux1-dev-Q4_0.gguf"), Family::Flux);
        assert_eq!(Family::guess("FLUX/my-model.safetensors"), Family::Flux);
        assert_eq!(Family::guess("sd_xl_base_1.0.safetensors"), Family::Sdxl);
        assert_eq!(Family::guess("ponyDiffusionV6.safetensors"), Family::Sdxl);
        assert_eq!(Family::guess("Illustrious-v1.safetensors"), Family::Sdxl);
        assert_eq!(Family::guess("NoobAI-eps.safetensors"), Family::Sdxl);
        assert_eq!(
            Family::guess("v1-5-pruned-emaonly.safetensors"),
            Family::Sd15
        );
    }

    #[test]
    fn flux_at_one_megapixel_needs_3300_mib_to_compute() {
        assert_eq!(Family::Flux.compute_need_mib(1024, 1024, 1), 3300.0);
        assert_eq!(Family::Sd15.compute_need_mib(512, 512, 4), 500.0 + 900.0);
    }

    #[test]
    fn step_cost_scales_with_pixels_batch_and_slowdown() {
        let one = Family::Sdxl.step_ms(1024, 1024, 1, 1.0);
        assert_eq!(one, 320.0);
        assert_eq!(Family::Sdxl.step_ms(1024, 1024, 2, 1.0), 2.0 * one);
        assert_eq!(Family::Sdxl.step_ms(1024, 1024, 1, 10.0), 10.0 * one);
        assert_eq!(Family::Sdxl.step_ms(512, 512, 1, 1.0), one / 4.0);
    }

    #[test]
    fn family_names_parse_case_insensitively() {
        assert_eq!("SDXL".parse::<Family>(), Ok(Family::Sdxl));
        assert_eq!("sd15".parse::<Family>(), Ok(Family::Sd15));
        assert!("sd3".parse::<Family>().is_err());
    }
}
