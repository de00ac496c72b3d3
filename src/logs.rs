//! The log: tracing's subscriber, text (coloured on a terminal only) or JSON, its level
//! changed by a reload.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Whether the log is JSON: a line that reads well as text gives its parts as fields there
/// only.
pub fn json_logs() -> bool {
    JSON_LOGS.get().copied().unwrap_or(false)
}

static JSON_LOGS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `level`. Text is
/// coloured only for a terminal, and never with `NO_COLOR`.
pub fn init_tracing(format: LogFormat, level: &str) {
    let _ = JSON_LOGS.set(format == LogFormat::Json);
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_wins = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let colour = Colour::choose(
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour == Colour::On);
    let installed = match format {
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map(|()| filter_setter(handle))
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map(|()| filter_setter(handle))
        }
    };
    if let (Ok(setter), false) = (installed, env_wins) {
        let _ = SET_FILTER.set(setter);
    }
}

/// Whether text logs carry ANSI colour codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Colour {
    On,
    Off,
}

impl Colour {
    /// On for a terminal, unless `NO_COLOR` is set to anything but "" (no-color.org): a
    /// file, a pipe or a container's log gets plain text.
    fn choose(stdout_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> Self {
        let refused = no_color.is_some_and(|value| !value.is_empty());
        if stdout_is_terminal && !refused {
            Colour::On
        } else {
            Colour::Off
        }
    }
}

type FilterSetter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Replaces the installed subscriber's filter (absent when `RUST_LOG` chose it).
static SET_FILTER: std::sync::OnceLock<FilterSetter> = std::sync::OnceLock::new();

fn filter_setter<S: 'static>(
    handle: tracing_subscriber::reload::Handle<EnvFilter, S>,
) -> FilterSetter {
    Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string()))
}

/// A reloaded `log.level`; `RUST_LOG`, when set at start, still wins.
pub fn set_log_level(level: &str) {
    let Some(set) = SET_FILTER.get() else {
        return;
    };
    match EnvFilter::try_new(level)
        .map_err(|e| e.to_string())
        .and_then(set)
    {
        Ok(()) => {}
        Err(e) => tracing::warn!(level, error = %e, "log.level not changed"),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::Colour;

    #[test]
    fn logs_are_coloured_only_for_a_terminal_without_no_color() {
        assert_eq!(Colour::choose(true, None), Colour::On);
        assert_eq!(Colour::choose(false, None), Colour::Off);
        assert_eq!(Colour::choose(true, Some(OsStr::new("1"))), Colour::Off);
        assert_eq!(Colour::choose(false, Some(OsStr::new("1"))), Colour::Off);
        // An empty NO_COLOR is as if unset.
        assert_eq!(Colour::choose(true, Some(OsStr::new(""))), Colour::On);
    }
}
