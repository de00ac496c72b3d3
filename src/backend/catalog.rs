//! A backend's checkpoints, and every name Forge accepts for each: the proxy resolves a
//! checkpoint name exactly as Forge does before it decides anything on it.
//!
//! Forge (`modules/sd_models.py`, `CheckpointInfo.ids`) knows a checkpoint by its name with
//! its folder (`FLUX/flux1-dev.safetensors`), its file name without extension
//! (`flux1-dev`), its `model_name` (`FLUX_flux1-dev`), its title, and once its sha256 is
//! known its short hash, the sha256 and both names followed by ` [short hash]`; exactly as
//! spelled, no case folding, no substring. `GET /sdapi/v1/sd-models` gives all of that
//! except the legacy 8-hex hash, which the proxy cannot know. A name that is no alias is
//! dropped by Forge (`override_settings`) or refused (`POST /sdapi/v1/options`).

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

/// One checkpoint as `sd-models` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    /// Forge's `title`: `name [short hash]` once hashed, else the name.
    pub title: String,
    /// The file's path under the models folder, folders kept.
    pub name: String,
    /// The file name without folder and extension (Forge's `name_for_extra`).
    pub stem: String,
    /// The name without extension, `/` and `\` replaced by `_`.
    pub model_name: String,
    /// The first 10 hex digits of the sha256, once Forge has computed it.
    pub short_hash: Option<String>,
    pub sha256: Option<String>,
}

impl Checkpoint {
    /// Every alias Forge registers for it, in `CheckpointInfo.ids` order.
    fn aliases(&self) -> Vec<String> {
        let mut ids = vec![
            self.model_name.clone(),
            self.title.clone(),
            self.name.clone(),
            self.stem.clone(),
        ];
        if let Some(short) = &self.short_hash {
            ids.push(short.clone());
            if let Some(sha256) = &self.sha256 {
                ids.push(sha256.clone());
            }
            ids.push(format!("{} [{short}]", self.name));
            ids.push(format!("{} [{short}]", self.stem));
        }
        ids
    }

    /// One entry of `GET /sdapi/v1/sd-models`.
    fn from_entry(entry: &Value) -> Option<Checkpoint> {
        let text = |key: &str| {
            entry
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let title = text("title")?;
        let short_hash = text("hash");
        let name = match &short_hash {
            Some(hash) => title
                .strip_suffix(&format!(" [{hash}]"))
                .unwrap_or(&title)
                .to_owned(),
            None => title.clone(),
        };
        let file = text("filename").unwrap_or_else(|| name.clone());
        let base = file.rsplit(['/', '\\']).next().unwrap_or(&file);
        let stem = without_extension(base).to_owned();
        let model_name = text("model_name")
            .unwrap_or_else(|| without_extension(&name).replace(['/', '\\'], "_"));
        Some(Checkpoint {
            title,
            name,
            stem,
            model_name,
            sha256: text("sha256").filter(|_| short_hash.is_some()),
            short_hash,
        })
    }
}

fn without_extension(name: &str) -> &str {
    match name.rfind('.') {
        Some(dot) if dot > 0 && !name[dot..].contains(['/', '\\']) => &name[..dot],
        _ => name,
    }
}

/// The checkpoints of one backend and the alias table that resolves a name to one of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    checkpoints: Vec<Checkpoint>,
    aliases: HashMap<String, usize>,
}

impl Catalog {
    /// From the answer of `GET /sdapi/v1/sd-models`. A later checkpoint takes an alias an
    /// earlier one also has, as Forge's registration order does.
    pub fn from_sd_models(answer: &Value) -> Result<Catalog, String> {
        let entries = answer
            .as_array()
            .ok_or_else(|| "sd-models is not a list".to_owned())?;
        let checkpoints: Vec<Checkpoint> =
            entries.iter().filter_map(Checkpoint::from_entry).collect();
        let mut aliases = HashMap::new();
        for (index, checkpoint) in checkpoints.iter().enumerate() {
            for alias in checkpoint.aliases() {
                aliases.insert(alias, index);
            }
        }
        Ok(Catalog {
            checkpoints,
            aliases,
        })
    }

    /// The checkpoint a name selects on Forge, if any.
    pub fn resolve(&self, name: &str) -> Option<&Checkpoint> {
        self.aliases.get(name).map(|&i| &self.checkpoints[i])
    }

    pub fn len(&self) -> usize {
        self.checkpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checkpoints.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Catalog {
        Catalog::from_sd_models(&json!([
            {"title": "FLUX/flux1-dev-Q4_0.gguf [e9c9d702d0]", "model_name": "FLUX_flux1-dev-Q4_0",
             "hash": "e9c9d702d0", "sha256": "e9c9d702d0aa11bb22cc33dd44ee55ff66007788990011223344556677889900",
             "filename": "/forge/models/Stable-diffusion/FLUX/flux1-dev-Q4_0.gguf", "config": null},
            {"title": "sd_xl_base_1.0.safetensors", "model_name": "sd_xl_base_1.0", "hash": null,
             "sha256": null, "filename": "C:\\forge\\models\\Stable-diffusion\\sd_xl_base_1.0.safetensors",
             "config": null},
        ]))
        .unwrap()
    }

    #[test]
    fn every_alias_forge_accepts_resolves_exactly() {
        let catalog = catalog();
        for alias in [
            "FLUX/flux1-dev-Q4_0.gguf [e9c9d702d0]",
            "FLUX/flux1-dev-Q4_0.gguf",
            "flux1-dev-Q4_0",
            "FLUX_flux1-dev-Q4_0",
            "e9c9d702d0",
            "e9c9d702d0aa11bb22cc33dd44ee55ff66007788990011223344556677889900",
            "flux1-dev-Q4_0 [e9c9d702d0]",
        ] {
            assert_eq!(
                catalog.resolve(alias).map(|c| c.name.as_str()),
                Some("FLUX/flux1-dev-Q4_0.gguf"),
                "{alias}"
            );
        }
        for not_an_alias in [
            "FLUX/flux1-dev-Q4_0",
            "flux1-dev-q4_0",
            "flux1-dev",
            "e9c9d702",
            "flux1-dev-Q4_0.gguf",
            "nope.safetensors",
        ] {
            assert_eq!(catalog.resolve(not_an_alias), None, "{not_an_alias}");
        }
    }

    #[test]
    fn a_checkpoint_never_loaded_has_no_hash_aliases() {
        let catalog = catalog();
        let xl = catalog.resolve("sd_xl_base_1.0").unwrap();
        assert_eq!(xl.short_hash, None);
        assert_eq!(xl.stem, "sd_xl_base_1.0");
        assert_eq!(
            catalog.resolve("sd_xl_base_1.0.safetensors").unwrap().title,
            "sd_xl_base_1.0.safetensors"
        );
        assert_eq!(catalog.len(), 2);
    }

    #[test]
    fn a_later_checkpoint_takes_a_shared_alias() {
        let catalog = Catalog::from_sd_models(&json!([
            {"title": "a/model.safetensors", "filename": "/m/a/model.safetensors", "model_name": "a_model"},
            {"title": "b/model.safetensors", "filename": "/m/b/model.safetensors", "model_name": "b_model"},
        ]))
        .unwrap();
        assert_eq!(
            catalog.resolve("model").unwrap().name,
            "b/model.safetensors"
        );
        assert_eq!(
            catalog.resolve("a_model").unwrap().name,
            "a/model.safetensors"
        );
        assert!(Catalog::from_sd_models(&json!({"detail": "Not Found"})).is_err());
    }
}
