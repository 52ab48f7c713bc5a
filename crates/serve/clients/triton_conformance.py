#!/usr/bin/env python3
"""Conformance check of `repvgg serve` against the stock Triton Python client.

The server's own tests are written by the people who wrote the server, so they
share its reading of the Open Inference Protocol (KServe v2) and of Triton's
extensions. This script uses a client nobody on this project wrote --
NVIDIA's `tritonclient` (HTTP and gRPC), unmodified -- and checks that it can
drive the server as it would drive Triton:

  * health: is_server_live / is_server_ready / is_model_ready (with and
    without model_version="1"), over HTTP and gRPC;
  * metadata: get_server_metadata (extensions binary_tensor_data,
    classification, model_configuration, statistics) and get_model_metadata
    (over HTTP with its `parameters`: precision f32);
  * configuration: get_model_config (HTTP JSON and gRPC as_json):
    max_batch_size, input/output names and dims, the `precision` parameter;
  * inference over HTTP with JSON tensors, HTTP with binary tensors and gRPC,
    each bit-identical to `repvgg infer` (run offline on the same batch);
  * the classification extension (class_count=3) over HTTP and gRPC, equal to
    the top 3 of those logits as Triton formats them ("%.6f:index[:label]",
    no label here: the fixture model has 10 classes, not ImageNet's 1000);
  * a BYTES `image` request (an encoded PNG) over HTTP binary and gRPC: the
    right shape, and the same logits bit for bit on both protocols;
  * errors as the client sees them: an unknown model is 404 / NOT_FOUND, a
    wrong shape is 400 / INVALID_ARGUMENT carrying the server's message;
  * a request id ("abc") round trip on both protocols;
  * the statistics extension: get_inference_statistics over HTTP and gRPC
    gives the model's counts, the same on both;
  * SIGTERM drains the server and it exits 0.

It starts the server itself on ephemeral ports with the trained-digits
fixture, prints "ok  <check>" per check and exits non-zero at the first
failure. Install the client with `pip install -r requirements.txt`, then:

    python3 crates/serve/clients/triton_conformance.py [--repvgg target/release/repvgg]
"""

import argparse
import io
import json
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from safetensors.numpy import load_file, save_file
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "models/fixtures/trained-digits"
MODEL = "digits"
CLASSES = 10
BATCH = 4  # within the server's default max batch (16)


class Failure(Exception):
    pass


def ok(name, cond, detail=""):
    if not cond:
        raise Failure(f"FAIL {name}" + (f": {detail}" if detail else ""))
    print(f"ok  {name}", flush=True)


def expect_error(name, call, http_status, grpc_status, message=None):
    """Runs `call`, which must raise InferenceServerException with `status`."""
    try:
        call()
    except InferenceServerException as e:
        want = http_status or f"StatusCode.{grpc_status}"
        ok(name, e.status() == want and (message is None or message in (e.message() or "")),
           f"expected status {want} and message containing {message!r}, got {e.status()} {e.message()!r}")
        return e.message()
    raise Failure(f"FAIL {name}: expected an InferenceServerException, got success")


