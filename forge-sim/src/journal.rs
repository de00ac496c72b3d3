//! The journal: every options change and every generation, in order, with
//! the values in effect. Tests and benchmarks read it (`GET /sim/journal` or
//! `SimState::journal`) to see what Forge would have done.

use serde_json::{Map, Value};

use crate::backend::ConfigChange;

/// Who changed the options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `POST /sdapi/v1/options`.
    Api,
    /// A generation's `override_settings`.
    Override,
    /// Restoring after a generation (`override_settings_restore_afterwards`).
    Restore,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Override => "override",
            Source::Restore => "restore",
        }
    }
}

/// Entries with a `seq` that starts at 1 and never restarts, even when the
/// journal is cleared.
#[derive(Debug, Default)]
pub struct Journal {
    last_seq: u64,
    entries: Vec<Value>,
}

impl Journal {
    /// Appends an entry, giving it the next `seq`.
    pub fn push(&mut self, mut entry: Map<String, Value>) -> u64 {
        self.last_seq += 1;
        entry.insert("seq".into(), self.last_seq.into());
        self.entries.push(Value::Object(entry));
        self.last_seq
    }

    /// Records an options change, unless it did nothing observable.
    pub fn push_options(&mut self, source: Source, change: &ConfigChange, at_ms: f64) {
        if change.is_empty() {
            return;
        }
        let mut entry = Map::new();
        entry.insert("kind".into(), "options".into());
        entry.insert("source".into(), source.as_str().into());
        entry.insert("changed".into(), Value::Object(change.changed.clone()));
        if let Some(setting) = &change.gpu_setting {
            entry.insert("gpu_setting".into(), setting.line.clone().into());
            entry.insert("low_vram".into(), setting.low_vram.into());
        }
        entry.insert("at_ms".into(), at_ms.into());
        self.push(entry);
    }

    pub fn entries(&self) -> Vec<Value> {
        self.entries.clone()
    }

    /// Forgets the entries; `seq` keeps counting.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GpuSetting;
    use serde_json::json;

    #[test]
    fn seq_keeps_counting_after_clear() {
        let mut journal = Journal::default();
        assert_eq!(journal.push(Map::new()), 1);
        assert_eq!(journal.push(Map::new()), 2);
        journal.clear();
        assert!(journal.entries().is_empty());
        assert_eq!(journal.push(Map::new()), 3);
        assert_eq!(journal.entries()[0]["seq"], json!(3));
    }

    #[test]
    fn options_call_that_did_nothing_is_not_journaled() {
        let mut journal = Journal::default();
        journal.push_options(Source::Api, &ConfigChange::default(), 0.0);
        assert!(journal.entries().is_empty());
    }

    #[test]
    fn refresh_is_journaled_with_its_line() {
        let mut journal = Journal::default();
        let change = ConfigChange {
            changed: Map::new(),
            gpu_setting: Some(GpuSetting {
                line: "[GPU Setting] ...".into(),
                low_vram: false,
            }),
        };
        journal.push_options(Source::Restore, &change, 1.5);
        let entry = &journal.entries()[0];
        assert_eq!(entry["kind"], "options");
        assert_eq!(entry["source"], "restore");
        assert_eq!(entry["changed"], json!({}));
        assert_eq!(entry["gpu_setting"], "[GPU Setting] ...");
        assert_eq!(entry["low_vram"], false);
    }
}
