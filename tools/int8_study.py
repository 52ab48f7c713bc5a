"""Simulates INT8 post-training quantization of a digits fixture in numpy (no torch).

RepVGG folds the batch-norm scales of its three branches into one 3x3 kernel per block,
whose output channels can span very different ranges; per-tensor weight quantization then
rounds the small channels away (QARepVGG, Chu et al., arXiv 2212.01593). This script
measures that on our trained fixtures, as the runtime's INT8 path will compute it:

* the deploy kernel of each block fused in f64 (Ding et al.: BN folded into each branch,
  the 1x1 padded to the centre of a 3x3, the identity BN as a centre-diagonal kernel);
* weights q_w = clamp(round_half_even(w / s_w), -127, 127), s_w = max|w| / 127 per output
  channel (per tensor for the naive variant);
* activations q = clamp(round_half_even(x / s), 0, 255), zero point 0, at the input of
  every block after the stem (all post-ReLU), s from the calibration split's FP32
  activations (min-max: max / 255; percentile: the 99.99th percentile of all the input's
  values / 255);
* exact integer accumulation (int64), dequantized with s_in * s_w (f64), plus the f32
  bias, ReLU.

The stem (its input is the signed normalized image) and the classifier (global average
pool + linear) stay FP32 in every variant. Variants: naive (per-tensor weights, min-max),
per-channel + min-max, per-channel + percentile; and, for information, naive and
per-channel + min-max with the weights that read a dead input channel (max 0 on the
calibration split) zeroed before the scales are chosen. Reports held-out accuracy, per-layer
output SQNR against FP32 on the calibration split (errors accumulated from the layers
before, and each layer alone on FP32 inputs), the spread of the per-output-channel max|w|,
and writes int8_study.json next to the fixture.

    python tools/int8_study.py [models/fixtures/trained-digits ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT = [REPO / "models" / "fixtures" / "trained-digits", REPO / "models" / "fixtures" / "spread-digits"]
EPS = 1e-5  # nn.BatchNorm2d's default, as train_tiny.py builds it
PERCENTILE = 99.99


# ---------------------------------------------------------------------------- fusion (f64)


def fold(state: dict, prefix: str, kernel: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """One branch's kernel and bias with its BN folded in (kernel None: identity BN)."""
    g = state[f"{prefix}.weight"].astype(np.float64)
    b = state[f"{prefix}.bias"].astype(np.float64)
    m = state[f"{prefix}.running_mean"].astype(np.float64)
    v = state[f"{prefix}.running_var"].astype(np.float64)
    t = g / np.sqrt(v + EPS)
    return kernel * t[:, None, None, None], b - m * t