def start_server(repvgg):
    """Starts the server on ephemeral ports and returns (process, http, grpc)."""
    cmd = [str(repvgg), "serve", "--weights", str(FIXTURE / "train.safetensors"),
           "--arch", str(FIXTURE / "arch.toml"), "--model-name", MODEL,
           "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--log-level", "info"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()

    def drain():  # info logs a line per request: keep the pipe empty
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            raise Failure(f"FAIL start: server exited with {proc.wait()} before listening")
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == "listening":
            return proc, record["http"], record["grpc"]
    proc.kill()
    raise Failure("FAIL start: no 'listening' line within 60 s")


def wait_ready(http, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http.is_server_ready():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise Failure(f"FAIL ready: server not ready within {timeout} s")


def offline_logits(repvgg, x, tmp):
    """The logits `repvgg infer` computes for `x`: the reference."""
    src, dst = Path(tmp) / "in.safetensors", Path(tmp) / "out.safetensors"
    save_file({"input": x}, str(src))
    run = subprocess.run([str(repvgg), "infer", "--weights", str(FIXTURE / "train.safetensors"),
                          "--arch", str(FIXTURE / "arch.toml"), "--input", str(src), "--output", str(dst)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise Failure(f"FAIL repvgg infer: exit {run.returncode}: {run.stderr.strip()}")
    return load_file(str(dst))["logits"]


def top_k_strings(logits, k):
    """Triton's classification strings for each row: "%.6f:index", best first."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return [[f"{row[c]:.6f}:{c}".encode() for c in idx] for row, idx in zip(logits, order)]


def png_bytes():
    y, x = np.mgrid[0:40, 0:48]
    rgb = np.stack([x * 5, y * 6, (x + y) * 3], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def dims(seq):
    return [int(d) for d in seq]  # gRPC's JSON renders int64 as strings


def run_checks(repvgg, http, grpc, tmp):
    # Health.
    for proto, c in (("http", http), ("grpc", grpc)):
        ok(f"{proto} is_server_live", c.is_server_live())
        ok(f"{proto} is_server_ready", c.is_server_ready())
        ok(f"{proto} is_model_ready", c.is_model_ready(MODEL))
        ok(f"{proto} is_model_ready version 1", c.is_model_ready(MODEL, model_version="1"))

    # Server and model metadata.
    want_ext = {"binary_tensor_data", "classification", "model_configuration", "statistics"}
    meta = http.get_server_metadata()
    ok("http get_server_metadata extensions", want_ext <= set(meta["extensions"]), meta)
    gmeta = grpc.get_server_metadata(as_json=True)
    ok("grpc get_server_metadata extensions", want_ext <= set(gmeta["extensions"]), gmeta)
    for proto, m in (("http", http.get_model_metadata(MODEL)),
                     ("grpc", grpc.get_model_metadata(MODEL, model_version="1", as_json=True))):
        ins = {t["name"]: (t["datatype"], dims(t["shape"])) for t in m["inputs"]}
        outs = {t["name"]: (t["datatype"], dims(t["shape"])) for t in m["outputs"]}
        ok(f"{proto} get_model_metadata",
           m["name"] == MODEL and ins.get("input") == ("FP32", [-1, 3, -1, -1])
           and ins.get("image", ("?",))[0] == "BYTES" and outs == {"logits": ("FP32", [-1, CLASSES])}, m)

    # Model configuration (Triton's model-config schema).
    for proto, cfg in (("http", http.get_model_config(MODEL)),
                       ("grpc", grpc.get_model_config(MODEL, as_json=True)["config"])):
        ins = {t["name"]: dims(t["dims"]) for t in cfg["input"]}
        outs = {t["name"]: dims(t["dims"]) for t in cfg["output"]}
        ok(f"{proto} get_model_config",
           cfg["name"] == MODEL and int(cfg["max_batch_size"]) >= BATCH
           and ins.get("input") == [3, -1, -1] and "image" in ins and outs == {"logits": [CLASSES]}, cfg)
        ok(f"{proto} get_model_config precision",
           cfg.get("parameters", {}).get("precision") == {"string_value": "f32"}, cfg.get("parameters"))
    # The metadata's `parameters` (the OIP's optional field; over gRPC a field Triton's
    # proto lacks, which its client skips: the metadata above parsed regardless).
    m = http.get_model_metadata(MODEL)
    ok("http get_model_metadata precision", m.get("parameters") == {"precision": "f32"}, m.get("parameters"))

    # Inference, against `repvgg infer` on the same batch.
    x = np.ascontiguousarray(load_file(str(FIXTURE / "input.safetensors"))["input"][:BATCH], np.float32)
    want = offline_logits(repvgg, x, tmp)
    ok("repvgg infer reference", want.shape == (BATCH, CLASSES) and want.dtype == np.float32, want.shape)

    def http_infer(binary, outputs=None, **kw):
        i = httpclient.InferInput("input", list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=binary)
        outputs = outputs or [httpclient.InferRequestedOutput("logits", binary_data=binary)]
        return http.infer(MODEL, [i], outputs=outputs, **kw)

    def grpc_infer(outputs=None, **kw):
        i = grpcclient.InferInput("input", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        return grpc.infer(MODEL, [i], outputs=outputs or [grpcclient.InferRequestedOutput("logits")], **kw)

    for name, result in (("http infer json", http_infer(False)), ("http infer binary", http_infer(True)),
                         ("grpc infer", grpc_infer())):
        got = result.as_numpy("logits")
        ok(name, got is not None and got.dtype == np.float32 and np.array_equal(got, want),
           f"max |diff| {np.abs(got - want).max() if got is not None and got.shape == want.shape else got}")

    # Classification extension: Triton's "value:index[:label]" strings.
    top3 = np.array(top_k_strings(want, 3), dtype=np.object_)
    for name, result in (
            ("http classification json", http_infer(False, [httpclient.InferRequestedOutput("logits", binary_data=False, class_count=3)])),
            ("http classification binary", http_infer(True, [httpclient.InferRequestedOutput("logits", binary_data=True, class_count=3)])),
            ("grpc classification", grpc_infer([grpcclient.InferRequestedOutput("logits", class_count=3)]))):
        got = result.as_numpy("logits")
        got = np.vectorize(lambda s: s if isinstance(s, bytes) else str(s).encode(), otypes=[np.object_])(got)
        ok(name, got.shape == top3.shape and (got == top3).all(), f"expected {top3.tolist()}, got {got.tolist()}")

    # An encoded image as a BYTES tensor, preprocessed by the server.
    image = np.array([png_bytes()], dtype=np.object_)
    hi = httpclient.InferInput("image", [1], "BYTES")
    hi.set_data_from_numpy(image, binary_data=True)
    h = http.infer(MODEL, [hi], outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)]).as_numpy("logits")
    ok("http infer image", h is not None and h.shape == (1, CLASSES) and h.dtype == np.float32, h)
    gi = grpcclient.InferInput("image", [1], "BYTES")
    gi.set_data_from_numpy(image)
    g = grpc.infer(MODEL, [gi]).as_numpy("logits")
    ok("grpc infer image", g is not None and g.shape == (1, CLASSES), g)
    ok("image http == grpc", np.array_equal(h, g), f"{h} vs {g}")

    # Request id round trip.
    r = http_infer(True, request_id="abc").get_response()
    ok("http request_id", r.get("id") == "abc", r)
    r = grpc_infer(request_id="abc").get_response()
    ok("grpc request_id", r.id == "abc", r.id)

    # The statistics extension, after the inferences above (nothing runs in between).
    hs = http.get_inference_statistics(MODEL)["model_stats"][0]
    gs = grpc.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]
    ok("http get_inference_statistics", hs["name"] == MODEL and hs["version"] == "1"
       and hs["inference_count"] > 0 and hs["inference_stats"]["success"]["count"] > 0, hs)
    # Protobuf's JSON form writes uint64 as strings.
    ok("grpc get_inference_statistics == http",
       int(gs["inference_count"]) == hs["inference_count"]
       and int(gs["inference_stats"]["success"]["count"]) == hs["inference_stats"]["success"]["count"], gs)

    # Errors as the client reports them.
    def bad_model(c, mod):
        i = mod.InferInput("input", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        return lambda: c.infer("no-such-model", [i])

    expect_error("http unknown model 404", bad_model(http, httpclient), "404", None)
    expect_error("grpc unknown model NOT_FOUND", bad_model(grpc, grpcclient), None, "NOT_FOUND")
    expect_error("http get_model_metadata unknown 404", lambda: http.get_model_metadata("no-such-model"), "404", None)
    expect_error("grpc get_model_metadata unknown NOT_FOUND",
                 lambda: grpc.get_model_metadata("no-such-model"), None, "NOT_FOUND")
    ok("http is_model_ready unknown is False", not http.is_model_ready("no-such-model"))
    # As Triton does: an unknown model is not ready, not an error.
    ok("grpc is_model_ready unknown is False", not grpc.is_model_ready("no-such-model"))

    flat = x.reshape(BATCH, 3, -1)  # rank 3: not [N, 3, H, W]

    def bad_shape(c, mod):
        i = mod.InferInput("input", list(flat.shape), "FP32")
        i.set_data_from_numpy(flat)
        return lambda: c.infer(MODEL, [i])

    msg = expect_error("http wrong shape 400", bad_shape(http, httpclient), "400", None, "shape")
    expect_error("grpc wrong shape INVALID_ARGUMENT", bad_shape(grpc, grpcclient), None, "INVALID_ARGUMENT", msg)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repvgg", type=Path, default=ROOT / "target/release/repvgg",
                        help="the repvgg binary (default: target/release/repvgg in the repo)")
    args = parser.parse_args()
    if not args.repvgg.is_file():
        sys.exit(f"FAIL: no binary at {args.repvgg}; build it with `cargo build --release`")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("FAIL: terminated"))  # still stop the server
    proc = None
    try:
        proc, http_addr, grpc_addr = start_server(args.repvgg)
        ok("server listening", True)
        http = httpclient.InferenceServerClient(http_addr)
        grpc = grpcclient.InferenceServerClient(grpc_addr)
        wait_ready(http)
        with tempfile.TemporaryDirectory() as tmp:
            run_checks(args.repvgg, http, grpc, tmp)
        http.close()
        grpc.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        ok("SIGTERM exits 0", code == 0, f"exit code {code}")
        proc = None
    except Failure as e:
        sys.exit(str(e))
    except Exception as e:  # a client-side exception is a failure too
        sys.exit(f"FAIL: {type(e).__name__}: {e}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
    print("all checks passed")


if __name__ == "__main__":
    main()
