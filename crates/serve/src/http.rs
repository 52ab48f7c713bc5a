//! The HTTP/REST side of the Open Inference Protocol (KServe v2), with Triton's binary
//! tensor data, classification, model configuration and statistics extensions, and
//! `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::budget::Reservation;
use crate::error::{Error, Result};
use crate::json::{self, TensorData};
use crate::protocol::{EXTENSIONS, config_json, statistics_json};
use crate::service::{self, Data, Input, Output, OutputData, OutputRequest, Service};

/// Header giving the length of the JSON part of a binary-extension body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

type Shared = State<Arc<Service>>;

pub fn router(service: Arc<Service>) -> Router {
    let model = Router::new()
        .route("/", get(model_metadata))
        .route("/ready", get(model_ready))
        .route("/config", get(model_config))
        .route("/stats", get(model_stats))
        .route("/infer", post(infer));
    let routes = Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        // Every model's statistics (Triton's form; one model here).
        .route("/v2/models/stats", get(all_stats))
        .nest("/v2/models/{name}", model.clone())
        .nest("/v2/models/{name}/versions/{version}", model)
        .route("/metrics", get(metrics))
        .fallback(|request: Request| async move {
            Error::NotFound(format!("no endpoint {} {}", request.method(), request.uri().path())).into_response()
        })
        .with_state(service);
    // Around the whole router, not its routes: a route's layer runs before the method
    // router adds `Allow` to its 405.
    Router::new().fallback_service(routes).layer(axum::middleware::from_fn(json_errors))
}

/// Gives every error answer the router produces a JSON body `{"error": ...}`, as the
/// handlers' own errors have: axum answers a method a route lacks with an empty 405, and
/// an extractor's rejection (a path parameter that is not valid percent-encoded UTF-8,
/// say) with a text body. Their status and headers (`Allow`) are kept.
///
/// hyper answers some requests itself, before any router sees them, with an empty body
/// that cannot be changed: a malformed request line or header (400), a URI over its
/// 65534-byte limit (414), and a head over its buffer (some 400 KiB) or over 100 headers
/// (431). A head not sent within the header timeout gets no answer: the connection closes.
async fn json_errors(request: Request, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = next.run(request).await;
    let status = response.status();
    let json = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"application/json");
    if json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = parts.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("");
        format!("method {method} is not allowed on {} (allowed: {allowed})", uri.path())
    } else if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text.trim().to_string()
    };
    let body = json!({ "error": message }).to_string();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(parts, Body::from(body))
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response =
            (status, [(header::CONTENT_TYPE, "application/json")], json!({ "error": self.to_string() }).to_string())
                .into_response();
        // An overloaded server asks clients to back off: an immediate retry costs it the
        // reading of another body.
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // The rest of a stalled body may still come; the connection cannot carry another
        // request after it.
        if status == StatusCode::REQUEST_TIMEOUT {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

fn json_response(value: Value) -> Response {
    json_text(value.to_string())
}

fn json_text(text: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// The `{name}` and optional `{version}` of a model path.
#[derive(serde::Deserialize)]
struct ModelPath {
    name: String,
    version: Option<String>,
}

async fn server_ready(State(s): Shared) -> Response {
    if s.is_ready() { StatusCode::OK.into_response() } else { not_ready() }
}

fn not_ready() -> Response {
    crate::scheduler::shutting_down().into_response()
}

async fn server_metadata() -> Response {
    json_response(json!({ "name": "repvgg-rs", "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS }))
}

fn tensors(list: Vec<service::TensorInfo>) -> Vec<Value> {
    list.into_iter().map(|t| json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape })).collect()
}

async fn model_metadata(State(s): Shared, Path(p): Path<ModelPath>) -> Result<Response> {
    s.find(&p.name, p.version.as_deref())?;
    Ok(json_response(json!({
        "name": s.name,
        "versions": [service::VERSION],
        "platform": s.platform(),
        "inputs": tensors(s.inputs()),
        "outputs": tensors(s.outputs()),
        // The Open Inference Protocol's optional model `parameters` (Triton's clients
        // return the document as it is).
        "parameters": s
            .precision_parameters()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect::<Map<String, Value>>(),
    })))
}

async fn model_ready(State(s): Shared, Path(p): Path<ModelPath>) -> Result<Response> {
    s.find(&p.name, p.version.as_deref())?;
    Ok(if s.is_ready() { StatusCode::OK.into_response() } else { not_ready() })
}

async fn model_config(State(s): Shared, Path(p): Path<ModelPath>) -> Result<Response> {
    s.find(&p.name, p.version.as_deref())?;
    Ok(json_response(config_json(&s)))
}

async fn model_stats(State(s): Shared, Path(p): Path<ModelPath>) -> Result<Response> {
    s.find(&p.name, p.version.as_deref())?;
    Ok(json_response(statistics_json(&s)))
}

async fn all_stats(State(s): Shared) -> Response {
    json_response(statistics_json(&s))
}

async fn metrics(State(s): Shared) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn infer(State(s): Shared, Path(p): Path<ModelPath>, headers: HeaderMap, body: Body) -> Result<Response> {
    s.find(&p.name, p.version.as_deref())?;
    let start = std::time::Instant::now();
    let mut body = BodyReader::new(body, s.config.max_body_bytes, s.budget.empty());
    let received = match s.admits() {
        Ok(()) => read_infer(&s, &headers, &mut body).await,
        Err(e) => Err(e),
    };
    let mut received = match received {
        Ok(received) => received,
        Err(e) => {
            if matches!(e, Error::Unavailable(_) | Error::Overloaded(_)) {
                // Read the rest of the body without keeping it, so the client (which is
                // still sending) gets the 503 instead of a reset connection.
                body.discard_rest().await;
            }
            s.refused("http", start, &e);
            return Err(e);
        }
    };
    let id = std::mem::take(&mut received.id);
    let outputs = s.infer("http", &id, received.request()).await?;
    Ok(encode_infer(&s, &id, outputs, &received.binary_out))
}

fn header_number(headers: &HeaderMap, name: &str) -> Result<Option<u64>> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| Error::BadRequest(format!("header {name} must be a byte count, not {v:?}")))
        })
        .transpose()
}

