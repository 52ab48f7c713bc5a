//! The gRPC side of the Open Inference Protocol: `inference.GRPCInferenceService`, with
//! tensors in `raw_input_contents` / `raw_output_contents` (or typed `contents`).

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::budget::Reservation;
use crate::error::Error;
use crate::protocol::{EXTENSIONS, model_configuration, model_statistics};
use crate::service::{self, Data, Input, OutputData, OutputRequest, Service};

pub mod admission;

/// Code generated from `crates/serve/proto` by `tools/regen-grpc` (no `protoc` needed to build).
#[allow(clippy::all, missing_docs, unreachable_pub)]
#[rustfmt::skip]
pub mod inference;

use inference::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use inference::infer_parameter::ParameterChoice;
use inference::*;

/// The gRPC service over one model service, behind the in-flight budget and the size
/// limit ([`admission`]).
pub fn server(service: Arc<Service>) -> admission::Admitted<GrpcInferenceServiceServer<Grpc>> {
    let limit = service.config.max_body_bytes;
    let budget = service.budget.clone();
    // Tonic's own limit stays as a backstop; admission refuses larger messages first.
    let grpc = GrpcInferenceServiceServer::new(Grpc(service))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    admission::Admitted::new(grpc, budget, limit)
}

/// Gives every `UNIMPLEMENTED` answer a message naming what is not served: tonic answers
/// a method the service lacks, or a service the server lacks, with the bare code, and a
/// client then cannot tell a missing feature from a misrouted call.
#[derive(Clone, Copy, Debug, Default)]
pub struct NameUnimplemented;

impl<S> tower_layer::Layer<S> for NameUnimplemented {
    type Service = NamedUnimplemented<S>;

    fn layer(&self, inner: S) -> NamedUnimplemented<S> {
        NamedUnimplemented(inner)
    }
}

/// The service [`NameUnimplemented`] wraps.
#[derive(Clone, Debug)]
pub struct NamedUnimplemented<S>(S);

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower_service::Service<http::Request<B>> for NamedUnimplemented<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let response = self.0.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            name_unimplemented(response.headers_mut(), &path);
            Ok(response)
        })
    }
}

/// The methods this server implements, for the message of one it does not.
const SERVED: &str = "ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig, \
                      ModelStatistics and ModelInfer";

/// Adds a message naming `path` to a message-less `UNIMPLEMENTED` (sent as headers only,
/// as tonic sends a call refused before any handler).
fn name_unimplemented(headers: &mut http::HeaderMap, path: &str) {
    let unimplemented = headers.get("grpc-status").is_some_and(|s| s.as_bytes() == b"12");
    let unnamed = headers.get("grpc-message").is_none_or(|m| m.is_empty());
    if !(unimplemented && unnamed) {
        return;
    }
    let method = path.trim_start_matches('/');
    let (service_name, _) = method.split_once('/').unwrap_or((method, ""));
    let message = if service_name == inference::grpc_inference_service_server::SERVICE_NAME {
        format!("{method} is not implemented by repvgg-rs (it serves {SERVED})")
    } else {
        format!(
            "{method} is not implemented by repvgg-rs: it serves only {} ({SERVED})",
            inference::grpc_inference_service_server::SERVICE_NAME
        )
    };
    // grpc-message is percent-encoded: `%` and bytes outside printable ASCII.
    let encoded: String = message
        .bytes()
        .map(|b| if (0x20..0x7f).contains(&b) && b != b'%' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    if let Ok(value) = http::HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", value);
    }
}

pub struct Grpc(Arc<Service>);

