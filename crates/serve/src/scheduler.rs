//! The bounded queue and the inference streams that drain it, merging queued requests of
//! one input size into batches.
//!
//! Each stream is an OS thread owning one `Session`; async request handlers never run a
//! model. A stream takes the oldest request, adds queued requests of the same height and
//! width while the batch stays within `max_batch` images, waits up to `max_queue_delay`
//! (counted from the oldest request's arrival) for more, and runs the batch. Requests
//! whose client has gone, or whose deadline has passed, are dropped before they are
//! computed.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use repvgg_runtime::{Bf16Set, Int8Set, Model, Precision};
use tokio::sync::oneshot;

use crate::budget::Reservation;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::{self, Level};
use crate::metrics::Metrics;

/// One request's images, `[n, 3, h, w]` in `input`.
pub struct Job {
    pub input: Vec<f32>,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<Done>>,
    arrived: Instant,
    /// The in-flight budget's hold on `input` (and whatever the transport still keeps of
    /// the request), given back when the job is dropped after its answer.
    _held: Reservation,
}

impl Job {
    pub fn new(
        input: Vec<f32>,
        n: usize,
        h: usize,
        w: usize,
        deadline: Instant,
        held: Reservation,
    ) -> (Job, oneshot::Receiver<Result<Done>>) {
        let (reply, rx) = oneshot::channel();
        (Job { input, n, h, w, deadline, reply, arrived: Instant::now(), _held: held }, rx)
    }
}

/// A computed request.
#[derive(Debug)]
pub struct Done {
    /// `[n, classes]`.
    pub logits: Vec<f32>,
    pub queue: Duration,
    pub compute: Duration,
    /// Images in the batch the request ran in (its own and any merged with it).
    pub batch: usize,
}

struct Queue {
    jobs: VecDeque<Job>,
    images: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    arrived: Condvar,
    max_batch: usize,
    max_queue_images: usize,
    max_queue_delay: Duration,
    classes: usize,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A stream that panicked mid-batch leaves the queue consistent (jobs are moved out
        // whole), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The queue and its streams.
pub struct Scheduler {
    shared: Arc<Shared>,
    streams: Mutex<Vec<JoinHandle<()>>>,
    /// The arithmetic the streams' sessions run in.
    pub precision: Precision,
    /// The int8 kernel set of their INT8 layers (INT8 sessions only).
    pub int8_kernels: Option<Int8Set>,
    /// The bf16 kernel set of their BF16 layers (BF16 sessions only).
    pub bf16_kernels: Option<Bf16Set>,
}

impl Scheduler {
    /// Starts `config.streams` streams, each with its own session, and runs the warm-up
    /// sizes on each before returning.
    pub fn start(model: &Model, config: &Config, metrics: Arc<Metrics>) -> Result<Scheduler> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { jobs: VecDeque::new(), images: 0, closed: false }),
            arrived: Condvar::new(),
            max_batch: config.max_batch,
            max_queue_images: config.max_queue_images,
            max_queue_delay: config.max_queue_delay,
            classes: model.network().num_classes,
            metrics,
        });
        let options = config.session_options();
        // The first session says what every stream runs (all have the same options), and
        // refuses options the model cannot take (INT8 on a float model) before any stream starts.
        let first = model.session(options.clone())?;
        let (precision, int8_kernels, bf16_kernels) = (first.precision(), first.int8_kernels(), first.bf16_kernels());
        let mut first = Some(first);
        let streams = Mutex::new(Vec::new());
        let scheduler = Scheduler { shared: shared.clone(), streams, precision, int8_kernels, bf16_kernels };
        for index in 0..config.streams {
            let mut session = match first.take() {
                Some(session) => session,
                None => model.session(options.clone())?,
            };
            for &(h, w) in &config.warmup {
                let input = vec![0f32; 3 * h * w];
                let mut logits = vec![0f32; shared.classes];
                session.run_slice(&input, &[1, 3, h, w], &mut logits)?;
                // Plan full batches too, so that the arena kept between requests fits them.
                session.plan(config.max_batch, h, w)?;
            }
            let steady = Steady {
                arena_bytes: session.arena_bytes(),
                input_floats: config.warmup.iter().map(|&(h, w)| config.max_batch * 3 * h * w).max().unwrap_or(0),
            };
            let shared = shared.clone();
            let stream = std::thread::Builder::new()
                .name(format!("repvgg-stream-{index}"))
                .spawn(move || run_stream(&shared, &mut session, steady))
                .map_err(|source| Error::Start { what: "an inference stream", source });
            match stream {
                Ok(handle) => scheduler.streams.lock().unwrap_or_else(|p| p.into_inner()).push(handle),
                Err(e) => {
                    scheduler.close_and_join();
                    return Err(e);
                }
            }
        }
        Ok(scheduler)
    }

    /// Refuses at once when not even one image would fit (so that an overloaded server
    /// does not read and parse a body only to refuse it).
    pub fn admits_any(&self) -> Result<()> {
        self.admits(&self.shared.lock(), 1)
    }

    /// Whether `images` more fit in the queue.
    fn admits(&self, q: &Queue, images: usize) -> Result<()> {
        if q.closed {
            return Err(shutting_down());
        }
        if q.images + images > self.shared.max_queue_images {
            return Err(Error::Unavailable(format!(
                "the queue is full ({} images waiting, at most {}); retry later",
                q.images, self.shared.max_queue_images
            )));
        }
        Ok(())
    }

    /// Queues a job, or refuses it at once if the queue is full or closed.
    pub fn submit(&self, job: Job) -> Result<()> {
        let mut q = self.shared.lock();
        self.admits(&q, job.n)?;
        q.images += job.n;
        self.shared.metrics.queue_changed(1, job.n as i64);
        q.jobs.push_back(job);
        drop(q);
        self.shared.arrived.notify_one();
        Ok(())
    }

    /// Refuses new jobs; the streams finish the queued ones and stop.
    pub fn close_and_join(&self) {
        self.shared.lock().closed = true;
        self.shared.arrived.notify_all();
        let streams = std::mem::take(&mut *self.streams.lock().unwrap_or_else(|p| p.into_inner()));
        for stream in streams {
            let _ = stream.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.close_and_join();
    }
}

