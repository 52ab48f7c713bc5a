//! `repvgg serve`: flags to a server configuration, then serve until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use repvgg::runtime::{AlgoChoice, Model, Precision};
use repvgg_serve::{Config, Level, Server};

/// `repvgg serve` flags; defaults are [`Config::default`]'s.
#[derive(Args)]
pub struct ServeArgs {
    /// Weights (.safetensors or .pth, or `hf:NAME` from the hub) to serve.
    #[arg(long, required_unless_present = "synthetic")]
    pub(crate) weights: Option<PathBuf>,
    /// Serve deterministic synthetic weights of --arch (for trying the server and load tests).
    #[arg(long, conflicts_with = "weights")]
    synthetic: bool,
    /// Architecture (built-in name or .toml path): checked against --weights, or the one
    /// --synthetic builds (default A0).
    #[arg(long)]
    pub(crate) arch: Option<String>,
    /// Name clients address the model by (default: the weights file's stem, lower case).
    #[arg(long)]
    pub(crate) model_name: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// HTTP port (0: any free port).
    #[arg(long, default_value_t = 8000)]
    http_port: u16,
    /// gRPC port (0: any free port).
    #[arg(long, default_value_t = 8001)]
    grpc_port: u16,
    /// Serve no gRPC.
    #[arg(long)]
    no_grpc: bool,
    /// Inference streams, each running one batch at a time (default: 1 on every core, or cores / --threads-per-stream).
    #[arg(long)]
    streams: Option<usize>,
    /// Worker threads per stream (default: cores / streams).
    #[arg(long)]
    threads_per_stream: Option<usize>,
    /// Most images per request and per merged batch.
    #[arg(long)]
    max_batch: Option<usize>,
    /// How long a stream waits for more requests of the same size to fill a batch.
    #[arg(long, default_value_t = 0)]
    max_queue_delay_us: u64,
    /// Most images waiting; beyond it requests are refused with 503 (default: 4 x streams x max batch).
    #[arg(long)]
    max_queue: Option<usize>,
    /// Longest a request may wait for a stream before it is answered 503.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Largest request body or gRPC message, in bytes.
    #[arg(long, default_value_t = repvgg_serve::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Most bytes of requests held at once (bodies being read, parsed tensors, queued
    /// images; HTTP and gRPC together); past it requests are refused with 503 /
    /// RESOURCE_EXHAUSTED (default: 2 x (max queue x a 224x224 image + max body bytes)).
    #[arg(long)]
    max_inflight_bytes: Option<usize>,
    /// Longest an HTTP client may take to send a request's head, from its first byte; then
    /// the connection is closed.
    #[arg(long, default_value_t = repvgg_serve::DEFAULT_HEADER_TIMEOUT.as_millis() as u64)]
    header_timeout_ms: u64,
    /// Longest an HTTP connection may stay silent: between requests (keep-alive), while a
    /// request body arrives (answered 408) or while an answer waits to be read.
    #[arg(long, default_value_t = repvgg_serve::DEFAULT_IDLE_TIMEOUT.as_millis() as u64)]
    idle_timeout_ms: u64,
    /// Most HTTP connections open at once; beyond it clients are answered 503 (default:
    /// 1024, or fewer if the open-files limit is lower).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Threads decoding images (default: one per core).
    #[arg(long)]
    decode_threads: Option<usize>,
    /// Threads of the async runtime that reads requests and writes answers (default: cores, at most 4).
    #[arg(long)]
    io_threads: Option<usize>,
    /// Input sizes to plan and run once per stream before reporting ready, e.g. 224,224x160.
    #[arg(long, value_delimiter = ',', default_value = "224", value_parser = crate::parse_size)]
    warmup: Vec<(usize, usize)>,
    /// Log level of the JSON lines on standard error: off, error, warn, info (one line per request), debug (per batch).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Convolution algorithm: auto, direct, f2, f4, f6, p2 (polyphase, stride-2 layers only).
    #[arg(long, default_value = "auto")]
    algo: String,
    /// Kernel set: auto, avx512, avx2, portable.
    #[arg(long, default_value = "auto")]
    isa: String,
    /// Arithmetic: f32, int8 or bf16 (default: the weights file's, int8 for a file written
    /// by `repvgg quantize`); int8 needs such a file, bf16 a CPU with AVX512-BF16.
    #[arg(long)]
    precision: Option<String>,
}

impl ServeArgs {
    fn config(&self) -> Result<Config> {
        let defaults = Config::default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (streams, threads) = match (self.streams, self.threads_per_stream) {
            (None, None) => (defaults.streams, defaults.threads_per_stream),
            (Some(s), None) => (s, (cores / s.max(1)).max(1)),
            (None, Some(t)) => ((cores / t.max(1)).max(1), t),
            (Some(s), Some(t)) => (s, t),
        };
        let max_batch = self.max_batch.unwrap_or(defaults.max_batch);
        let max_queue_images =
            self.max_queue.unwrap_or_else(|| repvgg_serve::default_max_queue_images(streams, max_batch));
        Ok(Config {
            model_name: self.model_name.clone().unwrap_or_else(|| self.default_name()),
            host: self.host,
            http_port: self.http_port,
            grpc_port: (!self.no_grpc).then_some(self.grpc_port),
            streams,
            threads_per_stream: threads,
            max_batch,
            max_queue_delay: Duration::from_micros(self.max_queue_delay_us),
            max_queue_images,
            timeout: Duration::from_millis(self.timeout_ms),
            max_body_bytes: self.max_body_bytes,
            max_inflight_bytes: self
                .max_inflight_bytes
                .unwrap_or_else(|| repvgg_serve::default_max_inflight_bytes(max_queue_images, self.max_body_bytes)),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            decode_threads: self.decode_threads.unwrap_or(defaults.decode_threads),
            io_threads: self.io_threads.unwrap_or(defaults.io_threads),
            warmup: self.warmup.clone(),
            algo: self.algo.parse::<AlgoChoice>()?,
            isa: crate::isa_choice(&self.isa)?,
            precision: self
                .precision
                .as_deref()
                .map(str::parse::<Precision>)
                .transpose()
                .map_err(|e| repvgg::Error::Option(format!("--precision: {e}")))?,
            log_level: self.log_level.parse::<Level>()?,
            handle_signals: true,
        })
    }

    /// `repvgg-a0` for `RepVGG-A0-deploy.safetensors`; `repvgg-a0` for synthetic A0.
    fn default_name(&self) -> String {
        let stem = match &self.weights {
            Some(w) => w.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            None => format!("repvgg-{}", self.arch.as_deref().unwrap_or("A0")),
        };
        let name: String = stem
            .trim_end_matches("-deploy")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c.to_ascii_lowercase() } else { '-' }
            })
            .collect();
        if name.is_empty() { "repvgg".into() } else { name }
    }

    fn model(&self) -> Result<Model> {
        crate::weights_or_synthetic(self.weights.as_deref(), self.arch.as_deref())
    }
}

pub fn serve(args: &ServeArgs) -> Result<()> {
    let config = args.config()?;
    // Before the weights are loaded, so that a bad flag is refused at once.
    config.validate()?;
    let model = args.model()?;
    let server = Server::start(model, config)?;
    server.wait_for_signal()?;
    server.shutdown()?;
    Ok(())
}