/// A body read frame by frame as it arrives, refused once it passes `limit` bytes or the
/// in-flight budget cannot hold what has arrived.
struct BodyReader {
    body: Body,
    limit: usize,
    seen: usize,
    /// What is left of the last frame.
    pending: Bytes,
    /// The budget's hold on the body: reserved up front for a declared length, else
    /// grown frame by frame before a frame is kept.
    held: Reservation,
}

impl BodyReader {
    fn new(body: Body, limit: usize, held: Reservation) -> BodyReader {
        BodyReader { body, limit, seen: 0, pending: Bytes::new(), held }
    }

    /// The next bytes of the body, or `None` at its end.
    async fn next(&mut self) -> Result<Option<Bytes>> {
        use http_body_util::BodyExt as _;
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        while let Some(frame) = self.body.frame().await {
            let frame = frame.map_err(crate::conn::body_error)?;
            if let Ok(data) = frame.into_data() {
                self.seen += data.len();
                if self.seen > self.limit {
                    return Err(too_large(self.limit));
                }
                self.held.ensure(self.seen)?;
                if !data.is_empty() {
                    return Ok(Some(data));
                }
            }
        }
        Ok(None)
    }

    /// Hands the next `n` bytes to `sink` piece by piece; returns how many there were
    /// before the body ended (`n` unless it ended early).
    async fn read_into(&mut self, n: usize, mut sink: impl FnMut(&[u8])) -> Result<usize> {
        let mut got = 0;
        while got < n {
            let Some(mut piece) = self.next().await? else { break };
            if piece.len() > n - got {
                self.pending = piece.split_off(n - got);
            }
            got += piece.len();
            sink(&piece);
        }
        Ok(got)
    }

