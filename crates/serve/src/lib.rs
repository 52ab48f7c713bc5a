//! `repvgg serve`: an Open Inference Protocol (KServe v2) server for one RepVGG model, over
//! HTTP (with Triton's binary tensor data, classification and model configuration
//! extensions) and gRPC (`inference.GRPCInferenceService`).
//!
//! Requests are parsed on a small tokio runtime, images decoded on a rayon pool, and the
//! tensors queued for `streams` inference streams (threads that each own a `Session`),
//! which merge queued requests of one input size into batches of up to `max_batch`
//! images. A full queue refuses at once (503), a request past its deadline is dropped
//! before it is computed, and so is one whose client has gone.
//!
//! ```no_run
//! use repvgg_serve::{Config, Server};
//! let model = repvgg_runtime::Model::synthetic(repvgg_graph::ArchSpec::builtin("A0")?, 0)?;
//! let server = Server::start(model, Config { http_port: 0, grpc_port: Some(0), ..Config::default() })?;
//! println!("HTTP on {}", server.http_addr());
//! server.wait_for_signal()?;
//! server.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod budget;
mod config;
mod conn;
mod error;
mod grpc;
mod http;
mod json;
mod log;
mod metrics;
mod protocol;
mod scheduler;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use repvgg_runtime::Model;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{
    Config, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS,
    MAX_QUEUE_IMAGES, MAX_WORKERS, default_max_connections, default_max_inflight_bytes, default_max_queue_images,
    default_streams,
};
pub use error::{Error, Result};
pub use grpc::inference as proto;
pub use log::Level;
pub use service::{IMAGE, INPUT, OUTPUT, VERSION, join_bytes, split_bytes};

/// The gRPC flow-control window of a stream, in bytes (room for a batch of 8 at 224).
pub const GRPC_WINDOW: u32 = 8 << 20;

/// The largest HTTP/2 frame the gRPC server accepts (HTTP/2's default is 16 KiB), so that a
/// client can send a 224x224 tensor (588 KiB) in one frame: one write and a few reads
/// instead of 37 writes and 75 reads.
pub const GRPC_MAX_FRAME: u32 = 1 << 20;

/// Concurrent gRPC streams a connection may open (advertised in HTTP/2's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`): the floor RFC 9113 recommends. Each stream's
/// message is held against the in-flight budget as it arrives, so this bounds the streams
/// one connection keeps open, not the memory.
pub const GRPC_MAX_STREAMS: u32 = 100;

/// How long an unacknowledged HTTP/2 keep-alive ping holds a gRPC connection: a peer gone
/// without closing (a dead host, a dropped route) is noticed one idle timeout plus this
/// after its last frame.
pub const GRPC_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How long shutdown waits for gRPC connections to close once no request is in flight:
/// a client closes on the server's GOAWAY within a round trip; one that does not has
/// nothing left to be answered and is closed.
const GRPC_LINGER: Duration = Duration::from_millis(250);

/// A running server. Dropping it without [`Server::shutdown`] stops it abruptly.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    service: Arc<Service>,
    http_addr: SocketAddr,
    grpc_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
    /// SIGTERM and SIGINT, when taken over at start.
    signals: std::sync::Mutex<Option<Signals>>,
}

type Signals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

fn take_signals() -> Result<Signals> {
    use tokio::signal::unix::{SignalKind, signal};
    let start = |kind| signal(kind).map_err(|source| Error::Start { what: "a signal handler", source });
    Ok((start(SignalKind::terminate())?, start(SignalKind::interrupt())?))
}

use service::Service;

