//! A load generator for any Open Inference Protocol server (`repvgg serve`, Triton, ...):
//! closed-loop clients at each concurrency, or an open-loop arrival rate, over HTTP with
//! the binary tensor extension or gRPC; reports images/s and p50/p90/p99 latency of the
//! answered requests, and how many were refused (503 / UNAVAILABLE).
//!
//! ```text
//! cargo run --release -p repvgg-serve --example loadgen -- \
//!     --http 127.0.0.1:8000 --grpc 127.0.0.1:8001 --model repvgg-a0 \
//!     --protocols http,grpc --concurrency 1,2,4,8,16,32 --seconds 10
//! # open loop, e.g. 4x a measured capacity of 25 requests/s:
//! cargo run --release -p repvgg-serve --example loadgen -- --http 127.0.0.1:8000 --model repvgg-a0 --rate 100
//! ```
//!
//! `--versus-bench BLOCKS` instead alternates, BLOCKS times, a `repvgg bench` process (10
//! timed runs of `serve --synthetic`'s model, A0 seed 0, at `--batch`, `--size` and
//! `--threads`; the binary next to `target/release/examples`, or `--repvgg PATH`) with a
//! block of 10 back-to-back requests at concurrency 1 (after a second of untimed ones,
//! as `bench` times after a second of setup); it reports both medians and the
//! median of the per-block differences: on a shared host whose speed drifts, that is the
//! fair comparison of the server's batch-1 latency with `repvgg bench`'s. A session of
//! the load generator's own would not be: sessions of one model, created one after the
//! other in one process, ran up to 1 ms apart here (where their memory landed), so one
//! session is one draw of that spread, while each bench block is a fresh one.
//!
//! It runs on the machine it measures, so it is lean: each HTTP client is one thread with
//! one keep-alive connection and a request body built once; gRPC clients are tasks on a
//! two-thread runtime, each on an HTTP/2 connection of its own (the `h2` crate,
//! below tonic), sending a `ModelInfer` message encoded once (as `perf_analyzer` prepares
//! its inputs once) in one DATA frame that ends the stream. Any failed request makes the
//! exit status 1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use prost::Message as _;
use repvgg_serve::proto::{ModelInferRequest, ModelInferResponse, model_infer_request::InferInputTensor};
use tonic::codegen::Bytes;

struct Options {
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
    model: String,
    protocols: Vec<String>,
    concurrency: Vec<usize>,
    rate: Option<f64>,
    seconds: f64,
    warmup: f64,
    batch: usize,
    size: usize,
    json: Option<String>,
    versus_bench: Option<usize>,
    repvgg: Option<std::path::PathBuf>,
    threads: usize,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        http: None,
        grpc: None,
        model: "repvgg-a0".into(),
        protocols: vec![],
        concurrency: vec![1, 2, 4, 8, 16, 32],
        rate: None,
        seconds: 10.0,
        warmup: 2.0,
        batch: 1,
        size: 224,
        json: None,
        versus_bench: None,
        repvgg: None,
        threads: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--http" => o.http = Some(value()?.parse()?),
            "--grpc" => o.grpc = Some(value()?.parse()?),
            "--model" => o.model = value()?,
            "--protocols" => o.protocols = value()?.split(',').map(str::to_string).collect(),
            "--concurrency" => o.concurrency = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--rate" => o.rate = Some(value()?.parse()?),
            "--seconds" => o.seconds = value()?.parse()?,
            "--warmup" => o.warmup = value()?.parse()?,
            "--batch" => o.batch = value()?.parse()?,
            "--size" => o.size = value()?.parse()?,
            "--json" => o.json = Some(value()?),
            "--versus-bench" => o.versus_bench = Some(value()?.parse()?),
            "--repvgg" => o.repvgg = Some(value()?.into()),
            "--threads" => o.threads = value()?.parse()?,
            other => bail!("unknown flag {other} (see the header of crates/serve/examples/loadgen.rs)"),
        }
    }
    if o.protocols.is_empty() {
        o.protocols =
            [o.http.map(|_| "http"), o.grpc.map(|_| "grpc")].into_iter().flatten().map(String::from).collect();
    }
    if o.protocols.is_empty() {
        bail!("give --http ADDR and/or --grpc ADDR");
    }
    Ok(o)
}