    /// Reads the rest of the body (up to the limit); returns its length.
    async fn rest(&mut self) -> Result<usize> {
        let mut n = 0;
        while let Some(piece) = self.next().await? {
            n += piece.len();
        }
        Ok(n)
    }

    /// Reads and drops the rest of the body (up to the limit) without holding any of it
    /// against the budget, for a request refused before its body was read.
    async fn discard_rest(&mut self) {
        use http_body_util::BodyExt as _;
        self.held.shrink_to(0);
        self.pending = Bytes::new();
        while let Some(Ok(frame)) = self.body.frame().await {
            if let Ok(data) = frame.into_data() {
                self.seen += data.len();
                if self.seen > self.limit {
                    return;
                }
            }
        }
    }
}

fn too_large(limit: usize) -> Error {
    Error::TooLarge(format!("the request body is over the limit of {limit} bytes"))
}

/// An input's data as read from the body.
enum Part {
    /// JSON `data` numbers.
    Numbers(Vec<f32>),
    /// A binary FP32 tensor, converted to floats while it arrived.
    Floats(Vec<f32>),
    /// Any other binary tensor, as sent.
    Bytes(Vec<u8>),
}

impl Part {
    /// Bytes of memory the part holds.
    fn bytes(&self) -> usize {
        match self {
            Part::Numbers(v) | Part::Floats(v) => 4 * v.capacity(),
            Part::Bytes(b) => b.capacity(),
        }
    }
}

/// An inference request read from its body: the JSON header and each input's data.
struct Received {
    inputs: Vec<(json::InferInput, Part)>,
    outputs: Vec<OutputRequest>,
    /// Per output, whether it goes back as binary.
    binary_out: Vec<bool>,
    id: String,
    timeout_us: Option<i64>,
    /// The budget's hold on the inputs' data, handed to the request.
    held: Reservation,
}

impl Received {
    fn request(&mut self) -> service::Request<'_> {
        let inputs = self
            .inputs
            .iter_mut()
            .map(|(input, part)| Input {
                name: std::mem::take(&mut input.name),
                datatype: std::mem::take(&mut input.datatype),
                shape: std::mem::take(&mut input.shape),
                data: match part {
                    Part::Numbers(v) => Data::F32(std::mem::take(v)),
                    Part::Floats(v) => Data::Floats(std::mem::take(v)),
                    Part::Bytes(b) => Data::Raw(b),
                },
            })
            .collect();
        let held = self.held.take();
        service::Request { inputs, outputs: std::mem::take(&mut self.outputs), timeout_us: self.timeout_us, held }
    }
}

