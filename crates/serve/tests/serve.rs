//! The server end to end, on 127.0.0.1 at ephemeral ports: every endpoint, results equal
//! to `Session::run`, refusals, concurrency, disconnects, admission control and shutdown.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use repvgg_serve::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use repvgg_serve::proto::{self, model_infer_request::InferInputTensor};
use repvgg_serve::{Config, Error, Server};

#[test]
fn every_endpoint_answers() {
    let server = start(config());
    let addr = server.http_addr();
    assert_eq!(get(addr, "/v2/health/live").status, 200);
    assert_eq!(get(addr, "/v2/health/ready").status, 200);
    let meta = get(addr, "/v2").json();
    assert_eq!(meta["name"], "repvgg-rs");
    let extensions: Vec<&str> = meta["extensions"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert_eq!(extensions, ["binary_tensor_data", "classification", "model_configuration", "statistics"]);
    for prefix in [format!("/v2/models/{MODEL}"), format!("/v2/models/{MODEL}/versions/1")] {
        let m = get(addr, &prefix).json();
        assert_eq!(m["name"], MODEL);
        assert_eq!(m["versions"], serde_json::json!(["1"]));
        assert_eq!(
            m["inputs"][0],
            serde_json::json!({ "name": "input", "datatype": "FP32", "shape": [-1, 3, -1, -1] })
        );
        assert_eq!(m["outputs"][0], serde_json::json!({ "name": "logits", "datatype": "FP32", "shape": [-1, 1000] }));
        assert_eq!(m["parameters"], serde_json::json!({ "precision": "f32" }));
        assert_eq!(get(addr, &format!("{prefix}/ready")).status, 200);
        // Triton's JSON form of the gRPC answer's protobuf, field by field.
        let queue = config().max_queue_images.to_string();
        assert_eq!(
            get(addr, &format!("{prefix}/config")).json(),
            serde_json::json!({
                "name": MODEL, "platform": "repvgg-rs", "backend": "repvgg-rs", "max_batch_size": config().max_batch,
                "input": [
                    { "name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, -1, -1] },
                    { "name": "image", "data_type": "TYPE_STRING", "dims": [1], "reshape": { "shape": [] }, "optional": true },
                ],
                "output": [{ "name": "logits", "data_type": "TYPE_FP32", "dims": [1000] }],
                "dynamic_batching": { "preferred_batch_size": [config().max_batch], "max_queue_delay_microseconds": 0 },
                "instance_group": [{ "name": "streams", "kind": "KIND_CPU", "count": 2 }],
                "parameters": {
                    "threads_per_stream": { "string_value": "1" },
                    "max_queue_images": { "string_value": queue },
                    "precision": { "string_value": "f32" },
                },
            })
        );
    }
    let unknown = get(addr, "/v2/models/resnet50");
    assert_eq!((unknown.status, unknown.error().contains("unknown model \"resnet50\"")), (404, true));
    let version = get(addr, &format!("/v2/models/{MODEL}/versions/3/ready"));
    assert_eq!((version.status, version.error().contains("no version \"3\"")), (404, true));
    let nowhere = get(addr, "/v3/anything");
    assert_eq!((nowhere.status, nowhere.error()), (404, "no endpoint GET /v3/anything".into()));
    let metrics = get(addr, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain"));
    for name in [
        "repvgg_request_success_total{model=\"a0\"} 0",
        "repvgg_request_failure_total{model=\"a0\",reason=\"invalid\"} 0",
        "repvgg_inference_count_total{model=\"a0\"} 0",
        "repvgg_execution_count_total{model=\"a0\"} 0",
        "repvgg_queue_images{model=\"a0\"} 0",
        "repvgg_queue_duration_seconds_count{model=\"a0\"} 0",
        "repvgg_compute_duration_seconds_count{model=\"a0\"} 0",
    ] {
        assert!(metrics.text().contains(name), "{name} missing from\n{}", metrics.text());
    }
    server.shutdown().unwrap();
}

#[test]
fn json_binary_and_grpc_answers_are_bit_identical_to_session_run() {
    let server = start(config());
    let addr = server.http_addr();
    for (seed, shape) in [(1, [1, 3, 32, 32]), (2, [2, 3, 40, 24]), (3, [1, 3, 64, 48])] {
        let input = values(seed, shape.iter().product());
        let expect = reference(&input, shape);
        let reply = http(addr, "POST", &infer_path(), &[], &json_request("j", &input, shape));
        let head = reply.json();
        assert_eq!((head["id"].as_str(), head["model_name"].as_str()), (Some("j"), Some(MODEL)));
        assert_eq!(head["outputs"][0]["shape"], serde_json::json!([shape[0], 1000]));
        assert_eq!(logits(&reply), expect, "JSON {shape:?}");
        let (headers, body) = binary_request("b", &input, shape);
        let reply = http(addr, "POST", &infer_path(), &headers, &body);
        assert_eq!(reply.header("content-type"), Some("application/octet-stream"));
        assert_eq!(logits(&reply), expect, "binary {shape:?}");
        // The same body in 7-byte chunks: the header and the floats straddle the frames.
        let reply = http_chunked(addr, &infer_path(), &headers, &body, 7);
        assert_eq!(logits(&reply), expect, "binary in 7-byte chunks {shape:?}");
        assert_eq!(grpc_logits(&server, &input, shape), expect, "gRPC {shape:?}");
    }
    // Nested JSON data is the same tensor.
    let input = values(4, 3 * 32 * 32);
    let nested: Vec<Vec<Vec<f32>>> =
        input.chunks(32 * 32).map(|plane| plane.chunks(32).map(<[f32]>::to_vec).collect()).collect();
    let body = serde_json::json!({ "inputs": [{ "name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [nested] }] });
    let reply = http(addr, "POST", &infer_path(), &[], body.to_string().as_bytes());
    assert_eq!(logits(&reply), reference(&input, [1, 3, 32, 32]));
    assert_eq!(metric(&server, "repvgg_request_success_total"), 13.0);
    server.shutdown().unwrap();
}

/// The HTTP/2 settings the gRPC server opens with: a stream limit, and a window and a
/// frame size that let a 224x224 tensor travel in one frame (what `GRPC_MAX_STREAMS`,
/// `GRPC_WINDOW` and `GRPC_MAX_FRAME` say).
#[test]
fn grpc_settings_let_a_tensor_travel_in_one_frame() {
    use std::io::{Read as _, Write as _};
    let server = start(config());
    let mut s = std::net::TcpStream::connect(server.grpc_addr().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The client preface and an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).unwrap();
    assert_eq!((head[3], head[4]), (4, 0), "the server's first frame is its SETTINGS");
    let mut payload = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
    s.read_exact(&mut payload).unwrap();
    let settings: std::collections::HashMap<u16, u32> = payload
        .chunks_exact(6)
        .map(|e| (u16::from_be_bytes([e[0], e[1]]), u32::from_be_bytes([e[2], e[3], e[4], e[5]])))
        .collect();
    // SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE
    // (RFC 9113, 6.5.2).
    assert_eq!(settings.get(&3), Some(&repvgg_serve::GRPC_MAX_STREAMS), "{settings:?}");
    assert_eq!(settings.get(&4), Some(&repvgg_serve::GRPC_WINDOW), "{settings:?}");
    assert_eq!(settings.get(&5), Some(&repvgg_serve::GRPC_MAX_FRAME), "{settings:?}");
    assert!(repvgg_serve::GRPC_MAX_FRAME as usize >= 4 * 3 * 224 * 224 + 64);
    drop(s);
    server.shutdown().unwrap();
}

#[test]
fn grpc_serves_health_metadata_config_and_refusals() {
    let server = start(config());
    let addr = server.grpc_addr().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = GrpcInferenceServiceClient::connect(format!("http://{addr}")).await.unwrap();
        assert!(c.server_live(proto::ServerLiveRequest {}).await.unwrap().into_inner().live);
        assert!(c.server_ready(proto::ServerReadyRequest {}).await.unwrap().into_inner().ready);
        let ready = proto::ModelReadyRequest { name: MODEL.into(), version: String::new() };
        assert!(c.model_ready(ready).await.unwrap().into_inner().ready);
        let meta = c.server_metadata(proto::ServerMetadataRequest {}).await.unwrap().into_inner();
        assert_eq!(meta.extensions, ["binary_tensor_data", "classification", "model_configuration", "statistics"]);
        let m = proto::ModelMetadataRequest { name: MODEL.into(), version: "1".into() };
        let m = c.model_metadata(m).await.unwrap().into_inner();
        assert_eq!(
            (m.inputs[0].shape.as_slice(), m.outputs[0].shape.as_slice()),
            (&[-1, 3, -1, -1][..], &[-1, 1000][..])
        );
        let config = proto::ModelConfigRequest { name: MODEL.into(), version: String::new() };
        let config = c.model_config(config).await.unwrap().into_inner().config.unwrap();
        assert_eq!(
            (config.max_batch_size as usize, config.output[0].dims.as_slice()),
            (common::config().max_batch, &[1000][..])
        );
        let unknown = proto::ModelReadyRequest { name: "nope".into(), version: String::new() };
        assert!(!c.model_ready(unknown).await.unwrap().into_inner().ready, "an unknown model is not ready");
        let unknown = proto::ModelMetadataRequest { name: "nope".into(), version: String::new() };
        assert_eq!(c.model_metadata(unknown).await.unwrap_err().code(), tonic::Code::NotFound);
        let bad = proto::ModelInferRequest {
            model_name: MODEL.into(),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![1, 3, 32, 32],
                ..Default::default()
            }],
            raw_input_contents: vec![vec![0u8; 100].into()],
            ..Default::default()
        };
        let e = c.model_infer(bad).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("has 100 bytes; FP32 shape [1, 3, 32, 32] needs 12288"), "{}", e.message());
    });
    assert_eq!(metric(&server, "repvgg_request_failure_total{model=\"a0\",reason=\"invalid\"}"), 1.0);
    server.shutdown().unwrap();
}

fn png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 7 + seed) as u8, (y * 5) as u8, ((x ^ y) + seed * 3) as u8])
    });
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