/// The refusal of a request that arrives while the server drains.
pub fn shutting_down() -> Error {
    Error::Unavailable("the server is shutting down".into())
}

/// What a stream keeps between batches: the arena and merge buffer its warm-up sizes need
/// at full batches. A larger request grows them for its own run, and they are given back
/// after it, so that one oversized request does not hold its memory for the server's life.
#[derive(Clone, Copy)]
struct Steady {
    arena_bytes: usize,
    input_floats: usize,
}

fn run_stream(shared: &Shared, session: &mut repvgg_runtime::Session, steady: Steady) {
    let mut input = Vec::new();
    let mut logits = Vec::new();
    let mut arena = session.arena_bytes();
    shared.metrics.arena_changed(arena as i64);
    while let Some(batch) = next_batch(shared) {
        let started = Instant::now();
        let images: usize = batch.iter().map(|j| j.n).sum();
        let (h, w) = (batch[0].h, batch[0].w);
        let single = batch.len() == 1;
        if !single {
            input.clear();
            for job in &batch {
                input.extend_from_slice(&job.input);
            }
        }
        logits.resize(images * shared.classes, 0.0);
        let data = if single { &batch[0].input } else { &input };
        let result = session.run_rows(data, &[images, 3, h, w], &mut logits);
        let compute = started.elapsed();
        shared.metrics.batch_ran(images, compute);
        log::event(Level::Debug, "batch", |f| {
            f.insert("requests".into(), batch.len().into());
            f.insert("images".into(), images.into());
            f.insert("size".into(), format!("{h}x{w}").into());
            f.insert("compute_us".into(), (compute.as_micros() as u64).into());
        });
        let replies: Vec<(Job, Result<Done>)> = match result {
            Ok(rows) => {
                let ran = Ran { logits: &logits, rows: &rows, classes: shared.classes, started, compute, images };
                let mut row = 0;
                batch
                    .into_iter()
                    .map(|job| {
                        let reply = ran.answer(row, &job);
                        row += job.n;
                        (job, reply)
                    })
                    .collect()
            }
            // A failure of the merged batch as a whole (its working memory over the limit,
            // where each request alone fits): run the requests one by one, so that each
            // gets its own answer.
            Err(_) if !single => batch
                .into_iter()
                .map(|job| {
                    let reply = run_alone(shared, session, &job, started);
                    (job, reply)
                })
                .collect(),
            Err(e) => batch.into_iter().map(|job| (job, Err(Error::from_runtime(&e)))).collect(),
        };
        // The requests' inputs and holds on the budget go first, then the memory beyond the
        // steady size (the allocator is trimmed after the inputs are freed), and only then
        // the answers: a client holding its answer sees the server without its request.
        let replies: Vec<_> = replies.into_iter().map(|(job, reply)| (job.reply, reply)).collect();
        session.trim_arena(steady.arena_bytes);
        let now = session.arena_bytes();
        shared.metrics.arena_changed(now as i64 - arena as i64);
        arena = now;
        if input.capacity() > steady.input_floats {
            input = Vec::new();
        }
        if logits.capacity() > 4 * shared.classes * shared.max_batch {
            logits = Vec::new();
        }
        for (to, reply) in replies {
            // The client may have gone meanwhile; nothing to do then.
            let _ = to.send(reply);
        }
    }
}