/// Reads an inference request: its JSON header, then, with the binary tensor data
/// extension, each input's bytes in the order the header declares them. FP32 tensors
/// become floats piece by piece as they arrive, so the one copy they need overlaps the
/// transfer of the rest instead of following it (measured: the server's handling time per
/// request at concurrency 1 halved).
async fn read_infer(s: &Service, headers: &HeaderMap, body: &mut BodyReader) -> Result<Received> {
    let limit = s.config.max_body_bytes;
    let declared = header_number(headers, header::CONTENT_LENGTH.as_str())?;
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    // A declared body is held against the budget before any of it is read.
    if let Some(len) = declared {
        body.held.ensure(len as usize)?;
    }
    if let Some(enc) = headers.get(header::CONTENT_ENCODING).filter(|v| v.as_bytes() != b"identity") {
        return Err(Error::BadRequest(format!(
            "Content-Encoding {} is not supported; send the body uncompressed",
            String::from_utf8_lossy(enc.as_bytes())
        )));
    }
    let header_len = header_number(headers, HEADER_LENGTH)?;
    // Without the extension's header the whole body is JSON.
    let want = header_len.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut head = Vec::new();
    let got = body.read_into(want, |piece| head.extend_from_slice(piece)).await?;
    if header_len.is_some() && got < want {
        return Err(Error::BadRequest(format!("{HEADER_LENGTH} is {want} but the body has only {got} bytes")));
    }
    let request: json::InferRequest = serde_json::from_slice(&head)
        .map_err(|e| Error::BadRequest(format!("malformed inference request JSON: {e}")))?;
    // JSON numbers parse into up to twice the bytes of their text (four per value from as
    // few as two characters): held on top of the body until the text is dropped.
    let numbers: usize = request.inputs.iter().map(|i| i.data.as_ref().map_or(0, TensorData::bytes)).sum();
    body.held.ensure(body.seen.max(declared.unwrap_or(0) as usize) + numbers)?;
    let bad = Error::BadRequest;
    // What the body can still hold: the parts together reserve no more, whatever their
    // sizes declare.
    let mut room = declared.map_or(0, |len| len as usize).saturating_sub(head.len());
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for mut input in request.inputs {
        let size = json::int_param(&input.parameters, "binary_data_size").map_err(bad)?;
        let part = match (size, input.data.take()) {
            (Some(_), Some(_)) => {
                return Err(bad(format!("input {:?} has both data and binary_data_size", input.name)));
            }
            (Some(declared), None) => {
                let size = usize::try_from(declared).map_err(|_| {
                    bad(format!("input {:?} declares binary_data_size {declared}; it must be a byte count", input.name))
                })?;
                let reserve = size.min(room);
                room -= reserve;
                let (part, got) = if input.datatype == "FP32" && size % 4 == 0 {
                    let mut floats = Floats::with_capacity(reserve / 4);
                    let got = body.read_into(size, |piece| floats.extend(piece)).await?;
                    (Part::Floats(floats.values), got)
                } else {
                    let mut bytes = Vec::with_capacity(reserve);
                    let got = body.read_into(size, |piece| bytes.extend_from_slice(piece)).await?;
                    (Part::Bytes(bytes), got)
                };
                if got < size {
                    return Err(bad(format!(
                        "input {:?} declares binary_data_size {size} but {got} bytes of binary data remain",
                        input.name
                    )));
                }
                part
            }
            (None, Some(TensorData::Numbers { values, nesting })) => {
                // Flat data in row-major order is the protocol's own form; nested data must
                // nest as the shape says.
                if nesting.len() > 1 && !nesting.iter().map(|&d| d as i64).eq(input.shape.iter().copied()) {
                    return Err(bad(format!(
                        "input {:?} nests its data as {nesting:?} but declares shape {:?}",
                        input.name, input.shape
                    )));
                }
                Part::Numbers(values)
            }
            (None, Some(TensorData::Strings(count))) => {
                return Err(bad(format!(
                    "input {:?} has {count} JSON strings; send images with the binary tensor data extension",
                    input.name
                )));
            }
            (None, None) => return Err(bad(format!("input {:?} has neither data nor binary_data_size", input.name))),
        };
        inputs.push((input, part));
    }
    let extra = body.rest().await?;
    if extra > 0 {
        return Err(bad(format!("{extra} bytes of binary data follow the inputs' declared sizes")));
    }
    let all_binary = json::bool_param(&request.parameters, "binary_data_output").map_err(bad)?.unwrap_or(false);
    // As in Triton, a request's `classification` applies to every output that does not
    // set its own, and to the default output when none is named.
    let all_classification = json::int_param(&request.parameters, "classification").map_err(bad)?;
    let mut outputs = Vec::with_capacity(request.outputs.len().max(1));
    let mut binary_out = Vec::with_capacity(request.outputs.len().max(1));
    for output in request.outputs {
        binary_out.push(json::bool_param(&output.parameters, "binary_data").map_err(bad)?.unwrap_or(all_binary));
        let classification = json::int_param(&output.parameters, "classification").map_err(bad)?.or(all_classification);
        outputs.push(OutputRequest { name: output.name, classification });
    }
    if binary_out.is_empty() {
        binary_out.push(all_binary);
        if all_classification.is_some() {
            outputs.push(OutputRequest { name: service::OUTPUT.into(), classification: all_classification });
        }
    }
    let timeout_us = json::int_param(&request.parameters, "timeout").map_err(bad)?;
    // The JSON text is dropped here; what stays is the inputs' data.
    let kept = inputs.iter().map(|(_, part)| part.bytes()).sum();
    let mut held = body.held.take();
    held.shrink_to(kept);
    Ok(Received { inputs, outputs, binary_out, id: request.id.unwrap_or_default(), timeout_us, held })
}