#[test]
fn images_are_preprocessed_as_classify_does_and_classified() {
    let server = start(Config { warmup: vec![], ..config() });
    let images = [png(300, 260, 1), png(256, 400, 2)];
    let batch: Vec<f32> = images.iter().flat_map(|i| repvgg_imagenet::preprocess(i, "x").unwrap()).collect();
    let expect = reference(&batch, [2, 3, 224, 224]);
    let raw = repvgg_serve::join_bytes(images.iter().map(Vec::as_slice));
    let head = serde_json::json!({
        "inputs": [{ "name": "image", "shape": [2], "datatype": "BYTES", "parameters": { "binary_data_size": raw.len() } }],
        "outputs": [{ "name": "logits", "parameters": { "classification": 3 } }, { "name": "logits", "parameters": { "binary_data": true } }],
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&raw);
    let reply = http(
        server.http_addr(),
        "POST",
        &infer_path(),
        &[("Inference-Header-Content-Length", head.len().to_string())],
        &body,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    let len: usize = reply.header("inference-header-content-length").unwrap().parse().unwrap();
    let head: serde_json::Value = serde_json::from_slice(&reply.body[..len]).unwrap();
    let classes = &head["outputs"][0];
    assert_eq!((classes["datatype"].as_str(), &classes["shape"]), (Some("BYTES"), &serde_json::json!([2, 3])));
    let labels = repvgg_imagenet::labels();
    for (i, row) in expect.chunks(1000).enumerate() {
        let mut order: Vec<usize> = (0..1000).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        for k in 0..3 {
            let want = format!("{:.6}:{}:{}", row[order[k]], order[k], labels[order[k]]);
            assert_eq!(classes["data"][i * 3 + k].as_str().unwrap(), want);
        }
    }
    let tail = &reply.body[len..];
    let got: Vec<f32> = tail.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(got, expect);
    // An undecodable image is the client's error.
    let raw = repvgg_serve::join_bytes([&b"not an image at all"[..]]);
    let head = serde_json::json!({ "inputs": [{ "name": "image", "shape": [1], "datatype": "BYTES", "parameters": { "binary_data_size": raw.len() } }] }).to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&raw);
    let reply = http(
        server.http_addr(),
        "POST",
        &infer_path(),
        &[("Inference-Header-Content-Length", head.len().to_string())],
        &body,
    );
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("cannot decode image #0"), "{}", reply.error());
    server.shutdown().unwrap();
}

