"""Engine adapters: our `repvgg time` subprocess, the in-process peers, and the peers held to
AVX2, each in a process of its own (`Held`, served by this file's `serve`).

Every adapter has the same small interface so the driver can treat them alike:

* `name`, `version`, `notes` (list of strings for the report),
* `infer()` runs one inference on the pre-built input and returns its seconds,
* `logits()` returns the [N, classes] float32 logits of the last inference,
* `cpu_seconds()` the CPU time the engine's process has used so far (to estimate how
  many cores an engine actually kept busy), and `close()`.

The peers are imported lazily, inside their constructors, so the driver can set
OMP_NUM_THREADS and friends before any of them loads its thread pool.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

FP32_ENGINES = ("ours", "onnxruntime", "openvino", "ncnn", "tract")
# Peers quantized to INT8 from the calibration inputs, each the way its docs teach (int8.py).
# ncnn-int8 is absent: its quantizer is a pair of C++ tools the ncnn wheel does not ship.
INT8_ENGINES = ("onnxruntime-int8", "openvino-int8")
# Ours in INT8: `repvgg quantize` on the same weights and calibration inputs (int8.py); the
# reference for every engine's agreement stays FP32 `ours`.
OURS_INT8 = "ours-int8"
# bf16 arithmetic on the same FP32 weights: ours with `--precision bf16`, and OpenVINO with no
# precision hint (its default: bf16 on CPUs with AVX512-BF16 or AMX, which the adapter reads
# back). Held to BF16_LIMIT, not to the FP32 limit (compare.check_numerics).
BF16_ENGINES = ("ours-bf16", "openvino-default")
# FP32 held to AVX2 on an AVX-512 host (what an AVX2-only CPU would run): ours with `--isa avx2`,
# and each peer that has a switch for it, in its own process whose environment holds it (HELD_ENV).
# ONNX Runtime and ncnn have no such switch (docs/performance.md says where that was looked up).
AVX2_ENGINES = ("ours-avx2", "openvino-avx2", "tract-avx2")
ALL_ENGINES = FP32_ENGINES + (OURS_INT8,) + INT8_ENGINES + BF16_ENGINES + AVX2_ENGINES

# Our engine's variants: name -> extra `repvgg time` / `repvgg infer` arguments.
OURS_VARIANTS: dict[str, tuple[str, ...]] = {"ours": (), "ours-bf16": ("--precision", "bf16"),
                                             "ours-avx2": ("--isa", "avx2")}

# Keeps glibc's string functions (its EVEX memcpy etc.) and numpy's loops off the AVX-512
# registers in a held engine's process, so that the kernel's record of the last AVX-512 use of
# each thread (/proc/PID/task/TID/arch_status) speaks for the engine alone.
NO_AVX512_LIBC = {
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD",
    "NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR",
}
# What holds each engine to AVX2, on top of NO_AVX512_LIBC: oneDNN's documented dispatcher cap
# (OpenVINO's CPU plugin is built on oneDNN), tract-linalg's TRACT_CPU_ISA knob ("edit the
# detected instruction-set features ... a removed feature takes its kernels out of the pool").
HELD_ENV: dict[str, dict[str, str]] = {
    "ours-avx2": {},  # held by --isa avx2 (OURS_VARIANTS)
    "openvino-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "tract-avx2": {"TRACT_CPU_ISA": "-avx512f,-avx512vnni,-amx-int8,-amx-bf16"},
}
# The in-process adapter each held peer runs in its own process.
HELD_INNER = {"openvino-avx2": "openvino", "tract-avx2": "tract"}


def avx512_threads(pid: int, since_s: float) -> dict[str, int]:
    """Threads of process `pid` the kernel saw using AVX-512 registers in the last `since_s` s.

    Linux records, when it switches a thread out with AVX-512 state in use, the time; its
    /proc/PID/task/TID/arch_status reads `AVX512_elapsed_ms: N` (N ms since then, -1 never).
    A sampled record: a thread that runs AVX-512 kernels for a timed loop is switched out
    mid-kernel often enough to show (unheld engines read 0-20 ms at the end of a run).
    Returns {tid: elapsed ms} of the threads with a use inside the window.
    """
    used = {}
    for status in Path(f"/proc/{pid}/task").glob("*/arch_status"):
        try:
            text = status.read_text()
        except OSError:  # the thread has exited
            continue
        m = re.search(r"AVX512_elapsed_ms:\s*(-?\d+)", text)
        if m and 0 <= int(m.group(1)) < since_s * 1e3:
            used[status.parent.name] = int(m.group(1))
    return used


class Engine:
    """Common base: timing around `_call`, CPU time from this process."""

    name = "engine"
    quantized = False  # INT8 engines are not held to the FP32 agreement limit
    reduced_precision: str | None = None  # "bf16" (or "f16"): held to the bf16 limit instead

    def __init__(self) -> None:
        self.version = "?"
        self.notes: list[str] = []
        self._last = None

    def _call(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def infer(self) -> float:
        """One inference on the pre-built input; returns elapsed seconds (perf_counter)."""
        t0 = time.perf_counter()
        out = self._call()
        elapsed = time.perf_counter() - t0
        self._last = out
        return elapsed

    def logits(self) -> np.ndarray:
        """Logits of the last inference (runs one if there was none)."""
        if self._last is None:
            self.infer()
        return self._to_numpy(self._last)

    def _to_numpy(self, out) -> np.ndarray:
        return np.asarray(out, dtype=np.float32)

    def cpu_seconds(self) -> float:
        """CPU seconds (all threads) used by the process running this engine."""
        return time.process_time()

    def predict(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        """Logits [batch, classes] of one batch `x` (the engine's own batch size)."""
        raise NotImplementedError

    def predict_all(self, xs: np.ndarray) -> np.ndarray:
        """Logits of every image of `xs`, fed in batches of the engine's static batch size."""
        import int8

        out = [self._to_numpy(self.predict(chunk)).reshape(len(chunk), -1)
               for chunk in int8.batches(xs, self.batch)]
        return np.concatenate(out)[: len(xs)]

    def close(self) -> None:
        self._last = None


class Ours(Engine):
    """repvgg-rs through `repvgg time`: a line protocol on the subprocess's stdin/stdout.

    `run` -> elapsed milliseconds measured inside Rust; `write PATH` -> `ok`; `quit`.
    """

    name = "ours"
    own_process = True  # its CPU time is the subprocess's, not the worker's

    def __init__(self, repvgg: Path, weights: Path, x_path: Path, threads: int, scratch: Path,
                 algo: str | None = None, extra_args: tuple[str, ...] = (), name: str = "ours",
                 env: dict[str, str] | None = None) -> None:
        super().__init__()
        self.name = name
        # Shared by `repvgg time` (timing) and `repvgg infer` (logits of the evaluation set).
        self.model_args = ["--weights", str(weights), "--threads", str(threads),
                           *(["--algo", algo] if algo else []), *extra_args]
        cmd = [str(repvgg), "time", "--input", str(x_path), *self.model_args]
        self.repvgg = repvgg
        self.cmd = cmd
        self.scratch = scratch
        # stderr to a file, not a pipe (nothing drains a pipe while timing): its text goes into
        # the error when the binary exits, e.g. when it refuses an option of `extra_args`.
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, bufsize=1, env={**os.environ, **(env or {})})
        banner = self._readline()
        if not banner.startswith("ready"):
            raise RuntimeError(f"`repvgg time` did not start: {banner!r}")
        self.banner = banner
        # `ready DESCRIPTION (ISA kernels[, int8 KERNELS])`: the kernel sets the run-time dispatch
        # chose; any other `, PRECISION KERNELS` part (bf16) is noted the same way.
        kernels = re.search(r"\((\w+) kernels((?:, [^,()]+)*)\)$", banner)
        self.isa = kernels.group(1) if kernels else "unknown"
        self.version = f"{_our_version(repvgg)} ({self.isa} kernels)"
        self.notes.append(f"{self.isa} kernels")
        for part in (kernels.group(2).split(", ")[1:] if kernels else []):
            self.notes.append(f"{part} kernels")
        if algo:
            self.notes.append(f"--algo {algo}")
        if extra_args:
            self.notes.append(" ".join(extra_args))
        self.pipe_wall: list[float] = []  # Python-side round trip of each `run`, for reference

    def _readline(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            try:
                code = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                code = None
            raise RuntimeError(f"`repvgg time` exited (code {code}): {self._stderr_text() or 'no message'}")
        return line.strip()

    def _stderr_text(self) -> str:
        """What the subprocess wrote to stderr so far."""
        self.stderr.seek(0)
        return self.stderr.read().strip()

    def _send(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._readline()

    def infer(self) -> float:
        t0 = time.perf_counter()
        if getattr(self, "first_run", None) is None:
            self.first_run = time.monotonic()  # start of the window verify_held() checks
        reply = self._send("run")
        self.pipe_wall.append(time.perf_counter() - t0)
        try:
            return float(reply) / 1e3
        except ValueError:
            raise RuntimeError(f"`repvgg time` answered {reply!r} to `run`") from None

    def logits(self) -> np.ndarray:
        from safetensors.numpy import load_file

        path = self.scratch / f"ours_logits_{os.getpid()}.safetensors"
        reply = self._send(f"write {path}")
        if reply != "ok":
            raise RuntimeError(f"`repvgg time` answered {reply!r} to `write`")
        logits = load_file(str(path))["logits"]
        path.unlink(missing_ok=True)
        return logits

    def predict_all(self, xs: np.ndarray) -> np.ndarray:
        """`repvgg infer` on all of `xs` at once, with the same weights, threads and options."""
        from safetensors.numpy import load_file, save_file

        x_path = self.scratch / f"{self.name}_eval_input_{os.getpid()}.safetensors"
        y_path = self.scratch / f"{self.name}_eval_logits_{os.getpid()}.safetensors"
        save_file({"input": np.ascontiguousarray(xs, dtype=np.float32)}, str(x_path))
        try:
            subprocess.run([str(self.repvgg), "infer", "--input", str(x_path), "--output", str(y_path),
                            *self.model_args], check=True, capture_output=True, text=True)
            return load_file(str(y_path))["logits"]
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"`repvgg infer` failed: {exc.stderr.strip()}") from None
        finally:
            x_path.unlink(missing_ok=True)
            y_path.unlink(missing_ok=True)

    def cpu_seconds(self) -> float:
        """utime + stime of the subprocess from /proc (clock-tick resolution)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
        return ticks / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        quit_server(self.proc)
        if not self.stderr.closed:
            err = self._stderr_text()
            if err:  # warnings are passed on, as when stderr was inherited
                print(f"  {self.name} stderr: {err}", file=sys.stderr, flush=True)
            self.stderr.close()


def quit_server(proc: subprocess.Popen) -> None:
    """Ends a line-protocol server (`repvgg time`, a held engine's process): `quit`, then a
    kill if it does not exit within 10 s."""
    if proc.poll() is None:
        try:
            proc.stdin.write("quit\n")
            proc.stdin.flush()
            proc.wait(timeout=10)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


def _our_version(repvgg: Path) -> str:
    """`repvgg --version`, the binary's build time and the git commit of the work tree.

    The commit gets `+dirty` when tracked files differ from it; the build time tells
    whether the binary was built before or after those edits.
    """
    version = subprocess.run([str(repvgg), "--version"], capture_output=True, text=True).stdout.strip()
    built = time.strftime("%Y-%m-%d %H:%M", time.localtime(repvgg.stat().st_mtime))
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        version += f" (binary built {built}; work tree at {commit}{'+dirty' if dirty else ''} when run)"
    except (subprocess.CalledProcessError, FileNotFoundError):
        pass
    return version


class OnnxRuntime(Engine):
    """ONNX Runtime CPU provider: intra-op threads = T, inter-op 1, sequential, ORT_ENABLE_ALL."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, x: np.ndarray, threads: int) -> None:
        super().__init__()
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.feed = {"input": x}
        self.batch = x.shape[0]
        self.version = ort.__version__

    def _call(self):
        return self.session.run(["logits"], self.feed)[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"input": x})[0]


class OnnxRuntimeInt8(OnnxRuntime):
    """ONNX Runtime on its own static INT8 quantization (QDQ, per-channel s8 weights, u8
    activations; int8.quantize_onnxruntime), with the FP32 engine's session options."""

    name = "onnxruntime-int8"
    quantized = True

    def __init__(self, onnx_path: Path, x: np.ndarray, threads: int, calib: np.ndarray, scratch: Path) -> None:
        import int8

        t0 = time.perf_counter()
        model, self.options = int8.quantize_onnxruntime(onnx_path, calib, x.shape[0], scratch)
        took = time.perf_counter() - t0
        super().__init__(model, x, threads)
        self.precision = {"weights": "s8 per channel", "activations": "u8", "format": "QDQ"}
        self.notes.append(
            f"quantize_static QDQ, per-channel s8 weights, u8 activations, MinMax over {len(calib)} inputs, "
            f"reduce_range={self.options['reduce_range']}, after quant_pre_process"
            + (" (cached)" if self.options["cached"] else f" (quantized in {took:.0f} s)"))


class OpenVino(Engine):
    """OpenVINO CPU plugin, forced to f32 and T inference threads, one stream, latency hint.

    The CPU plugin defaults to bf16 inference on CPUs with AVX512-BF16 (this one has it);
    INFERENCE_PRECISION_HINT=f32 turns that off. The constructor verifies it: the compiled
    model must report f32, and every Convolution/FullyConnected of the runtime (executable)
    graph must have runtimePrecision f32.
    """

    name = "openvino"

    def __init__(self, onnx_path: Path, x: np.ndarray, threads: int) -> None:
        super().__init__()
        self._compile(onnx_path, x, threads, {"INFERENCE_PRECISION_HINT": "f32"})
        self.precision = self._check_precision()
        self.notes.append(
            f"precision hint {self.precision['hint']}, "
            f"conv/fc runtime precision {','.join(sorted(self.precision['compute']))}"
        )

    def _compile(self, model_path: Path, x: np.ndarray, threads: int, extra: dict) -> None:
        """Compile for the CPU with T threads, one stream, the latency hint, plus `extra`."""
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            **extra,
        }
        self.compiled = core.compile_model(str(model_path), "CPU", config)
        self.model_path, self.config = str(model_path), config
        self.request = self.compiled.create_infer_request()
        self.x = x
        self.batch = x.shape[0]
        self.version = ov.get_version().split("-")[0]

    def _read_precision(self) -> dict:
        """The precision hint of the compiled model and the runtime precisions of its
        Convolution / FullyConnected / MatMul nodes (what the CPU plugin actually executes)."""
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        hint = hint.to_string() if hasattr(hint, "to_string") else str(hint)  # ov.Type -> "f32"
        threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        compute: set[str] = set()
        primitives: set[str] = set()  # oneDNN implementation, e.g. brgconv_avx512_amx_I8
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else ""
            if kind in ("Convolution", "FullyConnected", "MatMul", "GroupConvolution"):
                compute.add(info["runtimePrecision"].astype(str))
                if "primitiveType" in info:
                    primitives.add(info["primitiveType"].astype(str))
        return {"hint": hint, "compute": sorted(compute), "primitives": sorted(primitives), "threads": threads}

    def _check_precision(self) -> dict:
        """Read back the precision from the compiled and runtime models; raise if not f32."""
        precision = self._read_precision()
        hint = precision["hint"]
        if "f32" not in hint.lower() and "float32" not in hint.lower():
            raise RuntimeError(f"OpenVINO compiled with precision hint {hint}, not f32")
        if set(precision["compute"]) != {"f32"}:
            raise RuntimeError(f"OpenVINO runtime graph computes in {precision['compute']}, not f32 only")
        return precision

    def _call(self):
        return self.request.infer({0: self.x}, share_inputs=True)[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: x})[0], dtype=np.float32)


