//! What a server runs: addresses, scheduling knobs and limits.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use repvgg_runtime::{AlgoChoice, IsaChoice, Precision, SessionOptions};

use crate::error::{Error, Result};
use crate::log::Level;

/// A server's configuration. [`Config::default`] gives the defaults of `repvgg serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The name clients address the model by.
    pub model_name: String,
    /// Address both protocols listen on.
    pub host: IpAddr,
    /// HTTP port; 0 picks a free one ([`crate::Server::http_addr`] tells which).
    pub http_port: u16,
    /// gRPC port; 0 picks a free one; `None` serves no gRPC.
    pub grpc_port: Option<u16>,
    /// Inference streams: each a thread that owns one `Session` and runs one batch at a time.
    pub streams: usize,
    /// Worker threads of each stream's session.
    pub threads_per_stream: usize,
    /// Most images a request may carry, and a batch merged from queued requests may hold.
    pub max_batch: usize,
    /// How long a stream holding fewer than `max_batch` images waits for more requests of
    /// the same size before it runs what it has. Zero runs at once.
    pub max_queue_delay: Duration,
    /// Most images waiting in the queue; a request that would exceed it is refused with 503.
    pub max_queue_images: usize,
    /// Longest a request may wait for a stream; then it is answered 503. A request may ask
    /// for less with the `timeout` parameter (microseconds).
    pub timeout: Duration,
    /// Largest request body (HTTP) or message (gRPC), in bytes.
    pub max_body_bytes: usize,
    /// Most bytes of requests held at once, server-wide: bodies being read, parsed
    /// tensors, decoded images and queued inputs, over HTTP and gRPC together. A request
    /// that would pass it is refused at once (HTTP 503, gRPC `RESOURCE_EXHAUSTED`) before
    /// more of it is read. Must hold at least one largest body.
    pub max_inflight_bytes: usize,
    /// Threads decoding images (a rayon pool of their own).
    pub decode_threads: usize,
    /// Threads of the async runtime that handles connections and parsing.
    pub io_threads: usize,
    /// Longest an HTTP client may take to send a request's head (request line and
    /// headers), counted from its first byte; then the connection is closed. Default
    /// [`DEFAULT_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// Longest an HTTP connection may stay silent: between requests (keep-alive), while a
    /// request body is arriving (then the request is answered 408 and the connection
    /// closed), or while an answer waits for the client to read it. Default
    /// [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// Most HTTP connections open at once; a client beyond it is answered 503 and its
    /// connection closed. Default [`default_max_connections`].
    pub max_connections: usize,
    /// Input sizes (height, width) each stream plans and runs once before the server
    /// reports ready, so that the first requests do not pay for planning and packing.
    pub warmup: Vec<(usize, usize)>,
    /// Per-layer algorithm and kernel set of the sessions.
    pub algo: AlgoChoice,
    pub isa: IsaChoice,
    /// Arithmetic of the sessions: `None` runs the model's own (INT8 for a file written by
    /// `repvgg quantize`, else FP32); `Some(F32)` runs a quantized model's dequantized
    /// weights in FP32; `Some(Int8)` on a float model is refused at start.
    pub precision: Option<Precision>,
    /// Which log lines are written (JSON lines on standard error).
    pub log_level: Level,
    /// Take over SIGTERM and SIGINT at start, before the server reports that it listens,
    /// so that a signal sent as soon as it does drains it (see [`crate::Server::wait_for_signal`])
    /// instead of killing the process. Off for embedders, who keep their own handling.
    pub handle_signals: bool,
}

/// Default [`Config::max_batch`]: the batch at which `repvgg bench`'s images/s stop
/// growing much on the machines measured: batch 16 against 8 was equal on an AVX2 machine
/// and needed to reach 90% of the best in-process throughput on an AVX-512 one
/// (docs/serving.md, scheduling).
pub const DEFAULT_MAX_BATCH: usize = 16;

/// Default [`Config::header_timeout`]: 10 s. A client sends a request head in one write,
/// which arrives within a round trip on any network; ten seconds leave room for the slowest
/// links and lossy retransmits while a connection that trickles its head (slowloris) is
/// closed long before it matters.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default [`Config::idle_timeout`]: 75 s, longer than the 60 s idle timeout of common
/// load balancers and proxies in front of a server (AWS ALB, Envoy's 1 h aside), so that
/// they, not this server, close the pooled connections they keep, avoiding the race where
/// the server closes a connection as the proxy sends a request on it (nginx's keep-alive
/// default is 75 s for the same reason). A request body that stops arriving for that long
/// is a client gone without closing.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// Upper bound of [`default_max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// File descriptors [`default_max_connections`] leaves for the rest of the process: the
/// listeners, the model file, the runtime's epoll and wake-up descriptors, standard streams.
const RESERVED_FDS: u64 = 64;

/// Default [`Config::max_connections`]: [`DEFAULT_MAX_CONNECTIONS`], or fewer if the
/// process's soft limit on open files (`RLIMIT_NOFILE`) is lower than that plus
/// [`RESERVED_FDS`]. Each connection is a file descriptor, and past the limit `accept`
/// fails, so the server could neither serve nor refuse the client; below the limit it
/// refuses cleanly. More than 1024 buys nothing here: a connection's buffers cost some
/// 20 KiB, and the inference streams answer hundreds, not thousands, of requests at once
/// (the queue holds `4 x streams x max_batch` images).
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live, writable one.
    let soft: u64 =
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur } else { u64::MAX };
    let room = soft.saturating_sub(RESERVED_FDS).max(16);
    usize::try_from(room).unwrap_or(usize::MAX).min(DEFAULT_MAX_CONNECTIONS)
}

/// Largest `streams x threads_per_stream` accepted.
pub const MAX_WORKERS: usize = 1024;