/// The answered requests' latencies and the refusals of one run.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    refused: u64,
    failed: u64,
}

#[derive(serde::Serialize)]
struct Row {
    protocol: String,
    concurrency: Option<usize>,
    rate: Option<f64>,
    images_per_s: f64,
    /// Comparable with the server's `/metrics` sums (which give means).
    mean_ms: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    answered: usize,
    refused: u64,
    failed: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

enum Outcome {
    Answered,
    Refused,
    Failed(String),
}

/// One client's connection, able to send the prepared request again and again.
trait Client: Send {
    fn infer(&mut self) -> Outcome;
}

struct HttpClient {
    addr: SocketAddr,
    conn: Option<(TcpStream, BufReader<TcpStream>)>,
    request: Arc<Vec<u8>>,
}

impl HttpClient {
    fn exchange(&mut self) -> std::io::Result<u16> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_nodelay(true)?;
            self.conn = Some((s.try_clone()?, BufReader::new(s)));
        }
        let (w, r) = self.conn.as_mut().expect("connected");
        w.write_all(&self.request)?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status: u16 =
            line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad status line {line:?}"))
            })?;
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
                close = true;
            }
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body)?;
        if close {
            self.conn = None;
        }
        Ok(status)
    }
}

impl Client for HttpClient {
    fn infer(&mut self) -> Outcome {
        match self.exchange() {
            Ok(200) => Outcome::Answered,
            Ok(503) => Outcome::Refused,
            Ok(s) => Outcome::Failed(format!("HTTP {s}")),
            Err(e) => {
                self.conn = None;
                Outcome::Failed(e.to_string())
            }
        }
    }
}

/// A binary-extension infer request (HTTP/1.1, keep-alive) for `[batch, 3, size, size]`.
fn http_request(o: &Options) -> Vec<u8> {
    let elements = o.batch * 3 * o.size * o.size;
    let head = serde_json::json!({
        "inputs": [{ "name": "input", "shape": [o.batch, 3, o.size, o.size], "datatype": "FP32",
                     "parameters": { "binary_data_size": 4 * elements } }],
        "outputs": [{ "name": "logits", "parameters": { "binary_data": true } }],
    })
    .to_string();
    let body_len = head.len() + 4 * elements;
    let mut r = format!(
        "POST /v2/models/{}/infer HTTP/1.1\r\nHost: loadgen\r\nContent-Type: application/octet-stream\r\n\
         Inference-Header-Content-Length: {}\r\nContent-Length: {body_len}\r\n\r\n{head}",
        o.model,
        head.len()
    )
    .into_bytes();
    for i in 0..elements {
        r.extend_from_slice(&(((i % 251) as f32) / 251.0 - 0.5).to_le_bytes());
    }
    r
}

