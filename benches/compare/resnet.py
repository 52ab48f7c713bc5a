"""RepVGG against ResNet on this CPU: the paper's accuracy-speed comparison.

Ding et al. (2021) argue that RepVGG beats ResNets of equal ImageNet accuracy in real
speed (on a 1080Ti: RepVGG-B1g4/B1 83% faster than ResNet-50, B2 101% faster than
ResNet-101). This times ResNet-18, -34, -50 and -101 beside RepVGG A0, A1, A2, B0, B1g4,
B1 and B2 at 224x224, batch 1 and 8, 1 and 2 threads: the ResNets in ONNX Runtime and
OpenVINO (f32), RepVGG in ours and in the same two peers. Each configuration runs in a
fresh worker process through compare.py's machinery (thread variables pinned, engines
interleaved, numerics checked), and the report sets images/s against the paper's top-1.

    /tmp/peers/bin/python benches/compare/resnet.py --wait-idle 300 --retries 1

The ResNets are built here as ONNX graphs with the onnx helper API, torchvision's
topology (v1.5: the bottleneck's stride on its 3x3), with BatchNorm folded into the
convolutions as any deploy export does, and random weights: no downloads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import atomic  # noqa: E402
import report  # noqa: E402

# Ding et al. 2021, Table 4: ImageNet top-1 (%) of the models trained for 120 epochs with
# the simple augmentation (transcribed from the paper; B2's checked against Papers with
# Code's copy of the table).
PAPER_TOP1 = {
    "ResNet-18": 71.16,
    "ResNet-34": 74.17,
    "ResNet-50": 76.31,
    "ResNet-101": 77.21,
    "A0": 72.41,
    "A1": 74.46,
    "A2": 76.48,
    "B0": 75.14,
    "B1g4": 77.58,
    "B1": 78.37,
    "B2": 78.78,
}

# (blocks per stage, bottleneck?) of torchvision's ResNets.
RESNETS = {
    "ResNet-18": ((2, 2, 2, 2), False),
    "ResNet-34": ((3, 4, 6, 3), False),
    "ResNet-50": ((3, 4, 6, 3), True),
    "ResNet-101": ((3, 4, 23, 3), True),
}

REPVGGS = ("A0", "A1", "A2", "B0", "B1g4", "B1", "B2")


def is_resnet(name: str) -> bool:
    return name in RESNETS


def write_resnet_onnx(path: Path, name: str, batch: int, size: int, seed: int) -> int:
    """Write ResNet `name` as a static-shape ONNX graph (opset 17); return its MACs per image.

    Every convolution carries the bias its folded BatchNorm leaves. Weights: He init
    (std sqrt(2 / fan_in)); the last convolution of each residual branch is scaled by 0.2
    so that activations stay of order one through 33 blocks of random weights (speed does
    not depend on the values, and the engines' logits stay comparable).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    blocks, bottleneck = RESNETS[name]
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    macs = 0
    counter = iter(range(10_000))

    def conv(x: str, cin: int, cout: int, k: int, stride: int, hw: int, scale: float = 1.0, relu: bool = True):
        nonlocal macs
        i = next(counter)
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k)) * scale).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")])
        out_hw = (hw + 2 * (k // 2) - k) // stride + 1
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[k, k],
                                      pads=[k // 2] * 4, strides=[stride, stride]))
        macs += cout * cin * k * k * out_hw * out_hw
        if not relu:
            return f"c{i}", out_hw
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        return f"r{i}", out_hw

    x, hw = conv("input", 3, 64, 7, 2, size)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]))
    x, hw, cin = "pool", (hw + 2 - 3) // 2 + 1, 64
    for stage, count in enumerate(blocks):
        width = 64 << stage
        cout = width * 4 if bottleneck else width
        for j in range(count):
            stride = 2 if stage > 0 and j == 0 else 1
            if bottleneck:
                y, _ = conv(x, cin, width, 1, 1, hw)
                y, out_hw = conv(y, width, width, 3, stride, hw)
                y, _ = conv(y, width, cout, 1, 1, out_hw, scale=0.2, relu=False)
            else:
                y, out_hw = conv(x, cin, width, 3, stride, hw)
                y, _ = conv(y, width, cout, 3, 1, out_hw, scale=0.2, relu=False)
            shortcut = x
            if stride != 1 or cin != cout:
                shortcut, _ = conv(x, cin, cout, 1, stride, hw, relu=False)
            i = next(counter)
            nodes.append(helper.make_node("Add", [y, shortcut], [f"sum{i}"]))
            nodes.append(helper.make_node("Relu", [f"sum{i}"], [f"out{i}"]))
            x, hw, cin = f"out{i}", out_hw, cout
    fc_w = (rng.standard_normal((1000, cin)) * np.sqrt(1.0 / cin)).astype(np.float32)
    fc_b = (rng.standard_normal(1000) * 0.01).astype(np.float32)
    inits += [numpy_helper.from_array(fc_w, "fc.weight"), numpy_helper.from_array(fc_b, "fc.bias")]
    macs += 1000 * cin
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, name.lower(),
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return macs


def configs(args) -> list:
    from compare import Config

    common = dict(seed=args.seed, rounds=args.rounds, min_rounds=min(args.min_rounds, args.rounds),
                  warmup=args.warmup, budget_s=args.budget, gap_ms=20.0, burst=1)
    models = [m for m in (args.models or list(RESNETS) + list(REPVGGS))]
    unknown = [m for m in models if m not in PAPER_TOP1]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(PAPER_TOP1)}")
    out = []
    for b in args.batch:
        for t in args.threads:
            for m in models:
                engines = ["onnxruntime", "openvino"] if is_resnet(m) else ["ours", "onnxruntime", "openvino"]
                out.append(Config(arch=m, batch=b, size=224, threads=t, engines=engines, **common))
    return out


