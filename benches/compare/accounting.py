#!/usr/bin/env python3
"""Where the time goes, per layer, against the 1.5x-over-the-fastest-peer target.

For every configuration of a peer run (`results/latest.json` by default), runs
`repvgg bench --json` for the same architecture, batch, size and threads, and writes
`results/accounting.md` (plus the raw `accounting.json`) with:

* per configuration: our time, the fastest peer's, the target (fastest peer / 1.5), and
  the *floor*: the time of the multiplies alone at the FMA peak measured in the same
  bench run. `floor + head` over the target is the fraction of the FMA peak the whole
  network would have to sustain to meet the target with our algorithms. A second,
  optimistic floor assumes algorithms we do not have: every stride-1 layer at the
  Winograd size with the fewest multiplies for its map, weight traffic free, and every
  stride-2 layer (stem included) at 9 / 6.25 = 1.44x fewer multiplies, what the
  polyphase form with F(4x4, 2x2) would give;
* per configuration and layer kind (stem, other stride-2 layers, Winograd layers): time
  against floor, and the packed weights' stream from DRAM at the measured bandwidth;
* per layer, for every configuration: time, floor, stream, share of the peak.

    /tmp/peers/bin/python benches/compare/accounting.py --passes 2 --wait-idle 600
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import atomic  # noqa: E402
import report  # noqa: E402
from scaling import bench  # noqa: E402

#: Winograd F(m, 3) sizes we ship: m -> alpha = m + 2.
WINOGRAD_M = (2, 4, 6)
#: Multiplies per output of a stride-2 3x3 layer in polyphase form with F(4x4, 2x2):
#: four 2x2 phase convolutions, each 25 multiplies per 16 outputs.
POLYPHASE_PER_OUTPUT = 4 * 25 / 16


def fastest_peers(results: list[dict]) -> dict[tuple, dict]:
    """Per (arch, batch, size, threads): our and the fastest peer's first-run medians."""
    out = {}
    for r in results:
        if r.get("status") != "ok":
            continue
        c = r["config"]
        peers = {name: e for name, e in r["engines"].items() if name != "ours" and e.get("median_ms")}
        name, best = min(peers.items(), key=lambda kv: kv[1]["median_ms"])
        out[(c["arch"], c["batch"], c["size"], c["threads"])] = {
            "peer": name, "peer_ms": best["median_ms"], "ours_ms": r["engines"]["ours"]["median_ms"]}
    return out


