//! Which profile (model family) a generation needs: a pure function of the request's hints
//! and the backend's current checkpoint. No I/O here.

use globset::{GlobBuilder, GlobMatcher};
use regex::{Regex, RegexBuilder};
use serde::Serialize;

/// A checkpoint-name pattern: a case-insensitive glob (`*flux*`), or a regex after `re:`.
#[derive(Debug, Clone)]
pub enum Pattern {
    Glob(GlobMatcher),
    Regex(Regex),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(expression) = text.strip_prefix("re:") {
            RegexBuilder::new(expression)
                .case_insensitive(true)
                .build()
                .map(Self::Regex)
                .map_err(|e| e.to_string())
        } else {
            GlobBuilder::new(text)
                .case_insensitive(true)
                .literal_separator(false)
                .build()
                .map(|g| Self::Glob(g.compile_matcher()))
                .map_err(|e| e.to_string())
        }
    }

    fn is_match(&self, candidate: &str) -> bool {
        match self {
            Self::Glob(glob) => glob.is_match(candidate),
            Self::Regex(regex) => regex.is_match(candidate),
        }
    }
}

/// The names Forge accepts for one checkpoint: the title may carry a ` [hash]` suffix and a
/// folder prefix (`FLUX/flux1-dev.safetensors [a1b2c3d4]`); patterns are tried on the title,
/// the file name with and without folder, and the name without extension.
pub fn checkpoint_aliases(title: &str) -> Vec<String> {
    let mut names = vec![title.to_owned()];
    let without_hash = match title.rfind(" [") {
        Some(i) if title.ends_with(']') => &title[..i],
        _ => title,
    };
    let file = without_hash
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(without_hash);
    for name in [without_hash, file] {
        names.push(name.to_owned());
        if let Some((stem, _ext)) = name.rsplit_once('.') {
            names.push(stem.to_owned());
        }
    }
    names.dedup();
    names
}

/// One of the configured profiles, by its place in matching order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProfileId(pub usize);

/// Why a request got its profile, for logs, the status page and the plan endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", content = "value", rename_all = "snake_case")]
pub enum Reason {
    /// The `X-Forge-Model-Type` header.
    Header(String),
    /// `override_settings.sd_model_checkpoint`.
    OverrideCheckpoint(String),
    /// `override_settings.forge_preset`.
    OverridePreset(String),
    /// The checkpoint the backend has loaded.
    BackendCheckpoint(String),
    /// Nothing else matched.
    Default,
}

/// What the resolver needs of a profile.
pub trait ProfileMatch {
    fn name(&self) -> &str;
    fn patterns(&self) -> &[Pattern];
    /// `forge_preset` values (`flux`, `xl`, `sd`) that mean this profile.
    fn presets(&self) -> &[String];
}

/// The hints a request carries, in resolution order.
#[derive(Debug, Default, Clone)]
pub struct Hints<'a> {
    pub header: Option<&'a str>,
    pub override_checkpoint: Option<&'a str>,
    pub override_preset: Option<&'a str>,
    pub backend_checkpoint: Option<&'a str>,
}

/// The header named a profile that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model type {given:?} in X-Forge-Model-Type: known profiles are {}", .known.join(", "))]
pub struct UnknownProfile {
    pub given: String,
    pub known: Vec<String>,
}

/// The first profile whose patterns match one of the checkpoint's aliases.
pub fn profile_for_checkpoint<P: ProfileMatch>(
    profiles: &[P],
    checkpoint: &str,
) -> Option<ProfileId> {
    let aliases = checkpoint_aliases(checkpoint);
    profiles
        .iter()
        .position(|p| {
            p.patterns()
                .iter()
                .any(|pattern| aliases.iter().any(|alias| pattern.is_match(alias)))
        })
        .map(ProfileId)
}