fn int_param(params: &HashMap<String, InferParameter>, key: &str) -> Result<Option<i64>, Error> {
    match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::Int64Param(v)) => Ok(Some(*v)),
        Some(ParameterChoice::Uint64Param(v)) => Ok(Some(i64::try_from(*v).unwrap_or(i64::MAX))),
        Some(other) => Err(Error::BadRequest(format!("parameter {key:?} must be an integer, not {other:?}"))),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.0.is_ready() }))
    }

    async fn model_ready(&self, r: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = r.into_inner();
        // As Triton answers: an unknown model or version is not ready (not an error).
        let known = self.0.find(&r.name, Some(&r.version)).is_ok();
        Ok(Response::new(ModelReadyResponse { ready: known && self.0.is_ready() }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "repvgg-rs".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = r.into_inner();
        let s = &self.0;
        s.find(&r.name, Some(&r.version))?;
        let tensors = |list: Vec<service::TensorInfo>| {
            list.into_iter()
                .map(|t| model_metadata_response::TensorMetadata {
                    name: t.name.into(),
                    datatype: t.datatype.into(),
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: s.name.clone(),
            versions: vec![service::VERSION.into()],
            platform: s.platform().into(),
            inputs: tensors(s.inputs()),
            outputs: tensors(s.outputs()),
            parameters: s
                .precision_parameters()
                .into_iter()
                .map(|(k, v)| {
                    let value = InferParameter { parameter_choice: Some(ParameterChoice::StringParam(v.into())) };
                    (k.to_string(), value)
                })
                .collect(),
        }))
    }

    async fn model_config(&self, r: Request<ModelConfigRequest>) -> Result<Response<ModelConfigResponse>, Status> {
        let r = r.into_inner();
        let s = &self.0;
        s.find(&r.name, Some(&r.version))?;
        Ok(Response::new(ModelConfigResponse { config: Some(model_configuration(s)) }))
    }

    async fn model_statistics(
        &self,
        r: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let r = r.into_inner();
        let s = &self.0;
        // As in Triton, no name means every model (this server's one).
        if !r.name.is_empty() {
            s.find(&r.name, Some(&r.version))?;
        }
        Ok(Response::new(ModelStatisticsResponse { model_stats: vec![model_statistics(s)] }))
    }

    async fn model_infer(&self, r: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let start = std::time::Instant::now();
        let s = &self.0;
        // The message's bytes stay held while the request (whose tensors are slices of
        // them) is served.
        let held = r.extensions().get::<admission::Ticket>().map_or_else(|| s.budget.empty(), |t| t.take());
        let r = r.into_inner();
        s.find(&r.model_name, Some(&r.model_version))?;
        let request = parse_infer(&r, held).inspect_err(|e| s.refused("grpc", start, e))?;
        let served = s.infer("grpc", &r.id, request).await?;
        let mut response = ModelInferResponse {
            model_name: s.name.clone(),
            model_version: service::VERSION.into(),
            id: r.id.clone(),
            ..Default::default()
        };
        for output in served {
            let raw: Vec<u8> = match &output.data {
                OutputData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                OutputData::Strings(v) => service::join_bytes(v.iter().map(|s| s.as_bytes())),
            };
            response.raw_output_contents.push(raw.into());
            response.outputs.push(model_infer_response::InferOutputTensor {
                name: output.name,
                datatype: output.datatype.into(),
                shape: output.shape,
                ..Default::default()
            });
        }
        Ok(Response::new(response))
    }
}

/// A gRPC request in the transport-neutral form.
fn parse_infer(r: &ModelInferRequest, mut held: Reservation) -> Result<service::Request<'_>, Error> {
    let bad = Error::BadRequest;
    if !r.raw_input_contents.is_empty() && r.raw_input_contents.len() != r.inputs.len() {
        return Err(bad(format!(
            "{} raw_input_contents for {} inputs; give one per input or none",
            r.raw_input_contents.len(),
            r.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for (i, input) in r.inputs.iter().enumerate() {
        let data = match (r.raw_input_contents.get(i), &input.contents) {
            (Some(raw), None) => Data::Raw(&raw[..]),
            (None, Some(c)) if !c.fp32_contents.is_empty() => {
                held.grow(4 * c.fp32_contents.len())?;
                Data::F32(c.fp32_contents.clone())
            }
            (None, Some(c)) if !c.bytes_contents.is_empty() => {
                Data::Elements(c.bytes_contents.iter().map(Vec::as_slice).collect())
            }
            (Some(_), Some(_)) => return Err(bad(format!("input {:?} has both raw and typed contents", input.name))),
            _ => {
                return Err(bad(format!(
                    "input {:?} has no data (raw_input_contents, fp32_contents or bytes_contents)",
                    input.name
                )));
            }
        };
        inputs.push(Input {
            name: input.name.clone(),
            datatype: input.datatype.clone(),
            shape: input.shape.clone(),
            data,
        });
    }
    // As in Triton, a request's `classification` applies to every output that does not
    // set its own, and to the default output when none is named.
    let all_classification = int_param(&r.parameters, "classification")?;
    let mut outputs = Vec::with_capacity(r.outputs.len().max(1));
    for o in &r.outputs {
        let classification = int_param(&o.parameters, "classification")?.or(all_classification);
        outputs.push(OutputRequest { name: o.name.clone(), classification });
    }
    if outputs.is_empty() && all_classification.is_some() {
        outputs.push(OutputRequest { name: service::OUTPUT.into(), classification: all_classification });
    }
    let timeout_us = int_param(&r.parameters, "timeout")?;
    Ok(service::Request { inputs, outputs, timeout_us, held })
}