#[test]
fn bad_requests_get_their_status_and_message_and_the_server_keeps_serving() {
    let server = start(Config { max_body_bytes: 64 << 10, ..config() });
    let addr = server.http_addr();
    let good = json_request("ok", &values(9, 3 * 32 * 32), [1, 3, 32, 32]);
    let input = |shape: &str, datatype: &str, data: &str| {
        format!(r#"{{"inputs":[{{"name":"input","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}"#)
    };
    let zeros = |n: usize| format!("[{}]", vec!["0"; n].join(","));
    // Path, headers, body; the status and message it must get.
    type Case<'a> = (String, Vec<(&'a str, String)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (infer_path(), vec![], b"{not json".to_vec(), 400, "malformed inference request JSON: key must be a string"),
        (infer_path(), vec![], good[..good.len() / 2].to_vec(), 400, "malformed inference request JSON: EOF while parsing"),
        (infer_path(), vec![], input("[1,3,2,2]", "INT8", &zeros(12)).into_bytes(), 400, "input \"input\" must be FP32, not INT8"),
        (infer_path(), vec![], input("[1,4,2,2]", "FP32", &zeros(16)).into_bytes(), 400, "must have 3 channels, not 4"),
        (infer_path(), vec![], input("[1,3,2]", "FP32", &zeros(6)).into_bytes(), 400, "must have shape [N, 3, H, W], not [1, 3, 2]"),
        (infer_path(), vec![], input("[1,3,-2,2]", "FP32", &zeros(6)).into_bytes(), 400, "invalid shape [1, 3, -2, 2]"),
        (infer_path(), vec![], input("[1,3,4,4]", "FP32", &zeros(47)).into_bytes(), 400, "has 47 values; shape [1, 3, 4, 4] needs 48"),
        (infer_path(), vec![], input("[17,3,4,4]", "FP32", &zeros(816)).into_bytes(), 400, "1 to 16 images (the server's max batch), not 17"),
        (infer_path(), vec![], input("[1,3,9000,4]", "FP32", &zeros(3)).into_bytes(), 400, "9000"),
        (
            infer_path(),
            vec![("Inference-Header-Content-Length", "70".into())],
            br#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","parameters":{"binary_data_size":48}}]}"#.to_vec(),
            400,
            "malformed inference request JSON",
        ),
        (
            infer_path(),
            vec![("Inference-Header-Content-Length", "9999".into())],
            b"{}".to_vec(),
            400,
            "inference-header-content-length is 9999 but the body has only 2 bytes",
        ),
        (infer_path(), vec![], br#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","parameters":{"binary_data_size":48}}]}"#.to_vec(), 400, "declares binary_data_size 48 but 0 bytes"),
        (infer_path(), vec![], br#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","parameters":{"binary_data_size":-4}}]}"#.to_vec(), 400, "declares binary_data_size -4; it must be a byte count"),
        (infer_path(), vec![], br#"{"inputs":[{"name":"other","shape":[1],"datatype":"FP32","data":[1]}]}"#.to_vec(), 400, "unknown input \"other\""),
        (infer_path(), vec![], br#"{"inputs":[]}"#.to_vec(), 400, "exactly one input"),
        (infer_path(), vec![], input("[1,3,2,2]", "FP32", &zeros(12)).replace("]}]}", "]}],\"outputs\":[{\"name\":\"probs\"}]}").into_bytes(), 400, "unknown output \"probs\""),
        (infer_path(), vec![], vec![b' '; 70 << 10], 413, "over the limit of 65536 bytes"),
        (infer_path(), vec![("Content-Encoding", "gzip".into())], good.clone(), 400, "Content-Encoding gzip is not supported"),
        ("/v2/models/other/infer".into(), vec![], good.clone(), 404, "unknown model \"other\""),
    ];
    for (path, headers, body, status, message) in cases {
        let reply = http(addr, "POST", &path, &headers, &body);
        assert_eq!(reply.status, status, "{message}: {}", reply.text());
        assert!(reply.error().contains(message), "wanted {message:?}, got {:?}", reply.error());
        assert_eq!(http(addr, "POST", &infer_path(), &[], &good).status, 200, "after {message}");
    }
    assert!(metric(&server, "repvgg_request_failure_total{model=\"a0\",reason=\"invalid\"}") >= 16.0);
    server.shutdown().unwrap();
}

/// Batching picks per-layer algorithms by batch size, so a request merged with others can
/// differ from running it alone by the fast paths' tolerance (the runtime's tests bound it
/// against the f64 reference); unmerged requests are bit-identical.
#[test]
fn sixty_four_concurrent_clients_each_get_their_own_answer() {
    let server = Arc::new(start(Config { max_queue_images: 512, warmup: vec![(32, 32), (48, 32)], ..config() }));
    let shapes = [[1, 3, 32, 32], [2, 3, 32, 32], [1, 3, 48, 32], [3, 3, 32, 32]];
    let start = Arc::new(Barrier::new(64));
    let clients: Vec<_> = (0..64u64)
        .map(|i| {
            let (server, start) = (server.clone(), start.clone());
            std::thread::spawn(move || {
                let shape = shapes[i as usize % shapes.len()];
                let input = values(100 + i, shape.iter().product());
                let id = format!("client-{i}");
                start.wait();
                let got = match i % 3 {
                    0 => {
                        logits(&http(server.http_addr(), "POST", &infer_path(), &[], &json_request(&id, &input, shape)))
                    }
                    1 => {
                        let (headers, body) = binary_request(&id, &input, shape);
                        logits(&http(server.http_addr(), "POST", &infer_path(), &headers, &body))
                    }
                    _ => grpc_logits(&server, &input, shape),
                };
                assert!(close(&got, &reference(&input, shape)), "client {i} got another answer");
                shape[0]
            })
        })
        .collect();
    let images: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(metric(&server, "repvgg_request_success_total"), 64.0);
    assert_eq!(metric(&server, "repvgg_inference_count_total") as usize, images);
    let server = Arc::into_inner(server).unwrap();
    server.shutdown().unwrap();
}

/// A request the server is still computing, on a connection of its own.
fn slow_request(addr: std::net::SocketAddr, id: &str) -> std::thread::JoinHandle<Reply> {
    let (headers, body) = binary_request(id, &values(5, 3 * 384 * 384), [1, 3, 384, 384]);
    std::thread::spawn(move || http(addr, "POST", &infer_path(), &headers, &body))
}

/// Requests a stream has taken from the queue (to run, or to drop).
fn taken(server: &Server) -> f64 {
    metric(server, "repvgg_queue_duration_seconds_count")
}

#[test]
fn a_full_queue_refuses_at_once_and_deadlines_drop_waiting_requests() {
    let server = start(Config { streams: 1, max_batch: 1, max_queue_images: 1, warmup: vec![], ..config() });
    let addr = server.http_addr();
    let running = slow_request(addr, "running");
    wait_until("the first request runs", || taken(&server) == 1.0);
    let queued = slow_request(addr, "queued");
    wait_until("the second request is queued", || metric(&server, "repvgg_queue_images") == 1.0);
    let started = Instant::now();
    let refused =
        http(addr, "POST", &infer_path(), &[], &json_request("third", &values(6, 3 * 32 * 32), [1, 3, 32, 32]));
    assert_eq!(refused.status, 503);
    assert!(refused.error().contains("the queue is full (1 images waiting, at most 1)"), "{}", refused.error());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once, not after the queue drained");
    assert_eq!(logits(&running.join().unwrap()).len(), 1000);
    assert_eq!(logits(&queued.join().unwrap()).len(), 1000);
    // A request whose own deadline passes while it waits is answered 503, not computed.
    let running = slow_request(addr, "running");
    wait_until("the request runs", || taken(&server) == 3.0);
    let mut body: serde_json::Value =
        serde_json::from_slice(&json_request("late", &values(7, 3 * 32 * 32), [1, 3, 32, 32])).unwrap();
    body["parameters"] = serde_json::json!({ "timeout": 1000 });
    let executed = metric(&server, "repvgg_execution_count_total");
    let late = http(addr, "POST", &infer_path(), &[], body.to_string().as_bytes());
    assert_eq!(late.status, 503, "{}", late.text());
    assert!(late.error().contains("past its deadline"), "{}", late.error());
    running.join().unwrap();
    assert_eq!(metric(&server, "repvgg_execution_count_total"), executed + 1.0, "the late request was not computed");
    assert_eq!(metric(&server, "repvgg_request_failure_total{model=\"a0\",reason=\"rejected\"}"), 1.0);
    assert_eq!(metric(&server, "repvgg_request_failure_total{model=\"a0\",reason=\"timeout\"}"), 1.0);
    server.shutdown().unwrap();
}

#[test]
fn clients_that_disconnect_are_dropped_and_the_server_keeps_serving() {
    use std::io::Write;
    let server = start(Config { streams: 1, warmup: vec![], ..config() });
    let addr = server.http_addr();
    // A body cut off mid-way.
    let (headers, body) = binary_request("cut", &values(8, 3 * 32 * 32), [1, 3, 32, 32]);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n{}: {}\r\n\r\n",
        infer_path(),
        body.len(),
        headers[0].0,
        headers[0].1
    )
    .unwrap();
    s.write_all(&body[..body.len() / 3]).unwrap();
    drop(s);
    // Requests queued behind a slow one whose clients go before they are computed.
    let running = slow_request(addr, "running");
    wait_until("the slow request runs", || taken(&server) == 1.0);
    let executed = metric(&server, "repvgg_execution_count_total");
    for i in 0..3 {
        let (headers, body) = binary_request("gone", &values(20 + i, 3 * 32 * 32), [1, 3, 32, 32]);
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST {} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n{}: {}\r\n\r\n",
            infer_path(),
            body.len(),
            headers[0].0,
            headers[0].1
        )
        .unwrap();
        s.write_all(&body).unwrap();
        wait_until("the request is queued", || metric(&server, "repvgg_queue_images") as u64 == i + 1);
        drop(s);
    }
    wait_until("the server sees the clients go", || {
        metric(&server, "repvgg_request_failure_total{model=\"a0\",reason=\"cancelled\"}") == 3.0
    });
    assert_eq!(logits(&running.join().unwrap()).len(), 1000);
    let good = json_request("ok", &values(9, 3 * 32 * 32), [1, 3, 32, 32]);
    assert_eq!(http(addr, "POST", &infer_path(), &[], &good).status, 200);
    // The slow request and the good one ran; the abandoned ones did not.
    assert_eq!(metric(&server, "repvgg_execution_count_total"), executed + 2.0);
    assert_eq!(metric(&server, "repvgg_requests_in_flight"), 0.0);
    assert_eq!(metric(&server, "repvgg_queue_images"), 0.0);
    server.shutdown().unwrap();
}

/// With `handle_signals`, SIGTERM belongs to the server from the moment `start` returns:
/// sent before anyone waits for it, it is kept for `wait_for_signal` (without the flag it
/// would kill this test process).
#[test]
fn signals_taken_at_start_are_kept_for_wait_for_signal() {
    let server = start(Config { handle_signals: true, warmup: vec![], ..config() });
    let pid = std::process::id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(server.wait_for_signal().unwrap(), "SIGTERM");
    server.shutdown().unwrap();
}

#[test]
fn shutdown_finishes_requests_in_flight_and_then_refuses_connections() {
    let server = start(Config { streams: 1, warmup: vec![], ..config() });
    let addr = server.http_addr();
    let in_flight: Vec<_> = (0..3).map(|i| slow_request(addr, &format!("drain-{i}"))).collect();
    wait_until("all three are in flight", || metric(&server, "repvgg_requests_in_flight") == 3.0);
    let started = Instant::now();
    server.shutdown().unwrap();
    for r in in_flight {
        assert_eq!(logits(&r.join().unwrap()).len(), 1000, "an in-flight request was answered");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(std::net::TcpStream::connect(addr).is_err(), "the listener is closed");
}

#[test]
fn bad_configurations_are_refused_by_name() {
    let refuse = |config: Config, message: &str| match Server::start(model(), config) {
        Err(e @ Error::Config(_)) => assert!(e.to_string().contains(message), "{e}"),
        Err(e) => panic!("{message}: {e}"),
        Ok(_) => panic!("{message}: started"),
    };
    refuse(Config { streams: 0, ..config() }, "streams and threads per stream must be at least 1");
    refuse(Config { max_batch: 0, ..config() }, "max batch must be between 1 and 1024");
    refuse(Config { max_queue_images: 4, ..config() }, "max queue must be between max batch (16)");
    refuse(Config { model_name: "a/b".into(), ..config() }, "without '/'");
    refuse(Config { http_port: 9, grpc_port: Some(9), ..config() }, "cannot share port 9");
    let first = start(config());
    let taken = Config { http_port: first.http_addr().port(), ..config() };
    match Server::start(model(), taken) {
        Err(e @ Error::Bind { .. }) => assert!(e.to_string().contains("cannot listen for HTTP"), "{e}"),
        other => panic!("bound a taken port: {:?}", other.err()),
    }
    first.shutdown().unwrap();
}

/// Bodies mutated at random (bytes flipped, cut, spliced, headers lying about lengths)
/// get 200 or a 4xx with a JSON error, never a 5xx or a hang, and the server keeps serving.
#[test]
fn mutated_requests_never_break_the_server() {
    let server = start(Config { max_body_bytes: 1 << 20, ..config() });
    let addr = server.http_addr();
    let input = values(31, 3 * 32 * 32);
    let json = json_request("m", &input, [1, 3, 32, 32]);
    let (headers, binary) = binary_request("m", &input, [1, 3, 32, 32]);
    let header_len: usize = headers[0].1.parse().unwrap();
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut next = move |bound: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % bound.max(1) as u64) as usize
    };
    let mut statuses = std::collections::BTreeMap::new();
    for round in 0..300 {
        let binary_form = round % 2 == 1;
        let mut body = if binary_form { binary.clone() } else { json.clone() };
        for _ in 0..1 + next(4) {
            match next(4) {
                // A byte changed; in the binary form, mostly in the tensor's bytes.
                0 => {
                    let i = if binary_form && next(2) == 0 {
                        header_len + next(body.len() - header_len)
                    } else {
                        next(body.len())
                    };
                    if i < body.len() {
                        body[i] = next(256) as u8;
                    }
                }
                1 => body.truncate(next(body.len() + 1)),
                2 => {
                    let (i, j) = (next(body.len()), next(body.len()));
                    let piece = body[i.min(j)..i.max(j)].to_vec();
                    let at = next(body.len() + 1);
                    body.splice(at..at, piece);
                }
                _ => {
                    let i = next(body.len());
                    body.insert(i, b"{}[],:\"0-e9.\\"[next(13)]);
                }
            }
        }
        let lie = match next(4) {
            0 => next(body.len() + 8),
            1 => header_len.saturating_sub(next(8)),
            _ => header_len,
        };
        let headers: Vec<(&str, String)> =
            if binary_form { vec![("Inference-Header-Content-Length", lie.to_string())] } else { vec![] };
        let reply = http(addr, "POST", &infer_path(), &headers, &body);
        assert!(matches!(reply.status, 200 | 400 | 413), "round {round}: {} {}", reply.status, reply.text());
        *statuses.entry(reply.status).or_insert(0) += 1;
        if reply.status != 200 {
            assert!(!reply.error().is_empty(), "round {round}");
        }
    }
    // Both kinds of outcome occur, or the mutations test nothing.
    assert!(
        statuses.get(&200).is_some_and(|n| *n >= 10) && statuses.get(&400).is_some_and(|n| *n >= 100),
        "{statuses:?}"
    );
    assert_eq!(http(addr, "POST", &infer_path(), &[], &json).status, 200);
    assert_eq!(metric(&server, "repvgg_request_failure_total{model=\"a0\",reason=\"internal\"}"), 0.0);
    server.shutdown().unwrap();
}

