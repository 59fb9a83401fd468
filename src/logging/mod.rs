//! The process's log output: text or JSON lines on stderr, filtered by `log.level` (or
//! `CERTGATE_LOG`, which wins). The filter can be replaced while running, so a reload
//! that changes `log.level` takes effect without a restart.
//!
//! Access lines (one per request) take a faster road to the same stderr: built by hand in
//! the same format ([`AccessLine`]) and written in batches by a thread of their own
//! (`sink`), a few milliseconds after their request ended.

use std::sync::OnceLock;
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{LogConfig, LogFormat};

mod line;
mod sink;

pub use self::line::AccessLine;

/// The format of the installed log; unset until [`init`] installed it.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

fn format() -> Option<LogFormat> {
    FORMAT.get().copied()
}

/// Writes out every access line still buffered (at most a second's wait); called before
/// the process exits.
pub fn flush() {
    sink::flush(Duration::from_secs(1));
}

/// The handle of the installed filter; unset until [`init`] ran (library use, tests).
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The filter for `level`: its directives, with the HTTP/2 library held to errors unless
/// named. That library warns once per connection it closes for abuse (rapid reset): a line
/// an attacker can have written a thousand times a second. certgate logs those itself,
/// rate-limited.
fn filter(level: &str) -> Result<EnvFilter, String> {
    let mut filter = EnvFilter::try_new(level).map_err(|e| format!("{level:?}: {e}"))?;
    if !level.contains("h2") {
        filter = filter.add_directive("h2=error".parse().expect("a valid directive"));
    }
    Ok(filter)
}

/// The directives in force: `CERTGATE_LOG` when set, else `level`.
fn directives(level: &str) -> String {
    std::env::var("CERTGATE_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| level.to_string())
}

/// Installs the process-wide subscriber (once; later calls do nothing).
pub fn init(cfg: &LogConfig) {
    let f = filter(&directives(&cfg.level)).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(f);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let installed = match cfg.format {
        LogFormat::Json => Registry::default()
            .with(layer)
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Text => Registry::default().with(layer).with(fmt).try_init(),
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
        let _ = FORMAT.set(cfg.format);
    }
}

/// What [`set_level`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum LevelChange {
    Applied,
    /// `CERTGATE_LOG` is set and stays in force.
    EnvWins,
    /// No subscriber of this module is installed (library use).
    NotInstalled,
}

/// Replaces the filter with `level` (validated by the config already).
pub fn set_level(level: &str) -> Result<LevelChange, String> {
    if std::env::var("CERTGATE_LOG").is_ok_and(|v| !v.trim().is_empty()) {
        return Ok(LevelChange::EnvWins);
    }
    let Some(handle) = FILTER.get() else {
        return Ok(LevelChange::NotInstalled);
    };
    let f = filter(level)?;
    handle.reload(f).map_err(|e| e.to_string())?;
    Ok(LevelChange::Applied)
}
