//! Prometheus metrics: counters, gauges and histograms kept in atomics and rendered in
//! the text exposition format at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Latency bucket bounds in seconds (1 ms to 30 s, roughly x2.5 apart).
const SECONDS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];
/// Batch-size bucket bounds.
const SIZES: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// A cumulative histogram with fixed bounds.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum of observations, in millionths of the unit (microseconds, or images x 1e6).
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.sum_micros.fetch_add((value * 1e6).round() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Why a request failed, as the `reason` label has it.
pub const FAILURE_REASONS: [&str; 5] = ["invalid", "rejected", "timeout", "cancelled", "internal"];

/// The metrics of one model.
pub struct Metrics {
    model: String,
    success: AtomicU64,
    failures: [AtomicU64; FAILURE_REASONS.len()],
    /// Images inferred, and batches run (their ratio is the mean batch size).
    inferences: AtomicU64,
    executions: AtomicU64,
    queued_requests: AtomicU64,
    queued_images: AtomicU64,
    in_flight: AtomicU64,
    inflight_bytes: AtomicU64,
    inflight_limit: AtomicU64,
    inflight_refused: AtomicU64,
    arena_bytes: AtomicU64,
    /// Totals for Triton's statistics extension ([`Statistics`]), in nanoseconds: the
    /// histograms' sums are rounded to microseconds.
    success_ns: AtomicU64,
    failure_ns: AtomicU64,
    queue_ns: AtomicU64,
    compute_ns: AtomicU64,
    /// When the last request was answered with a result, in milliseconds since the epoch.
    last_inference_ms: AtomicU64,
    request_seconds: Histogram,
    queue_seconds: Histogram,
    compute_seconds: Histogram,
    batch_images: Histogram,
    connections: Connections,
}

/// The HTTP listener's connections.
#[derive(Default)]
struct Connections {
    open: AtomicU64,
    refused: AtomicU64,
    /// Closed by the watchdog, per phase of [`CONNECTION_PHASES`].
    timed_out: [AtomicU64; CONNECTION_PHASES.len()],
}

/// What a connection the watchdog closed was waiting for: the rest of a request head, or
/// anything at all (keep-alive idle, or a client not reading its answer).
pub const CONNECTION_PHASES: [&str; 2] = ["header", "idle"];

/// An open connection, counted until it drops.
pub struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections.open.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    pub fn new(model: &str) -> Metrics {
        Metrics {
            model: model.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"),
            success: AtomicU64::new(0),
            failures: Default::default(),
            inferences: AtomicU64::new(0),
            executions: AtomicU64::new(0),
            queued_requests: AtomicU64::new(0),
            queued_images: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            inflight_bytes: AtomicU64::new(0),
            inflight_limit: AtomicU64::new(0),
            inflight_refused: AtomicU64::new(0),
            arena_bytes: AtomicU64::new(0),
            success_ns: AtomicU64::new(0),
            failure_ns: AtomicU64::new(0),
            queue_ns: AtomicU64::new(0),
            compute_ns: AtomicU64::new(0),
            last_inference_ms: AtomicU64::new(0),
            request_seconds: Histogram::new(&SECONDS),
            queue_seconds: Histogram::new(&SECONDS),
            compute_seconds: Histogram::new(&SECONDS),
            batch_images: Histogram::new(&SIZES),
            connections: Connections::default(),
        }
    }

    pub fn request_done(&self, elapsed: Duration, failure: Option<&str>) {
        match failure {
            None => {
                self.success.fetch_add(1, Relaxed);
                self.success_ns.fetch_add(nanos(elapsed), Relaxed);
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                self.last_inference_ms.fetch_max(now.as_millis() as u64, Relaxed);
            }
            Some(reason) => {
                let i = FAILURE_REASONS.iter().position(|r| *r == reason).unwrap_or(FAILURE_REASONS.len() - 1);
                self.failures[i].fetch_add(1, Relaxed);
                self.failure_ns.fetch_add(nanos(elapsed), Relaxed);
            }
        };
        self.request_seconds.observe(elapsed.as_secs_f64());
    }

    /// A request waited `queue` before its batch of `images` ran.
    pub fn queued_for(&self, queue: Duration) {
        self.queue_ns.fetch_add(nanos(queue), Relaxed);
        self.queue_seconds.observe(queue.as_secs_f64());
    }

    pub fn batch_ran(&self, images: usize, compute: Duration) {
        self.inferences.fetch_add(images as u64, Relaxed);
        self.executions.fetch_add(1, Relaxed);
        self.batch_images.observe(images as f64);
        self.compute_ns.fetch_add(nanos(compute), Relaxed);
        self.compute_seconds.observe(compute.as_secs_f64());
    }

    /// The counters Triton's statistics extension reports, read now.
    pub fn statistics(&self) -> Statistics {
        let executions = self.executions.load(Relaxed);
        let compute = StatDuration { count: executions, ns: self.compute_ns.load(Relaxed) };
        Statistics {
            last_inference_ms: self.last_inference_ms.load(Relaxed),
            inference_count: self.inferences.load(Relaxed),
            execution_count: executions,
            success: StatDuration { count: self.success.load(Relaxed), ns: self.success_ns.load(Relaxed) },
            fail: StatDuration {
                count: self.failures.iter().map(|f| f.load(Relaxed)).sum(),
                ns: self.failure_ns.load(Relaxed),
            },
            queue: StatDuration { count: self.queue_seconds.count.load(Relaxed), ns: self.queue_ns.load(Relaxed) },
            compute_infer: compute,
        }
    }

    /// Queue depth changes (requests, images), positive or negative.
    pub fn queue_changed(&self, requests: i64, images: i64) {
        add_signed(&self.queued_requests, requests);
        add_signed(&self.queued_images, images);
    }

    pub fn in_flight(&self, delta: i64) {
        add_signed(&self.in_flight, delta);
    }

    /// Bytes reserved against the in-flight budget change by `delta`.
    pub fn inflight_bytes(&self, delta: i64) {
        add_signed(&self.inflight_bytes, delta);
    }

    pub fn inflight_limit(&self, bytes: usize) {
        self.inflight_limit.store(bytes as u64, Relaxed);
    }

    /// The working memory the streams' sessions hold changes by `delta` bytes.
    pub fn arena_changed(&self, delta: i64) {
        add_signed(&self.arena_bytes, delta);
    }

    /// A reservation was refused because the budget was full.
    pub fn inflight_refused(&self) {
        self.inflight_refused.fetch_add(1, Relaxed);
    }

    /// Inference requests received and not yet answered, both protocols.
    pub fn requests_in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    pub fn connection_opened(&self) -> OpenConnection<'_> {
        self.connections.open.fetch_add(1, Relaxed);
        OpenConnection(self)
    }

    pub fn connection_refused(&self) {
        self.connections.refused.fetch_add(1, Relaxed);
    }

    pub fn connection_timed_out(&self, phase: &str) {
        let i = CONNECTION_PHASES.iter().position(|p| *p == phase).unwrap_or(CONNECTION_PHASES.len() - 1);
        self.connections.timed_out[i].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let labels = format!("model=\"{}\"", self.model);
        let mut out = String::with_capacity(8192);
        let mut counter = |name: &str, help: &str, kind: &str, lines: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (l, v) in lines {
                let _ = writeln!(out, "{name}{{{l}}} {v}");
            }
        };
        counter(
            "repvgg_request_success_total",
            "Inference requests answered with a result.",
            "counter",
            &[(labels.clone(), self.success.load(Relaxed))],
        );
        let failures: Vec<_> = FAILURE_REASONS
            .iter()
            .zip(&self.failures)
            .map(|(r, n)| (format!("{labels},reason=\"{r}\""), n.load(Relaxed)))
            .collect();
        counter("repvgg_request_failure_total", "Inference requests answered with an error.", "counter", &failures);
        counter(
            "repvgg_inference_count_total",
            "Images inferred (a batch of n counts n).",
            "counter",
            &[(labels.clone(), self.inferences.load(Relaxed))],
        );
        counter(
            "repvgg_execution_count_total",
            "Batches run by the inference streams (inferences / executions is the mean batch).",
            "counter",
            &[(labels.clone(), self.executions.load(Relaxed))],
        );
        counter(
            "repvgg_queue_requests",
            "Requests waiting for an inference stream.",
            "gauge",
            &[(labels.clone(), self.queued_requests.load(Relaxed))],
        );
        counter(
            "repvgg_queue_images",
            "Images waiting for an inference stream.",
            "gauge",
            &[(labels.clone(), self.queued_images.load(Relaxed))],
        );
        counter(
            "repvgg_requests_in_flight",
            "Inference requests received and not yet answered.",
            "gauge",
            &[(labels.clone(), self.in_flight.load(Relaxed))],
        );
        counter(
            "repvgg_inflight_bytes",
            "Bytes of requests held (bodies, parsed tensors, queued images) against the in-flight budget.",
            "gauge",
            &[(labels.clone(), self.inflight_bytes.load(Relaxed))],
        );
        counter(
            "repvgg_inflight_limit_bytes",
            "The in-flight budget (--max-inflight-bytes).",
            "gauge",
            &[(labels.clone(), self.inflight_limit.load(Relaxed))],
        );
        counter(
            "repvgg_inflight_refused_total",
            "Reservations refused because the in-flight budget was full.",
            "counter",
            &[(labels.clone(), self.inflight_refused.load(Relaxed))],
        );
        counter(
            "repvgg_arena_bytes",
            "Working memory the inference streams' sessions hold between batches.",
            "gauge",
            &[(labels.clone(), self.arena_bytes.load(Relaxed))],
        );
        self.request_seconds.render(
            &mut out,
            "repvgg_request_duration_seconds",
            "Inference request time from receipt to answer.",
            &labels,
        );
        self.queue_seconds.render(
            &mut out,
            "repvgg_queue_duration_seconds",
            "Time a request waited in the queue.",
            &labels,
        );
        self.compute_seconds.render(&mut out, "repvgg_compute_duration_seconds", "Time a batch ran.", &labels);
        self.batch_images.render(&mut out, "repvgg_batch_size", "Images per batch run.", &labels);
        let c = &self.connections;
        let mut counter = |name: &str, help: &str, kind: &str, lines: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (l, v) in lines {
                let _ = writeln!(out, "{name}{{{l}}} {v}");
            }
        };
        counter(
            "repvgg_http_connections",
            "HTTP connections open.",
            "gauge",
            &[(labels.clone(), c.open.load(Relaxed))],
        );
        counter(
            "repvgg_http_connections_refused_total",
            "HTTP connections refused (503) at the connection cap.",
            "counter",
            &[(labels.clone(), c.refused.load(Relaxed))],
        );
        let timed_out: Vec<_> = CONNECTION_PHASES
            .iter()
            .zip(&c.timed_out)
            .map(|(p, n)| (format!("{labels},phase=\"{p}\""), n.load(Relaxed)))
            .collect();
        counter(
            "repvgg_http_connections_timed_out_total",
            "HTTP connections closed for a head not sent within the header timeout, or silence past the idle timeout.",
            "counter",
            &timed_out,
        );
        counter(
            "repvgg_log_lines_dropped_total",
            "Log lines dropped because standard error was not read fast enough (the process's, not the model's).",
            "counter",
            &[(labels.clone(), crate::log::dropped())],
        );
        out
    }
}

/// A count of occurrences and their total duration (Triton's `StatisticDuration`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatDuration {
    pub count: u64,
    pub ns: u64,
}

/// One model's cumulative statistics, as Triton's statistics extension reports them.
///
/// `success` and `fail` count requests and their time from receipt to answer; `queue`
/// counts requests that reached a stream and the time they waited; `compute_infer`
/// counts batches run and their time. Converting inputs happens as a request is read
/// (inside `success`/`fail`, before the queue) and writing outputs after the batch, so
/// Triton's `compute_input` and `compute_output` have no separate measure here: they
/// are reported with the batches' count and 0 ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statistics {
    pub last_inference_ms: u64,
    /// Images inferred (a batch of n counts n).
    pub inference_count: u64,
    /// Batches run.
    pub execution_count: u64,
    pub success: StatDuration,
    pub fail: StatDuration,
    pub queue: StatDuration,
    pub compute_infer: StatDuration,
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn add_signed(a: &AtomicU64, delta: i64) {
    if delta >= 0 {
        a.fetch_add(delta as u64, Relaxed);
    } else {
        a.fetch_sub(delta.unsigned_abs(), Relaxed);
    }
}
