//! The memory keys the proxy owns, and the one rule for a client that sends them
//! (`memory.client_memory_options`): in a generation's `override_settings` or in its own
//! `POST /sdapi/v1/options`, they are removed (`"strip"`), kept (`"honor"`) or refused
//! (`"reject"`).

use serde_json::{Map, Value};

use crate::backend::forge::key;
use crate::config::ClientMemoryOptions;

/// Options the proxy owns: its memory value and the per-preset "GPU Weights" it keeps in
/// step with it.
pub const OWNED: [&str; 3] = [
    key::INFERENCE_MEMORY,
    key::FLUX_GPU_WEIGHTS,
    key::XL_GPU_WEIGHTS,
];

/// Where a client sent the memory keys the proxy owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    OverrideSettings,
    OptionsCall,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Place::OverrideSettings => "override_settings",
            Place::OptionsCall => "the options call",
        })
    }
}

/// A client's owned keys, rejected (`"reject"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the proxy sets {} itself; remove it from {place} (memory.client_memory_options = \"reject\")", .keys.join(", "))]
pub struct Rejected {
    pub keys: Vec<String>,
    pub place: Place,
}

/// What the rule makes of the owned keys a client sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientMemory {
    /// The owned keys the client sent, in `OWNED`'s order.
    pub keys: Vec<String>,
    /// Kept (`"honor"`) rather than removed (`"strip"`).
    pub honoured: bool,
}

impl ClientMemory {
    /// Applies `rule` to the keys in `sent`.
    pub fn judge(
        rule: ClientMemoryOptions,
        sent: &Map<String, Value>,
        place: Place,
    ) -> Result<Self, Rejected> {
        let keys: Vec<String> = OWNED
            .iter()
            .filter(|key| sent.contains_key(**key))
            .map(|key| (*key).to_owned())
            .collect();
        match rule {
            _ if keys.is_empty() => Ok(Self::default()),
            ClientMemoryOptions::Reject => Err(Rejected { keys, place }),
            ClientMemoryOptions::Strip => Ok(Self {
                keys,
                honoured: false,
            }),
            ClientMemoryOptions::Honor => Ok(Self {
                keys,
                honoured: true,
            }),
        }
    }

    /// The keys to take out of what the client sent.
    pub fn stripped(&self) -> &[String] {
        if self.honoured {
            &[]
        } else {
            &self.keys
        }
    }

    /// The client's `forge_inference_memory` in MiB, when it is honoured and a number.
    pub fn honoured_value(&self, sent: &Map<String, Value>) -> Option<u64> {
        if !self.honoured {
            return None;
        }
        sent.get(key::INFERENCE_MEMORY)
            .and_then(Value::as_f64)
            .filter(|v| v.is_finite())
            .map(|v| v.max(0.0).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sent() -> Map<String, Value> {
        json!({"forge_inference_memory": 2000.4, "sd_model_checkpoint": "x", "forge_unet_storage_dtype": "Automatic"})
            .as_object()
            .cloned()
            .unwrap()
    }

    #[test]
    fn owned_keys_are_stripped_honoured_or_refused() {
        let strip =
            ClientMemory::judge(ClientMemoryOptions::Strip, &sent(), Place::OptionsCall).unwrap();
        assert_eq!(strip.stripped(), ["forge_inference_memory"]);
        assert_eq!(strip.honoured_value(&sent()), None);

        let honor =
            ClientMemory::judge(ClientMemoryOptions::Honor, &sent(), Place::OptionsCall).unwrap();
        assert!(honor.stripped().is_empty());
        assert_eq!(honor.honoured_value(&sent()), Some(2000));

        let refused = ClientMemory::judge(ClientMemoryOptions::Reject, &sent(), Place::OptionsCall)
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the proxy sets forge_inference_memory itself; remove it from the options call (memory.client_memory_options = \"reject\")"
        );
    }

    #[test]
    fn a_client_without_owned_keys_is_never_refused() {
        let plain = json!({"sd_model_checkpoint": "x"})
            .as_object()
            .cloned()
            .unwrap();
        let judged =
            ClientMemory::judge(ClientMemoryOptions::Reject, &plain, Place::OverrideSettings)
                .unwrap();
        assert_eq!(judged, ClientMemory::default());
    }
}