/// Bounds of the batch and queue knobs (a request's batch also obeys `Limits::max_batch`).
pub const MAX_QUEUE_IMAGES: usize = 1 << 16;

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (streams, threads_per_stream) = default_streams(cores);
        Config {
            model_name: "repvgg".into(),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            http_port: 8000,
            grpc_port: Some(8001),
            streams,
            threads_per_stream,
            max_batch: DEFAULT_MAX_BATCH,
            max_queue_delay: Duration::ZERO,
            max_queue_images: default_max_queue_images(streams, DEFAULT_MAX_BATCH),
            timeout: Duration::from_secs(30),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_inflight_bytes: default_max_inflight_bytes(
                default_max_queue_images(streams, DEFAULT_MAX_BATCH),
                DEFAULT_MAX_BODY_BYTES,
            ),
            decode_threads: cores,
            io_threads: cores.min(4),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: default_max_connections(),
            warmup: vec![(224, 224)],
            algo: AlgoChoice::Auto,
            isa: IsaChoice::Auto,
            precision: None,
            log_level: Level::Info,
            handle_signals: false,
        }
    }
}

/// Default [`Config::max_body_bytes`]: a batch of 16 images of 1024x1024 in FP32 (and
/// 110 of 224x224).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

/// Bytes of one 224x224 FP32 image, the size the queue's default is counted in.
const IMAGE_224_BYTES: usize = 3 * 224 * 224 * 4;

/// Default [`Config::max_inflight_bytes`]: a full queue of 224x224 images twice over (as
/// received and as queued) plus two largest bodies (one being read while one is parsed),
/// so that a largest request is taken even while the queue is full of ordinary ones. With
/// the other defaults (64 queued images, 64 MiB bodies) that is 205 MB.
pub fn default_max_inflight_bytes(max_queue_images: usize, max_body_bytes: usize) -> usize {
    max_queue_images.saturating_mul(2 * IMAGE_224_BYTES).saturating_add(max_body_bytes.saturating_mul(2))
}

/// Default [`Config::max_queue_images`]: four full batches per stream (saturating, so that
/// absurd flags reach [`Config::validate`] and its message instead of overflowing).
pub fn default_max_queue_images(streams: usize, max_batch: usize) -> usize {
    streams.saturating_mul(max_batch).saturating_mul(4)
}

/// Streams x threads for `cores` cores. One stream using every core gives the lowest
/// latency; several streams overlap one request's serial parts (the head, the thin early
/// layers, the hand-offs between layers) with another's work, but each request then runs
/// on fewer threads: on 2 cores one stream on both halved the latency at low load, and the
/// throughput at high load was within the noise.
pub fn default_streams(cores: usize) -> (usize, usize) {
    (1, cores.max(1))
}

impl Config {
    /// The options of every stream's session: the one place they are built from the
    /// configuration.
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions {
            threads: self.threads_per_stream,
            algo: self.algo,
            isa: self.isa,
            precision: self.precision,
            ..SessionOptions::default()
        }
    }

    /// Checks every knob, so that a bad value is refused at start-up with its name.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.model_name.is_empty() || self.model_name.contains('/') || self.model_name.len() > 128 {
            return bad(format!("model name {:?} must be 1 to 128 characters without '/'", self.model_name));
        }
        if self.streams == 0 || self.threads_per_stream == 0 {
            return bad("streams and threads per stream must be at least 1".into());
        }
        match self.streams.checked_mul(self.threads_per_stream) {
            Some(w) if w <= MAX_WORKERS => {}
            _ => return bad(format!("streams x threads per stream must be at most {MAX_WORKERS}")),
        }
        if self.max_batch == 0 || self.max_batch > repvgg_runtime::Limits::default().max_batch {
            return bad(format!("max batch must be between 1 and {}", repvgg_runtime::Limits::default().max_batch));
        }
        if self.max_queue_images < self.max_batch || self.max_queue_images > MAX_QUEUE_IMAGES {
            return bad(format!(
                "max queue must be between max batch ({}) and {MAX_QUEUE_IMAGES} images",
                self.max_batch
            ));
        }
        if self.max_queue_delay > Duration::from_secs(10) {
            return bad("max queue delay must be at most 10 s".into());
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(3600) {
            return bad("timeout must be between 1 ms and 1 hour".into());
        }
        if self.max_body_bytes < 1024 || self.max_body_bytes > 4 << 30 {
            return bad("max body size must be between 1 KiB and 4 GiB".into());
        }
        if self.max_inflight_bytes < self.max_body_bytes {
            return bad(format!(
                "max in-flight bytes ({}) must hold at least one largest body ({} bytes)",
                self.max_inflight_bytes, self.max_body_bytes
            ));
        }
        if self.decode_threads == 0 || self.decode_threads > MAX_WORKERS || self.io_threads == 0 || self.io_threads > 64
        {
            return bad(format!("decode threads must be 1 to {MAX_WORKERS}, I/O threads 1 to 64"));
        }
        let hour = Duration::from_secs(3600);
        if self.header_timeout < Duration::from_millis(1) || self.header_timeout > hour {
            return bad("header timeout must be between 1 ms and 1 hour".into());
        }
        if self.idle_timeout < Duration::from_millis(1) || self.idle_timeout > hour {
            return bad("idle timeout must be between 1 ms and 1 hour".into());
        }
        if self.max_connections == 0 || self.max_connections > 1 << 20 {
            return bad(format!("max connections must be between 1 and {}", 1 << 20));
        }
        if self.grpc_port.is_some_and(|g| g != 0 && g == self.http_port) {
            return bad(format!("HTTP and gRPC cannot share port {}", self.http_port));
        }
        Ok(())
    }
}
