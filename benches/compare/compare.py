#!/usr/bin/env python3
"""Side-by-side comparison of repvgg-rs with ONNX Runtime, OpenVINO, ncnn and tract.

For each configuration (architecture, batch, input size, threads, seed) this:

1. asks `repvgg info --json` for the exact layer list,
2. generates deterministic deploy weights and an input with numpy and writes them as
   safetensors (ours), ONNX (ONNX Runtime, OpenVINO, tract) and ncnn param/bin,
3. starts `repvgg time` as a subprocess and builds every peer with T threads,
4. checks every engine's logits against ours (aborts the configuration if ONNX Runtime
   disagrees by more than 1e-4 relative, flags other peers that do),
5. times all engines interleaved (warm-up, then rounds of one inference per engine in a
   rotating order) and reports median / min / IQR, images/s, effective GFLOP/s and the
   ratio peer_median / our_median (above 1: we are faster).

Each configuration runs in its own Python worker process so that OMP_NUM_THREADS and
similar variables can be set to T before any peer loads its thread pool.

Results go to `results/latest.{md,svg,json}` (see --out); generated models to a scratch
directory (`out/`, git-ignored).

    /tmp/peers/bin/python benches/compare/compare.py --arch A0 --batch 1 --threads 1 --rounds 5
    /tmp/peers/bin/python benches/compare/compare.py --matrix
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import atomic  # noqa: E402
import report  # noqa: E402
from engines import (ALL_ENGINES, AVX2_ENGINES, BF16_ENGINES, FP32_ENGINES, INT8_ENGINES,  # noqa: E402
                     OURS_INT8)  # (no peer is imported by this)

ORT_REL_LIMIT = 1e-4  # ONNX Runtime must agree with us this closely, or the config aborts
FLAG_REL_LIMIT = 1e-4  # other peers beyond this are flagged (and still timed)
BF16_LIMIT = 1e-2  # bf16 engines: flagged beyond max |diff| = BF16_LIMIT x max(1, max |ours|)
BF16_PRESET = ("ours", "ours-bf16", "openvino", "openvino-default")
# Held to AVX2 (ours-avx2 and the peers that can be held), with every FP32 engine unheld beside them.
AVX2_PRESET = ("ours", "ours-avx2", "onnxruntime", "openvino", "openvino-avx2", "ncnn", "tract", "tract-avx2")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS",
              "TBB_NUM_THREADS", "NCNN_NUM_THREADS")


@dataclass
class Config:
    """One cell of the comparison matrix, plus the timing parameters used for it."""

    arch: str
    batch: int
    size: int
    threads: int
    seed: int = 0
    rounds: int = 30
    min_rounds: int = 10
    warmup: int = 5
    budget_s: float = 120.0
    gap_ms: float = 20.0
    burst: int = 1
    engines: list[str] = field(default_factory=lambda: list(FP32_ENGINES))
    algo: str | None = None
    keep_models: bool = False
    # INT8 engines: calibration inputs (a .npy / safetensors file, else calib_count N(0, 1)
    # images from calib_seed) and the held-out inputs all engines' agreement is measured on.
    calib_path: str | None = None
    calib_count: int = 16
    calib_seed: int = 20_261_207
    eval_inputs: int = 0
    eval_seed: int = 20_261_208

    @property
    def label(self) -> str:
        return f"{self.arch} {self.size}px b{self.batch} t{self.threads}"


# --------------------------------------------------------------------------- statistics

def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_s: list[float], batch: int, flops_per_image: int) -> dict:
    """Median, min, quartiles (ms), images/s and effective GFLOP/s of timing samples."""
    ms = sorted(s * 1e3 for s in samples_s)
    median = quantile(ms, 0.5)
    return {
        "median_ms": median,
        "min_ms": ms[0],
        "q1_ms": quantile(ms, 0.25),
        "q3_ms": quantile(ms, 0.75),
        "iqr_ms": quantile(ms, 0.75) - quantile(ms, 0.25),
        "images_per_s": batch / (median / 1e3),
        "gflops": flops_per_image * batch / (median / 1e3) / 1e9,
    }


# --------------------------------------------------------------------------- worker

def log(msg: str) -> None:
    """Progress to stderr (stdout of the worker is unused)."""
    print(msg, file=sys.stderr, flush=True)


def check_numerics(engines: dict, reference: str = "ours", eval_x=None) -> dict:
    """Run each engine once and compare its logits with ours.

    Returns {engine: {max_abs_diff, rel_diff, flagged}}. Raises if ONNX Runtime differs
    by more than ORT_REL_LIMIT relative to max |ours| (the configuration is then invalid:
    the graph or the weights disagree, not just rounding). INT8 engines are not flagged:
    their difference is the quantization's, reported as it is. bf16 engines (an engine's
    `reduced_precision`) cannot meet the FP32 limit: they are flagged when max |diff| exceeds
    BF16_LIMIT x max(1, max |ours|) (`bf16_limit_abs`), on the timing input or on the
    evaluation inputs, and still timed.

    With evaluation inputs `eval_x` [N, 3, H, W], every engine also runs all of them and
    adds {eval_inputs, top1_match, eval_max_abs_diff, eval_rel_diff} against the reference's
    logits on the same inputs (FP32 ours).
    """
    import int8
    import numpy as np

    engines[reference].infer()
    ours = engines[reference].logits()
    scale = float(np.abs(ours).max())
    report = {reference: {"max_abs_diff": 0.0, "rel_diff": 0.0, "flagged": False}}
    for name, engine in engines.items():
        if name == reference:
            continue
        engine.infer()
        theirs = engine.logits().reshape(ours.shape)
        diff = float(np.abs(theirs - ours).max())
        rel = diff / scale if scale > 0 else float("inf")
        report[name] = {"max_abs_diff": diff, "rel_diff": rel}
        if engine.reduced_precision:
            limit = BF16_LIMIT * max(1.0, scale)
            flagged = not diff <= limit
            report[name]["bf16_limit_abs"] = limit
        else:
            flagged = not rel <= FLAG_REL_LIMIT and not engine.quantized
        report[name]["flagged"] = flagged
        log(f"  numerics {name:<12} max|diff| {diff:.3e}  rel {rel:.3e}{'  FLAGGED' if flagged else ''}")
        if name == "onnxruntime" and not rel <= ORT_REL_LIMIT:
            raise RuntimeError(
                f"ONNX Runtime differs from ours by {rel:.3e} relative (max abs {diff:.3e}, "
                f"limit {ORT_REL_LIMIT:g}): the exported graph or our engine is wrong"
            )
    if eval_x is not None and len(eval_x):
        ref = engines[reference].predict_all(eval_x)
        for name, engine in engines.items():
            theirs = ref if name == reference else engine.predict_all(eval_x)
            report[name].update(int8.agreement(theirs, ref))
            r = report[name]
            if engine.reduced_precision and name != reference:
                r["eval_bf16_limit_abs"] = BF16_LIMIT * max(1.0, float(np.abs(ref).max()))
                r["eval_flagged"] = not r["eval_max_abs_diff"] <= r["eval_bf16_limit_abs"]
                r["flagged"] = r["flagged"] or r["eval_flagged"]
            log(f"  {len(eval_x)} inputs {name:<16} top-1 match {r['top1_match']:.3f} "
                f"(centered {r['top1_match_centered']:.3f})  max rel {r['eval_rel_diff']:.3e} "
                f"(centered {r['eval_rel_diff_centered']:.3e}){'  FLAGGED' if r.get('eval_flagged') else ''}")
        r = report[reference]
        log(f"  ours predicts {r['eval_distinct_top1']} distinct class(es) over the {len(eval_x)} inputs, "
            f"{r['eval_distinct_top1_centered']} after centering")
    return report


def system_busy_seconds() -> float:
    """CPU seconds all processes have spent busy (not idle / iowait), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds(engines: dict) -> float:
    """CPU seconds of this worker plus the engines' own subprocesses (ours, the held peers)."""
    t = os.times()
    others = sum(e.cpu_seconds() for e in engines.values() if getattr(e, "own_process", False))
    return t.user + t.system + others


