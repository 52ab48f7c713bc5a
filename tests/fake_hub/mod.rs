//! A Hugging Face hub on the loopback, for `repvgg pull` without a network: the URL layout
//! and headers `huggingface_hub` (and our client) read, and ways to misbehave.
//!
//! `HEAD /{owner}/{repo}/resolve/{revision}/model.safetensors` answers 302 to
//! `/lfs/{sha256}` with `X-Repo-Commit`, `X-Linked-Etag` (the sha256) and `X-Linked-Size`, as
//! the hub does for files in LFS; `config.json` answers 200 with a git-style `ETag` and
//! `Content-Length`. A repository listed in `renamed` answers 307 with a relative
//! `Location`, as the hub does for a renamed repository.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// How the server misbehaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    None,
    /// The weights' bytes differ from the declared sha256 (one byte flipped).
    CorruptBlob,
    /// The declared size is 10 bytes more than what is sent.
    WrongSize,
    /// The declared size is 20 GiB.
    Huge,
    /// The download sends half the bytes and then nothing, for a minute.
    StallBody,
    /// The metadata request gets no answer, for a minute.
    StallHead,
}

pub struct FakeHub {
    pub endpoint: String,
    /// Request lines received (`HEAD /timm/...`), in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    fault: Arc<Mutex<Fault>>,
    stop: Arc<AtomicBool>,
    port: u16,
}

/// The hub's sha256 in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl FakeHub {
    /// Serves `repos`: repository id -> (weights bytes, config.json text or none).
    pub fn start(repos: HashMap<String, (Vec<u8>, Option<String>)>, renamed: HashMap<String, String>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let fault = Arc::new(Mutex::new(Fault::None));
        let stop = Arc::new(AtomicBool::new(false));
        let repos = Arc::new(repos);
        let renamed = Arc::new(renamed);
        let (requests2, fault2, stop2) = (requests.clone(), fault.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (repos, renamed, requests, fault) =
                    (repos.clone(), renamed.clone(), requests2.clone(), fault2.clone());
                std::thread::spawn(move || {
                    let fault = *fault.lock().unwrap();
                    let _ = serve(stream, &repos, &renamed, &requests, fault);
                });
            }
        });
        FakeHub { endpoint: format!("http://127.0.0.1:{port}"), requests, fault, stop, port }
    }

    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    pub fn gets(&self) -> usize {
        self.requests.lock().unwrap().iter().filter(|r| r.starts_with("GET")).count()
    }
}

impl Drop for FakeHub {
    /// Stops listening: later connections are refused, as from a hub that is gone.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn serve(
    mut stream: TcpStream,
    repos: &HashMap<String, (Vec<u8>, Option<String>)>,
    renamed: &HashMap<String, String>,
    requests: &Mutex<Vec<String>>,
    fault: Fault,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    requests.lock().unwrap().push(format!("{method} {path}"));
    let head = method == "HEAD";
    let not_found = |stream: &mut TcpStream| {
        respond(
            stream,
            "404 Not Found",
            &[("X-Error-Code", "RepoNotFound".into()), ("Content-Length", "0".into())],
            b"",
        )
    };
    if head && fault == Fault::StallHead {
        std::thread::sleep(Duration::from_secs(60));
        return Ok(());
    }
    // The bytes of a large file, where the metadata request redirected to.
    if let Some(sha) = path.strip_prefix("/lfs/") {
        let Some((weights, _)) = repos.values().find(|(w, _)| sha256_hex(w) == sha) else {
            return not_found(&mut stream);
        };
        let mut body = weights.clone();
        if fault == Fault::CorruptBlob {
            body[weights.len() / 2] ^= 1;
        }
        if fault == Fault::StallBody {
            let half = &body[..body.len() / 2];
            respond(&mut stream, "200 OK", &[("Content-Length", body.len().to_string())], half)?;
            std::thread::sleep(Duration::from_secs(60));
            return Ok(());
        }
        let headers = [("Content-Length", body.len().to_string())];
        return respond(&mut stream, "200 OK", &headers, if head { b"" } else { &body });
    }
    let Some((repo, rest)) =
        path.trim_start_matches('/').split_once("/resolve/").map(|(r, x)| (r.to_string(), x.to_string()))
    else {
        return not_found(&mut stream);
    };
    if let Some(new) = renamed.get(&repo) {
        let location = format!("/{new}/resolve/{rest}");
        return respond(
            &mut stream,
            "307 Temporary Redirect",
            &[("Location", location), ("Content-Length", "0".into())],
            b"",
        );
    }
    let Some((weights, config)) = repos.get(&repo) else { return not_found(&mut stream) };
    let Some((revision, file)) = rest.split_once('/') else { return not_found(&mut stream) };
    if revision != "main" && revision != COMMIT {
        return not_found(&mut stream);
    }
    match (file, config) {
        ("model.safetensors", _) => {
            let sha = sha256_hex(weights);
            let size = match fault {
                Fault::WrongSize => weights.len() as u64 + 10,
                Fault::Huge => 20 << 30,
                _ => weights.len() as u64,
            };
            let headers = [
                ("Location", format!("http://{}/lfs/{sha}", stream.local_addr()?)),
                ("X-Repo-Commit", COMMIT.to_string()),
                ("X-Linked-Etag", format!("\"{sha}\"")),
                ("X-Linked-Size", size.to_string()),
                ("Content-Length", "0".into()),
            ];
            respond(&mut stream, "302 Found", &headers, b"")
        }
        ("config.json", Some(text)) => {
            let headers = [
                ("X-Repo-Commit", COMMIT.to_string()),
                // A git blob hash, as the hub gives for files outside LFS.
                ("ETag", format!("\"{}\"", &sha256_hex(text.as_bytes())[..40])),
                ("Content-Length", text.len().to_string()),
            ];
            respond(&mut stream, "200 OK", &headers, if head { b"" } else { text.as_bytes() })
        }
        _ => not_found(&mut stream),
    }
}
