//! Stage 2: the profile the request names itself, to choose a backend for it: the
//! `X-Forge-Model-Type` header, else `override_settings.sd_model_checkpoint` resolved as
//! Forge resolves it (through the backends' checkpoint catalogs), else
//! `override_settings.forge_preset`. Without any, the chosen backend's own checkpoint
//! decides, in the prepare stage. An unknown header is refused here, before any wait.

use serde_json::Value;

use crate::backend::forge::{key, Forge};
use crate::decide::plan::Named;
use crate::decide::profile::{self, Hints, ProfileId, Reason};
use crate::error::ProxyError;
use crate::generation::Generation;

/// The profile index the request names, or `None` when the backend's checkpoint decides.
pub async fn wanted_profile(generation: &Generation<'_>) -> Result<Option<ProfileId>, ProxyError> {
    let config = &generation.config;
    let overrides = generation.body.override_settings();
    let text = |key: &str| overrides.get(key).and_then(Value::as_str);
    let checkpoint = match text(key::CHECKPOINT) {
        Some(name) if generation.model_type.is_none() => {
            Some(resolve_anywhere(generation, name).await)
        }
        _ => None,
    };
    let hints = Hints {
        header: generation.model_type.as_deref(),
        override_checkpoint: checkpoint.as_ref().and_then(Named::matchable),
        override_preset: text(key::PRESET),
        backend_checkpoint: None,
    };
    let (index, reason) = profile::resolve(&config.profiles, config.default_profile, &hints)?;
    Ok((reason != Reason::Default).then_some(index))
}

/// `name` as the first healthy backend whose catalog knows it resolves it. A catalog that
/// lacks it is read again first (at most once per `CATALOG_REREAD`). `Unknown` when every
/// catalog was read and none knows it; as spelled when none could be read.
async fn resolve_anywhere(generation: &Generation<'_>, name: &str) -> Named {
    let state = generation.state;
    let healthy = || {
        state
            .backends
            .ids()
            .filter(|id| state.scheduler.is_healthy(*id))
    };
    for id in healthy() {
        if let Some(checkpoint) = state
            .backends
            .get(id)
            .catalog()
            .and_then(|catalog| catalog.resolve(name).cloned())
        {
            return Named::Checkpoint(checkpoint.title);
        }
    }
    let mut read_one = false;
    for id in healthy() {
        let backend = &*state.backends.get(id);
        let forge = Forge::reading_for(&state.forwarder, &backend.config, &generation.client);
        let Some(catalog) = backend.catalog_knowing(&forge, &[name]).await else {
            continue;
        };
        read_one = true;
        if let Some(checkpoint) = catalog.resolve(name) {
            return Named::Checkpoint(checkpoint.title.clone());
        }
    }
    if read_one {
        Named::Unknown
    } else {
        Named::AsSpelled(name.to_owned())
    }
}
