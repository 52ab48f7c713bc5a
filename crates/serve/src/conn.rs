//! The HTTP listener: an accept loop of its own over hyper's HTTP/1 connections, for what
//! `axum::serve` does not offer: a cap on open connections, header, body and keep-alive
//! timeouts, and a shutdown that closes idle and half-sent connections at once.
//!
//! Each connection runs beside a watchdog that knows, from the bytes it reads and writes
//! and from the requests it hands to the router, which phase it is in:
//!
//! - waiting for a request head: closed [`Settings::header_timeout`] after the head's
//!   first byte. hyper 1.12's own `header_read_timeout` is off: it starts its clock when
//!   the connection begins waiting for a head, so it would also end keep-alive connections
//!   idle for that long, and keep-alive idle time has its own, longer limit here;
//! - silent between requests, or with an answer the client does not read: closed after
//!   [`Settings::idle_timeout`] without a byte moving;
//! - running a request: the request bounds itself. Its body is read through
//!   [`WatchedBody`], which ends a body that stops arriving for the idle timeout (answered
//!   408, see [`body_error`]), and its wait for a stream is bounded by the queue deadline.
//!
//! On shutdown, connections waiting for a head (idle or partial) close at once, bodies
//! still arriving end with 503, and requests already read are finished and answered; the
//! listener returns when every connection has closed, or after [`Settings::grace`], when
//! those left are closed and logged.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use crate::error::Error;
use crate::log::{self, Level};
use crate::metrics::Metrics;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The limits the listener applies (from [`crate::Config`]).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// How long shutdown waits for connections to finish before it closes them.
    pub grace: Duration,
}

/// After shutdown begins, a connection that is not running a request (it is writing an
/// answer) is closed once it has been silent this long, or after the idle timeout if that
/// is shorter: a client that does not read its answer must not hold the shutdown.
const STOP_LINGER: Duration = Duration::from_secs(1);

/// Refusals answered at once at the connection cap; past them a refused connection is
/// closed without an answer, so that a flood cannot grow the refusing tasks without bound.
const REFUSERS: usize = 64;

/// Longest a refusal may take (writing the answer and reading what the client sent).
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// A pause after a failed `accept` (out of file descriptors, say), which would otherwise
/// fail again at once in a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `stop` turns true, then drains (see the module's
/// documentation). Returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: Settings,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let refusers = Arc::new(Semaphore::new(REFUSERS));
    let refusal = refusal(settings.max_connections);
    let mut connections = JoinSet::new();
    let mut refused_log = Every::second();
    let mut accept_log = Every::second();
    let mut stopped = pin!(until_stopped(stop.clone()));
    loop {
        tokio::select! {
            () = &mut stopped => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Answers are small and latency matters: no Nagle delay.
                    let _ = tcp.set_nodelay(true);
                    match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            let (router, metrics, stop) = (router.clone(), metrics.clone(), stop.clone());
                            connections.spawn(async move {
                                connection(tcp, router, settings, &metrics, stop).await;
                                drop(slot);
                            });
                        }
                        Err(_) => {
                            metrics.connection_refused();
                            if let Some(missed) = refused_log.due() {
                                log::event(Level::Warn, "connection refused", |f| {
                                    f.insert("peer".into(), peer.to_string().into());
                                    f.insert("max_connections".into(), settings.max_connections.into());
                                    f.insert("refused_unlogged".into(), missed.into());
                                });
                            }
                            match refusers.clone().try_acquire_owned() {
                                Ok(permit) => {
                                    let refusal = refusal.clone();
                                    tokio::spawn(async move {
                                        let _ = tokio::time::timeout(REFUSAL_TIME, refuse(tcp, &refusal)).await;
                                        drop(permit);
                                    });
                                }
                                Err(_) => drop(tcp),
                            }
                        }
                    }
                }
                Err(e) => {
                    if let Some(missed) = accept_log.due() {
                        log::event(Level::Warn, "accept failed", |f| {
                            f.insert("error".into(), e.to_string().into());
                            f.insert("failures_unlogged".into(), missed.into());
                        });
                    }
                    tokio::select! {
                        () = &mut stopped => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
    }
    // New clients are refused by the kernel from here on.
    drop(listener);
    let drained =
        tokio::time::timeout(settings.grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        let abandoned = connections.len();
        connections.shutdown().await;
        log::event(Level::Warn, "connections abandoned", |f| {
            f.insert("connections".into(), abandoned.into());
            f.insert("grace_ms".into(), (settings.grace.as_millis() as u64).into());
        });
    }
    Ok(())
}