/// The classification strings of a JSON answer's output `i`, and its shape.
fn classes(reply: &Reply, i: usize) -> (Vec<String>, serde_json::Value) {
    assert_eq!(reply.status, 200, "{}", reply.text());
    let output = &reply.json()["outputs"][i];
    assert_eq!(output["datatype"], "BYTES", "{output}");
    let data = output["data"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    (data, output["shape"].clone())
}

#[test]
fn a_request_level_classification_applies_to_outputs_without_their_own() {
    let server = start(config());
    let addr = server.http_addr();
    let input = values(3, 2 * 3 * 32 * 32);
    let want = reference(&input, [2, 3, 32, 32]);
    let mut order: Vec<usize> = (0..1000).collect();
    order.sort_by(|&a, &b| want[b].total_cmp(&want[a]));
    let request = |parameters: serde_json::Value, outputs: serde_json::Value| {
        let mut body = serde_json::json!({
            "parameters": parameters,
            "inputs": [{ "name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": input }],
        });
        if !outputs.is_null() {
            body["outputs"] = outputs;
        }
        http(addr, "POST", &infer_path(), &[], body.to_string().as_bytes())
    };
    // No outputs named: the default output is classified (it was ignored, giving logits).
    let reply = request(serde_json::json!({ "classification": 2 }), serde_json::Value::Null);
    let (data, shape) = classes(&reply, 0);
    assert_eq!(shape, serde_json::json!([2, 2]));
    assert!(data[0].ends_with(&format!(":{}:{}", order[0], repvgg_imagenet::labels()[order[0]])), "{data:?}");
    // An output's own count wins; one without takes the request's.
    let outputs = serde_json::json!([
        { "name": "logits", "parameters": { "classification": 1 } },
        { "name": "logits" },
    ]);
    let reply = request(serde_json::json!({ "classification": 3 }), outputs);
    assert_eq!(classes(&reply, 0).1, serde_json::json!([2, 1]));
    assert_eq!(classes(&reply, 1).1, serde_json::json!([2, 3]));
    // Out of range at the request level is refused as it is on an output.
    let reply = request(serde_json::json!({ "classification": 0 }), serde_json::Value::Null);
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(
        reply.error().contains("classification must be between 1 and 1000 (the classes), not 0"),
        "{}",
        reply.error()
    );
    let reply = request(serde_json::json!({ "classification": "two" }), serde_json::Value::Null);
    assert_eq!(reply.status, 400, "{}", reply.text());

    // gRPC: the same rule.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c =
            GrpcInferenceServiceClient::connect(format!("http://{}", server.grpc_addr().unwrap())).await.unwrap();
        let k = |v: i64| proto::InferParameter {
            parameter_choice: Some(proto::infer_parameter::ParameterChoice::Int64Param(v)),
        };
        let request = proto::ModelInferRequest {
            model_name: MODEL.into(),
            inputs: vec![InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![2, 3, 32, 32],
                ..Default::default()
            }],
            raw_input_contents: vec![input.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into()],
            parameters: [("classification".to_string(), k(4))].into(),
            ..Default::default()
        };
        let reply = c.model_infer(request.clone()).await.unwrap().into_inner();
        assert_eq!((reply.outputs[0].datatype.as_str(), reply.outputs[0].shape.as_slice()), ("BYTES", &[2, 4][..]));
        let mut own = request;
        own.outputs = vec![proto::model_infer_request::InferRequestedOutputTensor {
            name: "logits".into(),
            parameters: [("classification".to_string(), k(1))].into(),
        }];
        let reply = c.model_infer(own).await.unwrap().into_inner();
        assert_eq!(reply.outputs[0].shape, [2, 1]);
    });
    server.shutdown().unwrap();
}