/// The `ModelInfer` request, protobuf-encoded and gRPC-framed once.
fn grpc_request(o: &Options) -> Bytes {
    let elements = o.batch * 3 * o.size * o.size;
    let request = ModelInferRequest {
        model_name: o.model.clone(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![o.batch as i64, 3, o.size as i64, o.size as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![
            (0..elements).flat_map(|i| (((i % 251) as f32) / 251.0 - 0.5).to_le_bytes()).collect(),
        ],
        ..Default::default()
    };
    let message = request.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0); // not compressed
    framed.extend_from_slice(&u32::try_from(message.len()).expect("a request under 4 GiB").to_be_bytes());
    framed.extend_from_slice(&message);
    framed.into()
}

/// Closed loop: `clients` each send, wait and send again until `end`.
fn closed_loop_http(o: &Options, clients: usize, request: &Arc<Vec<u8>>) -> Result<(Tally, Duration)> {
    let addr = o.http.context("--http is needed for http")?;
    let start = Instant::now();
    let (measure_from, end) =
        (start + Duration::from_secs_f64(o.warmup), start + Duration::from_secs_f64(o.warmup + o.seconds));
    let tally = on_http_workers(clients, addr, request, |client, mine| {
        loop {
            let sent = Instant::now();
            if sent >= end {
                break;
            }
            let outcome = client.infer();
            if sent >= measure_from {
                record(mine, outcome, sent.elapsed());
            }
        }
    });
    Ok((tally, Duration::from_secs_f64(o.seconds)))
}

/// Runs `work` on `n` threads, each with a connection of its own; merges their tallies.
fn on_http_workers(
    n: usize,
    addr: SocketAddr,
    request: &Arc<Vec<u8>>,
    work: impl Fn(&mut HttpClient, &mut Tally) + Sync,
) -> Tally {
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|scope| {
        for _ in 0..n {
            scope.spawn(|| {
                let mut client = HttpClient { addr, conn: None, request: request.clone() };
                let mut mine = Tally::default();
                work(&mut client, &mut mine);
                merge(&tally, mine);
            });
        }
    });
    tally.into_inner().expect("lock")
}

fn record(t: &mut Tally, outcome: Outcome, latency: Duration) {
    match outcome {
        Outcome::Answered => t.latencies.push(latency),
        Outcome::Refused => t.refused += 1,
        Outcome::Failed(e) => {
            if t.failed == 0 {
                eprintln!("loadgen: a request failed: {e}");
            }
            t.failed += 1
        }
    }
}

fn merge(into: &Mutex<Tally>, mine: Tally) {
    let mut t = into.lock().expect("lock");
    t.latencies.extend(mine.latencies);
    t.refused += mine.refused;
    t.failed += mine.failed;
}

