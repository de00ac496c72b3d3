//! The simulator's configuration: the command line, and the same struct for
//! tests that start it in-process.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use clap::Parser;

use crate::family::Family;

/// Where the simulator listens by default: Forge's own default port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7860";
/// A 12 GiB card, the seed example of FORGE.md.
pub const DEFAULT_VRAM_MIB: u64 = 12288;
/// A Flux, an SDXL and an SD 1.5 checkpoint; the SD 1.5 one is selected at
/// start, as in a fresh Forge.
pub const DEFAULT_CHECKPOINTS: &str =
    "flux1-dev-Q4_0.gguf,sd_xl_base_1.0.safetensors,v1-5-pruned-emaonly.safetensors";
/// Simulated durations at their real length.
pub const DEFAULT_TIME_SCALE: f64 = 1.0;
/// About the size of a 512x512 PNG from Stable Diffusion.
pub const DEFAULT_IMAGE_BYTES: usize = 200_000;

/// Everything that shapes one simulated Forge. Its `Default` is exactly the
/// command line's defaults.
#[derive(Clone, Debug, clap::Args)]
pub struct SimConfig {
    /// Address to listen on (tests use `start`, which binds 127.0.0.1:0 instead).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Total memory of the simulated GPU in MiB; 0 simulates a machine without
    /// a GPU (`/sdapi/v1/memory` then reports CUDA unavailable).
    #[arg(long, default_value_t = DEFAULT_VRAM_MIB)]
    pub vram_mib: u64,

    /// Comma-separated checkpoints, each `FILE[:FAMILY[:WEIGHTS_MIB]]`.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_CHECKPOINTS)]
    pub checkpoints: Vec<CheckpointSpec>,

    /// Factor applied to every simulated duration (0.001 makes a 30 s Flux
    /// generation take 30 ms).
    #[arg(long, default_value_t = DEFAULT_TIME_SCALE, value_parser = parse_time_scale)]
    pub time_scale: f64,

    /// Approximate size in bytes of each PNG the simulator returns.
    #[arg(long, default_value_t = DEFAULT_IMAGE_BYTES)]
    pub image_bytes: usize,

    /// Simulated ms per MiB of weights read from a checkpoint file (a first load, or a
    /// change of checkpoint, modules or dtype): 2.0 is about 500 MiB/s from disk.
    #[arg(long, default_value_t = 2.0, value_parser = parse_cost)]
    pub disk_load_ms_per_mib: f64,

    /// Simulated ms per MiB of weights moved back to the card from RAM after a memory
    /// change or `unload-checkpoint` (Forge does not read the file again): 0.25 is about
    /// 4 GiB/s, a PCIe copy of unpinned memory.
    #[arg(long, default_value_t = 0.25, value_parser = parse_cost)]
    pub ram_load_ms_per_mib: f64,

    /// `user:pass[,user2:pass2...]`: require HTTP Basic auth on /sdapi routes,
    /// like Forge's `--api-auth`.
    #[arg(long, value_parser = parse_api_auth)]
    pub api_auth: Option<String>,
}

/// Lets `Default` reuse clap's defaults, so the two can never drift apart.
#[derive(Parser)]
struct DefaultsOnly {
    #[command(flatten)]
    config: SimConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        DefaultsOnly::parse_from(["forge-sim"]).config
    }
}