def fuse_block(state: dict, name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    dense = state[f"{name}.rbr_dense.conv.weight"].astype(np.float64)
    cout, cin = dense.shape[:2]
    k3, b3 = fold(state, f"{name}.rbr_dense.bn", dense)
    k1, b1 = fold(state, f"{name}.rbr_1x1.bn", np.pad(state[f"{name}.rbr_1x1.conv.weight"].astype(np.float64),
                                                       ((0, 0), (0, 0), (1, 1), (1, 1))))
    kernel, bias = k3 + k1, b3 + b1
    parts = {"dense": k3, "1x1": k1}
    if f"{name}.rbr_identity.weight" in state:
        ident = np.zeros((cout, cin, 3, 3))
        ident[np.arange(cout), np.arange(cin), 1, 1] = 1.0
        ki, bi = fold(state, f"{name}.rbr_identity", ident)
        kernel, bias = kernel + ki, bias + bi
        parts["identity"] = ki
    return kernel, bias, parts


def layers(fixture: Path) -> tuple[list[dict], np.ndarray, np.ndarray]:
    arch = tomllib.loads((fixture / "arch.toml").read_text())
    state = load_file(str(fixture / "train.safetensors"))
    names = ["stage0"] + [f"stage{s}.{j}" for s, n in enumerate(arch["blocks_per_stage"], start=1) for j in range(n)]
    out = []
    for i, name in enumerate(names):
        kernel, bias, parts = fuse_block(state, name)
        stride = 2 if name == "stage0" or name.endswith(".0") else 1
        out.append({"name": name, "kernel": kernel, "bias": bias.astype(np.float32), "stride": stride, "parts": parts})
    return out, state["linear.weight"].astype(np.float64), state["linear.bias"].astype(np.float64)


# ---------------------------------------------------------------------------- convolution


def im2col(x: np.ndarray, stride: int) -> tuple[np.ndarray, int, int]:
    """[N, C, H, W] -> [N*Ho*Wo, C*9] for a 3x3 kernel, padding 1."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    cols = np.empty((n, c, 3, 3, ho, wo), dtype=x.dtype)
    for ky in range(3):
        for kx in range(3):
            cols[:, :, ky, kx] = xp[:, :, ky : ky + stride * (ho - 1) + 1 : stride, kx : kx + stride * (wo - 1) + 1 : stride]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * ho * wo, c * 9), ho, wo


def conv(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """3x3 convolution without bias, in x's and kernel's dtype (int64 accumulates exactly)."""
    n = x.shape[0]
    cols, ho, wo = im2col(x, stride)
    y = cols @ kernel.reshape(kernel.shape[0], -1).T
    return y.reshape(n, ho, wo, -1).transpose(0, 3, 1, 2)


def layer_fp(x: np.ndarray, layer: dict) -> np.ndarray:
    return np.maximum(conv(x, layer["kernel"], layer["stride"]) + layer["bias"].astype(np.float64)[None, :, None, None], 0.0)


def weight_scales(kernel: np.ndarray, per_channel: bool) -> np.ndarray:
    amax = np.abs(kernel).reshape(kernel.shape[0], -1).max(axis=1)
    if not per_channel:
        amax = np.full_like(amax, amax.max())
    return np.where(amax > 0, amax / 127.0, 1.0)


def layer_q(x: np.ndarray, layer: dict, s_in: float, per_channel: bool) -> np.ndarray:
    s_w = weight_scales(layer["kernel"], per_channel)
    qw = np.clip(np.rint(layer["kernel"] / s_w[:, None, None, None]), -127, 127).astype(np.int64)
    qx = np.clip(np.rint(x / s_in), 0, 255).astype(np.int64)  # np.rint rounds half to even
    acc = conv(qx, qw, layer["stride"])
    y = acc.astype(np.float64) * (s_in * s_w)[None, :, None, None] + layer["bias"].astype(np.float64)[None, :, None, None]
    return np.maximum(y, 0.0)


def classifier(x: np.ndarray, lw: np.ndarray, lb: np.ndarray) -> np.ndarray:
    return x.mean(axis=(2, 3)) @ lw.T + lb


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(((got - ref) ** 2).sum())
    return float("inf") if noise == 0 else 10.0 * np.log10(float((ref**2).sum()) / noise)


# ---------------------------------------------------------------------------- the study


def forward_fp(x: np.ndarray, net: list[dict]) -> list[np.ndarray]:
    """Every layer's output, FP32 reference (computed in f64 from the f64-fused kernels)."""
    acts = []
    for layer in net:
        x = layer_fp(x, layer)
        acts.append(x)
    return acts


def forward_q(x: np.ndarray, net: list[dict], scales: list[float], per_channel: bool) -> list[np.ndarray]:
    acts = [layer_fp(x, net[0])]  # the stem: FP32
    for layer, s in zip(net[1:], scales):
        acts.append(layer_q(acts[-1], layer, s, per_channel))
    return acts


def spread(kernel: np.ndarray) -> dict:
    amax = np.abs(kernel).reshape(kernel.shape[0], -1).max(axis=1)
    s_tensor = amax.max() / 127.0
    return {
        "max": float(amax.max()), "min": float(amax.min()), "median": float(np.median(amax)),
        "max_over_min": float(amax.max() / amax.min()), "max_over_median": float(amax.max() / np.median(amax)),
        # Output channels whose whole kernel gets fewer than 16 levels per side (max|w| < 16 steps) per tensor.
        "channels_under_16_levels_per_tensor": int((amax / s_tensor < 16).sum()), "channels": int(len(amax)),
    }


def study(fixture: Path) -> dict:
    net, lw, lb = layers(fixture)
    held = load_file(str(fixture / "input.safetensors"))["input"].astype(np.float64)
    calib_file = load_file(str(fixture / "calibration.safetensors"))
    calib = calib_file["input"].astype(np.float64)
    expected = load_file(str(fixture / "expected.safetensors"))
    labels = expected["labels"].astype(np.int64)
    total = len(labels)

    fp_held = forward_fp(held, net)
    logits_fp = classifier(fp_held[-1], lw, lb)
    fp_correct = int((logits_fp.argmax(1) == labels).sum())
    logits_err = float(np.abs(logits_fp - expected["logits"]).max() / np.abs(expected["logits"]).max())
    fp_calib = forward_fp(calib, net)
    calib_fp_correct = int((classifier(fp_calib[-1], lw, lb).argmax(1) == calib_file["labels"].astype(np.int64)).sum())

    # Inputs of the quantized layers (blocks 1..): the outputs of the layers before, FP32.
    calib_inputs = fp_calib[:-1]
    minmax = [float(a.max()) / 255.0 for a in calib_inputs]
    pct = [float(np.percentile(a, PERCENTILE)) / 255.0 for a in calib_inputs]
    variants = {
        "naive": (minmax, False, "per-tensor s8 weights, min-max u8 activations"),
        "per_channel_minmax": (minmax, True, "per-output-channel s8 weights, min-max u8 activations"),
        "per_channel_percentile": (pct, True, f"per-output-channel s8 weights, {PERCENTILE}th-percentile u8 activations"),
    }
    result = {
        "fixture": fixture.name,
        "held_out": total, "calibration": int(calib.shape[0]),
        "fp32": {"correct": fp_correct, "accuracy": fp_correct / total, "logits_rel_diff_vs_pytorch": logits_err,
                 "calibration_correct": calib_fp_correct},
        "kept_fp32": ["stage0 (the stem: signed input)", "classifier (global average pool + linear)"],
        "layers": [], "variants": {},
    }
    for i, layer in enumerate(net):
        entry = {"name": layer["name"], "shape": list(layer["kernel"].shape), "stride": layer["stride"],
                 "quantized": i > 0, "weight_spread": spread(layer["kernel"]),
                 "branch_max_abs": {k: float(np.abs(v).max()) for k, v in layer["parts"].items()}}
        if i > 0:
            a = calib_inputs[i - 1]
            ch = a.max(axis=(0, 2, 3))
            live = ch[ch > 0]
            entry["input_minmax_max"] = float(a.max())
            entry[f"input_p{PERCENTILE}"] = float(np.percentile(a, PERCENTILE))
            entry["input_channel_max_over_median"] = float(ch.max() / np.median(live)) if len(live) else None
            entry["input_dead_channels"] = int((ch == 0).sum())
        result["layers"].append(entry)

    # Extra variants: the same with the weights that read an input channel the calibration
    # split never made nonzero ("dead": max 0 after the previous ReLU) set to 0 before the
    # scales are chosen. Exact on the calibration split; an outlier there (an identity BN
    # dividing by sqrt(running_var + eps) of a dead channel) no longer sets the scale.
    dead_zeroed = [net[0]]
    for layer, a in zip(net[1:], calib_inputs):
        kernel = layer["kernel"].copy()
        kernel[:, a.max(axis=(0, 2, 3)) == 0] = 0.0
        dead_zeroed.append({**layer, "kernel": kernel})
    variants["naive_dead_inputs_zeroed"] = (minmax, False, "naive, weights on dead input channels zeroed first")
    variants["per_channel_minmax_dead_inputs_zeroed"] = (minmax, True, "per-channel + min-max, weights on dead input channels zeroed first")
    for key, (scales, per_channel, what) in variants.items():
        net_v = dead_zeroed if key.endswith("dead_inputs_zeroed") else net
        q_held = forward_q(held, net_v, scales, per_channel)
        correct = int((classifier(q_held[-1], lw, lb).argmax(1) == labels).sum())
        q_calib = forward_q(calib, net_v, scales, per_channel)
        per_layer = []
        for i in range(1, len(net)):
            alone = layer_q(calib_inputs[i - 1], net_v[i], scales[i - 1], per_channel)
            per_layer.append({"name": net[i]["name"], "input_scale": scales[i - 1],
                              "sqnr_db": sqnr(fp_calib[i], q_calib[i]), "sqnr_alone_db": sqnr(fp_calib[i], alone)})
        logits_sqnr = sqnr(classifier(fp_calib[-1], lw, lb), classifier(q_calib[-1], lw, lb))
        worst = min(per_layer, key=lambda p: p["sqnr_db"])
        worst_alone = min(per_layer, key=lambda p: p["sqnr_alone_db"])
        result["variants"][key] = {
            "what": what, "correct": correct, "accuracy": correct / total, "layers": per_layer,
            "logits_sqnr_db": logits_sqnr,
            "worst_layer": worst["name"], "worst_sqnr_db": worst["sqnr_db"],
            "worst_layer_alone": worst_alone["name"], "worst_sqnr_alone_db": worst_alone["sqnr_alone_db"],
        }
    return result


def print_table(r: dict) -> None:
    total = r["held_out"]
    print(f"\n== {r['fixture']}: {total} held-out images, {r['calibration']} calibration images "
          f"(FP32 logits vs PyTorch: {r['fp32']['logits_rel_diff_vs_pytorch']:.1e} relative)")
    print(f"{'layer':10} {'shape':16} {'max|w| max/min':>14} {'max/median':>10} {'<16 lvls':>8} {'in max':>8} "
          f"{'in p99.99':>9} {'in ch max/med':>13}")
    for e in r["layers"]:
        s = e["weight_spread"]
        extra = (f"{e['input_minmax_max']:8.3f} {e[f'input_p{PERCENTILE}']:9.3f} {e['input_channel_max_over_median']:13.1f}"
                 if e["quantized"] else f"{'(fp32)':>8}")
        print(f"{e['name']:10} {str(e['shape']):16} {s['max_over_min']:14.1f} {s['max_over_median']:10.2f} "
              f"{s['channels_under_16_levels_per_tensor']:>3}/{s['channels']:<4} {extra}")
    names = [e["name"] for e in r["layers"][1:]]
    print(f"\n{'variant':38} {'held-out':>12} {'logits dB':>9}  " + " ".join(f"{n:>9}" for n in names) + "   (SQNR dB, accumulated / alone)")
    print(f"{'fp32':38} {r['fp32']['correct']:>5}/{total} {100 * r['fp32']['accuracy']:5.1f}%")
    for key, v in r["variants"].items():
        cells = " ".join(f"{p['sqnr_db']:9.1f}" for p in v["layers"])
        alone = " ".join(f"{p['sqnr_alone_db']:9.1f}" for p in v["layers"])
        print(f"{key:38} {v['correct']:>5}/{total} {100 * v['accuracy']:5.1f}% {v['logits_sqnr_db']:9.1f}  {cells}")
        print(f"{'':38} {'':14} {'(alone)':>9}  {alone}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fixtures", nargs="*", type=Path, help="fixture folders (default: trained-digits, spread-digits)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write int8_study.json")
    args = ap.parse_args()
    fixtures = args.fixtures or [f for f in DEFAULT if (f / "calibration.safetensors").exists()]
    for fixture in fixtures:
        r = study(fixture)
        print_table(r)
        if not args.no_write:
            (fixture / "int8_study.json").write_text(json.dumps(r, indent=1) + "\n")
            print(f"wrote {fixture / 'int8_study.json'}")
    if not fixtures:
        sys.exit("no fixture with a calibration.safetensors found")


if __name__ == "__main__":
    main()
