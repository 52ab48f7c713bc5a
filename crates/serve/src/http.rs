//! The HTTP/REST side of the Open Inference Protocol (KServe v2), with Triton's binary
//! tensor data, classification and model configuration extensions, and `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::grpc;
use crate::json::{self, TensorData};
use crate::service::{self, Data, Input, Output, OutputData, OutputRequest, Service};

/// Header giving the length of the JSON part of a binary-extension body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The extensions `/v2` lists.
pub const EXTENSIONS: [&str; 3] = ["binary_tensor_data", "classification", "model_configuration"];

type Shared = State<Arc<Service>>;

pub fn router(service: Arc<Service>) -> Router {
    let model = Router::new()
        .route("/", get(model_metadata))
        .route("/ready", get(model_ready))
        .route("/config", get(model_config))
        .route("/infer", post(infer));
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .nest("/v2/models/{name}", model.clone())
        .nest("/v2/models/{name}/versions/{version}", model)
        .route("/metrics", get(metrics))
        .fallback(|request: Request| async move {
            Error::NotFound(format!("no endpoint {} {}", request.method(), request.uri().path())).into_response()
        })
        .with_state(service)
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
    })))
}

async fn model_ready(State(s): Shared, Path(p): Path<ModelPath>) -> Result<Response> {
    s.find(&p.name, p.version.as_deref())?;
    Ok(if s.is_ready() { StatusCode::OK.into_response() } else { not_ready() })
}

/// Triton's model configuration, as its tools read it before they send anything: the
/// protobuf description ([`grpc::model_configuration`]) in the JSON form Triton gives it
/// (field names as in the schema, enums by name).
pub fn config_json(s: &Service) -> Value {
    use grpc::inference::{DataType, model_config::SchedulingChoice, model_input::Format, model_instance_group::Kind};
    let c = grpc::model_configuration(s);
    let data_type = |t: i32| DataType::try_from(t).map_or("TYPE_INVALID", |t| t.as_str_name());
    let inputs: Vec<Value> = c
        .input
        .iter()
        .map(|i| {
            let mut v = json!({ "name": i.name, "data_type": data_type(i.data_type), "dims": i.dims });
            if i.format != Format::None as i32 {
                v["format"] = Format::try_from(i.format).map_or("FORMAT_NONE", |f| f.as_str_name()).into();
            }
            if let Some(r) = &i.reshape {
                v["reshape"] = json!({ "shape": r.shape });
            }
            if i.optional {
                v["optional"] = true.into();
            }
            v
        })
        .collect();
    let outputs: Vec<Value> = c
        .output
        .iter()
        .map(|o| json!({ "name": o.name, "data_type": data_type(o.data_type), "dims": o.dims }))
        .collect();
    let groups: Vec<Value> = c
        .instance_group
        .iter()
        .map(|g| {
            let kind = Kind::try_from(g.kind).map_or("KIND_AUTO", |k| k.as_str_name());
            json!({ "name": g.name, "kind": kind, "count": g.count })
        })
        .collect();
    let parameters: Map<String, Value> =
        c.parameters.iter().map(|(k, p)| (k.clone(), json!({ "string_value": p.string_value }))).collect();
    let mut config = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": inputs,
        "output": outputs,
        "instance_group": groups,
        "parameters": parameters,
    });
    if let Some(SchedulingChoice::DynamicBatching(d)) = &c.scheduling_choice {
        config["dynamic_batching"] = json!({
            "preferred_batch_size": d.preferred_batch_size,
            "max_queue_delay_microseconds": d.max_queue_delay_microseconds,
        });
    }
    config
}

async fn model_config(State(s): Shared, Path(p): Path<ModelPath>) -> Result<Response> {
    s.find(&p.name, p.version.as_deref())?;
    Ok(json_response(config_json(&s)))
}

async fn metrics(State(s): Shared) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn infer(State(s): Shared, Path(p): Path<ModelPath>, headers: HeaderMap, body: Body) -> Result<Response> {
    s.find(&p.name, p.version.as_deref())?;
    let start = std::time::Instant::now();
    let body = match s.admits() {
        Ok(()) => read_body(&s, &headers, body).await,
        Err(e) => {
            // Read the body without keeping it, so the client (which is still sending)
            // gets the 503 instead of a reset connection.
            discard(body, s.config.max_body_bytes).await;
            Err(e)
        }
    };
    let body = body.inspect_err(|e| s.refused("http", start, e))?;
    let (request, binary_out, id) =
        parse_infer(&body, header_number(&headers, HEADER_LENGTH)).inspect_err(|e| s.refused("http", start, e))?;
    let outputs = s.infer("http", &id, request).await?;
    Ok(encode_infer(&s, &id, outputs, &binary_out))
}

