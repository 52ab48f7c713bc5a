"""The Python call's overhead: `Session.run` from Python against `repvgg bench`'s
in-process median, A0 at 224, batch 1, 2 threads, interleaved rounds (the issue's target:
under 3%).

    python benches/python_overhead.py [--rounds 5] [--runs 30]

Needs the `repvgg` package installed (docs/python.md) and target/release/repvgg built.
Both sides run the same synthetic weights (seed 0) and time whole inferences after a
warm-up; the Python side's time includes converting nothing (a C-contiguous float32
array), allocating the logits and releasing and re-taking the GIL.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

import repvgg

REPO = Path(__file__).resolve().parents[1]


def python_median(session, x: np.ndarray, runs: int) -> float:
    for _ in range(5):
        session.run(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_median(runs: int) -> float:
    out = subprocess.run(
        [str(REPO / "target/release/repvgg"), "bench", "--threads", "2", "--runs", str(runs), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)["median_ms"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args()
    session = repvgg.Model.synthetic("A0", 0).session(threads=2)
    x = np.zeros((1, 3, 224, 224), np.float32)
    ratios = []
    for r in range(args.rounds):
        py, cli = python_median(session, x, args.runs), bench_median(args.runs)
        ratios.append(py / cli)
        print(f"round {r + 1}: python {py:.3f} ms, repvgg bench {cli:.3f} ms, ratio {py / cli:.4f}")
    print(f"median ratio python / bench: {statistics.median(ratios):.4f} over {args.rounds} rounds")


if __name__ == "__main__":
    main()
