//! Reading what Forge did: forge-sim's journal, or the lines a real Forge prints.

use serde_json::Value;

use crate::Event;

/// The events in forge-sim's journal entries.
pub fn from_journal(entries: &[Value]) -> Vec<Event> {
    let mut events = Vec::new();
    for entry in entries {
        match entry["kind"].as_str() {
            Some("options") => {
                if let Some(line) = entry["gpu_setting"].as_str() {
                    events.push(refresh(line));
                }
            }
            Some("generation") => match entry["load"].as_str() {
                Some("disk") => events.push(Event::LoadFromDisk),
                Some("ram") => events.push(Event::UnloadAll),
                _ => {}
            },
            _ => {}
        }
    }
    events
}

/// The events in Forge's log text. Forge prints `[Unload] Trying to free all memory` both when
/// `need_global_unload` moves the models off the card (`processing.manage_model_and_prompt_cache`)
/// and when a checkpoint load drops the old model (`sd_models.forge_model_reload`, which prints
/// `Loading Model:` first): an unload on the line right after `Loading Model:` belongs to the load.
pub fn from_log(text: &str) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    let mut after_load = false;
    for line in text.lines() {
        let mut is_load = false;
        if line.contains("[GPU Setting]") || line.contains("[Low VRAM Warning] You just set") {
            events.push(refresh(line));
        } else if line.contains("Loading Model:") {
            events.push(Event::LoadFromDisk);
            is_load = true;
        } else if line.contains("[Unload] Trying to free all memory") && !after_load {
            events.push(Event::UnloadAll);
        }
        after_load = is_load;
    }
    events
}

/// `[GPU Setting] ... and use Y% GPU memory (I MB) to do matrix computation.`, or the low-VRAM
/// warning, whose weights figure leaves `0` for computation as far as the line tells.
fn refresh(line: &str) -> Event {
    let inference_mib = line
        .rsplit_once(" MB) to do matrix computation")
        .and_then(|(head, _)| head.rsplit_once('('))
        .and_then(|(_, number)| number.parse().ok())
        .unwrap_or(0.0);
    Event::MemoryRefresh { inference_mib }
}