#[test]
fn statistics_report_the_counters_over_http_and_grpc() {
    let server = start(config());
    let addr = server.http_addr();
    let input = values(4, 3 * 32 * 32);
    for id in ["a", "b"] {
        let reply = http(addr, "POST", &infer_path(), &[], &json_request(id, &input, [1, 3, 32, 32]));
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let bad = http(addr, "POST", &infer_path(), &[], b"{ not json");
    assert_eq!(bad.status, 400);
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    for path in [
        format!("/v2/models/{MODEL}/stats"),
        format!("/v2/models/{MODEL}/versions/1/stats"),
        "/v2/models/stats".to_string(),
    ] {
        let reply = get(addr, &path);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        let stats = reply.json();
        let m = &stats["model_stats"][0];
        assert_eq!((m["name"].as_str(), m["version"].as_str()), (Some(MODEL), Some("1")), "{stats}");
        assert_eq!((m["inference_count"].as_u64(), m["execution_count"].as_u64()), (Some(2), Some(2)), "{stats}");
        let last = m["last_inference"].as_u64().unwrap();
        assert!(last <= before && last + 60_000 > before, "last_inference {last} vs now {before}");
        let i = &m["inference_stats"];
        let count = |k: &str| i[k]["count"].as_u64().unwrap();
        let ns = |k: &str| i[k]["ns"].as_u64().unwrap();
        assert_eq!([count("success"), count("fail"), count("queue"), count("compute_infer")], [2, 1, 2, 2], "{stats}");
        assert!(ns("success") >= ns("compute_infer") && ns("compute_infer") > 0 && ns("fail") > 0, "{stats}");
        assert_eq!((count("compute_input"), ns("compute_input"), count("compute_output")), (2, 0, 2), "{stats}");
    }
    let wrong = get(addr, &format!("/v2/models/{MODEL}/versions/2/stats"));
    assert_eq!(wrong.status, 404);
    assert_eq!(get(addr, "/v2/models/nope/stats").status, 404);
    assert_eq!(metric(&server, "repvgg_request_success_total{model=\"a0\"}"), 2.0);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c =
            GrpcInferenceServiceClient::connect(format!("http://{}", server.grpc_addr().unwrap())).await.unwrap();
        for (name, version) in [(MODEL, ""), (MODEL, "1"), ("", "")] {
            let r = proto::ModelStatisticsRequest { name: name.into(), version: version.into() };
            let stats = c.model_statistics(r).await.unwrap().into_inner();
            assert_eq!(stats.model_stats.len(), 1);
            let m = &stats.model_stats[0];
            assert_eq!((m.name.as_str(), m.version.as_str(), m.inference_count, m.execution_count), (MODEL, "1", 2, 2));
            let i = m.inference_stats.unwrap();
            assert_eq!((i.success.unwrap().count, i.fail.unwrap().count, i.queue.unwrap().count), (2, 1, 2));
        }
        let r = proto::ModelStatisticsRequest { name: "nope".into(), version: String::new() };
        assert_eq!(c.model_statistics(r).await.unwrap_err().code(), tonic::Code::NotFound);
    });
    server.shutdown().unwrap();
}