impl SimConfig {
    /// The `user` → `pass` pairs of `api_auth`, in order; entries without a
    /// `:` are ignored (the command line rejects them up front).
    pub fn credentials(&self) -> Vec<(String, String)> {
        self.api_auth
            .as_deref()
            .map(|list| {
                list.split(',')
                    .filter_map(|pair| pair.split_once(':'))
                    .map(|(user, pass)| (user.to_owned(), pass.to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn parse_time_scale(text: &str) -> Result<f64, String> {
    let scale: f64 = text.parse().map_err(|e| format!("not a number: {e}"))?;
    if scale.is_finite() && scale >= 0.0 {
        Ok(scale)
    } else {
        Err("must be a finite number >= 0".into())
    }
}

fn parse_cost(text: &str) -> Result<f64, String> {
    parse_time_scale(text)
}

fn parse_api_auth(text: &str) -> Result<String, String> {
    if text.split(',').all(|pair| pair.contains(':')) {
        Ok(text.to_owned())
    } else {
        Err("expected user:pass[,user:pass...]".into())
    }
}

/// One checkpoint the simulated Forge offers, from `FILE[:FAMILY[:WEIGHTS_MIB]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointSpec {
    /// File name relative to Forge's `models/Stable-diffusion`, folder prefix
    /// allowed (`FLUX/my-model.safetensors`).
    pub file: String,
    /// Given, or guessed from the file name.
    pub family: Family,
    /// Given, or the family's default.
    pub weights_mib: u64,
}

impl CheckpointSpec {
    /// A checkpoint whose family and weights are guessed from the file name.
    pub fn new(file: impl Into<String>) -> Self {
        let file = file.into();
        let family = Family::guess(&file);
        CheckpointSpec {
            weights_mib: family.default_weights_mib(),
            file,
            family,
        }
    }
}

impl FromStr for CheckpointSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().splitn(3, ':');
        let file = parts.next().unwrap_or_default().trim();
        if file.is_empty() {
            return Err(format!("checkpoint {s:?}: empty file name"));
        }
        let mut spec = CheckpointSpec::new(file);
        if let Some(family) = parts.next().filter(|f| !f.is_empty()) {
            spec.family = family.parse()?;
            spec.weights_mib = spec.family.default_weights_mib();
        }
        if let Some(weights) = parts.next() {
            spec.weights_mib = weights
                .parse()
                .map_err(|e| format!("checkpoint {s:?}: weights {weights:?}: {e}"))?;
        }
        Ok(spec)
    }
}

impl fmt::Display for CheckpointSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.family, self.weights_mib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_equals_the_command_line_defaults() {
        let config = SimConfig::default();
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.vram_mib, 12288);
        assert_eq!(config.time_scale, 1.0);
        assert_eq!(config.image_bytes, 200_000);
        assert_eq!(config.api_auth, None);
        let files: Vec<_> = config.checkpoints.iter().map(|c| c.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "flux1-dev-Q4_0.gguf",
                "sd_xl_base_1.0.safetensors",
                "v1-5-pruned-emaonly.safetensors"
            ]
        );
    }

    #[test]
    fn spec_with_family_and_weights() {
        let spec: CheckpointSpec = "FLUX/my-model.safetensors:flux:11400".parse().unwrap();
        assert_eq!(spec.file, "FLUX/my-model.safetensors");
        assert_eq!(spec.family, Family::Flux);
        assert_eq!(spec.weights_mib, 11400);
    }

    #[test]
    fn spec_family_alone_takes_the_family_default_weights() {
        let spec: CheckpointSpec = "custom.safetensors:sdxl".parse().unwrap();
        assert_eq!(spec.family, Family::Sdxl);
        assert_eq!(spec.weights_mib, 6656);
    }

    #[test]
    fn spec_file_alone_guesses_everything() {
        let spec: CheckpointSpec = "flux1-dev-Q4_0.gguf".parse().unwrap();
        assert_eq!(spec.family, Family::Flux);
        assert_eq!(spec.weights_mib, 11500);
    }

    #[test]
    fn bad_specs_are_rejected() {
        assert!("".parse::<CheckpointSpec>().is_err());
        assert!("a.safetensors:sd9".parse::<CheckpointSpec>().is_err());
        assert!("a.safetensors:sd15:lots".parse::<CheckpointSpec>().is_err());
    }

    #[test]
    fn cli_flags_fill_the_config() {
        let parsed = DefaultsOnly::try_parse_from([
            "forge-sim",
            "--listen",
            "0.0.0.0:7861",
            "--vram-mib",
            "24576",
            "--checkpoints",
            "a.safetensors,b-xl.safetensors:sdxl:7000",
            "--time-scale",
            "0.5",
            "--image-bytes",
            "1000",
            "--api-auth",
            "u:p,v:q",
        ])
        .unwrap()
        .config;
        assert_eq!(parsed.vram_mib, 24576);
        assert_eq!(parsed.checkpoints.len(), 2);
        assert_eq!(parsed.checkpoints[1].weights_mib, 7000);
        assert_eq!(parsed.time_scale, 0.5);
        assert_eq!(
            parsed.credentials(),
            [("u".into(), "p".into()), ("v".into(), "q".into())]
        );
    }

    #[test]
    fn negative_time_scale_and_malformed_auth_are_rejected() {
        assert!(DefaultsOnly::try_parse_from(["forge-sim", "--time-scale", "-1"]).is_err());
        assert!(DefaultsOnly::try_parse_from(["forge-sim", "--api-auth", "nocolon"]).is_err());
    }
}