def rows(results: list[dict]) -> list[dict]:
    """One row per (model, batch, threads, engine) with images/s and the paper's top-1."""
    out = []
    for r in results:
        cfg = r["config"]
        for engine, e in r.get("engines", {}).items():
            if "images_per_s" not in e:
                continue
            out.append({"model": cfg["arch"], "family": "ResNet" if is_resnet(cfg["arch"]) else "RepVGG",
                        "batch": cfg["batch"], "threads": cfg["threads"], "engine": engine,
                        "images_per_s": e["images_per_s"], "median_ms": e["median_ms"],
                        "gflops_per_image": r["flops_per_image"] / 1e9, "top1": PAPER_TOP1[cfg["arch"]]})
    return out


def markdown(meta: dict, table: list[dict]) -> str:
    lines = [f"# RepVGG vs ResNet, images/s on this CPU ({meta['started']})", "",
             f"Machine: {meta['machine']}. Command: `{meta['command']}`.", "",
             "Top-1: ImageNet, as Ding et al. (2021), Table 4, report it (120 epochs). GMACs: "
             "multiply-accumulates per image (the paper's 'FLOPs'). Images/s: median of interleaved runs, f32.", ""]
    engines = sorted({r["engine"] for r in table}, key=["ours", "onnxruntime", "openvino"].index)
    for b in sorted({r["batch"] for r in table}):
        for t in sorted({r["threads"] for r in table}):
            cell = [r for r in table if r["batch"] == b and r["threads"] == t]
            if not cell:
                continue
            lines += [f"## batch {b}, {t} thread{'s' if t > 1 else ''}", "",
                      "| model | top-1 | GMACs | " + " | ".join(engines) + " |",
                      "|---|---:|---:|" + "---:|" * len(engines)]
            for m in dict.fromkeys(r["model"] for r in cell):
                by = {r["engine"]: r for r in cell if r["model"] == m}
                first = next(iter(by.values()))
                name = m if is_resnet(m) else f"RepVGG-{m}"
                lines.append(f"| {name} | {first['top1']:.2f} | {first['gflops_per_image'] / 2:.2f} | "
                             + " | ".join(f"{by[e]['images_per_s']:.1f}" if e in by else "-" for e in engines) + " |")
            lines.append("")
    return "\n".join(lines)


def plot(path: Path, table: list[dict]) -> None:
    """Top-1 against images/s, one panel per (batch, threads): each family's best engine."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted({(r["batch"], r["threads"]) for r in table})
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 4), squeeze=False)
    for ax, (b, t) in zip(axes[0], cells):
        for family, engine, marker, color in [("RepVGG", "ours", "o", "#d62728"),
                                              ("RepVGG", "onnxruntime", "^", "#ff9896"),
                                              ("ResNet", "onnxruntime", "s", "#1f77b4"),
                                              ("ResNet", "openvino", "D", "#17becf")]:
            # In order of accuracy, as the paper's figure draws each family.
            pts = sorted((r["top1"], r["images_per_s"], r["model"]) for r in table
                         if r["batch"] == b and r["threads"] == t and r["family"] == family and r["engine"] == engine)
            if not pts:
                continue
            ax.plot([p[1] for p in pts], [p[0] for p in pts], marker=marker, color=color,
                    label=f"{family} in {engine}")
            if engine in ("ours", "onnxruntime") and (family == "RepVGG") == (engine == "ours"):
                for y, x, m in pts:
                    ax.annotate(m, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_title(f"batch {b}, {t} thread{'s' if t > 1 else ''}")
        ax.set_xlabel("images/s (log)")
        ax.set_ylabel("ImageNet top-1 (%, paper)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic.write_with(path, lambda temp: fig.savefig(temp, format="svg"))
    plt.close(fig)


def main(argv: list[str]) -> None:
    import json

    from compare import run_quietest

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", help=f"subset of {' '.join(PAPER_TOP1)}")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--min-rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--budget", type=float, default=40.0, help="seconds of timed rounds per configuration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repvgg", type=Path, default=REPO / "target/release/repvgg")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--scratch", type=Path, default=HERE / "out")
    p.add_argument("--wait-idle", type=float, default=0.0)
    p.add_argument("--retries", type=int, default=0)
    p.add_argument("--noisy", type=float, default=0.2)
    p.add_argument("--from", dest="saved", type=Path, metavar="JSON",
                   help="only redraw the Markdown and SVG from a saved resnet.json")
    args = p.parse_args(argv)
    if args.saved:
        saved = json.loads(args.saved.read_text())
        atomic.write_text(args.out / "resnet.md", markdown(saved["meta"], saved["rows"]))
        plot(args.out / "resnet.svg", saved["rows"])
        return
    repvgg = args.repvgg.resolve()
    if not repvgg.exists():
        raise SystemExit(f"{repvgg} not found: run `cargo build --release` first")
    meta = {"command": report.command_line(__file__, argv), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": report.machine(), "load_before": os.getloadavg()}
    results = [run_quietest(cfg, repvgg, args) for cfg in configs(args)]
    table = rows(results)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(args.out / "resnet.json", json.dumps({"meta": meta, "rows": table, "results": results}, indent=1))
    atomic.write_text(args.out / "resnet.md", markdown(meta, table))
    plot(args.out / "resnet.svg", table)
    print(markdown(meta, table))
    if any(r["status"] != "ok" for r in results):
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
