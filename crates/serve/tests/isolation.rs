//! Hostile clients against honest ones: a request's bad values fail that request alone,
//! whatever batch it was merged into, and the gRPC side answers refusals with the codes the
//! docs give.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use repvgg_serve::{Config, Server};

/// One stream and a queue delay, so that concurrent requests of one size merge.
fn merging() -> Config {
    Config { streams: 1, threads_per_stream: 2, max_queue_delay: Duration::from_millis(5), ..config() }
}

/// A request whose values overflow inside the network (3e38 everywhere passes every input
/// check), and one holding a NaN.
fn overflowing() -> Vec<f32> {
    vec![3e38; 3 * 32 * 32]
}

fn with_nan() -> Vec<f32> {
    let mut x = values(99, 3 * 32 * 32);
    x[(32 + 4) * 32 + 5] = f32::NAN;
    x
}

/// Eight honest clients and one attacker sending NaN and overflowing inputs over HTTP
/// (JSON and binary) and gRPC, all at one size through one merging stream: every honest
/// request is answered with its own logits, every attack is refused with its own 400.
#[test]
fn poisoned_requests_fail_alone_among_honest_ones() {
    let server = Arc::new(start(merging()));
    let go = Arc::new(Barrier::new(9));
    let honest: Vec<_> = (0..8u64)
        .map(|c| {
            let (server, go) = (server.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                for r in 0..12u64 {
                    let input = values(1000 * c + r, 3 * 32 * 32);
                    let (headers, body) = binary_request("honest", &input, [1, 3, 32, 32]);
                    let reply = http(server.http_addr(), "POST", &infer_path(), &headers, &body);
                    assert_eq!(reply.status, 200, "honest client {c} request {r}: {}", reply.text());
                    assert!(close(&logits(&reply), &reference(&input, [1, 3, 32, 32])), "client {c} request {r}");
                }
            })
        })
        .collect();
    let attacker = {
        let (server, go) = (server.clone(), go.clone());
        std::thread::spawn(move || {
            go.wait();
            let addr = server.http_addr();
            for r in 0..12 {
                let (status, error) = match r % 3 {
                    0 => {
                        let (headers, body) = binary_request("bad", &overflowing(), [1, 3, 32, 32]);
                        let reply = http(addr, "POST", &infer_path(), &headers, &body);
                        (reply.status, reply.error())
                    }
                    1 => {
                        // JSON has no NaN; the binary extension carries one.
                        let (headers, body) = binary_request("bad", &with_nan(), [1, 3, 32, 32]);
                        let reply = http(addr, "POST", &infer_path(), &headers, &body);
                        (reply.status, reply.error())
                    }
                    _ => {
                        let e = grpc_infer(&server, &overflowing(), [1, 3, 32, 32]).unwrap_err();
                        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
                        (400, e.message().to_string())
                    }
                };
                assert_eq!(status, 400, "attack {r}: {error}");
                assert!(
                    error.contains("overflowed f32 inside the network") || error.contains("input[0, 1, 4, 5] is NaN"),
                    "attack {r}: {error}"
                );
            }
        })
    };
    for c in honest {
        c.join().unwrap();
    }
    attacker.join().unwrap();
    assert_eq!(metric(&server, "repvgg_request_success_total"), 96.0);
    assert_eq!(metric(&server, "repvgg_request_failure_total{model=\"a0\",reason=\"invalid\"}"), 12.0);
    let (images, batches) =
        (metric(&server, "repvgg_inference_count_total"), metric(&server, "repvgg_execution_count_total"));
    assert!(batches < images, "requests were merged ({images} images in {batches} batches)");
    Arc::into_inner(server).unwrap().shutdown().unwrap();
}