/// Resolves the profile: header, then override checkpoint, then override preset, then the
/// backend's checkpoint, else `default`.
pub fn resolve<P: ProfileMatch>(
    profiles: &[P],
    default: ProfileId,
    hints: &Hints<'_>,
) -> Result<(ProfileId, Reason), UnknownProfile> {
    if let Some(given) = hints.header {
        let given = given.trim();
        return profiles
            .iter()
            .position(|p| p.name().eq_ignore_ascii_case(given))
            .map(|i| (ProfileId(i), Reason::Header(given.to_owned())))
            .ok_or_else(|| UnknownProfile {
                given: given.to_owned(),
                known: profiles.iter().map(|p| p.name().to_owned()).collect(),
            });
    }
    if let Some(checkpoint) = hints.override_checkpoint {
        if let Some(i) = profile_for_checkpoint(profiles, checkpoint) {
            return Ok((i, Reason::OverrideCheckpoint(checkpoint.to_owned())));
        }
    }
    if let Some(preset) = hints.override_preset {
        if let Some(i) = profiles
            .iter()
            .position(|p| p.presets().iter().any(|s| s.eq_ignore_ascii_case(preset)))
        {
            return Ok((ProfileId(i), Reason::OverridePreset(preset.to_owned())));
        }
    }
    if let Some(checkpoint) = hints.backend_checkpoint {
        if let Some(i) = profile_for_checkpoint(profiles, checkpoint) {
            return Ok((i, Reason::BackendCheckpoint(checkpoint.to_owned())));
        }
    }
    Ok((default, Reason::Default))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct P {
        name: String,
        patterns: Vec<Pattern>,
        presets: Vec<String>,
    }

    impl ProfileMatch for P {
        fn name(&self) -> &str {
            &self.name
        }
        fn patterns(&self) -> &[Pattern] {
            &self.patterns
        }
        fn presets(&self) -> &[String] {
            &self.presets
        }
    }

    fn profile(name: &str, patterns: &[&str], presets: &[&str]) -> P {
        P {
            name: name.into(),
            patterns: patterns
                .iter()
                .map(|p| Pattern::parse(p).unwrap())
                .collect(),
            presets: presets.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn defaults() -> Vec<P> {
        vec![
            profile("sd35", &["re:^sd3(\\.5)?[_-]"], &[]),
            profile("flux", &["*flux*"], &["flux"]),
            profile(
                "sdxl",
                &["*xl*", "*pony*", "*illustrious*", "*noob*"],
                &["xl"],
            ),
            profile("sd15", &["*"], &["sd"]),
        ]
    }

    fn by_checkpoint(checkpoint: &str) -> &'static str {
        let profiles = defaults();
        let hints = Hints {
            backend_checkpoint: Some(checkpoint),
            ..Hints::default()
        };
        let (i, _) = resolve(&profiles, ProfileId(3), &hints).unwrap();
        ["sd35", "flux", "sdxl", "sd15"][i.0]
    }

    #[test]
    fn aliases_cover_title_file_and_stem_with_and_without_folder() {
        assert_eq!(
            checkpoint_aliases("FLUX/flux1-dev-Q4_0.gguf [a1b2c3d4e5]"),
            [
                "FLUX/flux1-dev-Q4_0.gguf [a1b2c3d4e5]",
                "FLUX/flux1-dev-Q4_0.gguf",
                "FLUX/flux1-dev-Q4_0",
                "flux1-dev-Q4_0.gguf",
                "flux1-dev-Q4_0"
            ]
        );
        assert_eq!(checkpoint_aliases("v1-5"), ["v1-5"]);
    }

    #[test]
    fn checkpoint_names_map_to_families_case_insensitively() {
        assert_eq!(by_checkpoint("flux1-dev-Q4_0.gguf [a1b2c3d4e5]"), "flux");
        assert_eq!(by_checkpoint("FLUX/Flux1-Schnell-fp8.safetensors"), "flux");
        assert_eq!(
            by_checkpoint("sd_xl_base_1.0.safetensors [31e35c80fc]"),
            "sdxl"
        );
        assert_eq!(by_checkpoint("ponyDiffusionV6XL.safetensors"), "sdxl");
        assert_eq!(by_checkpoint("Illustrious-XL-v1.0"), "sdxl");
        assert_eq!(by_checkpoint("noobaiXLNAIXL_vPred10.safetensors"), "sdxl");
        assert_eq!(by_checkpoint("sd3.5_large.safetensors"), "sd35");
        assert_eq!(
            by_checkpoint("v1-5-pruned-emaonly.safetensors [6ce0161689]"),
            "sd15"
        );
    }

    #[test]
    fn embedded_profiles_classify_common_checkpoints() {
        let config = crate::Config::default();
        let family = |name: &str| {
            profile_for_checkpoint(&config.profiles, name).map(|i| config.profile(i).name.as_str())
        };
        assert_eq!(family("flux1-dev-Q4_0.gguf [a1b2c3d4e5]"), Some("flux"));
        assert_eq!(family("FLUX/flux1-schnell-fp8.safetensors"), Some("flux"));
        assert_eq!(
            family("sd_xl_base_1.0.safetensors [31e35c80fc]"),
            Some("sdxl")
        );
        assert_eq!(family("ponyDiffusionV6XL_v6.safetensors"), Some("sdxl"));
        assert_eq!(family("illustriousXL_v01.safetensors"), Some("sdxl"));
        assert_eq!(family("noobaiXLNAIXL_vPred10.safetensors"), Some("sdxl"));
        assert_eq!(family("v1-5-pruned-emaonly.safetensors"), Some("sd15"));
        assert_eq!(family("dreamshaper_8.safetensors"), Some("sd15"));
    }

    #[test]
    fn header_wins_and_unknown_header_names_the_known_profiles() {
        let profiles = defaults();
        let hints = Hints {
            header: Some("FLUX"),
            override_checkpoint: Some("sd_xl_base_1.0.safetensors"),
            ..Hints::default()
        };
        assert_eq!(
            resolve(&profiles, ProfileId(3), &hints).unwrap(),
            (ProfileId(1), Reason::Header("FLUX".into()))
        );
        let err = resolve(
            &profiles,
            ProfileId(3),
            &Hints {
                header: Some("sd9"),
                ..Hints::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown model type \"sd9\" in X-Forge-Model-Type: known profiles are sd35, flux, sdxl, sd15"
        );
    }

    #[test]
    fn resolution_order_is_override_checkpoint_then_preset_then_backend_then_default() {
        let profiles = defaults();
        let all = Hints {
            header: None,
            override_checkpoint: Some("flux1-dev.safetensors"),
            override_preset: Some("xl"),
            backend_checkpoint: Some("v1-5-pruned-emaonly.safetensors"),
        };
        assert_eq!(
            resolve(&profiles, ProfileId(3), &all).unwrap().0,
            ProfileId(1)
        );
        let preset = Hints {
            override_checkpoint: None,
            ..all.clone()
        };
        assert_eq!(
            resolve(&profiles, ProfileId(3), &preset).unwrap(),
            (ProfileId(2), Reason::OverridePreset("xl".into()))
        );
        let unknown_preset = Hints {
            override_checkpoint: None,
            override_preset: Some("all"),
            ..all.clone()
        };
        assert_eq!(
            resolve(&profiles, ProfileId(3), &unknown_preset).unwrap().0,
            ProfileId(3)
        );
        // The backend's checkpoint decides, not the default (0 here).
        assert_eq!(
            resolve(&profiles, ProfileId(0), &unknown_preset).unwrap(),
            (
                ProfileId(3),
                Reason::BackendCheckpoint("v1-5-pruned-emaonly.safetensors".into())
            )
        );
        let nothing = Hints::default();
        assert_eq!(
            resolve(&profiles, ProfileId(2), &nothing).unwrap(),
            (ProfileId(2), Reason::Default)
        );
    }
}