class OpenVinoInt8(OpenVino):
    """OpenVINO on NNCF's default post-training INT8 quantization (int8.quantize_openvino),
    compiled with the FP32 engine's thread settings and nothing forced: no precision hint,
    so what is not quantized runs in the plugin's default (bf16 on this CPU). The precision
    it actually runs is read back from the runtime graph and reported."""

    name = "openvino-int8"
    quantized = True

    def __init__(self, onnx_path: Path, x: np.ndarray, threads: int, calib: np.ndarray, scratch: Path) -> None:
        import int8

        Engine.__init__(self)
        t0 = time.perf_counter()
        model, self.options = int8.quantize_openvino(onnx_path, calib, x.shape[0], scratch)
        took = time.perf_counter() - t0
        self._compile(model, x, threads, {})
        self.precision = self._read_precision()
        self.notes.append(
            f"nncf.quantize defaults over {len(calib)} inputs"
            + (" (cached)" if self.options["cached"] else f" (quantized in {took:.0f} s)")
            + f"; precision hint {self.precision['hint']}, conv/fc runtime precision "
            + ",".join(self.precision["compute"]) + " (" + ", ".join(self.precision["primitives"]) + ")")


class OpenVinoDefault(OpenVino):
    """OpenVINO CPU plugin out of the box: the FP32 engine's thread settings (T threads, one
    stream, latency hint) and no precision hint, so the plugin runs in its default inference
    precision: bf16 on CPUs with AVX512-BF16 or AMX (AMX tiles where it has them), f32
    elsewhere. The precision hint it reports, its execution mode and the runtime precision and
    oneDNN primitive of every Convolution / FullyConnected are read back and reported; the
    engine is held to the bf16 agreement limit when the hint is bf16 or f16, else to FP32's.
    """

    name = "openvino-default"

    def __init__(self, onnx_path: Path, x: np.ndarray, threads: int) -> None:
        Engine.__init__(self)
        self._compile(onnx_path, x, threads, {})
        self.precision = self._read_precision()
        mode = self.compiled.get_property("EXECUTION_MODE_HINT")
        self.precision["execution_mode"] = str(mode).rsplit(".", 1)[-1]  # ExecutionMode.PERFORMANCE
        hint = self.precision["hint"].lower()
        self.reduced_precision = {"bf16": "bf16", "bfloat16": "bf16", "f16": "f16", "float16": "f16"}.get(hint)
        self.notes.append(
            f"no precision hint given; reports precision hint {self.precision['hint']}, execution mode "
            f"{self.precision['execution_mode']}, conv/fc runtime precision {','.join(self.precision['compute'])} ("
            + ", ".join(self.precision["primitives"]) + ")")