/// Inside one request of several images, the failing image is named by its index in the
/// request; NaN is refused when the request is admitted, before it is queued.
#[test]
fn a_request_names_its_failing_image() {
    let server = start(merging());
    let addr = server.http_addr();
    let good = values(5, 3 * 32 * 32);
    let three = [good.as_slice(), &overflowing(), &good].concat();
    let (headers, body) = binary_request("three", &three, [3, 3, 32, 32]);
    let reply = http(addr, "POST", &infer_path(), &headers, &body);
    assert_eq!(reply.status, 400);
    assert!(reply.error().starts_with("image 1: logits["), "{}", reply.error());
    let three = [good.as_slice(), &good, &with_nan()].concat();
    let (headers, body) = binary_request("nan", &three, [3, 3, 32, 32]);
    let executed = metric(&server, "repvgg_execution_count_total");
    let reply = http(addr, "POST", &infer_path(), &headers, &body);
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("input[2, 1, 4, 5] is NaN"), "{}", reply.error());
    assert_eq!(metric(&server, "repvgg_execution_count_total"), executed, "refused before it was queued");
    server.shutdown().unwrap();
}

/// Nested JSON data must be regular and nest as its shape says; flat data is the
/// protocol's own form and stays accepted.
#[test]
fn ragged_or_misshapen_nested_data_is_refused() {
    let server = start(config());
    let addr = server.http_addr();
    let post = |data: serde_json::Value, shape: [usize; 4]| {
        let body =
            serde_json::json!({ "inputs": [{ "name": "input", "shape": shape, "datatype": "FP32", "data": data }] });
        http(addr, "POST", &infer_path(), &[], body.to_string().as_bytes())
    };
    let x = values(3, 3 * 32 * 32);
    let nested = |x: &[f32]| -> Vec<Vec<Vec<f32>>> {
        x.chunks(32 * 32).map(|plane| plane.chunks(32).map(<[f32]>::to_vec).collect()).collect()
    };
    assert_eq!(logits(&post(serde_json::json!(x), [1, 3, 32, 32])), reference(&x, [1, 3, 32, 32]));
    assert_eq!(logits(&post(serde_json::json!([nested(&x)]), [1, 3, 32, 32])), reference(&x, [1, 3, 32, 32]));
    // One row one value short and another one value long: the count is right, the nesting is not.
    let mut ragged = nested(&x);
    let moved = ragged[0][0].pop().unwrap();
    ragged[0][1].push(moved);
    let reply = post(serde_json::json!([ragged]), [1, 3, 32, 32]);
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("ragged"), "{}", reply.error());
    // Regular, but transposed: [1, 3, 32, 32] data declared as [1, 3, 16, 64].
    let reply = post(serde_json::json!([nested(&x)]), [1, 3, 16, 64]);
    assert_eq!(reply.status, 400);
    assert!(
        reply.error().contains("nests its data as [1, 3, 32, 32] but declares shape [1, 3, 16, 64]"),
        "{}",
        reply.error()
    );
    server.shutdown().unwrap();
}

/// A gRPC call with a raw payload, over the h2 crate: the grpc-status and grpc-message the
/// server answers (in its headers for a call refused before its handler, else in trailers).
fn grpc_raw(server: &Server, payload: &[u8]) -> (String, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = server.grpc_addr().unwrap();
    let (status, message) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let request = http::Request::post(format!("http://{addr}/inference.GRPCInferenceService/ModelInfer"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut body) = send.send_request(request, false).unwrap();
        // A refusal may arrive before the payload is all sent; then the rest is not wanted.
        let _ = body.send_data(bytes::Bytes::copy_from_slice(payload), true);
        let response = response.await.unwrap();
        let header = |h: &http::HeaderMap, k: &str| h.get(k).map(|v| v.to_str().unwrap().to_string());
        let (status, message) = (header(response.headers(), "grpc-status"), header(response.headers(), "grpc-message"));
        if let Some(status) = status {
            return (status, message.unwrap_or_default());
        }
        let mut body = response.into_body();
        while let Some(data) = body.data().await {
            data.unwrap();
        }
        let trailers = body.trailers().await.unwrap().unwrap_or_default();
        (header(&trailers, "grpc-status").unwrap_or_default(), header(&trailers, "grpc-message").unwrap_or_default())
    });
    (status, percent_decoded(&message))
}