def min_multiplies(layer: dict, batch: int) -> float:
    """Fewest multiplies of `layer` for the batch over the algorithms of the optimistic floor."""
    cg = layer["in_channels"] // layer["groups"]
    k = layer["out_channels"]
    oh, ow = layer["output"]
    if layer["stride"] == 2:
        return batch * oh * ow * cg * k * POLYPHASE_PER_OUTPUT
    h, w = layer["input"]
    return batch * cg * k * min(-(-h // m) * -(-w // m) * (m + 2) ** 2 for m in WINOGRAD_M)


def kind(layer: dict, index: int) -> str:
    if index == 0:
        return "stem"
    return "stride-2" if layer["stride"] == 2 else "winograd"


def summarize(key: tuple, peers: dict, out: dict) -> dict:
    arch, batch, size, threads = key
    layers = out["layers"]
    peak = out["peak_gflops"]
    target = peers["peer_ms"] / 1.5
    best_floor = sum(2 * min_multiplies(layer, batch) for layer in layers) / peak / 1e6
    kinds = {}
    for i, layer in enumerate(layers):
        k = kinds.setdefault(kind(layer, i), {"ms": 0.0, "floor_ms": 0.0, "stream_ms": 0.0, "layers": 0})
        k["ms"] += layer["median_ms"]
        k["floor_ms"] += layer["floor_ms"]
        k["stream_ms"] += layer["stream_ms"]
        k["layers"] += 1
    return {
        "arch": arch, "batch": batch, "size": size, "threads": threads,
        "peer": peers["peer"], "peer_ms": peers["peer_ms"], "matrix_ours_ms": peers["ours_ms"],
        "target_ms": target, "ours_ms": out["median_ms"], "layers_ms": out["layers_ms"],
        "head_ms": out["head_ms"], "floor_ms": out["floor_ms"], "best_floor_ms": best_floor,
        "needed_peak": (out["floor_ms"] + out["head_ms"]) / target,
        "needed_peak_best": (best_floor + out["head_ms"]) / target,
        "peak_gflops": peak, "read_gbps": out["read_gbps"], "weight_mb": out["weight_mb"],
        "foreign_cores": out["foreign_cores"], "kinds": kinds,
        "layers": [{k: layer[k] for k in ("name", "algo", "median_ms", "floor_ms", "stream_ms", "weight_mb")}
                   for layer in layers],
    }


def label(c: dict) -> str:
    return f"{c['arch']} b{c['batch']} t{c['threads']}" + ("" if c["size"] == 224 else f" {c['size']}px")


def markdown(meta: dict, rows: list[dict]) -> str:
    m = meta["machine"]
    caches = report.caches(m)
    out = [
        f"# Where the time goes, {meta['started']}",
        "",
        f"Command: `{meta['command']}`. Peer times: `{meta['peers_from']}` ({meta['peers_started']}).",
        "",
        f"Machine: {m.get('model', '?')}, {m.get('cpus', '?')} CPUs, {caches}. Binary: {meta['version']}.",
        "",
        "`ours` is the median of `repvgg bench` (back-to-back runs, timed per layer); `matrix` is our "
        "first-run median in the peer run. `floor`: every multiply of our chosen algorithms at the FMA peak "
        "measured in the same bench run. `needed`: (floor + head) / target, the share of the FMA peak the "
        "whole network would have to sustain to be 1.5x faster than the fastest peer. `best floor` and "
        "`needed (best)`: the same with algorithms we do not have (fewest-multiply Winograd size per stride-1 "
        "layer with free weight traffic, polyphase F(4x4, 2x2) on every stride-2 layer).",
        "",
        "| configuration | ours ms | matrix ms | fastest peer ms | target ms | floor ms | head ms | needed | "
        "best floor ms | needed (best) | FMA peak GFLOP/s | weights MB | DRAM GB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in rows:
        out.append(
            f"| {label(c)} | {c['ours_ms']:.2f} | {c['matrix_ours_ms']:.2f} | {c['peer_ms']:.2f} ({c['peer']}) | "
            f"{c['target_ms']:.2f} | {c['floor_ms']:.2f} | {c['head_ms']:.2f} | {c['needed_peak']:.0%} | "
            f"{c['best_floor_ms']:.2f} | {c['needed_peak_best']:.0%} | {c['peak_gflops']:.0f} | "
            f"{c['weight_mb']:.0f} | {c['read_gbps']:.1f} |")
    out += [
        "",
        "## By layer kind",
        "",
        "Time against floor (share of the FMA peak reached), and the packed weights streamed from DRAM "
        "at the measured bandwidth (`stream`, the time the weight traffic alone would take).",
        "",
        "| configuration | stem ms (floor, peak) | stride-2 ms (floor, peak) | Winograd ms (floor, peak) | "
        "Winograd stream ms | head ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def cell(k: dict | None) -> str:
        return "-" if not k else f"{k['ms']:.2f} ({k['floor_ms']:.2f}, {k['floor_ms'] / k['ms']:.0%})"

    for c in rows:
        k = c["kinds"]
        w = k.get("winograd")
        out.append(f"| {label(c)} | {cell(k.get('stem'))} | {cell(k.get('stride-2'))} | {cell(w)} | "
                   f"{w['stream_ms'] if w else 0:.2f} | {c['head_ms']:.2f} |")
    out += ["", "## Per layer", ""]
    for c in rows:
        out += [f"### {label(c)}", "", "| layer | algo | ms | floor ms | stream ms | peak | MB |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for layer in c["layers"]:
            out.append(f"| {layer['name']} | {layer['algo']} | {layer['median_ms']:.3f} | {layer['floor_ms']:.3f} | "
                       f"{layer['stream_ms']:.3f} | {layer['floor_ms'] / layer['median_ms']:.0%} | "
                       f"{layer['weight_mb']:.2f} |")
        out.append("")
    return "\n".join(out)


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=Path, default=HERE / "results/latest.json",
                   help="a compare.py results JSON (default results/latest.json)")
    p.add_argument("--runs", type=int, default=40, help="timed runs at batch 1 (a quarter at larger batches)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--passes", type=int, default=1,
                   help="bench every configuration this many times, in separate passes, and keep the lower median")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before each bench, wait up to SECONDS for no other process to use >= 10%% CPU")
    p.add_argument("--repvgg", type=Path, default=REPO / "target/release/repvgg")
    p.add_argument("--out", type=Path, default=HERE / "results")
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    args.repvgg = args.repvgg.resolve()
    from engines import _our_version

    peer_run = json.loads(args.peers.read_text())
    peers = fastest_peers(peer_run["results"])
    meta = {
        "command": report.command_line(__file__, argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "peers_from": os.path.relpath(args.peers.resolve(), REPO),
        "peers_started": peer_run["meta"]["started"],
        "machine": report.machine(),
        "version": _our_version(args.repvgg),
    }
    best: dict[tuple, dict] = {}
    for n in range(args.passes):
        for key in peers:
            arch, batch, size, threads = key
            if args.wait_idle > 0:
                report.wait_idle(args.wait_idle, log=lambda msg: print(msg, file=sys.stderr))
            runs = args.runs if batch == 1 else max(8, args.runs // 4)
            print(f"pass {n + 1}: {arch} b{batch} t{threads} {size}px, {runs} runs", file=sys.stderr, flush=True)
            out = bench(args.repvgg, arch, batch, threads, size, runs, args.warmup, None)
            if key not in best or out["median_ms"] < best[key]["median_ms"]:
                best[key] = out
    rows = [summarize(key, peers[key], best[key]) for key in peers]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(args.out / "accounting.md", markdown(meta, rows))
    atomic.write_text(args.out / "accounting.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out / 'accounting.md'}, {args.out / 'accounting.json'}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