class Ncnn(Engine):
    """ncnn, CPU only, fp32 storage and arithmetic, Winograd + sgemm + packing allowed.

    ncnn's Mat has no batch axis: a batch of N is N extractions of one image each, inside
    the one timed call.
    """

    name = "ncnn"
    FALSE_OPTIONS = ("use_vulkan_compute", "use_fp16_storage", "use_fp16_packed",
                     "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed",
                     "use_int8_inference", "use_int8_storage", "use_int8_packed",
                     "use_int8_arithmetic")
    TRUE_OPTIONS = ("use_winograd_convolution", "use_winograd23_convolution",
                    "use_winograd43_convolution", "use_winograd63_convolution",
                    "use_sgemm_convolution", "use_packing_layout")

    def __init__(self, param: Path, binary: Path, x: np.ndarray, threads: int) -> None:
        super().__init__()
        import ncnn

        self.net = ncnn.Net()
        opt = self.net.opt
        opt.num_threads = threads
        self.options = {"num_threads": threads}
        missing = []
        for names, value in ((self.FALSE_OPTIONS, False), (self.TRUE_OPTIONS, True)):
            for option in names:
                if hasattr(opt, option):
                    setattr(opt, option, value)
                    self.options[option] = value
                else:
                    missing.append(option)
        if missing:
            self.notes.append("options not in this ncnn: " + ", ".join(missing))
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(binary)) != 0:
            raise RuntimeError(f"ncnn could not load {param} / {binary}")
        # ncnn.Mat wraps the numpy buffers without copying: keep both alive.
        self.images = [np.ascontiguousarray(img) for img in x]
        self.mats = [ncnn.Mat(img) for img in self.images]
        self.version = getattr(ncnn, "__version__", "?")
        self.batch = len(self.mats)
        self._ncnn = ncnn
        if len(self.mats) > 1:
            self.notes.append(f"batch = {len(self.mats)} single-image extractions")

    def _call(self):
        outs = []
        for mat in self.mats:
            ex = self.net.create_extractor()
            ex.input("input", mat)
            ret, out = ex.extract("logits")
            if ret != 0:
                raise RuntimeError(f"ncnn extract failed with {ret}")
            outs.append(out)
            del ex
        return outs

    def _to_numpy(self, out) -> np.ndarray:
        return np.stack([np.array(o, dtype=np.float32).reshape(-1) for o in out])

    def predict(self, x: np.ndarray):
        outs = []
        for img in x:
            img = np.ascontiguousarray(img)
            ex = self.net.create_extractor()
            ex.input("input", self._ncnn.Mat(img))
            ret, out = ex.extract("logits")
            if ret != 0:
                raise RuntimeError(f"ncnn extract failed with {ret}")
            outs.append(np.array(out, dtype=np.float32).reshape(-1))
            del ex
        return np.stack(outs)