/// A batch that ran: its logits, each image's failure, and what a request's answer
/// reports of the run.
struct Ran<'a> {
    logits: &'a [f32],
    rows: &'a [Option<repvgg_runtime::Error>],
    classes: usize,
    started: Instant,
    compute: Duration,
    images: usize,
}

impl Ran<'_> {
    /// The answer of the job whose images are rows `row..row + job.n`: its logits, or the
    /// error of its first failing image (numbered within the request).
    fn answer(&self, row: usize, job: &Job) -> Result<Done> {
        let failed = self.rows[row..row + job.n].iter().enumerate().find_map(|(i, e)| e.as_ref().map(|e| (i, e)));
        if let Some((i, e)) = failed {
            let e = Error::from_runtime(e);
            return Err(if job.n == 1 { e } else { e.in_image(i) });
        }
        Ok(Done {
            logits: self.logits[row * self.classes..(row + job.n) * self.classes].to_vec(),
            queue: self.started.saturating_duration_since(job.arrived),
            compute: self.compute,
            batch: self.images,
        })
    }
}

/// Runs one job by itself (after its merged batch failed as a whole).
fn run_alone(shared: &Shared, session: &mut repvgg_runtime::Session, job: &Job, started: Instant) -> Result<Done> {
    let mut logits = vec![0f32; job.n * shared.classes];
    let begun = Instant::now();
    let rows =
        session.run_rows(&job.input, &[job.n, 3, job.h, job.w], &mut logits).map_err(|e| Error::from_runtime(&e))?;
    let compute = begun.elapsed();
    shared.metrics.batch_ran(job.n, compute);
    Ran { logits: &logits, rows: &rows, classes: shared.classes, started, compute, images: job.n }.answer(0, job)
}

/// The next batch to run, or `None` once the queue is closed and empty.
fn next_batch(shared: &Shared) -> Option<Vec<Job>> {
    let mut q = shared.lock();
    let first = loop {
        match pop_live(shared, &mut q, |_| true) {
            Some(job) => break job,
            None if q.closed => return None,
            None => q = shared.arrived.wait(q).unwrap_or_else(|p| p.into_inner()),
        }
    };
    let (h, w) = (first.h, first.w);
    let waited_until = first.arrived + shared.max_queue_delay;
    let mut images = first.n;
    let mut batch = vec![first];
    loop {
        while images < shared.max_batch {
            let room = shared.max_batch - images;
            match pop_live(shared, &mut q, |j| j.h == h && j.w == w && j.n <= room) {
                Some(job) => {
                    images += job.n;
                    batch.push(job);
                }
                None => break,
            }
        }
        let now = Instant::now();
        if images >= shared.max_batch || q.closed || now >= waited_until {
            break;
        }
        q = shared.arrived.wait_timeout(q, waited_until - now).unwrap_or_else(|p| p.into_inner()).0;
    }
    Some(batch)
}

/// Takes the oldest job matching `fits` out of the queue, answering (and dropping) the
/// cancelled and expired jobs met on the way.
fn pop_live(shared: &Shared, q: &mut Queue, fits: impl Fn(&Job) -> bool) -> Option<Job> {
    let now = Instant::now();
    let mut i = 0;
    while i < q.jobs.len() {
        let job = &q.jobs[i];
        let cancelled = job.reply.is_closed();
        let expired = now >= job.deadline;
        if !(cancelled || expired || fits(job)) {
            i += 1;
            continue;
        }
        let job = q.jobs.remove(i).expect("index in range");
        q.images -= job.n;
        shared.metrics.queue_changed(-1, -(job.n as i64));
        shared.metrics.queued_for(now.saturating_duration_since(job.arrived));
        if cancelled {
            // Nobody waits for the answer; the handler that went counted the failure.
            continue;
        }
        if expired {
            let waited = now.saturating_duration_since(job.arrived);
            let _ = job.reply.send(Err(Error::Timeout(format!(
                "the request waited {} ms in the queue, past its deadline; the server is overloaded",
                waited.as_millis()
            ))));
            continue;
        }
        return Some(job);
    }
    None
}