/// Open loop over HTTP: request k is sent at `k / rate` seconds by whichever of 128
/// workers is free (a refused request does not slow the arrivals).
fn open_loop_http(o: &Options, rate: f64, request: &Arc<Vec<u8>>) -> Result<(Tally, Duration)> {
    let addr = o.http.context("--http is needed for http")?;
    let next = std::sync::atomic::AtomicU64::new(0);
    let start = Instant::now();
    let warm = (o.warmup * rate) as u64;
    let total = ((o.warmup + o.seconds) * rate) as u64;
    let tally = on_http_workers(128, addr, request, |client, mine| {
        loop {
            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if k >= total {
                break;
            }
            let due = start + Duration::from_secs_f64(k as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // Latency counts from when the request was due, so a late send is not hidden.
            let outcome = client.infer();
            if k >= warm {
                record(mine, outcome, due.elapsed());
            }
        }
    });
    Ok((tally, Duration::from_secs_f64(o.seconds)))
}

/// A gRPC `ModelInfer` client on an HTTP/2 connection of its own, with the server's
/// flow-control windows, sending a request message encoded beforehand as one DATA frame
/// that also ends the stream (as gRPC's C core, under Triton's clients, puts a unary call
/// on the wire; tonic's client ends the stream with a second, empty frame, and the server
/// waits for it).
struct GrpcClient {
    send: h2::client::SendRequest<Bytes>,
    uri: tonic::codegen::http::Uri,
}

impl GrpcClient {
    async fn connect(addr: SocketAddr) -> Result<GrpcClient> {
        let tcp =
            tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to gRPC at {addr}"))?;
        tcp.set_nodelay(true)?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(repvgg_serve::GRPC_WINDOW)
            .initial_connection_window_size(4 * repvgg_serve::GRPC_WINDOW)
            .handshake(tcp)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("loadgen: the gRPC connection failed: {e}");
            }
        });
        let uri = format!("http://{addr}/inference.GRPCInferenceService/ModelInfer").parse()?;
        Ok(GrpcClient { send, uri })
    }

    /// Sends `message` (length-prefixed as gRPC frames it) and reads the whole answer.
    async fn infer(&mut self, message: &Bytes) -> Outcome {
        match self.call(message).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }

    async fn call(&mut self, message: &Bytes) -> Result<Outcome> {
        use tonic::codegen::http;
        let request = http::Request::post(&self.uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
        let mut send = self.send.clone().ready().await?;
        let (response, mut body) = send.send_request(request, false)?;
        body.send_data(message.clone(), true)?;
        let (head, mut stream) = response.await?.into_parts();
        let mut answer = Vec::new();
        while let Some(chunk) = stream.data().await {
            let chunk = chunk?;
            stream.flow_control().release_capacity(chunk.len())?;
            answer.extend_from_slice(&chunk);
        }
        // A failed call may come as headers only, with the status in them.
        let trailers = stream.trailers().await?.unwrap_or_default();
        let field = |name: &str| trailers.get(name).or_else(|| head.headers.get(name)).and_then(|v| v.to_str().ok());
        match field("grpc-status") {
            Some("0") => {}
            Some("14") => return Ok(Outcome::Refused),
            Some(code) => {
                let message = percent_decoded(field("grpc-message").unwrap_or(""));
                return Ok(Outcome::Failed(format!("grpc-status {code}: {message}")));
            }
            None => bail!("the answer has no grpc-status (HTTP {})", head.status),
        }
        let Some((&[0], rest)) = answer.split_first_chunk::<1>() else {
            bail!("the answer is not one uncompressed gRPC message");
        };
        let (len, message) = rest.split_first_chunk::<4>().context("the answer's gRPC frame is cut short")?;
        if u32::from_be_bytes(*len) as usize != message.len() {
            bail!("the answer's gRPC frame declares {} bytes and holds {}", u32::from_be_bytes(*len), message.len());
        }
        let response = ModelInferResponse::decode(message)?;
        if response.raw_output_contents.is_empty() {
            bail!("the answer has no raw_output_contents");
        }
        Ok(Outcome::Answered)
    }
}

/// `grpc-message` as sent: percent-encoded UTF-8 (gRPC over HTTP/2, "Responses").
fn percent_decoded(text: &str) -> String {
    let (mut out, mut bytes) = (Vec::new(), text.bytes());
    while let Some(b) = bytes.next() {
        let hex = |b: Option<u8>| b.and_then(|b| (b as char).to_digit(16));
        out.push(match b {
            b'%' => match (hex(bytes.next()), hex(bytes.next())) {
                (Some(hi), Some(lo)) => (hi * 16 + lo) as u8,
                _ => b'?',
            },
            b => b,
        });
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn closed_loop_grpc(o: &Options, clients: usize, request: &Bytes) -> Result<(Tally, Duration)> {
    let addr = o.grpc.context("--grpc is needed for grpc")?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let start = Instant::now();
    let (measure_from, end) =
        (start + Duration::from_secs_f64(o.warmup), start + Duration::from_secs_f64(o.warmup + o.seconds));
    let tally = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let request = request.clone();
            let mut client = GrpcClient::connect(addr).await?;
            tasks.push(tokio::spawn(async move {
                let mut mine = Tally::default();
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let outcome = client.infer(&request).await;
                    if sent >= measure_from {
                        record(&mut mine, outcome, sent.elapsed());
                    }
                }
                mine
            }));
        }
        let all = Mutex::new(Tally::default());
        for t in tasks {
            merge(&all, t.await?);
        }
        anyhow::Ok(all.into_inner().expect("lock"))
    })?;
    Ok((tally, Duration::from_secs_f64(o.seconds)))
}