/// Little-endian FP32 values assembled from pieces of any length (a value may straddle two).
struct Floats {
    values: Vec<f32>,
    carry: [u8; 4],
    carried: usize,
}

impl Floats {
    fn with_capacity(n: usize) -> Floats {
        Floats { values: Vec::with_capacity(n), carry: [0; 4], carried: 0 }
    }

    fn extend(&mut self, mut piece: &[u8]) {
        if self.carried > 0 {
            let take = (4 - self.carried).min(piece.len());
            self.carry[self.carried..self.carried + take].copy_from_slice(&piece[..take]);
            self.carried += take;
            piece = &piece[take..];
            if self.carried < 4 {
                return;
            }
            self.values.push(f32::from_le_bytes(self.carry));
            self.carried = 0;
        }
        let whole = piece.len() / 4 * 4;
        service::extend_f32_le(&mut self.values, &piece[..whole]);
        let tail = &piece[whole..];
        self.carry[..tail.len()].copy_from_slice(tail);
        self.carried = tail.len();
    }
}

fn encode_infer(s: &Service, id: &str, outputs: Vec<Output>, binary_out: &[bool]) -> Response {
    let mut tail = Vec::new();
    let mut described = Vec::with_capacity(outputs.len());
    for (output, &binary) in outputs.into_iter().zip(binary_out) {
        let mut o = Map::new();
        o.insert("name".into(), output.name.into());
        o.insert("datatype".into(), output.datatype.into());
        o.insert("shape".into(), output.shape.into());
        if binary {
            let start = tail.len();
            match &output.data {
                OutputData::F32(v) => v.iter().for_each(|x| tail.extend_from_slice(&x.to_le_bytes())),
                OutputData::Strings(v) => tail.extend(service::join_bytes(v.iter().map(|s| s.as_bytes()))),
            }
            o.insert("parameters".into(), json!({ "binary_data_size": tail.len() - start }));
        } else {
            let data = match output.data {
                OutputData::F32(v) => Value::from(v),
                OutputData::Strings(v) => Value::from(v),
            };
            o.insert("data".into(), data);
        }
        described.push(Value::Object(o));
    }
    let mut head = json!({ "model_name": s.name, "model_version": service::VERSION, "outputs": described });
    if !id.is_empty() {
        head["id"] = id.into();
    }
    let head = head.to_string();
    if tail.is_empty() {
        return json_text(head);
    }
    let mut body = Vec::with_capacity(head.len() + tail.len());
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(&tail);
    let mut response = Response::new(Body::from(body));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(HEADER_LENGTH, HeaderValue::from(head.len()));
    response
}

#[cfg(test)]
mod tests {
    use super::Floats;

    /// A body's frames can split a value anywhere: every first cut, then pieces of
    /// several lengths, give back the values exactly.
    #[test]
    fn floats_assemble_from_pieces_split_anywhere() {
        let values: Vec<f32> = (0..37).map(|i| i as f32 * -1.25 + 0.1).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        for cut in 0..=bytes.len() {
            for step in [1, 2, 3, 5, 7, 64] {
                let mut floats = Floats::with_capacity(0);
                floats.extend(&bytes[..cut]);
                for piece in bytes[cut..].chunks(step) {
                    floats.extend(piece);
                }
                assert_eq!((floats.values.as_slice(), floats.carried), (values.as_slice(), 0), "cut {cut} step {step}");
            }
        }
    }
}