class Tract(Engine):
    """tract (Sonos), ONNX front end, optimized, one reused state.

    tract's Python API has no thread-count setting: tract-linalg's executor defaults to
    single-threaded and only Rust code can replace it, so tract runs on one thread
    whatever T is (the report says so, and measures CPU/wall to confirm).
    """

    name = "tract"

    def __init__(self, onnx_path: Path, x: np.ndarray, threads: int) -> None:
        super().__init__()
        import tract

        model = tract.onnx().load(str(onnx_path))
        model.set_input_fact(0, ",".join(str(d) for d in x.shape) + ",f32")
        # into_runnable() runs tract's optimizer (declutter + optimize: OptMatMul, LazyIm2col).
        self.runnable = model.into_model().into_runnable()
        self.state = self.runnable.spawn_state()
        self.input = tract.Tensor.from_numpy(x)
        self._tract = tract
        self.batch = x.shape[0]
        self.version = tract.version()
        self.notes.append("single-threaded (no thread setting in tract's Python API)")

    def _call(self):
        return self.state.run([self.input])[0]

    def _to_numpy(self, out) -> np.ndarray:
        return out.to_numpy().astype(np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.state.run([self._tract.Tensor.from_numpy(np.ascontiguousarray(x))])[0]


class Held(Engine):
    """A peer held to AVX2: its in-process adapter (HELD_INNER) run in a Python process of its own
    whose environment holds it (HELD_ENV + NO_AVX512_LIBC), set before the peer's library loads.

    The child (`engines.py serve SPEC`) builds the adapter, checks what it can read back of the
    instruction set (`held_check`: OpenVINO's primitive types; it refuses to start when one is
    beyond AVX2) and answers a line protocol like `repvgg time`'s: `run` -> elapsed seconds
    measured in the child, `logits PATH` / `predict IN OUT` -> `ok` (.npy files), `quit`.
    After timing, `verify_held()` reads the child's per-thread AVX-512 record (avx512_threads).
    """

    own_process = True

    def __init__(self, name: str, paths: dict[str, Path], x: np.ndarray, threads: int, scratch: Path) -> None:
        super().__init__()
        self.name = name
        self.scratch = scratch
        self.batch = x.shape[0]
        scratch.mkdir(parents=True, exist_ok=True)
        tag = f"{name}_{os.getpid()}"
        self.x_path = scratch / f"{tag}_input.npy"
        np.save(self.x_path, x)
        spec = {"name": name, "inner": HELD_INNER[name], "threads": threads, "x": str(self.x_path),
                "paths": {k: str(v) for k, v in paths.items()}, "scratch": str(scratch)}
        self.spec_path = scratch / f"{tag}_spec.json"
        self.spec_path.write_text(json.dumps(spec))
        self.env = {**HELD_ENV[name], **NO_AVX512_LIBC}
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve", str(self.spec_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, bufsize=1, env={**os.environ, **self.env})
        hello = json.loads(self._readline())
        if "error" in hello:
            self.close()
            raise RuntimeError(hello["error"])
        self.version = hello["version"]
        self.held = {"env": self.env, **hello["held"]}
        self.notes = hello["notes"] + ["held by " + " ".join(f"{k}={v}" for k, v in HELD_ENV[name].items())]
        if "precision" in hello:
            self.precision = hello["precision"]
        self.first_run: float | None = None

    def _readline(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.poll()
            self.stderr.seek(0)
            raise RuntimeError(f"{self.name} server exited (code {code}): {self.stderr.read().strip()[-2000:]}")
        return line.strip()

    def _send(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self._readline()
        if reply.startswith("error"):
            raise RuntimeError(f"{self.name}: {reply}")
        return reply

    def infer(self) -> float:
        if self.first_run is None:
            self.first_run = time.monotonic()
        return float(self._send("run"))

    def logits(self) -> np.ndarray:
        path = self.scratch / f"{self.name}_logits_{os.getpid()}.npy"
        self._send(f"logits {path}")
        out = np.load(path)
        path.unlink(missing_ok=True)
        return out

    def predict_all(self, xs: np.ndarray) -> np.ndarray:
        x_path = self.scratch / f"{self.name}_eval_input_{os.getpid()}.npy"
        y_path = self.scratch / f"{self.name}_eval_logits_{os.getpid()}.npy"
        np.save(x_path, np.ascontiguousarray(xs, dtype=np.float32))
        try:
            self._send(f"predict {x_path} {y_path}")
            return np.load(y_path)
        finally:
            x_path.unlink(missing_ok=True)
            y_path.unlink(missing_ok=True)

    def cpu_seconds(self) -> float:
        return Ours.cpu_seconds(self)

    def verify_held(self) -> dict:
        return verify_held(self)

    def close(self) -> None:
        quit_server(self.proc)
        if not self.stderr.closed:
            self.stderr.close()
        for path in (self.x_path, self.spec_path):
            path.unlink(missing_ok=True)


def verify_held(engine) -> dict:
    """Raise if a thread of the engine's process used AVX-512 since its first inference, unless
    the engine named the ops that run beyond AVX2 itself (`held["beyond_avx2"]`, OpenVINO's
    classifier and pooling): then the use is recorded, not refused.

    Returns what was read ({window_s, threads, avx512_threads}) for the report.
    """
    if getattr(engine, "first_run", None) is None:
        raise RuntimeError(f"{engine.name} never ran")
    window = time.monotonic() - engine.first_run
    threads = len(list(Path(f"/proc/{engine.proc.pid}/task").iterdir()))
    used = avx512_threads(engine.proc.pid, window)
    if used and engine.held.get("beyond_avx2"):
        return {"window_s": round(window, 1), "threads": threads, "avx512_threads": len(used),
                "explained_by": engine.held["beyond_avx2"]}
    if used:
        raise RuntimeError(
            f"{engine.name} is not held to AVX2: the kernel saw {len(used)} of its {threads} threads use AVX-512 "
            f"registers during the {window:.1f} s it ran (ms ago by thread: {used})")
    return {"window_s": round(window, 1), "threads": threads, "avx512_threads": 0}


def held_check(name: str, engine: Engine) -> dict:
    """What the held peer reports of its own instruction set; raise if a convolution is beyond AVX2.

    OpenVINO: the primitive type of every op of the runtime graph (counted); every Convolution /
    GroupConvolution must be an avx2 or uni(versal) oneDNN implementation. Ops whose primitive
    the cap does not reach (an avx512 / amx type, or MLAS, which dispatches on CPUID) are named
    in `beyond_avx2`, and OpenVINO's own per-node profile (PERF_COUNT, on a second compilation
    of the model, a few runs) gives the share of an inference they take.
    tract's Python API reports no kernel names: nothing to read here (verify_held remains).
    """
    if name != "openvino-avx2":
        return {"self_report": "none (tract's Python API names no kernels)"}
    import openvino as ov

    kinds: Counter = Counter()
    compute: Counter = Counter()
    beyond_ops = []
    for op in engine.compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else "?"
        prim = info["primitiveType"].astype(str) if "primitiveType" in info else "-"
        kinds[prim] += 1
        if kind in ("Convolution", "GroupConvolution", "FullyConnected", "MatMul"):
            compute[f"{kind}:{prim}"] += 1
        if re.search(r"avx512|amx|mlas", prim):
            beyond_ops.append(f"{op.get_friendly_name()} ({kind}, {prim})")
    beyond = sorted(p for p in compute if p.split(":", 1)[0] in ("Convolution", "GroupConvolution")
                    and (not re.search(r"avx2|uni", p.split(":", 1)[1]) or re.search(r"avx512|amx", p)))
    if beyond:
        raise RuntimeError(f"OpenVINO is not held to AVX2 by ONEDNN_MAX_CPU_ISA: convolution primitives {beyond} "
                           f"(all primitive types: {dict(kinds)})")
    held = {"primitive_types": dict(sorted(kinds.items())), "compute_primitives": dict(sorted(compute.items())),
            "beyond_avx2": beyond_ops,
            "optimization_capabilities": list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))}
    if beyond_ops:
        profiled = ov.Core().compile_model(engine.model_path, "CPU", {**engine.config, "PERF_COUNT": True})
        request = profiled.create_infer_request()
        for _ in range(3):
            request.infer({0: engine.x})
        total = beyond_s = 0.0
        for node in request.get_profiling_info():
            t = node.real_time.total_seconds()
            total += t
            if re.search(r"avx512|amx|mlas", node.exec_type):
                beyond_s += t
        held["beyond_avx2_share"] = beyond_s / total if total > 0 else float("nan")
    return held


def serve(spec_path: str) -> None:
    """The held peer's process: build the adapter, report, then answer `run` / `logits` / `predict`."""
    spec = json.loads(Path(spec_path).read_text())
    out = sys.stdout
    try:
        x = np.load(spec["x"])
        engine = make_engine(spec["inner"], repvgg=Path("-"), paths={k: Path(v) for k, v in spec["paths"].items()},
                             x=x, threads=spec["threads"], scratch=Path(spec["scratch"]), algo=None)
        held = held_check(spec["name"], engine)
    except Exception as exc:  # reported to the parent, which raises it
        out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return
    hello = {"version": engine.version, "notes": engine.notes, "held": held}
    if hasattr(engine, "precision"):
        hello["precision"] = engine.precision
    if "primitive_types" in held:
        hello["notes"] = engine.notes + ["primitive types " + ", ".join(f"{k} x{v}" for k, v in
                                                                        held["primitive_types"].items())]
    if held.get("beyond_avx2"):
        hello["notes"].append("beyond the cap: " + ", ".join(held["beyond_avx2"])
                              + f" ({100 * held['beyond_avx2_share']:.2f}% of an inference in OpenVINO's profile)")
    out.write(json.dumps(hello) + "\n")
    out.flush()
    for line in sys.stdin:
        cmd, *args = line.split()
        try:
            if cmd == "run":
                reply = repr(engine.infer())
            elif cmd == "logits":
                np.save(args[0], engine.logits())
                reply = "ok"
            elif cmd == "predict":
                np.save(args[1], engine.predict_all(np.load(args[0])))
                reply = "ok"
            elif cmd == "quit":
                break
            else:
                reply = f"error unknown command {cmd!r}"
        except Exception as exc:
            reply = f"error {type(exc).__name__}: {exc}"
        out.write(reply + "\n")
        out.flush()
    engine.close()


def make_engine(name: str, *, repvgg: Path, paths: dict[str, Path], x: np.ndarray, threads: int,
                scratch: Path, algo: str | None, calib: np.ndarray | None = None) -> Engine:
    """Build the adapter called `name` for one configuration (`calib`: INT8 calibration inputs)."""
    if name in OURS_VARIANTS:
        held = {**HELD_ENV[name], **NO_AVX512_LIBC} if name in HELD_ENV else None
        engine = Ours(repvgg, paths["weights"], paths["input"], threads, scratch, algo,
                      extra_args=OURS_VARIANTS[name], name=name, env=held)
        if name == "ours-bf16":
            engine.reduced_precision = "bf16"
        if held is not None:
            if engine.isa != "avx2":
                isa = engine.isa
                engine.close()
                raise RuntimeError(f"{name}: `repvgg time {' '.join(OURS_VARIANTS[name])}` chose {isa} kernels")
            engine.held = {"env": held, "self_report": f"{engine.isa} kernels (banner of `repvgg time`)"}
            engine.verify_held = lambda: verify_held(engine)
        return engine
    if name == OURS_INT8:
        if calib is None:
            raise ValueError(f"{name} needs calibration inputs")
        import int8

        weights, options = int8.quantize_ours(repvgg, paths["weights"], calib, scratch)
        engine = Ours(repvgg, weights, paths["input"], threads, scratch, algo, name=name)
        engine.quantized = True
        engine.notes.append(f"{options['call']}, {'cached' if options['cached'] else 'quantized now'}")
        return engine
    if name in HELD_INNER:
        return Held(name, paths, x, threads, scratch)
    if name == "onnxruntime":
        return OnnxRuntime(paths["onnx"], x, threads)
    if name == "openvino":
        return OpenVino(paths["onnx"], x, threads)
    if name == "openvino-default":
        return OpenVinoDefault(paths["onnx"], x, threads)
    if name == "ncnn":
        return Ncnn(paths["ncnn_param"], paths["ncnn_bin"], x, threads)
    if name == "tract":
        return Tract(paths["onnx"], x, threads)
    if name in INT8_ENGINES and calib is None:
        raise ValueError(f"{name} needs calibration inputs")
    if name == "onnxruntime-int8":
        return OnnxRuntimeInt8(paths["onnx"], x, threads, calib, scratch)
    if name == "openvino-int8":
        return OpenVinoInt8(paths["onnx"], x, threads, calib, scratch)
    raise ValueError(f"unknown engine {name!r}; choose from {', '.join(ALL_ENGINES)}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":  # a held peer's process (Held)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        serve(sys.argv[2])
    else:
        raise SystemExit("usage: engines.py serve SPEC (started by compare.py for the held peers)")
