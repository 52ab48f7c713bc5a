#!/usr/bin/env python3
"""Scaling of our engine alone: input size, threads and batch (RepVGG-A0 by default).

Runs `repvgg bench --arch A --batch B --threads T --size S --runs R --json` for every
combination of threads {1, 2}, batch {1, 8} and sizes {112, 224, 320, 448}, and writes
`results/scaling.md` (plus the raw `scaling.json`) with:

* time per GFLOP against input size: with the cost proportional to pixels this stays
  flat, so any drift shows a size-dependent inefficiency (cache fit, tile edges, ...);
* 1 -> 2 thread speedup for each batch and size;
* batch 1 -> 8 throughput gain for each thread count and size.

    /tmp/peers/bin/python benches/compare/scaling.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import atomic  # noqa: E402
import report  # noqa: E402
from compare import system_busy_seconds  # noqa: E402


def bench(repvgg: Path, arch: str, batch: int, threads: int, size: int, runs: int, warmup: int,
          algo: str | None) -> dict:
    """One `repvgg bench --json` run; returns its parsed JSON plus `foreign_cores`.

    `foreign_cores` is how many cores other processes kept busy on average meanwhile
    (machine busy time minus the bench's own CPU time, over the wall time).
    """
    cmd = [str(repvgg), "bench", "--arch", arch, "--batch", str(batch), "--threads", str(threads),
           "--size", str(size), "--runs", str(runs), "--warmup", str(warmup), "--json"]
    if algo:
        cmd += ["--algo", algo]
    sys0, kids0, t0 = system_busy_seconds(), _children_cpu(), time.perf_counter()
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    wall = time.perf_counter() - t0
    foreign = (system_busy_seconds() - sys0) - (_children_cpu() - kids0)
    out["foreign_cores"] = max(0.0, foreign / wall)
    return out


def _children_cpu() -> float:
    """CPU seconds of this process's finished children."""
    t = os.times()
    return t.children_user + t.children_system


def runs_for(flops: float, rate_gflops: float | None, args) -> int:
    """Timed runs for one cell: --runs, cut so that the cell takes about --budget seconds.

    `rate_gflops` is the effective rate measured on the previous (smaller) size with the
    same threads and batch; without it, --runs is used as is.
    """
    if not rate_gflops:
        return args.runs
    est_s = flops / (rate_gflops * 1e9)
    return max(min(args.min_runs, args.runs), min(args.runs, int(args.budget / max(est_s, 1e-6))))


def algo_mix(layers: list[dict]) -> str:
    """Which convolution algorithm the layers used, e.g. `direct 5, f4 12, f6 1`."""
    counts = Counter(layer["algo"] for layer in layers)
    return ", ".join(f"{algo} {n}" for algo, n in sorted(counts.items()))


def quietest_bench(args, batch: int, threads: int, size: int, runs: int) -> tuple[dict, list[str]]:
    """`bench` one cell; on a busy machine retry (--retries) and keep the quietest run.

    Returns the bench JSON and the busiest other processes seen just before it.
    """
    best = None
    for attempt in range(1 + args.retries):
        busy = (report.wait_idle(args.wait_idle, log=lambda m: print(m, file=sys.stderr))
                if args.wait_idle > 0 else report.busiest_processes())
        out = bench(args.repvgg, args.arch, batch, threads, size, runs, args.warmup, args.algo)
        if best is None or out["foreign_cores"] < best[0]["foreign_cores"]:
            best = (out, busy)
        if out["foreign_cores"] <= args.noisy:
            break
        print(f"  other processes kept {out['foreign_cores']:.2f} cores busy"
              f"{'; retrying' if attempt < args.retries else ''}", file=sys.stderr)
    return best


def measure(args) -> list[dict]:
    """Run every (threads, batch, size) cell, smallest size first."""
    cells = []
    for threads in args.threads:
        for batch in args.batch:
            rate = None
            for size in sorted(args.size):
                pixels = size * size
                flops_guess = (cells[-1]["flops"] / cells[-1]["pixels"] * pixels) if rate else 0
                runs = runs_for(flops_guess, rate, args)
                print(f"{args.arch} t{threads} b{batch} {size}px: {runs} runs", file=sys.stderr, flush=True)
                out, busy = quietest_bench(args, batch, threads, size, runs)
                rate = out["effective_gflops"]
                cells.append({
                    "threads": threads, "batch": batch, "size": size, "pixels": pixels, "runs": runs,
                    "median_ms": out["median_ms"], "min_ms": out["min_ms"],
                    "images_per_s": out["images_per_s"], "flops": out["flops"],
                    "effective_gflops": out["effective_gflops"], "peak_gflops": out.get("peak_gflops"),
                    "head_ms": out.get("head_ms"), "algos": algo_mix(out["layers"]),
                    "foreign_cores": out["foreign_cores"], "busy_before": busy,
                    "layers": [{k: layer[k] for k in ("name", "algo", "median_ms", "flops")}
                               for layer in out["layers"]],
                })
    return cells


def keep_faster(cells: list[dict], again: list[dict]) -> list[dict]:
    """Per cell, the pass with the lower median; every pass's median is kept in `pass_medians_ms`."""
    merged = []
    for old, new in zip(cells, again):
        best = dict(new if new["median_ms"] < old["median_ms"] else old)
        best["pass_medians_ms"] = old.get("pass_medians_ms", [old["median_ms"]]) + [new["median_ms"]]
        merged.append(best)
    return merged


def find(cells: list[dict], **key) -> dict | None:
    """The cell matching every key=value, or None."""
    for c in cells:
        if all(c[k] == v for k, v in key.items()):
            return c
    return None


def markdown(meta: dict, cells: list[dict], args) -> str:
    """The whole `scaling.md`."""
    m = meta["machine"]
    caches = report.caches(m)
    ref_size = 224 if 224 in args.size else sorted(args.size)[0]
    out = [
        f"# repvgg-rs scaling, RepVGG-{args.arch}, {meta['started']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {m.get('model', '?')}, {m.get('cpus', '?')} CPUs, {caches}. Load average before "
        f"{tuple(round(v, 2) for v in meta['load_before'])}, after {tuple(round(v, 2) for v in meta['load_after'])}; "
        f"busiest processes before: {'; '.join(meta['busy_before'])}. Binary: {meta['version']}.",
        "",
        "Each cell is one `repvgg bench --json` (synthetic weights, "
        f"{args.warmup} warm-up runs, then the listed number of timed runs, fewer for big cells to stay within "
        f"~{args.budget:.0f} s each). GFLOP = 2 x direct-convolution MACs (+ head) per batch. "
        "`other load`: cores other processes kept busy on average during the cell (0 when idle)."
        + (f" Every cell was measured in {args.passes} passes over all cells; each shows its lowest median "
           "(all passes' medians are in scaling.json as `pass_medians_ms`)." if args.passes > 1 else ""),
        "",
        "## Time per GFLOP against input size",
        "",
        f"The work grows with the pixel count, so ms/GFLOP should stay flat; `vs {ref_size}` is the ratio "
        f"to the {ref_size}x{ref_size} cell of the same threads and batch (above 1: less efficient).",
        "",
        "| threads | batch | size | runs | median ms | min ms | images/s | GFLOP | eff. GFLOP/s | ms/GFLOP | "
        f"vs {ref_size} | other load | algorithms (layers) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cells:
        ref = find(cells, threads=c["threads"], batch=c["batch"], size=ref_size)
        per = c["median_ms"] / (c["flops"] / 1e9)
        rel = per / (ref["median_ms"] / (ref["flops"] / 1e9)) if ref else float("nan")
        out.append(
            f"| {c['threads']} | {c['batch']} | {c['size']} | {c['runs']} | {c['median_ms']:.2f} | {c['min_ms']:.2f} | "
            f"{c['images_per_s']:.1f} | {c['flops'] / 1e9:.2f} | {c['effective_gflops']:.1f} | {per:.3f} | "
            f"{rel:.2f} | {c['foreign_cores']:.2f}{' ⚠' if c['foreign_cores'] > args.noisy else ''} | {c['algos']} |"
        )
    t_lo, t_hi = min(args.threads), max(args.threads)
    if t_lo != t_hi:
        out += ["", f"## {t_lo} -> {t_hi} threads", "",
                f"| batch | size | {t_lo} thread(s) ms | {t_hi} threads ms | speedup | efficiency |",
                "|---:|---:|---:|---:|---:|---:|"]
        for batch in args.batch:
            for size in sorted(args.size):
                lo, hi = (find(cells, threads=t, batch=batch, size=size) for t in (t_lo, t_hi))
                if lo and hi:
                    s = lo["median_ms"] / hi["median_ms"]
                    out.append(f"| {batch} | {size} | {lo['median_ms']:.2f} | {hi['median_ms']:.2f} | {s:.2f}x | "
                               f"{s * t_lo / t_hi:.0%} |")
    b_lo, b_hi = min(args.batch), max(args.batch)
    if b_lo != b_hi:
        out += ["", f"## Batch {b_lo} -> {b_hi}", "",
                f"| threads | size | b{b_lo} ms/image | b{b_hi} ms/image | throughput gain |",
                "|---:|---:|---:|---:|---:|"]
        for threads in args.threads:
            for size in sorted(args.size):
                lo, hi = (find(cells, threads=threads, batch=b, size=size) for b in (b_lo, b_hi))
                if lo and hi:
                    out.append(f"| {threads} | {size} | {lo['median_ms'] / b_lo:.2f} | {hi['median_ms'] / b_hi:.2f} | "
                               f"{hi['images_per_s'] / lo['images_per_s']:.2f}x |")
    return "\n".join(out) + "\n"


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="A0")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--size", type=int, nargs="+", default=[112, 224, 320, 448])
    p.add_argument("--runs", type=int, default=30, help="timed runs per cell (default 30)")
    p.add_argument("--min-runs", type=int, default=10, help="fewest timed runs of a big cell (default 10)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget", type=float, default=15.0, help="seconds of timed runs per cell (default 15)")
    p.add_argument("--algo", help="passed to `repvgg bench --algo`")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before each cell, wait up to SECONDS for no other process to use >= 10%% CPU")
    p.add_argument("--passes", type=int, default=1,
                   help="measure every cell this many times, in separate passes over all cells, and keep "
                        "each cell's lowest median (the host's noise comes in bursts the guest cannot see)")
    p.add_argument("--retries", type=int, default=0,
                   help="re-run a cell up to this many times when it ran on a busy machine")
    p.add_argument("--noisy", type=float, default=0.2, metavar="CORES",
                   help="foreign load above which --retries applies (default 0.2)")
    p.add_argument("--repvgg", type=Path, default=REPO / "target/release/repvgg")
    p.add_argument("--out", type=Path, default=HERE / "results")
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    args.repvgg = args.repvgg.resolve()
    from engines import _our_version

    meta = {
        "command": report.command_line(__file__, argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": report.machine(),
        "version": _our_version(args.repvgg),
        "busy_before": report.busiest_processes(),
        "load_before": os.getloadavg(),
    }
    cells = measure(args)
    for n in range(1, args.passes):
        print(f"pass {n + 1} of {args.passes}", file=sys.stderr, flush=True)
        cells = keep_faster(cells, measure(args))
    meta["load_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(args.out / "scaling.md", markdown(meta, cells, args))
    atomic.write_text(args.out / "scaling.json", json.dumps({"meta": meta, "cells": cells}, indent=1))
    print(f"wrote {args.out / 'scaling.md'}, {args.out / 'scaling.json'}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