async fn until_stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The answer at the connection cap: 503 with a JSON error, closing the connection.
fn refusal(max: usize) -> Bytes {
    let body =
        serde_json::json!({ "error": format!("the server has {max} connections open, its maximum; retry later") })
            .to_string();
    Bytes::from(format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// Answers `refusal` before reading the request, then reads what the client sends until it
/// closes (or [`REFUSAL_TIME`] ends): closing with unread bytes would reset the connection,
/// and a reset can destroy the answer before the client reads it.
async fn refuse(mut tcp: TcpStream, refusal: &[u8]) -> io::Result<()> {
    tcp.write_all(refusal).await?;
    tcp.shutdown().await?;
    let mut sink = [0u8; 4096];
    while tcp.read(&mut sink).await? > 0 {}
    Ok(())
}

/// At most one log line a second; counts the lines it held back.
struct Every {
    last: Option<Instant>,
    missed: u64,
}

impl Every {
    fn second() -> Every {
        Every { last: None, missed: 0 }
    }

    /// `Some(lines held back since the last one)` if a line may go out now.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now < t + Duration::from_secs(1)) {
            self.missed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.missed))
    }
}

/// One connection: hyper's HTTP/1 state machine and the watchdog.
async fn connection(
    tcp: TcpStream,
    router: Router,
    settings: Settings,
    metrics: &Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let _open = metrics.connection_opened();
    let tracker = Arc::new(Tracker::new());
    let io = TokioIo::new(Tracked { tcp, tracker: tracker.clone() });
    let service = {
        let (tracker, stop) = (tracker.clone(), stop.clone());
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let running = Running::start(tracker.clone());
            let request = request.map(|body| {
                if body.is_end_stream() {
                    Body::new(body)
                } else {
                    Body::new(WatchedBody::new(body, settings.idle_timeout, stop.clone()))
                }
            });
            let answer = tower_service::Service::call(&mut router.clone(), request);
            async move {
                let answer = answer.await;
                drop(running);
                answer
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog times heads from their first byte (see the module's documentation).
    builder.header_read_timeout(None);
    let mut conn = pin!(builder.serve_connection(io, service));
    let mut timer = pin!(tokio::time::sleep(settings.idle_timeout));
    let mut stopping = false;
    loop {
        let now = Instant::now();
        let deadline = tracker.deadline(&settings, stopping);
        if let Some((at, phase)) = deadline
            && at <= now
        {
            metrics.connection_timed_out(phase);
            log::event(Level::Debug, "connection closed", |f| {
                f.insert("phase".into(), phase.into());
                f.insert("stopping".into(), stopping.into());
            });
            return;
        }
        // Running a request: look again after an idle period (or when it ends).
        timer.as_mut().reset(deadline.map_or(now + settings.idle_timeout, |(at, _)| at));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    log::event(Level::Debug, "connection failed", |f| {
                        f.insert("error".into(), e.to_string().into());
                    });
                }
                return;
            }
            () = tracker.wake.notified() => {}
            () = &mut timer => {}
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                // Closes the connection if it is idle, else after the answer in progress.
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What a connection is doing, as its bytes and requests show. Times are microseconds
/// since `born`, plus one so that zero can mean "none".
struct Tracker {
    born: Instant,
    /// Requests handed to the router and not yet answered.
    running: AtomicUsize,
    /// When the first byte of a request head not yet complete arrived, or 0.
    head_since: AtomicU64,
    /// When a byte last moved either way (or a request ended).
    active_at: AtomicU64,
    /// Wakes the watchdog when a head begins or a request ends, which moves its deadline.
    wake: Notify,
}

impl Tracker {
    fn new() -> Tracker {
        Tracker {
            born: Instant::now(),
            running: AtomicUsize::new(0),
            head_since: AtomicU64::new(0),
            active_at: AtomicU64::new(1),
            wake: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        self.born.elapsed().as_micros() as u64 + 1
    }

    fn at(&self, micros: u64) -> Instant {
        self.born + Duration::from_micros(micros - 1)
    }

    fn read(&self) {
        let now = self.now();
        self.active_at.store(now, Relaxed);
        // Bytes read between requests begin a head (bytes read while a request runs are
        // its body, or a pipelined head whose time counts from the request's end).
        if self.running.load(Relaxed) == 0 && self.head_since.load(Relaxed) == 0 {
            self.head_since.store(now, Relaxed);
            self.wake.notify_one();
        }
    }

    fn wrote(&self) {
        self.active_at.store(self.now(), Relaxed);
    }

    /// When the connection is to be closed and which phase it is in then; `None` while a
    /// request runs.
    fn deadline(&self, s: &Settings, stopping: bool) -> Option<(Instant, &'static str)> {
        if self.running.load(Relaxed) > 0 {
            return None;
        }
        match self.head_since.load(Relaxed) {
            0 => {
                let idle = if stopping { s.idle_timeout.min(STOP_LINGER) } else { s.idle_timeout };
                Some((self.at(self.active_at.load(Relaxed)) + idle, "idle"))
            }
            // A partial head at shutdown is not a request yet: nothing to finish.
            _ if stopping => Some((self.born, "header")),
            since => Some((self.at(since) + s.header_timeout, "header")),
        }
    }
}

/// A request in the router's hands, from its complete head to its answer (or to its
/// cancellation, when hyper drops it because the client went).
struct Running(Arc<Tracker>);

impl Running {
    fn start(tracker: Arc<Tracker>) -> Running {
        tracker.running.fetch_add(1, Relaxed);
        tracker.head_since.store(0, Relaxed);
        Running(tracker)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Relaxed);
        self.0.active_at.store(self.0.now(), Relaxed);
        self.0.wake.notify_one();
    }
}

/// The TCP stream, reporting to the tracker the bytes that move.
struct Tracked {
    tcp: TcpStream,
    tracker: Arc<Tracker>,
}

impl AsyncRead for Tracked {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.tracker.read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.tcp).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.tracker.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.tracker.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// Why a request body was cut short.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// No byte arrived for this long.
    Idle(Duration),
    /// The server began shutting down while the body arrived.
    ShuttingDown,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cut::Idle(d) => write!(f, "no byte of the request body arrived for {} ms", d.as_millis()),
            Cut::ShuttingDown => f.write_str("the server began shutting down while the body arrived"),
        }
    }
}