#[test]
fn an_unimplemented_grpc_method_is_named_in_its_status() {
    let server = start(config());
    let addr = server.grpc_addr().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        for (path, names) in [
            ("/inference.GRPCInferenceService/RepositoryIndex", "inference.GRPCInferenceService/RepositoryIndex is not implemented"),
            ("/inference.GRPCInferenceService/ModelStreamInfer", "ModelStreamInfer is not implemented"),
            ("/grpc.health.v1.Health/Check", "grpc.health.v1.Health/Check is not implemented by repvgg-rs: it serves only inference.GRPCInferenceService"),
        ] {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let codec = tonic_prost::ProstCodec::<proto::ServerLiveRequest, proto::ServerLiveResponse>::default();
            let e = grpc
                .unary(tonic::Request::new(proto::ServerLiveRequest {}), http::uri::PathAndQuery::from_static(path), codec)
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unimplemented, "{path}: {e:?}");
            assert!(e.message().contains(names), "{path}: `{}`", e.message());
            assert!(e.message().contains("ModelInfer"), "{path}: `{}`", e.message());
        }
        // The implemented methods still answer.
        let mut c = GrpcInferenceServiceClient::new(channel);
        assert!(c.server_live(proto::ServerLiveRequest {}).await.unwrap().into_inner().live);
    });
    server.shutdown().unwrap();
}
