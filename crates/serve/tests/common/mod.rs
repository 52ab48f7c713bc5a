//! A server on ephemeral ports, a minimal HTTP/1.1 client and request builders.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use repvgg_runtime::{Model, Session, SessionOptions, Tensor};
use repvgg_serve::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use repvgg_serve::proto::{self, model_infer_request::InferInputTensor};
use repvgg_serve::{Config, Level, Server};

pub const MODEL: &str = "a0";

pub fn model() -> Model {
    Model::synthetic(repvgg_graph::ArchSpec::builtin("A0").unwrap(), 7).unwrap()
}

/// Test defaults: ephemeral ports, no logs, two single-thread streams, small warm-up.
pub fn config() -> Config {
    Config {
        model_name: MODEL.into(),
        http_port: 0,
        grpc_port: Some(0),
        streams: 2,
        threads_per_stream: 1,
        warmup: vec![(32, 32)],
        log_level: Level::Off,
        ..Config::default()
    }
}

pub fn start(config: Config) -> Server {
    Server::start(model(), config).unwrap()
}

/// What the server must answer: the same session options, the same input.
pub fn reference(input: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let mut session: Session = model().session(SessionOptions { threads: 1, ..Default::default() }).unwrap();
    session.run(&Tensor::new(shape.to_vec(), input.to_vec()).unwrap()).unwrap().data().to_vec()
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error in {}", self.text())).to_string()
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Reply {
    let framing = format!("Content-Length: {}", body.len());
    exchange(addr, method, path, &framing, headers, |s| {
        // A server that answers before reading everything (413) may close early.
        let _ = s.write_all(body);
    })
}

/// A POST whose body goes out chunked (no Content-Length), `chunk` bytes a chunk, each in a
/// write of its own: the server sees the JSON header and the values split anywhere.
pub fn http_chunked(addr: SocketAddr, path: &str, headers: &[(&str, String)], body: &[u8], chunk: usize) -> Reply {
    exchange(addr, "POST", path, "Transfer-Encoding: chunked", headers, |s| {
        s.set_nodelay(true).unwrap();
        for piece in body.chunks(chunk) {
            s.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).unwrap();
            s.write_all(piece).unwrap();
            s.write_all(b"\r\n").unwrap();
        }
        s.write_all(b"0\r\n\r\n").unwrap();
    })
}

/// Sends the request head (with `framing`, the header that delimits the body), lets
/// `send_body` write the body, and reads the whole reply.
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    framing: &str,
    headers: &[(&str, String)],
    send_body: impl FnOnce(&mut TcpStream),
) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{framing}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    send_body(&mut s);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_reply(&raw)
}

pub fn parse_reply(raw: &[u8]) -> Reply {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked") {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let len = usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap().trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&raw[line + 2..line + 2 + len]);
        raw = &raw[line + 2 + len + 2..];
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, &[], b"")
}

pub fn infer_path() -> String {
    format!("/v2/models/{MODEL}/infer")
}

/// A JSON request for the `input` tensor.
pub fn json_request(id: &str, input: &[f32], shape: [usize; 4]) -> Vec<u8> {
    serde_json::json!({
        "id": id,
        "inputs": [{ "name": "input", "shape": shape, "datatype": "FP32", "data": input }],
    })
    .to_string()
    .into_bytes()
}

/// A binary-extension request: the JSON header, then the tensor's bytes.
pub fn binary_request(id: &str, input: &[f32], shape: [usize; 4]) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let head = serde_json::json!({
        "id": id,
        "inputs": [{ "name": "input", "shape": shape, "datatype": "FP32",
                     "parameters": { "binary_data_size": 4 * input.len() } }],
        "outputs": [{ "name": "logits", "parameters": { "binary_data": true } }],
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    input.iter().for_each(|v| body.extend_from_slice(&v.to_le_bytes()));
    (vec![("Inference-Header-Content-Length", head.len().to_string())], body)
}

/// The logits of a JSON or binary answer.
pub fn logits(reply: &Reply) -> Vec<f32> {
    assert_eq!(reply.status, 200, "{}", reply.text());
    match reply.header("inference-header-content-length") {
        Some(len) => {
            let len: usize = len.parse().unwrap();
            let head: serde_json::Value = serde_json::from_slice(&reply.body[..len]).unwrap();
            let size = head["outputs"][0]["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
            let tail = &reply.body[len..];
            assert_eq!(tail.len(), size);
            tail.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
        }
        None => {
            reply.json()["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
        }
    }
}

pub fn metric(server: &Server, line_prefix: &str) -> f64 {
    server
        .metrics()
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .unwrap_or_else(|| panic!("no metric {line_prefix}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Logits within 1e-3 relative of `want` (a merged batch may run another algorithm than
/// a request alone).
pub fn close(got: &[f32], want: &[f32]) -> bool {
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-3 * (1.0 + w.abs()))
}

/// The logits of one gRPC `ModelInfer` of `input`.
pub fn grpc_logits(server: &Server, input: &[f32], shape: [usize; 4]) -> Vec<f32> {
    grpc_infer(server, input, shape).unwrap()
}

/// One gRPC `ModelInfer` of `input` (raw contents) on a connection of its own: the logits,
/// or the status the server answered.
pub fn grpc_infer(server: &Server, input: &[f32], shape: [usize; 4]) -> Result<Vec<f32>, tonic::Status> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = server.grpc_addr().unwrap();
    rt.block_on(async {
        let mut client = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
            .max_encoding_message_size(usize::MAX);
        let request = proto::ModelInferRequest {
            model_name: MODEL.into(),
            id: "g".into(),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: shape.iter().map(|&d| d as i64).collect(),
                ..Default::default()
            }],
            raw_input_contents: vec![input.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()],
            ..Default::default()
        };
        let reply = client.model_infer(request).await?.into_inner();
        assert_eq!((reply.id.as_str(), reply.outputs[0].name.as_str()), ("g", "logits"));
        assert_eq!(reply.outputs[0].shape, [shape[0] as i64, 1000]);
        Ok(reply.raw_output_contents[0].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
    })
}

/// Polls `condition` every 2 ms for up to 30 s.
pub fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A binary upload of a `[1, 3, h, w]` FP32 tensor that sends its head and `sent` bytes of
/// the tensor, then holds the connection (the caller drops it to go). Returns the stream
/// and the body's declared length.
pub fn hold_upload(addr: SocketAddr, h: usize, w: usize, sent: usize) -> (TcpStream, usize) {
    let data = 4 * 3 * h * w;
    let head = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,3,{h},{w}],"datatype":"FP32","parameters":{{"binary_data_size":{data}}}}}]}}"#
    );
    let mut s = TcpStream::connect(addr).unwrap();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nInference-Header-Content-Length: {}\r\n\r\n{head}",
        infer_path(),
        head.len() + data,
        head.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = sent.min(data);
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    (s, head.len() + data)
}
