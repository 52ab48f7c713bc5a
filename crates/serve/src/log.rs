//! Structured logs: one JSON object per line on standard error, filtered by level.

use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// Log levels, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

impl std::str::FromStr for Level {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Level> {
        [Level::Off, Level::Error, Level::Warn, Level::Info, Level::Debug]
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| crate::Error::Config(format!("unknown log level {s:?} (off, error, warn, info, debug)")))
    }
}

/// The process-wide threshold (one server per process logs; tests raise it to `Off`).
static THRESHOLD: AtomicU8 = AtomicU8::new(Level::Info as u8);

pub fn set_level(level: Level) {
    THRESHOLD.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level != Level::Off && level as u8 <= THRESHOLD.load(Ordering::Relaxed)
}

/// Writes `{"time": <unix seconds>, "level": ..., "msg": ..., fields...}` if `level` is on.
pub fn event(level: Level, msg: &str, fields: impl FnOnce(&mut Map<String, Value>)) {
    if !enabled(level) {
        return;
    }
    let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let mut line = Map::new();
    line.insert("time".into(), Value::from((time * 1e6).round() / 1e6));
    line.insert("level".into(), Value::from(level.name()));
    line.insert("msg".into(), Value::from(msg));
    fields(&mut line);
    let mut text = Value::Object(line).to_string();
    text.push('\n');
    // One write per line, so that lines from concurrent requests do not interleave; a
    // closed standard error must not take the server down.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}