/// The server's `/metrics` sums: (seconds from receipt to answer, seconds computing,
/// requests).
fn server_sums(addr: SocketAddr) -> Result<(f64, f64, f64)> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: loadgen\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let sum = |name: &str| -> Result<f64> {
        let line = text.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name} in /metrics"))?;
        Ok(line.rsplit(' ').next().unwrap_or("").parse()?)
    };
    Ok((
        sum("repvgg_request_duration_seconds_sum")?,
        sum("repvgg_compute_duration_seconds_sum")?,
        sum("repvgg_request_duration_seconds_count")?,
    ))
}

/// Alternates blocks of `repvgg bench` (a process of its own, as a user runs it) with
/// blocks of server requests; prints both medians, the median of the per-block
/// differences, and where that difference goes, from the server's own means (its
/// `/metrics`): handling (receipt to answer, less compute), transfer and client (the
/// client's latency less the server's receipt to answer), and the pass itself (the rest).
fn versus_bench(o: &Options, blocks: usize, http: &Arc<Vec<u8>>, grpc: &Bytes) -> Result<()> {
    let repvgg = match &o.repvgg {
        Some(path) => path.clone(),
        // target/release/examples/loadgen -> target/release/repvgg
        None => std::env::current_exe()?
            .parent()
            .and_then(|examples| examples.parent())
            .context("cannot locate target/release; pass --repvgg")?
            .join("repvgg"),
    };
    let (batch, size) = (o.batch.to_string(), o.size.to_string());
    let mut bench_args = vec!["bench", "--runs", "10", "--warmup", "2", "--json", "--batch", &batch, "--size", &size];
    let threads = o.threads.to_string();
    if o.threads > 0 {
        bench_args.extend(["--threads", &threads]);
    }
    let bench = || -> Result<f64> {
        let out = std::process::Command::new(&repvgg)
            .args(&bench_args)
            .output()
            .with_context(|| format!("running {}", repvgg.display()))?;
        if !out.status.success() {
            bail!("{} bench failed: {}", repvgg.display(), String::from_utf8_lossy(&out.stderr));
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        json["median_ms"].as_f64().context("no median_ms in the bench output")
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    println!(
        "| protocol | blocks | bench median ms | server p50 ms | median of block differences ms \
         | of which: handling | transfer and client | pass |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for protocol in &o.protocols {
        let mut grpc_client = match protocol.as_str() {
            "grpc" => {
                let addr = o.grpc.context("--grpc is needed for grpc")?;
                Some(rt.block_on(GrpcClient::connect(addr))?)
            }
            "http" => None,
            other => bail!("unknown protocol {other} (http, grpc)"),
        };
        let http_addr = o.http.context("--http is needed (for /metrics too)")?;
        let mut http_client = HttpClient { addr: http_addr, conn: None, request: http.clone() };
        // Each block: a second of untimed requests, then 10 timed. A CPU that sat idle
        // (while `bench` ran) runs its first passes slower, in a bare session as much as in
        // the server, and `bench` itself reaches its timed runs after about a second of
        // work (weights, packing, warm-up runs). After 1.5 s idle a bare session's first
        // pass took 14.9-18.1 ms and its tenth 8.8-9.7 ms; with only a few warm requests,
        // the block timed that ramp.
        const WARM: Duration = Duration::from_secs(1);
        const TIMED: usize = 10;
        let (mut local, mut remote, mut diff) = (Vec::new(), Vec::new(), Vec::new());
        let (mut handling, mut transfer, mut pass) = (Vec::new(), Vec::new(), Vec::new());
        let mut infer = || -> Result<()> {
            let outcome = match &mut grpc_client {
                Some(c) => rt.block_on(c.infer(grpc)),
                None => http_client.infer(),
            };
            match outcome {
                Outcome::Answered => Ok(()),
                Outcome::Refused => bail!("the server refused a request at concurrency 1"),
                Outcome::Failed(e) => bail!("a request failed: {e}"),
            }
        };
        for _ in 0..blocks {
            let bench_ms = bench()?;
            let warming = Instant::now();
            while warming.elapsed() < WARM {
                infer()?;
            }
            let before = server_sums(http_addr)?;
            let mut block = Vec::with_capacity(TIMED);
            for _ in 0..TIMED {
                let start = Instant::now();
                infer()?;
                block.push(start.elapsed().as_secs_f64() * 1e3);
            }
            let after = server_sums(http_addr)?;
            let n = after.2 - before.2;
            let (server_ms, compute_ms) = ((after.0 - before.0) / n * 1e3, (after.1 - before.1) / n * 1e3);
            let client_ms = mean(&block);
            let d = median(&mut block) - bench_ms;
            handling.push(server_ms - compute_ms);
            transfer.push(client_ms - server_ms);
            pass.push(d - (server_ms - compute_ms) - (client_ms - server_ms));
            local.push(bench_ms);
            remote.extend(&block);
            diff.push(d);
        }
        println!(
            "| {protocol} | {blocks} | {:.2} | {:.2} | {:+.2} | {:+.2} | {:+.2} | {:+.2} |",
            median(&mut local),
            median(&mut remote),
            median(&mut diff),
            median(&mut handling),
            median(&mut transfer),
            median(&mut pass),
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let o = parse_args()?;
    let http = Arc::new(http_request(&o));
    let grpc = grpc_request(&o);
    if let Some(blocks) = o.versus_bench {
        return versus_bench(&o, blocks.max(1), &http, &grpc);
    }
    let mut rows = Vec::new();
    println!(
        "| protocol | {} | images/s | p50 ms | p90 ms | p99 ms | answered | refused |",
        if o.rate.is_some() { "offered req/s" } else { "concurrency" }
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let runs: Vec<(String, Option<usize>)> = match o.rate {
        Some(_) => o.protocols.iter().map(|p| (p.clone(), None)).collect(),
        None => o.protocols.iter().flat_map(|p| o.concurrency.iter().map(move |c| (p.clone(), Some(*c)))).collect(),
    };
    for (protocol, clients) in runs {
        let (mut tally, span) = match (protocol.as_str(), clients, o.rate) {
            ("http", Some(c), _) => closed_loop_http(&o, c, &http)?,
            ("http", None, Some(rate)) => open_loop_http(&o, rate, &http)?,
            ("grpc", Some(c), _) => closed_loop_grpc(&o, c, &grpc)?,
            ("grpc", None, Some(_)) => bail!("--rate is implemented for http only"),
            (other, ..) => bail!("unknown protocol {other} (http, grpc)"),
        };
        tally.latencies.sort();
        let row = Row {
            protocol: protocol.clone(),
            concurrency: clients,
            rate: o.rate,
            images_per_s: (tally.latencies.len() * o.batch) as f64 / span.as_secs_f64(),
            mean_ms: tally.latencies.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3
                / tally.latencies.len() as f64,
            p50_ms: percentile(&tally.latencies, 0.50),
            p90_ms: percentile(&tally.latencies, 0.90),
            p99_ms: percentile(&tally.latencies, 0.99),
            answered: tally.latencies.len(),
            refused: tally.refused,
            failed: tally.failed,
        };
        println!(
            "| {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {} |",
            row.protocol,
            clients.map_or_else(|| format!("{}", o.rate.unwrap_or(0.0)), |c| c.to_string()),
            row.images_per_s,
            row.p50_ms,
            row.p90_ms,
            row.p99_ms,
            row.answered,
            row.refused
        );
        if row.failed > 0 {
            eprintln!("loadgen: {} requests failed outright", row.failed);
        }
        rows.push(row);
    }
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)? + "\n")?;
    }
    // A failed request is a broken server or client, not a figure: say so by the exit code.
    let failed: u64 = rows.iter().map(|r| r.failed).sum();
    if failed > 0 {
        bail!("{failed} requests failed (the first failure of each run is printed above)");
    }
    Ok(())
}