impl std::error::Error for Cut {}

/// A request body that ends in an error when no byte arrives for the idle timeout or when
/// shutdown begins, so that whoever reads it answers at once instead of waiting on the
/// client (see [`body_error`]).
struct WatchedBody {
    body: Incoming,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Set once the body is cut: every later poll (a handler may read on to drain the
    /// body) gets the same error, and the finished futures are not polled again.
    cut: Option<Cut>,
}

impl WatchedBody {
    fn new(body: Incoming, idle: Duration, stop: watch::Receiver<bool>) -> WatchedBody {
        WatchedBody {
            body,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            stopped: Box::pin(until_stopped(stop)),
            cut: None,
        }
    }
}

impl HttpBody for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(cut) = this.cut {
            return Poll::Ready(Some(Err(cut.into())));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.as_mut().reset(Instant::now() + this.idle);
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if this.stopped.as_mut().poll(cx).is_ready() {
            this.cut = Some(Cut::ShuttingDown);
        } else if this.timer.as_mut().poll(cx).is_ready() {
            this.cut = Some(Cut::Idle(this.idle));
        }
        match this.cut {
            Some(cut) => Poll::Ready(Some(Err(cut.into()))),
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The error a failure to read a request body is answered with: 408 when the client
/// stopped sending (the answer closes the connection), 503 when shutdown began, 400 for a
/// malformed body (bad chunked framing, say).
pub fn body_error(e: axum::Error) -> Error {
    let e = e.into_inner();
    match e.downcast_ref::<Cut>() {
        Some(Cut::Idle(d)) => {
            Error::RequestTimeout(format!("the request body stopped arriving for {} ms; closing", d.as_millis()))
        }
        Some(Cut::ShuttingDown) => crate::scheduler::shutting_down(),
        None => Error::BadRequest(format!("cannot read the request body: {e}")),
    }
}
