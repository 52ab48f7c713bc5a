//! Structured logs: one JSON object per line on standard error, filtered by level.
//!
//! Lines go through a bounded queue to a writer thread of their own, so that a standard
//! error nobody reads (a full pipe) costs log lines, never the serving: with a synchronous
//! write each request's line blocked an I/O thread once the pipe's 64 KiB were full, and
//! the server stopped answering after a few hundred requests. A full queue drops the line
//! and counts it ([`dropped`], `repvgg_log_lines_dropped_total` in `/metrics`).

use std::io::Write as _;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    match queue().try_send(Message::Line(text)) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Lines the queue holds: a few seconds of one line per request at the rates a server
/// answers (half a megabyte of text at most, lines being some 250 bytes), so that a reader
/// that pauses briefly loses nothing, while one that never reads costs bounded memory.
pub const QUEUE_LINES: usize = 2048;

/// Log lines dropped because the queue was full (standard error not being read).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped so far by this process (see the module's documentation).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

enum Message {
    Line(String),
    /// Answered once every line queued before it is written.
    Flush(SyncSender<()>),
}

/// The queue to the writer thread, started with the first line. Should the thread fail to
/// start, the receiver is dropped with it and every line counts as dropped.
fn queue() -> &'static SyncSender<Message> {
    static QUEUE: OnceLock<SyncSender<Message>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_LINES);
        let _ = std::thread::Builder::new().name("repvgg-log".into()).spawn(move || write_lines(rx));
        tx
    })
}

fn write_lines(rx: Receiver<Message>) {
    for message in rx {
        match message {
            // One write per line, so that lines never interleave with another writer's; a
            // closed standard error must not take the server down.
            Message::Line(text) => {
                let _ = std::io::stderr().lock().write_all(text.as_bytes());
            }
            Message::Flush(done) => {
                let _ = done.try_send(());
            }
        }
    }
}

/// Waits until the lines logged so far are written, for at most `limit` (a standard error
/// that is never read must not keep the process from exiting). True if they were.
pub fn flush(limit: Duration) -> bool {
    // One flush at a time: each waits for its own marker.
    static FLUSHING: Mutex<()> = Mutex::new(());
    let _one = FLUSHING.lock().unwrap_or_else(|p| p.into_inner());
    let deadline = Instant::now() + limit;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let mut marker = Message::Flush(tx);
    loop {
        match queue().try_send(marker) {
            Ok(()) => break,
            Err(TrySendError::Disconnected(_)) => return false,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                marker = m;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(TrySendError::Full(_)) => return false,
        }
    }
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok()
}