def time_interleaved(engines: dict, cfg: Config) -> tuple[dict, dict, dict]:
    """Warm up, then time rounds of one turn per engine, rotating the order.

    A turn is cfg.burst inferences back to back (default 1). The first of each turn comes
    after the other engines' turns, i.e. after ~100 ms or more of idling (`samples`); the
    following ones run hot (`hot`), like a back-to-back benchmark loop. The number of
    rounds is cut (down to cfg.min_rounds) when the warm-up predicts that cfg.rounds
    would exceed cfg.budget_s. Sleeps cfg.gap_ms between turns so that the previous
    engine's spinning worker threads go idle before the next one starts.
    Returns (first-of-turn samples per engine in seconds, hot samples, info about the run).
    """
    names = list(engines)
    gap = cfg.gap_ms / 1e3
    warm: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(cfg.warmup):
        for n in names:
            warm[n].append(engines[n].infer())
            time.sleep(gap)

    est_round = (sum(sorted(w)[len(w) // 2] if w else 0.0 for w in warm.values()) * cfg.burst
                 + gap * len(names))
    rounds = cfg.rounds
    if est_round * rounds > cfg.budget_s:
        rounds = max(cfg.min_rounds, int(cfg.budget_s / est_round))
    info = {"rounds": rounds, "requested_rounds": cfg.rounds, "est_round_s": est_round}
    if rounds < cfg.rounds:
        log(f"  {cfg.rounds} rounds would take ~{est_round * cfg.rounds:.0f} s; running {rounds}")

    samples: dict[str, list[float]] = {n: [] for n in names}
    hot: dict[str, list[float]] = {n: [] for n in names}
    cpu = {n: 0.0 for n in names}
    wall = {n: 0.0 for n in names}
    t_start = time.perf_counter()
    sys0, own0 = system_busy_seconds(), own_cpu_seconds(engines)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            engine = engines[n]
            c0, w0 = engine.cpu_seconds(), time.perf_counter()
            samples[n].append(engine.infer())
            hot[n] += [engine.infer() for _ in range(cfg.burst - 1)]
            wall[n] += time.perf_counter() - w0
            cpu[n] += engine.cpu_seconds() - c0
            time.sleep(gap)
    info["timed_s"] = time.perf_counter() - t_start
    # Cores kept busy by everything else on the machine while we timed (noise indicator).
    foreign = (system_busy_seconds() - sys0) - (own_cpu_seconds(engines) - own0)
    info["foreign_cores"] = max(0.0, foreign / info["timed_s"])
    info["cpu_util"] = {n: (cpu[n] / wall[n] if wall[n] > 0 else float("nan")) for n in names}
    if "ours" in engines:
        pipe = sorted(engines["ours"].pipe_wall[-rounds * cfg.burst:])
        info["ours_roundtrip_median_ms"] = quantile(pipe, 0.5) * 1e3
    return samples, hot, info


def run_config(cfg: Config, repvgg: Path, scratch: Path) -> dict:
    """Everything for one configuration, in this (worker) process. Returns a result dict."""
    import netgen
    from engines import make_engine

    import int8
    import numpy as np
    import resnet

    result: dict = {"config": asdict(cfg), "label": cfg.label, "status": "ok", "engines": {},
                    "load_before": os.getloadavg()}
    calib = eval_x = None
    if resnet.is_resnet(cfg.arch):
        # Peers only (we run RepVGG alone); ONNX Runtime is the numerics reference.
        scratch.mkdir(parents=True, exist_ok=True)
        paths = {"onnx": scratch / f"{cfg.arch}_{cfg.size}_b{cfg.batch}_s{cfg.seed}.onnx"}
        macs = resnet.write_resnet_onnx(paths["onnx"], cfg.arch, cfg.batch, cfg.size, cfg.seed)
        rng = np.random.default_rng(cfg.seed + 1_000_003)
        x = rng.uniform(-1.0, 1.0, size=(cfg.batch, 3, cfg.size, cfg.size)).astype(np.float32)
        flops, reference, names = 2 * macs, "onnxruntime", [n for n in cfg.engines if n != "ours"]
        log(f"[{cfg.label}] {flops / 1e9:.3f} GFLOP/image")
    else:
        arch = netgen.query_arch(repvgg, cfg.arch, cfg.size)
        macs, flops, reference = arch.macs, arch.flops, "ours"
        log(f"[{cfg.label}] {len(arch.layers)} conv layers, {arch.flops / 1e9:.3f} GFLOP/image; exporting")
        paths = netgen.export_all(scratch, arch, cfg.batch, cfg.seed)
        x = netgen.make_input(arch, cfg.batch, cfg.seed)
        names = ["ours"] + [n for n in cfg.engines if n != "ours"]
        if any(n in int8.CALIBRATED for n in names):
            calib = int8.calibration_inputs(arch.height, arch.width,
                                            Path(cfg.calib_path) if cfg.calib_path else None,
                                            cfg.calib_count, cfg.calib_seed)
            result["calibration"] = {"inputs": int(calib.shape[0]), "file": cfg.calib_path,
                                     "seed": None if cfg.calib_path else cfg.calib_seed,
                                     "mean": float(calib.mean()), "std": float(calib.std())}
        if cfg.eval_inputs > 0:
            eval_x = int8.normal_inputs(cfg.eval_inputs, arch.height, arch.width, cfg.eval_seed)
    result["macs_per_image"] = macs
    result["flops_per_image"] = flops

    engines = {}
    try:
        for name in names:
            try:
                engines[name] = make_engine(name, repvgg=repvgg, paths=paths, x=x,
                                            threads=cfg.threads, scratch=scratch, algo=cfg.algo,
                                            calib=calib)
            except Exception as exc:  # a peer that cannot build is reported, not fatal
                if name in ("ours", "onnxruntime"):
                    raise
                log(f"  {name}: setup failed: {exc}")
                result["engines"][name] = {"error": f"setup failed: {exc}"}
        numerics = check_numerics(engines, reference, eval_x)
        samples, hot, info = time_interleaved(engines, cfg)
        # Engines held to AVX2: did any of their threads use AVX-512 while they ran? A time
        # that fails this check is not reported.
        held_failed = {}
        for name, engine in engines.items():
            if hasattr(engine, "verify_held"):
                try:
                    engine.held["verified"] = v = engine.verify_held()
                    log(f"  {name}: AVX-512 use in {v['avx512_threads']} of {v['threads']} thread(s) over "
                        f"{v['window_s']} s" + (" (the ops it named beyond the cap)" if v["avx512_threads"] else ""))
                except RuntimeError as exc:
                    log(f"  {name}: REFUSED: {exc}")
                    held_failed[name] = str(exc)
    except Exception as exc:
        result["status"] = "aborted"
        result["message"] = str(exc)
        log(f"[{cfg.label}] ABORTED: {exc}")
        return result
    finally:
        for engine in engines.values():
            engine.close()
        if not cfg.keep_models:  # B1g4 weights are ~0.6 GB in the three formats
            for path in paths.values():
                path.unlink(missing_ok=True)

    result["timing"] = info
    for name, engine in engines.items():
        if name in held_failed:
            result["engines"][name] = {"error": held_failed[name], "version": engine.version,
                                       "notes": engine.notes, "held": engine.held}
            continue
        stats = summarize(samples[name], cfg.batch, flops)
        if hot[name]:
            stats["hot"] = summarize(hot[name], cfg.batch, flops)
            stats["hot"]["samples_ms"] = [s * 1e3 for s in hot[name]]
        result["engines"][name] = {
            "version": engine.version,
            "notes": engine.notes,
            **numerics[name],
            **stats,
            "cpu_util": info["cpu_util"][name],
            "samples_ms": [s * 1e3 for s in samples[name]],
            **({"quantized": True} if engine.quantized else {}),
            **({"reduced_precision": engine.reduced_precision} if engine.reduced_precision else {}),
            **({"precision": engine.precision} if hasattr(engine, "precision") else {}),
            **({"isa": engine.isa} if hasattr(engine, "isa") else {}),
            **({"options": engine.options} if hasattr(engine, "options") else {}),
            **({"held": engine.held} if hasattr(engine, "held") else {}),
        }
    ours = result["engines"][reference]
    for entry in result["engines"].values():
        if "median_ms" in entry:
            entry["ratio"] = entry["median_ms"] / ours["median_ms"]
        if "hot" in entry:
            entry["hot"]["ratio"] = entry["hot"]["median_ms"] / ours["hot"]["median_ms"]
    held_ours = result["engines"].get("ours-avx2", {})
    for name, entry in result["engines"].items():  # peers held to AVX2 against ours held to AVX2
        if name in AVX2_ENGINES and "median_ms" in entry and "median_ms" in held_ours:
            entry["ratio_avx2"] = entry["median_ms"] / held_ours["median_ms"]
    result["load_after"] = os.getloadavg()
    log(f"[{cfg.label}] " + "  ".join(
        f"{n} {e['median_ms']:.2f} ms" for n, e in result["engines"].items() if "median_ms" in e))
    return result


def worker_main(spec_path: str, out_path: str) -> None:
    """Entry point of the per-configuration worker process."""
    spec = json.loads(Path(spec_path).read_text())
    cfg = Config(**spec["config"])
    result = run_config(cfg, Path(spec["repvgg"]), Path(spec["scratch"]))
    atomic.write_text(out_path, json.dumps(result))


# --------------------------------------------------------------------------- driver

def split_list(values: list[str] | None) -> list[str]:
    """Flatten repeatable, comma-separated options."""
    out: list[str] = []
    for v in values or []:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def matrix_configs() -> list[tuple[str, int, int, int]]:
    """The default matrix: A0 and B0 at 224 x batch {1, 8} x threads {1, 2}, plus B1g4 b1 t2."""
    cells = [(a, 224, b, t) for a in ("A0", "B0") for b in (1, 8) for t in (1, 2)]
    return cells + [("B1g4", 224, 1, 2)]


def build_configs(args) -> list[Config]:
    """Expand the command line into the list of configurations to run."""
    engines = split_list(args.engines)
    if args.int8:  # the preset: ours (FP32) and every INT8 peer, plus whatever --engines adds
        int8_preset = ("ours", OURS_INT8) + INT8_ENGINES
        engines = list(int8_preset) + [e for e in engines if e not in int8_preset]
    if args.bf16:  # the preset: ours and OpenVINO, each in FP32 and in bf16, plus the rest
        engines = list(BF16_PRESET) + [e for e in engines if e not in BF16_PRESET]
    if args.avx2:  # the preset: the engines held to AVX2 and every FP32 engine unheld, plus the rest
        engines = list(AVX2_PRESET) + [e for e in engines if e not in AVX2_PRESET]
    engines = engines or list(FP32_ENGINES)
    if "ncnn-int8" in engines:
        import int8

        raise SystemExit(int8.NCNN_INT8_ABSENT)
    unknown = set(engines) - set(ALL_ENGINES)
    if unknown:
        raise SystemExit(f"unknown engine(s) {', '.join(sorted(unknown))}; choose from {', '.join(ALL_ENGINES)}")
    if args.calib is not None and not args.calib.is_file():
        raise SystemExit(f"--calib {args.calib}: no such file")
    common = dict(seed=args.seed, rounds=args.rounds, min_rounds=min(args.min_rounds, args.rounds),
                  warmup=args.warmup, budget_s=args.budget, gap_ms=args.gap_ms, burst=args.burst,
                  engines=engines, keep_models=args.keep_models,
                  algo=args.algo, calib_path=str(args.calib.resolve()) if args.calib else None,
                  calib_count=args.calib_count, calib_seed=args.calib_seed,
                  eval_inputs=args.eval_inputs)
    if args.matrix:
        cells = matrix_configs()
    else:
        archs = split_list(args.arch) or ["A0"]
        cells = [(a, s, b, t) for a in archs for s in args.size for b in args.batch for t in args.threads]
    return [Config(arch=a, size=s, batch=b, threads=t, **common) for a, s, b, t in cells]


def thread_env(threads: int) -> dict[str, str]:
    """Environment for a worker: every usual thread-count variable set to T."""
    env = dict(os.environ)
    for var in THREAD_ENV:
        env[var] = str(threads)
    env.setdefault("OPENVINO_TELEMETRY_DISABLE", "1")  # there is no network anyway
    return env


def run_worker(cfg: Config, repvgg: Path, scratch: Path) -> dict:
    """Run one configuration in a fresh Python process with the thread variables set."""
    with tempfile.TemporaryDirectory(prefix="repvgg-compare-") as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"config": asdict(cfg), "repvgg": str(repvgg), "scratch": str(scratch)}))
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec), str(out)],
                              env=thread_env(cfg.threads))
        if proc.returncode != 0 or not out.exists():
            return {"config": asdict(cfg), "label": cfg.label, "status": "aborted", "engines": {},
                    "message": f"worker exited with code {proc.returncode}"}
        return json.loads(out.read_text())


