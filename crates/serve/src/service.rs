//! The model service both transports call: it validates a request, decodes images on the
//! decode pool, queues the tensor for an inference stream and shapes the answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use repvgg_runtime::Model;

use crate::budget::{Budget, Reservation};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::{self, Level};
use crate::metrics::Metrics;
use crate::scheduler::{Job, Scheduler, shutting_down};

/// The version every model is served as.
pub const VERSION: &str = "1";
/// The tensor of preprocessed images, `[N, 3, H, W]` FP32.
pub const INPUT: &str = "input";
/// Encoded JPEG or PNG images, `[N]` BYTES, preprocessed as `repvgg classify` does.
pub const IMAGE: &str = "image";
/// The logits, `[N, classes]` FP32.
pub const OUTPUT: &str = "logits";

/// A tensor's name, datatype and shape (-1 for a free dimension).
pub struct TensorInfo {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// A request's input values, as a transport received them.
pub enum Data<'a> {
    /// Decoded numbers (JSON `data`, gRPC `fp32_contents`).
    F32(Vec<f32>),
    /// Little-endian bytes (the binary extension, gRPC `raw_input_contents`).
    Raw(&'a [u8]),
    /// Little-endian FP32 bytes already converted (the binary extension read as it arrived).
    Floats(Vec<f32>),
    /// BYTES elements (JSON strings, gRPC `bytes_contents`).
    Elements(Vec<&'a [u8]>),
}

pub struct Input<'a> {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: Data<'a>,
}

/// A requested output and its classification extension parameter.
pub struct OutputRequest {
    pub name: String,
    pub classification: Option<i64>,
}

pub struct Request<'a> {
    pub inputs: Vec<Input<'a>>,
    /// The in-flight budget's hold on the request's data as the transport received it;
    /// it grows as the data is converted and goes with the tensor into the queue.
    pub held: Reservation,
    /// Empty: every output, as data.
    pub outputs: Vec<OutputRequest>,
    /// The request's `timeout` parameter, in microseconds.
    pub timeout_us: Option<i64>,
}

pub enum OutputData {
    F32(Vec<f32>),
    /// The classification extension's `"score:index:label"` strings.
    Strings(Vec<String>),
}

pub struct Output {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    pub data: OutputData,
}

/// How a request was served, for logs.
pub struct Served {
    pub outputs: Vec<Output>,
    pub queue: Duration,
    pub compute: Duration,
    pub batch: usize,
}

/// One served model.
pub struct Service {
    pub name: String,
    pub classes: usize,
    pub config: Config,
    model: Model,
    labels: Option<Vec<&'static str>>,
    scheduler: Scheduler,
    decoders: rayon::ThreadPool,
    pub metrics: Arc<Metrics>,
    /// Request bytes in flight, server-wide.
    pub budget: Arc<Budget>,
    ready: AtomicBool,
}