impl Server {
    /// Validates `config`, starts the inference streams (running the warm-up sizes), binds
    /// both ports and starts serving. Returns once the server is ready.
    pub fn start(model: Model, config: Config) -> Result<Server> {
        config.validate()?;
        log::set_level(config.log_level);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.io_threads)
            .thread_name("repvgg-io")
            .enable_all()
            .build()
            .map_err(|source| Error::Start { what: "the async runtime", source })?;
        let bind = |protocol: &'static str, port: u16| {
            let addr = SocketAddr::new(config.host, port);
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| Error::Bind { protocol, addr, source })?;
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(|source| Error::Bind { protocol, addr, source })
        };
        // Bind before the (slower) warm-up, so that a taken port is reported at once.
        let http_listener = bind("HTTP", config.http_port)?;
        let grpc_listener = config.grpc_port.map(|port| bind("gRPC", port)).transpose()?;
        let local = |l: &tokio::net::TcpListener, protocol| {
            l.local_addr().map_err(|source| Error::Start { what: protocol, source })
        };
        let http_addr = local(&http_listener, "the HTTP listener")?;
        let grpc_addr = grpc_listener.as_ref().map(|l| local(l, "the gRPC listener")).transpose()?;
        let service = Arc::new(Service::start(model, config)?);
        let (stop, stopped) = watch::channel(false);
        let until_stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut tasks = Vec::new();
        let app = http::router(service.clone());
        let c = &service.config;
        // Whatever is still open after the queue deadline (plus a second to answer) is
        // abandoned: a request cannot wait longer for a stream than that.
        let grace = c.timeout + Duration::from_secs(1);
        let settings = conn::Settings {
            header_timeout: c.header_timeout,
            idle_timeout: c.idle_timeout,
            max_connections: c.max_connections,
            grace,
        };
        tasks.push(runtime.spawn(conn::serve(http_listener, app, settings, service.metrics.clone(), stopped.clone())));
        if let Some(listener) = grpc_listener {
            let grpc = grpc::server(service.clone());
            let grpc_stop = until_stopped(stopped.clone());
            let mut drained = stopped.clone();
            let service = service.clone();
            let idle = c.idle_timeout;
            // A request may wait `timeout` for a stream; its message and answer get one
            // idle timeout more to travel (tonic answers CANCELLED past it).
            let rpc_timeout = c.timeout + c.idle_timeout;
            tasks.push(runtime.spawn(async move {
                // TCP keep-alive finds peers gone silently; the server's own option is
                // ignored with an incoming stream.
                let incoming = tonic::transport::server::TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(idle));
                // HTTP/2's default 64 KiB flow-control windows would take a dozen round
                // trips to move one 224x224 tensor (588 KiB).
                let serve = tonic::transport::Server::builder()
                    .initial_stream_window_size(Some(GRPC_WINDOW))
                    .initial_connection_window_size(Some(4 * GRPC_WINDOW))
                    .max_frame_size(Some(GRPC_MAX_FRAME))
                    .max_concurrent_streams(Some(GRPC_MAX_STREAMS))
                    .timeout(rpc_timeout)
                    .http2_keepalive_interval(Some(idle))
                    .http2_keepalive_timeout(Some(GRPC_PING_TIMEOUT.min(idle)))
                    .layer(grpc::NameUnimplemented)
                    .add_service(grpc)
                    .serve_with_incoming_shutdown(incoming, grpc_stop);
                // tonic's graceful shutdown waits for every connection to close, and a
                // client that ignores GOAWAY (or never finished its HTTP/2 preface) would
                // hold it until the grace ends. Once the requests in flight are answered
                // and a short linger has passed, the rest are closed.
                let drain = async {
                    let _ = drained.wait_for(|s| *s).await;
                    tokio::time::timeout(grace, async {
                        while service.metrics.requests_in_flight() > 0 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    })
                    .await
                    .ok();
                    tokio::time::sleep(GRPC_LINGER).await;
                };
                tokio::select! {
                    served = serve => served.map_err(std::io::Error::other),
                    () = drain => Ok(()),
                }
            }));
        }
        let signals = if service.config.handle_signals {
            let _guard = runtime.enter();
            Some(take_signals()?)
        } else {
            None
        };
        log::event(Level::Info, "listening", |f| {
            f.insert("model".into(), service.name.as_str().into());
            f.insert("http".into(), http_addr.to_string().into());
            if let Some(g) = grpc_addr {
                f.insert("grpc".into(), g.to_string().into());
            }
            let c = &service.config;
            f.insert("streams".into(), c.streams.into());
            f.insert("threads_per_stream".into(), c.threads_per_stream.into());
            f.insert("max_batch".into(), c.max_batch.into());
            f.insert("max_queue_delay_us".into(), (c.max_queue_delay.as_micros() as u64).into());
            f.insert("max_queue_images".into(), c.max_queue_images.into());
            f.insert("header_timeout_ms".into(), (c.header_timeout.as_millis() as u64).into());
            f.insert("idle_timeout_ms".into(), (c.idle_timeout.as_millis() as u64).into());
            f.insert("max_connections".into(), c.max_connections.into());
            for (k, v) in service.precision_parameters() {
                f.insert(k.into(), v.into());
            }
        });
        Ok(Server { runtime, service, http_addr, grpc_addr, stop, tasks, signals: std::sync::Mutex::new(signals) })
    }

    /// Where HTTP is served (the bound port when 0 was asked for).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where gRPC is served, if it is.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The Prometheus text of the server's metrics (what `/metrics` answers).
    pub fn metrics(&self) -> String {
        self.service.metrics.render()
    }

    /// Blocks until SIGTERM or SIGINT arrives, logs it and returns the signal's name. The
    /// signals are taken over here, or at start with [`Config::handle_signals`].
    pub fn wait_for_signal(&self) -> Result<&'static str> {
        let taken = self.signals.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.runtime.block_on(async {
            let (mut term, mut int) = match taken {
                Some(signals) => signals,
                None => take_signals()?,
            };
            let signal = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            log::event(Level::Info, "signal", |f| {
                f.insert("signal".into(), signal.into());
            });
            Ok(signal)
        })
    }

    /// Graceful shutdown: readiness turns false, the listeners close, idle connections and
    /// those with a partial request head close at once, requests whose bodies are still
    /// arriving are answered 503, requests already read are finished and answered, then the
    /// streams stop. Connections still open `config.timeout` + 1 s after the start are
    /// closed and logged ("connections abandoned"); that is not a failure. Queued log
    /// lines are written before it returns (waiting at most two seconds for standard error).
    pub fn shutdown(mut self) -> Result<()> {
        log::event(Level::Info, "draining", |f| {
            f.insert("model".into(), self.service.name.as_str().into());
        });
        self.service.stop_accepting();
        let _ = self.stop.send(true);
        // The listeners enforce `timeout` + 1 s themselves; this only bounds a listener
        // that failed to.
        let grace = self.service.config.timeout + Duration::from_secs(3);
        let tasks = std::mem::take(&mut self.tasks);
        let finished = self.runtime.block_on(async {
            tokio::time::timeout(grace, async {
                let mut result = Ok(());
                for task in tasks {
                    match task.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => result = Err(Error::Internal(format!("a listener failed: {e}"))),
                        Err(e) => result = Err(Error::Internal(format!("a listener panicked: {e}"))),
                    }
                }
                result
            })
            .await
        });
        self.service.drain();
        log::event(Level::Info, "stopped", |_| {});
        log::flush(Duration::from_secs(2));
        match finished {
            Ok(result) => result,
            Err(_) => Err(Error::Internal(format!(
                "a listener had not stopped {} s after the shutdown began",
                grace.as_secs()
            ))),
        }
    }
}