def foreign_load(result: dict) -> float:
    """Cores other processes kept busy while a configuration was timed (inf if aborted)."""
    return result.get("timing", {}).get("foreign_cores", float("inf"))


def run_quietest(cfg: Config, repvgg: Path, args) -> dict:
    """Run one configuration; on a busy machine, retry and keep the quietest attempt.

    Before each attempt waits up to --wait-idle seconds for an idle machine. An attempt
    during which other processes kept more than --noisy cores busy is repeated, up to
    --retries more times.
    """
    best = None
    for attempt in range(1 + args.retries):
        busy = report.wait_idle(args.wait_idle, log=log) if args.wait_idle > 0 else report.busiest_processes()
        result = run_worker(cfg, repvgg, args.scratch.resolve())
        result["busy_before"] = busy
        result["attempts"] = attempt + 1
        if best is None or foreign_load(result) < foreign_load(best):
            best = result
        if result["status"] != "ok" or foreign_load(result) <= args.noisy:
            break
        log(f"[{cfg.label}] other processes kept {foreign_load(result):.2f} cores busy; "
            f"{'retrying' if attempt < args.retries else 'keeping the quietest attempt'}")
    best["attempts"] = result["attempts"]
    return best


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", action="append", help="architecture(s), repeatable or comma list (default A0)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch size(s) (default 1)")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="thread count(s) (default 1)")
    p.add_argument("--size", type=int, nargs="+", default=[224], help="square input size(s) (default 224)")
    p.add_argument("--rounds", type=int, default=30, help="timed rounds (default 30)")
    p.add_argument("--min-rounds", type=int, default=10,
                   help="fewest rounds when --budget cuts a slow configuration (default 10)")
    p.add_argument("--budget", type=float, default=120.0,
                   help="seconds of timed rounds per configuration before rounds are cut (default 120)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per engine (default 5)")
    p.add_argument("--gap-ms", type=float, default=20.0,
                   help="pause between two inferences so spinning thread pools go idle (default 20)")
    p.add_argument("--burst", type=int, default=1, metavar="K",
                   help="inferences per engine turn: the first is timed after the others' turns (idle), "
                        "the other K-1 back to back (hot), reported separately (default 1)")
    p.add_argument("--engines", action="append",
                   help=f"subset of {','.join(ALL_ENGINES)} (ours always runs; default the FP32 ones: "
                        f"{','.join(FP32_ENGINES)})")
    p.add_argument("--int8", action="store_true",
                   help=f"preset: ours (FP32), {OURS_INT8} and the INT8 peers ({','.join(INT8_ENGINES)}); "
                        "--engines adds to it")
    p.add_argument("--bf16", action="store_true",
                   help=f"preset: {','.join(BF16_PRESET)} (bf16 engines: {','.join(BF16_ENGINES)}); --engines "
                        "adds to it; results go to results/bf16/ unless --out is given")
    p.add_argument("--avx2", action="store_true",
                   help=f"preset: {','.join(AVX2_PRESET)}: ours with --isa avx2 and the peers that can be held to "
                        f"AVX2 ({','.join(AVX2_ENGINES)}), each checked, beside the unheld FP32 engines; --engines "
                        "adds to it; results go to results/avx2/ unless --out is given")
    p.add_argument("--calib", type=Path, metavar="FILE",
                   help="INT8 calibration inputs [N, 3, H, W] (.npy, or safetensors tensor `input`); "
                        "default --calib-count N(0, 1) images from --calib-seed")
    p.add_argument("--calib-count", type=int, default=16, help="calibration images when no --calib (default 16)")
    p.add_argument("--calib-seed", type=int, default=20_261_207, help="their seed (default 20261207)")
    p.add_argument("--eval-inputs", type=int, default=64, metavar="N",
                   help="held-out N(0, 1) inputs every engine runs for top-1 match and max relative error "
                        "against our FP32 logits (default 64; 0: only the single timing input)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--algo", help="passed to `repvgg time --algo` (auto, direct, f2, f4, f6, p2)")
    p.add_argument("--repvgg", type=Path, default=REPO / "target/release/repvgg", help="our binary")
    p.add_argument("--matrix", action="store_true",
                   help="the full default matrix (A0, B0 x b1, b8 x t1, t2 at 224, plus B1g4 b1 t2)")
    p.add_argument("--out", type=Path,
                   help="results directory (default results/, results/bf16/ with --bf16)")
    p.add_argument("--scratch", type=Path, default=HERE / "out", help="generated models (git-ignored)")
    p.add_argument("--keep-models", action="store_true",
                   help="keep the generated weights, ONNX and ncnn files in --scratch (deleted by default)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before each configuration, wait up to SECONDS for no other process to use >= 10%% CPU")
    p.add_argument("--retries", type=int, default=0,
                   help="re-run a configuration up to this many times when it was timed on a busy machine")
    p.add_argument("--noisy", type=float, default=0.2, metavar="CORES",
                   help="foreign load (cores busy with other processes) above which --retries applies (default 0.2)")
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(*args.worker)
        return
    repvgg = args.repvgg.resolve()
    if not repvgg.exists():
        raise SystemExit(f"{repvgg} not found: run `cargo build --release` first")
    configs = build_configs(args)
    out_dir = args.out or HERE / "results" / ("bf16" if args.bf16 else "avx2" if args.avx2 else "")
    meta = {
        "command": report.command_line(__file__, argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": report.machine(),
        "busy_before": report.busiest_processes(),
        "load_before": os.getloadavg(),
    }
    log(f"{len(configs)} configuration(s); load average {meta['load_before']}")
    t0 = time.time()
    results = [run_quietest(cfg, repvgg, args) for cfg in configs]
    meta["elapsed_s"] = time.time() - t0
    meta["load_after"] = os.getloadavg()
    meta["busy_after"] = report.busiest_processes()
    paths = report.write_all(out_dir, meta, results)
    log("wrote " + ", ".join(str(p) for p in paths))
    if any(r["status"] != "ok" for r in results):
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