impl Service {
    pub fn start(model: Model, config: Config) -> Result<Service> {
        let metrics = Arc::new(Metrics::new(&config.model_name));
        let scheduler = Scheduler::start(&model, &config, metrics.clone())?;
        let decoders = rayon::ThreadPoolBuilder::new()
            .num_threads(config.decode_threads)
            .thread_name(|i| format!("repvgg-decode-{i}"))
            .build()
            .map_err(|e| Error::Start { what: "the image decoding pool", source: std::io::Error::other(e) })?;
        let classes = model.network().num_classes;
        let labels = repvgg_imagenet::labels();
        let budget = Budget::new(config.max_inflight_bytes, metrics.clone());
        Ok(Service {
            budget,
            name: config.model_name.clone(),
            classes,
            labels: (labels.len() == classes).then_some(labels),
            config,
            model,
            scheduler,
            decoders,
            metrics,
            ready: AtomicBool::new(true),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Stops accepting requests (readiness turns false); queued ones still run.
    pub fn stop_accepting(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }

    /// Lets the streams finish the queue and joins them.
    pub fn drain(&self) {
        self.scheduler.close_and_join();
    }

    /// Resolves a model name and optional version to this model.
    pub fn find(&self, name: &str, version: Option<&str>) -> Result<()> {
        if name != self.name {
            return Err(Error::NotFound(format!("unknown model {name:?}; this server serves {:?}", self.name)));
        }
        match version {
            None | Some("") | Some(VERSION) => Ok(()),
            Some(v) => Err(Error::NotFound(format!("model {name:?} has no version {v:?}; its version is {VERSION}"))),
        }
    }

    pub fn platform(&self) -> &'static str {
        "repvgg-rs"
    }

    /// What the model's metadata and configuration say of its arithmetic, as `parameters`
    /// entries: `precision` (`f32`, `int8` or `bf16`, what the streams run) and, for INT8,
    /// `int8_kernels` (the int8 kernel set: `amx`, `avx512-vnni`, `avx2` or `portable`),
    /// for BF16 `bf16_kernels` (`amx` or `avx512-bf16`).
    pub fn precision_parameters(&self) -> Vec<(&'static str, &'static str)> {
        let mut parameters = vec![("precision", self.scheduler.precision.name())];
        if let Some(kernels) = self.scheduler.int8_kernels {
            parameters.push(("int8_kernels", kernels.name()));
        }
        if let Some(kernels) = self.scheduler.bf16_kernels {
            parameters.push(("bf16_kernels", kernels.name()));
        }
        parameters
    }

    pub fn inputs(&self) -> Vec<TensorInfo> {
        vec![
            TensorInfo { name: INPUT, datatype: "FP32", shape: vec![-1, 3, -1, -1] },
            TensorInfo { name: IMAGE, datatype: "BYTES", shape: vec![-1] },
        ]
    }

    pub fn outputs(&self) -> Vec<TensorInfo> {
        vec![TensorInfo { name: OUTPUT, datatype: "FP32", shape: vec![-1, self.classes as i64] }]
    }

    /// Serves one request and records it in the metrics and the log.
    pub async fn infer(&self, protocol: &'static str, id: &str, request: Request<'_>) -> Result<Vec<Output>> {
        let start = Instant::now();
        self.metrics.in_flight(1);
        // Counts the request as cancelled if its future is dropped (the client went).
        let mut guard = Pending { metrics: &self.metrics, start, done: false };
        let result = self.serve(request).await;
        guard.done = true;
        drop(guard);
        self.record(protocol, id, start, result.as_ref());
        result.map(|s| s.outputs)
    }

    /// Refuses a request before its body is read if the server is shutting down or its
    /// queue is full.
    pub fn admits(&self) -> Result<()> {
        if !self.is_ready() {
            return Err(shutting_down());
        }
        self.scheduler.admits_any()
    }

    /// Records a request refused before it reached [`Service::infer`] (it could not be parsed).
    pub fn refused(&self, protocol: &'static str, start: Instant, error: &Error) {
        self.record(protocol, "", start, Err(error));
    }

    fn record(&self, protocol: &'static str, id: &str, start: Instant, result: Result<&Served, &Error>) {
        let elapsed = start.elapsed();
        self.metrics.request_done(elapsed, result.err().map(|e| e.reason()));
        let level = match result {
            Ok(_) => Level::Info,
            Err(e)
                if e.http_status() >= 500
                    && !matches!(e, Error::Unavailable(_) | Error::Timeout(_) | Error::Overloaded(_)) =>
            {
                Level::Error
            }
            Err(_) => Level::Warn,
        };
        log::event(level, "infer", |f| {
            f.insert("protocol".into(), protocol.into());
            f.insert("model".into(), self.name.as_str().into());
            if !id.is_empty() {
                f.insert("id".into(), id.into());
            }
            f.insert("total_us".into(), (elapsed.as_micros() as u64).into());
            match result {
                Ok(s) => {
                    f.insert("status".into(), 200.into());
                    f.insert("batch".into(), s.batch.into());
                    f.insert("queue_us".into(), (s.queue.as_micros() as u64).into());
                    f.insert("compute_us".into(), (s.compute.as_micros() as u64).into());
                }
                Err(e) => {
                    f.insert("status".into(), e.http_status().into());
                    f.insert("error".into(), e.to_string().into());
                }
            }
        });
    }

    async fn serve(&self, request: Request<'_>) -> Result<Served> {
        if !self.is_ready() {
            return Err(shutting_down());
        }
        let [input] = <[Input; 1]>::try_from(request.inputs).map_err(|inputs| {
            Error::BadRequest(format!(
                "a request has exactly one input ({INPUT:?} FP32 or {IMAGE:?} BYTES); this one has {}",
                inputs.len()
            ))
        })?;
        let outputs = self.check_outputs(&request.outputs)?;
        let deadline = Instant::now() + self.timeout(request.timeout_us)?;
        let mut held = request.held;
        let (values, n, h, w) = match input.name.as_str() {
            INPUT => self.tensor_input(input, &mut held)?,
            IMAGE => self.image_input(input, &mut held).await?,
            other => {
                return Err(Error::BadRequest(format!(
                    "unknown input {other:?}; the inputs are {INPUT:?} (FP32 [N, 3, H, W]) and {IMAGE:?} (BYTES [N])"
                )));
            }
        };
        let (job, done) = Job::new(values, n, h, w, deadline, held);
        self.scheduler.submit(job)?;
        let done = done.await.map_err(|_| Error::Internal("the inference stream stopped".into()))??;
        Ok(Served {
            outputs: self.outputs_of(&done.logits, n, &outputs),
            queue: done.queue,
            compute: done.compute,
            batch: done.batch,
        })
    }

    fn timeout(&self, requested_us: Option<i64>) -> Result<Duration> {
        match requested_us {
            None => Ok(self.config.timeout),
            Some(us) if us > 0 => Ok(self.config.timeout.min(Duration::from_micros(us as u64))),
            Some(us) => {
                Err(Error::BadRequest(format!("the timeout parameter must be positive microseconds, not {us}")))
            }
        }
    }

    /// The outputs asked for: names checked, classification counts in range.
    fn check_outputs(&self, outputs: &[OutputRequest]) -> Result<Vec<Option<usize>>> {
        if outputs.is_empty() {
            return Ok(vec![None]);
        }
        outputs
            .iter()
            .map(|o| {
                if o.name != OUTPUT {
                    return Err(Error::BadRequest(format!("unknown output {:?}; the output is {OUTPUT:?}", o.name)));
                }
                match o.classification {
                    None => Ok(None),
                    Some(k) if k >= 1 && k as u64 <= self.classes as u64 => Ok(Some(k as usize)),
                    Some(k) => Err(Error::BadRequest(format!(
                        "classification must be between 1 and {} (the classes), not {k}",
                        self.classes
                    ))),
                }
            })
            .collect()
    }

    /// Checks a tensor input's datatype and shape against its data, before converting it,
    /// and its values after: a non-finite value is this request's error alone, never that
    /// of a batch it would have been merged into.
    fn tensor_input(&self, input: Input<'_>, held: &mut Reservation) -> Result<(Vec<f32>, usize, usize, usize)> {
        if input.datatype != "FP32" {
            return Err(Error::BadRequest(format!("input {INPUT:?} must be FP32, not {}", input.datatype)));
        }
        let shape = dims(&input.shape, INPUT)?;
        let [n, c, h, w] = <[usize; 4]>::try_from(shape.as_slice()).map_err(|_| {
            Error::BadRequest(format!("input {INPUT:?} must have shape [N, 3, H, W], not {:?}", input.shape))
        })?;
        if c != 3 {
            return Err(Error::BadRequest(format!(
                "input {INPUT:?} must have 3 channels, not {c} (shape {:?})",
                input.shape
            )));
        }
        self.check_batch(n)?;
        self.model.limits().check_input(self.model.network(), &shape).map_err(|e| Error::BadRequest(e.to_string()))?;
        let elements = n * c * h * w;
        let wrong_bytes = |bytes: usize| {
            Error::BadRequest(format!(
                "input {INPUT:?} has {bytes} bytes; FP32 shape {:?} needs {}",
                input.shape,
                4 * elements
            ))
        };
        let values = match input.data {
            Data::F32(v) if v.len() == elements => v,
            Data::F32(v) => {
                return Err(Error::BadRequest(format!(
                    "input {INPUT:?} has {} values; shape {:?} needs {elements}",
                    v.len(),
                    input.shape
                )));
            }
            Data::Raw(bytes) if bytes.len() == 4 * elements => {
                // The bytes stay with the transport while the floats are queued.
                held.grow(4 * elements)?;
                let mut values = Vec::with_capacity(elements);
                extend_f32_le(&mut values, bytes);
                values
            }
            Data::Floats(v) if v.len() == elements => v,
            Data::Raw(bytes) => return Err(wrong_bytes(bytes.len())),
            Data::Floats(v) => return Err(wrong_bytes(4 * v.len())),
            Data::Elements(_) => return Err(Error::BadRequest(format!("input {INPUT:?} holds strings; it is FP32"))),
        };
        repvgg_runtime::check_finite(&values, [n, c, h, w]).map_err(|e| Error::BadRequest(e.to_string()))?;
        Ok((values, n, h, w))
    }

    /// Decodes and preprocesses encoded images on the decode pool.
    async fn image_input(&self, input: Input<'_>, held: &mut Reservation) -> Result<(Vec<f32>, usize, usize, usize)> {
        if input.datatype != "BYTES" {
            return Err(Error::BadRequest(format!("input {IMAGE:?} must be BYTES, not {}", input.datatype)));
        }
        let shape = dims(&input.shape, IMAGE)?;
        let n = match shape.as_slice() {
            [n] | [n, 1] => *n,
            _ => return Err(Error::BadRequest(format!("input {IMAGE:?} must have shape [N], not {:?}", input.shape))),
        };
        self.check_batch(n)?;
        let side = repvgg_imagenet::CROP as usize;
        // The encoded copies handed to the decode pool, and the preprocessed images (each
        // held twice for a moment: decoded, then joined into one tensor).
        let encoded = match &input.data {
            Data::Elements(e) => e.iter().map(|b| b.len()).sum(),
            Data::Raw(raw) => raw.len(),
            _ => 0,
        };
        held.grow(encoded + 2 * n * 3 * side * side * 4)?;
        let elements: Vec<Vec<u8>> = match input.data {
            Data::Elements(e) => e.into_iter().map(<[u8]>::to_vec).collect(),
            Data::Raw(raw) => split_bytes(raw)?.into_iter().map(<[u8]>::to_vec).collect(),
            Data::F32(_) | Data::Floats(_) => {
                return Err(Error::BadRequest(format!("input {IMAGE:?} holds numbers; it is BYTES")));
            }
        };
        if elements.len() != n {
            return Err(Error::BadRequest(format!(
                "input {IMAGE:?} has {} images; shape {:?} needs {n}",
                elements.len(),
                input.shape
            )));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.decoders.spawn(move || {
            let decoded: repvgg_runtime::Result<Vec<Vec<f32>>> = elements
                .par_iter()
                .enumerate()
                .map(|(i, bytes)| repvgg_imagenet::preprocess(bytes, &format!("image #{i}")))
                .collect();
            let _ = tx.send(decoded);
        });
        let images = rx
            .await
            .map_err(|_| Error::Internal("the image decoding pool stopped".into()))?
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        let tensor = images.concat();
        drop(images);
        held.shrink_to(held.bytes().saturating_sub(encoded + n * 3 * side * side * 4));
        Ok((tensor, n, side, side))
    }

    fn check_batch(&self, n: usize) -> Result<()> {
        if n == 0 || n > self.config.max_batch {
            return Err(Error::BadRequest(format!(
                "a request carries 1 to {} images (the server's max batch), not {n}",
                self.config.max_batch
            )));
        }
        Ok(())
    }

    fn outputs_of(&self, logits: &[f32], n: usize, outputs: &[Option<usize>]) -> Vec<Output> {
        let classes = self.classes;
        outputs
            .iter()
            .map(|classification| match *classification {
                None => Output {
                    name: OUTPUT.into(),
                    datatype: "FP32",
                    shape: vec![n as i64, classes as i64],
                    data: OutputData::F32(logits.to_vec()),
                },
                Some(k) => {
                    let mut strings = Vec::with_capacity(n * k);
                    for row in logits.chunks_exact(classes) {
                        for class in top_k(row, k) {
                            let label = self.labels.as_ref().map_or("", |l| l[class]);
                            // Triton's format: the output value, the class index, the label.
                            let mut s = format!("{:.6}:{class}", row[class]);
                            if !label.is_empty() {
                                s.push(':');
                                s.push_str(label);
                            }
                            strings.push(s);
                        }
                    }
                    Output {
                        name: OUTPUT.into(),
                        datatype: "BYTES",
                        shape: vec![n as i64, k as i64],
                        data: OutputData::Strings(strings),
                    }
                }
            })
            .collect()
    }
}

/// Takes a request out of the in-flight count, and counts it as cancelled if its future
/// was dropped before it finished.
struct Pending<'a> {
    metrics: &'a Metrics,
    start: Instant,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight(-1);
        if !self.done {
            self.metrics.request_done(self.start.elapsed(), Some("cancelled"));
            log::event(Level::Info, "cancelled", |f| {
                f.insert("after_us".into(), (self.start.elapsed().as_micros() as u64).into());
            });
        }
    }
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// A shape's dimensions, refusing negative ones and products that overflow.
fn dims(shape: &[i64], name: &str) -> Result<Vec<usize>> {
    let bad = || Error::BadRequest(format!("input {name:?} has an invalid shape {shape:?}"));
    let dims: Vec<usize> = shape.iter().map(|&d| usize::try_from(d).map_err(|_| bad())).collect::<Result<_>>()?;
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(bad)?;
    Ok(dims)
}

/// Splits the binary form of a BYTES tensor: each element a 4-byte little-endian length
/// followed by that many bytes.
pub fn split_bytes(mut raw: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let truncated = || Error::BadRequest("a BYTES tensor's length prefix runs past its data".into());
        let len = raw.get(..4).ok_or_else(truncated)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let element = raw.get(4..4 + len).ok_or_else(truncated)?;
        out.push(element);
        raw = &raw[4 + len..];
    }
    Ok(out)
}

/// The binary form of BYTES elements (see [`split_bytes`]).
pub fn join_bytes<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// Appends little-endian FP32 bytes (a multiple of 4) as floats: one plain copy on
/// little-endian hosts, 30 us a 224x224 request sooner than converting float by float.
pub fn extend_f32_le(values: &mut Vec<f32>, bytes: &[u8]) {
    let start = values.len();
    values.resize(start + bytes.len() / 4, 0.0);
    let new = &mut values[start..];
    let whole = 4 * new.len();
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice_mut::<f32, u8>(new).copy_from_slice(&bytes[..whole]);
    } else {
        for (v, b) in new.iter_mut().zip(bytes.chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
}
