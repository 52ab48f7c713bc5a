//! The served precision: a quantized model (the trained-digits fixture quantized here) is
//! served in INT8 and says so in its metadata and configuration, over HTTP and gRPC, with
//! the int8 kernel set; `precision: Some(F32)` serves its dequantized weights and says
//! f32; INT8 asked of a float model is refused at start.

mod common;

use std::path::PathBuf;

use common::*;
use repvgg_graph::ArchSpec;
use repvgg_runtime::{ErrorKind, Limits, Model, ModelOptions, Precision, QuantizeOptions, SessionOptions, Tensor};
use repvgg_serve::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use repvgg_serve::proto::{self, infer_parameter::ParameterChoice};
use repvgg_serve::{Config, Error, Server};
use serde_json::json;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures/trained-digits")
}

/// The fixture's float model and its first `n` images.
fn float_model(n: usize) -> (Model, Tensor) {
    let dir = fixture_dir();
    let arch = ArchSpec::from_file(&dir.join("arch.toml")).unwrap();
    let model =
        Model::load(&dir.join("train.safetensors"), &ModelOptions { arch: Some(arch), ..Default::default() }).unwrap();
    let all = repvgg_runtime::loader::read_input(&dir.join("input.safetensors"), &Limits::default()).unwrap();
    let image: usize = all.shape()[1..].iter().product();
    let mut shape = all.shape().to_vec();
    shape[0] = n;
    (model, Tensor::new(shape, all.data()[..n * image].to_vec()).unwrap())
}

/// The fixture quantized on 16 of its images, and 4 images to serve.
fn quantized() -> (Model, Tensor) {
    let (model, calibration) = float_model(16);
    let (q, _) = model.quantize(&calibration, &QuantizeOptions { threads: 1, ..Default::default() }).unwrap();
    assert_eq!(q.precision(), Precision::Int8);
    let (_, images) = float_model(4);
    (q, images)
}

fn digits_config(precision: Option<Precision>) -> Config {
    Config { model_name: "digits".into(), streams: 1, warmup: vec![(24, 24)], precision, ..config() }
}

/// Sorted string parameters of a gRPC answer.
type Pairs = Vec<(String, String)>;

/// The `parameters` of the HTTP metadata and configuration, and of the gRPC ones.
fn advertised(server: &Server) -> (serde_json::Value, serde_json::Value, Pairs, Pairs) {
    let addr = server.http_addr();
    let meta = get(addr, "/v2/models/digits").json()["parameters"].clone();
    let config = get(addr, "/v2/models/digits/config").json()["parameters"].clone();
    let grpc = server.grpc_addr().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (meta_grpc, config_grpc) = rt.block_on(async {
        let mut c = GrpcInferenceServiceClient::connect(format!("http://{grpc}")).await.unwrap();
        let m = proto::ModelMetadataRequest { name: "digits".into(), version: String::new() };
        let m = c.model_metadata(m).await.unwrap().into_inner();
        let mut meta: Pairs = m
            .parameters
            .into_iter()
            .map(|(k, v)| match v.parameter_choice {
                Some(ParameterChoice::StringParam(s)) => (k, s),
                other => panic!("parameter {k} is {other:?}, not a string"),
            })
            .collect();
        meta.sort();
        let r = proto::ModelConfigRequest { name: "digits".into(), version: String::new() };
        let config = c.model_config(r).await.unwrap().into_inner().config.unwrap();
        let mut config: Pairs = config.parameters.into_iter().map(|(k, v)| (k, v.string_value)).collect();
        config.sort();
        (meta, config)
    });
    (meta, config, meta_grpc, config_grpc)
}

fn pairs(list: &[(&str, &str)]) -> Pairs {
    let mut v: Pairs = list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    v.sort();
    v
}

/// The logits the server answers for `images` (binary extension, so exact).
fn infer(server: &Server, images: &Tensor) -> Vec<f32> {
    let shape: [usize; 4] = images.shape().try_into().unwrap();
    let (headers, body) = binary_request("p", images.data(), shape);
    logits(&http(server.http_addr(), "POST", "/v2/models/digits/infer", &headers, &body))
}

fn argmax(logits: &[f32], classes: usize) -> Vec<usize> {
    logits.chunks(classes).map(|row| (0..classes).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()).collect()
}

#[test]
fn a_quantized_model_is_served_in_int8_and_says_so() {
    let (model, images) = quantized();
    let server = Server::start(model.clone(), digits_config(None)).unwrap();
    let session = model.session(SessionOptions { threads: 1, ..Default::default() }).unwrap();
    let kernels = session.int8_kernels().expect("an INT8 session has int8 kernels").name();
    let (meta, config, meta_grpc, config_grpc) = advertised(&server);
    assert_eq!(meta, json!({ "precision": "int8", "int8_kernels": kernels }));
    assert_eq!(config["precision"], json!({ "string_value": "int8" }));
    assert_eq!(config["int8_kernels"], json!({ "string_value": kernels }));
    assert_eq!(meta_grpc, pairs(&[("precision", "int8"), ("int8_kernels", kernels)]));
    assert!(config_grpc.contains(&("precision".into(), "int8".into())), "{config_grpc:?}");
    assert!(config_grpc.contains(&("int8_kernels".into(), kernels.into())), "{config_grpc:?}");

    // What it serves is the INT8 session's answer, and classifies as FP32 does.
    let mut session = session;
    let want = session.run(&images).unwrap();
    let got = infer(&server, &images);
    assert_eq!(got, want.data(), "the server's logits are an INT8 session's");
    let (float, _) = float_model(1);
    let fp32 = float.session(SessionOptions { threads: 1, ..Default::default() }).unwrap().run(&images).unwrap();
    assert_eq!(argmax(&got, 10), argmax(fp32.data(), 10));
    server.shutdown().unwrap();
}

#[test]
fn precision_f32_serves_a_quantized_model_in_f32_and_says_so() {
    let (model, images) = quantized();
    let server = Server::start(model.clone(), digits_config(Some(Precision::F32))).unwrap();
    let (meta, config, meta_grpc, config_grpc) = advertised(&server);
    assert_eq!(meta, json!({ "precision": "f32" }));
    assert_eq!(config["precision"], json!({ "string_value": "f32" }));
    assert!(config.get("int8_kernels").is_none(), "{config}");
    assert_eq!(meta_grpc, pairs(&[("precision", "f32")]));
    assert!(config_grpc.contains(&("precision".into(), "f32".into())), "{config_grpc:?}");
    let options = SessionOptions { threads: 1, precision: Some(Precision::F32), ..Default::default() };
    let want = model.session(options).unwrap().run(&images).unwrap();
    assert_eq!(infer(&server, &images), want.data(), "the server's logits are an FP32 session's");
    server.shutdown().unwrap();
}

#[test]
fn int8_on_a_float_model_is_refused_at_start() {
    let (float, _) = float_model(1);
    match Server::start(float, digits_config(Some(Precision::Int8))) {
        Err(e @ Error::Model(_)) => {
            assert_eq!(e.kind(), Some(ErrorKind::Usage));
            assert!(e.to_string().contains("quantize"), "{e}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("INT8 on a float model was served"),
    }
}
