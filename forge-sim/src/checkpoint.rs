//! The checkpoint list and its aliases, as Forge's `sd_models` builds them:
//! what `/sdapi/v1/sd-models` lists and what `sd_model_checkpoint` accepts.

use std::collections::HashMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::CheckpointSpec;
use crate::family::Family;

/// Where the simulated Forge pretends its checkpoints live.
const MODELS_DIR: &str = "/forge/models/Stable-diffusion";

/// One checkpoint, with every name Forge knows it by.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// File name relative to the models folder, folder prefix kept
    /// (`FLUX/my-model.safetensors`); what `sd_model_checkpoint` stores.
    pub name: String,
    /// `"<name> [<short hash>]"`.
    pub title: String,
    /// The name without extension, `/` replaced by `_` (Forge's `model_name`).
    pub model_name: String,
    /// The base name without folder and extension (Forge's `name_for_extra`,
    /// shown as `sd_model_name` in the generation info).
    pub name_for_extra: String,
    /// First 10 hex digits of `sha256`.
    pub short_hash: String,
    /// Deterministic stand-in for the file's SHA-256: the hash of its name.
    pub sha256: String,
    /// Absolute-looking path of the file.
    pub filename: String,
    pub family: Family,
    pub weights_mib: u64,
}

impl Checkpoint {
    fn from_spec(spec: &CheckpointSpec) -> Checkpoint {
        let name = spec.file.trim_start_matches('/').to_owned();
        let sha256 = hex(&Sha256::digest(name.as_bytes()));
        let short_hash = sha256[..10].to_owned();
        let base = name.rsplit('/').next().unwrap_or(&name);
        Checkpoint {
            title: format!("{name} [{short_hash}]"),
            model_name: strip_extension(&name).replace('/', "_"),
            name_for_extra: strip_extension(base).to_owned(),
            filename: format!("{MODELS_DIR}/{name}"),
            family: spec.family,
            weights_mib: spec.weights_mib,
            sha256,
            short_hash,
            name,
        }
    }

    /// Every string that selects this checkpoint, like Forge's `CheckpointInfo.ids`
    /// (modules/sd_models.py), minus the legacy 8-hex model hash and `name [hash]`: the
    /// name with its folder, the file name without extension, `model_name`, the title, and
    /// once hashed the short hash, the sha256 and both names with `[short hash]`. The name
    /// with its folder but without extension is not one.
    fn aliases(&self) -> Vec<String> {
        vec![
            self.model_name.clone(),
            self.title.clone(),
            self.name.clone(),
            self.name_for_extra.clone(),
            self.short_hash.clone(),
            self.sha256.clone(),
            format!("{} [{}]", self.name_for_extra, self.short_hash),
        ]
    }

    /// The entry of `/sdapi/v1/sd-models`.
    pub fn to_json(&self) -> Value {
        json!({
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.short_hash,
            "sha256": self.sha256,
            "filename": self.filename,
            "config": null,
        })
    }
}

/// The checkpoints in the order given, and the alias table that resolves a
/// name to one of them.
#[derive(Clone, Debug)]
pub struct Catalog {
    checkpoints: Vec<Checkpoint>,
    aliases: HashMap<String, usize>,
}

impl Catalog {
    pub fn new(specs: &[CheckpointSpec]) -> Catalog {
        let checkpoints: Vec<Checkpoint> = specs.iter().map(Checkpoint::from_spec).collect();
        let mut aliases = HashMap::new();
        for (index, checkpoint) in checkpoints.iter().enumerate() {
            for alias in checkpoint.aliases() {
                aliases.insert(alias, index);
            }
        }
        Catalog {
            checkpoints,
            aliases,
        }
    }

    /// The checkpoint an alias names, if any.
    pub fn resolve(&self, alias: &str) -> Option<&Checkpoint> {
        self.aliases.get(alias).map(|&i| &self.checkpoints[i])
    }

    /// The checkpoint selected at start: the first SD 1.5 one (a fresh Forge
    /// starts on SD 1.5), else the first.
    pub fn initial(&self) -> Option<&Checkpoint> {
        self.checkpoints
            .iter()
            .find(|c| c.family == Family::Sd15)
            .or_else(|| self.checkpoints.first())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Checkpoint> {
        self.checkpoints.iter()
    }
}

fn strip_extension(name: &str) -> &str {
    match name.rfind('.') {
        Some(dot) if !name[dot..].contains('/') && dot > 0 => &name[..dot],
        _ => name,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::new(&[
            "flux1-dev-Q4_0.gguf".parse().unwrap(),
            "FLUX/my-model.safetensors:flux:11400".parse().unwrap(),
            "v1-5-pruned-emaonly.safetensors".parse().unwrap(),
        ])
    }

    #[test]
    fn title_carries_a_ten_hex_short_hash_of_the_sha256() {
        let catalog = catalog();
        let flux = catalog.resolve("flux1-dev-Q4_0.gguf").unwrap();
        assert_eq!(flux.short_hash.len(), 10);
        assert_eq!(flux.sha256.len(), 64);
        assert!(flux.sha256.starts_with(&flux.short_hash));
        assert_eq!(
            flux.title,
            format!("flux1-dev-Q4_0.gguf [{}]", flux.short_hash)
        );
        assert_eq!(flux.model_name, "flux1-dev-Q4_0");
    }

    #[test]
    fn hashes_are_deterministic() {
        assert_eq!(
            catalog().resolve("flux1-dev-Q4_0").unwrap().sha256,
            catalog().resolve("flux1-dev-Q4_0").unwrap().sha256
        );
    }

    #[test]
    fn every_alias_resolves_to_its_checkpoint() {
        let catalog = catalog();
        let model = catalog
            .resolve("FLUX/my-model.safetensors")
            .unwrap()
            .clone();
        for alias in [
            model.title.as_str(),
            "FLUX/my-model.safetensors",
            "FLUX_my-model",
            "my-model",
            model.short_hash.as_str(),
            model.sha256.as_str(),
            &format!("FLUX/my-model.safetensors [{}]", model.short_hash),
            &format!("my-model [{}]", model.short_hash),
        ] {
            assert_eq!(catalog.resolve(alias), Some(&model), "alias {alias}");
        }
        // Not aliases: the folder without the extension, another case, a part.
        for other in [
            "FLUX/my-model",
            "flux/my-model.safetensors",
            "my-mod",
            "MY-MODEL",
        ] {
            assert!(catalog.resolve(other).is_none(), "{other}");
        }
        assert_eq!(
            model.filename,
            "/forge/models/Stable-diffusion/FLUX/my-model.safetensors"
        );
        assert!(catalog.resolve("nope").is_none());
    }

    #[test]
    fn initial_checkpoint_is_the_first_sd15_one() {
        assert_eq!(
            catalog().initial().unwrap().name,
            "v1-5-pruned-emaonly.safetensors"
        );
        let no_sd15 = Catalog::new(&["b-xl.safetensors".parse().unwrap()]);
        assert_eq!(no_sd15.initial().unwrap().name, "b-xl.safetensors");
    }
}