/// A grpc-message as sent: percent-encoded.
fn percent_decoded(s: &str) -> String {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: String = bytes.by_ref().take(2).map(char::from).collect();
            out.push(u8::from_str_radix(&hex, 16).unwrap());
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).unwrap()
}

/// gRPC codes as the docs give them: a message that is not protobuf is INVALID_ARGUMENT
/// (tonic's own answer is INTERNAL), one over the size limit or the in-flight budget is
/// RESOURCE_EXHAUSTED (tonic's own is OUT_OF_RANGE), refused from its length prefix.
#[test]
fn grpc_refusals_carry_the_documented_codes() {
    let server = start(Config { max_body_bytes: 1 << 20, max_inflight_bytes: 3 << 20, ..config() });
    let framed = |declared: u32, payload: &[u8]| {
        let mut m = vec![0u8];
        m.extend_from_slice(&declared.to_be_bytes());
        m.extend_from_slice(payload);
        m
    };
    let garbage = [0xffu8; 64];
    let (code, message) = grpc_raw(&server, &framed(64, &garbage));
    assert_eq!(code, "3", "{message}");
    assert!(message.contains("decode"), "{message}");
    let (code, message) = grpc_raw(&server, &framed((1 << 20) + 1, &garbage));
    assert_eq!(code, "8", "{message}");
    assert!(message.contains("over the limit of 1048576 bytes"), "{message}");
    // The client library agrees, for an honest message over the limit.
    let big = values(1, 3 * 300 * 300);
    assert_eq!(grpc_infer(&server, &big, [1, 3, 300, 300]).unwrap_err().code(), tonic::Code::ResourceExhausted);
    // Within the limit, it is served.
    let x = values(2, 3 * 32 * 32);
    assert_eq!(grpc_logits(&server, &x, [1, 3, 32, 32]), reference(&x, [1, 3, 32, 32]));
    server.shutdown().unwrap();
}

/// Uploads held open take the in-flight budget; past it, HTTP requests get 503 and gRPC
/// calls RESOURCE_EXHAUSTED at once, and once the uploads go, the budget is whole again.
#[test]
fn held_uploads_exhaust_the_budget_and_others_are_refused_at_once() {
    let server = start(Config { max_body_bytes: 1 << 20, max_inflight_bytes: 2 << 20, ..config() });
    let addr = server.http_addr();
    // Two binary uploads just under 1 MiB each, sending half and holding the rest: together
    // they hold all but 9 KB of the budget.
    let held: Vec<_> = (0..2).map(|_| hold_upload(addr, 300, 290, 4 * 3 * 300 * 290 / 2)).collect();
    let both: usize = held.iter().map(|(_, declared)| declared).sum();
    let both = both as f64;
    wait_until("both uploads are held", || metric(&server, "repvgg_inflight_bytes") >= both);
    let x = values(3, 3 * 32 * 32);
    let started = std::time::Instant::now();
    let reply = http(addr, "POST", &infer_path(), &[], &json_request("late", &x, [1, 3, 32, 32]));
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.error().contains("--max-inflight-bytes"), "{}", reply.error());
    assert_eq!(grpc_infer(&server, &x, [1, 3, 32, 32]).unwrap_err().code(), tonic::Code::ResourceExhausted);
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once");
    assert!(metric(&server, "repvgg_inflight_refused_total") >= 2.0);
    drop(held);
    wait_until("the held uploads are given back", || metric(&server, "repvgg_inflight_bytes") == 0.0);
    assert_eq!(logits(&http(addr, "POST", &infer_path(), &[], &json_request("after", &x, [1, 3, 32, 32]))).len(), 1000);
    assert_eq!(metric(&server, "repvgg_inflight_bytes"), 0.0, "an answered request gives everything back");
    server.shutdown().unwrap();
}