/// Reads and drops up to `limit` bytes of a body.
async fn discard(mut body: Body, limit: usize) {
    use http_body_util::BodyExt as _;
    let mut seen = 0;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, |d| d.len());
        if seen > limit {
            return;
        }
    }
}

/// The whole body, refused early if its declared length is over the limit.
async fn read_body(s: &Service, headers: &HeaderMap, body: Body) -> Result<Bytes> {
    let limit = s.config.max_body_bytes;
    let too_large = || Error::TooLarge(format!("the request body is over the limit of {limit} bytes"));
    if header_number(headers, header::CONTENT_LENGTH.as_str())?.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    if let Some(enc) = headers.get(header::CONTENT_ENCODING).filter(|v| v.as_bytes() != b"identity") {
        return Err(Error::BadRequest(format!(
            "Content-Encoding {} is not supported; send the body uncompressed",
            String::from_utf8_lossy(enc.as_bytes())
        )));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<axum::extract::rejection::LengthLimitError>()) {
            too_large()
        } else {
            Error::BadRequest(format!("cannot read the request body: {e}"))
        }
    })
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

/// A request parsed from its JSON header and binary part; which outputs go back as binary;
/// the request id.
fn parse_infer(body: &Bytes, header_len: Result<Option<u64>>) -> Result<(service::Request<'_>, Vec<bool>, String)> {
    let split = match header_len? {
        None => body.len(),
        Some(n) if n as usize <= body.len() => n as usize,
        Some(n) => {
            return Err(Error::BadRequest(format!(
                "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                body.len()
            )));
        }
    };
    let (head, mut binary) = body.split_at(split);
    let request: json::InferRequest = serde_json::from_slice(head)
        .map_err(|e| Error::BadRequest(format!("malformed inference request JSON: {e}")))?;
    let bad = Error::BadRequest;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let size = json::int_param(&input.parameters, "binary_data_size").map_err(bad)?;
        let data = match (size, input.data) {
            (Some(_), Some(_)) => {
                return Err(bad(format!("input {:?} has both data and binary_data_size", input.name)));
            }
            (Some(size), None) => {
                let size = usize::try_from(size).ok().filter(|s| *s <= binary.len()).ok_or_else(|| {
                    bad(format!(
                        "input {:?} declares binary_data_size {size} but {} bytes of binary data remain",
                        input.name,
                        binary.len()
                    ))
                })?;
                let (data, rest) = binary.split_at(size);
                binary = rest;
                Data::Raw(data)
            }
            (None, Some(TensorData::Numbers(v))) => Data::F32(v),
            (None, Some(TensorData::Strings(count))) => {
                return Err(bad(format!(
                    "input {:?} has {count} JSON strings; send images with the binary tensor data extension",
                    input.name
                )));
            }
            (None, None) => return Err(bad(format!("input {:?} has neither data nor binary_data_size", input.name))),
        };
        inputs.push(Input { name: input.name, datatype: input.datatype, shape: input.shape, data });
    }
    if !binary.is_empty() {
        return Err(bad(format!("{} bytes of binary data follow the inputs' declared sizes", binary.len())));
    }
    let all_binary = json::bool_param(&request.parameters, "binary_data_output").map_err(bad)?.unwrap_or(false);
    let mut outputs = Vec::with_capacity(request.outputs.len());
    let mut binary_out = Vec::with_capacity(request.outputs.len().max(1));
    for output in request.outputs {
        binary_out.push(json::bool_param(&output.parameters, "binary_data").map_err(bad)?.unwrap_or(all_binary));
        let classification = json::int_param(&output.parameters, "classification").map_err(bad)?;
        outputs.push(OutputRequest { name: output.name, classification });
    }
    if binary_out.is_empty() {
        binary_out.push(all_binary);
    }
    let timeout_us = json::int_param(&request.parameters, "timeout").map_err(bad)?;
    Ok((service::Request { inputs, outputs, timeout_us }, binary_out, request.id.unwrap_or_default()))
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
