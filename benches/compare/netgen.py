"""Network description, deterministic deploy weights and exporters.

The layer list always comes from our CLI (`repvgg info --json`), never from widths
hard-coded here, so the peers run exactly the graph we run. The weights are generated
with numpy and written three ways:

* safetensors with the official RepVGG deploy names (our engine),
* an ONNX graph, opset 17 (ONNX Runtime, OpenVINO, tract),
* an ncnn `.param` + `.bin` pair (ncnn).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Layer:
    """One fused RepVGG block: 3x3 convolution (padding 1) + bias + ReLU."""

    name: str
    in_channels: int
    out_channels: int
    groups: int
    stride: int
    in_h: int
    in_w: int
    out_h: int
    out_w: int


@dataclass(frozen=True)
class Arch:
    """A RepVGG network at one input size, as `repvgg info --json` describes it."""

    name: str
    height: int
    width: int
    layers: tuple[Layer, ...]
    features: int
    classes: int
    macs: int  # multiply-accumulates for one image, convolutions plus head

    @property
    def flops(self) -> int:
        """2 x MACs for one image."""
        return 2 * self.macs


def query_arch(repvgg: Path, arch: str, size: int) -> Arch:
    """Ask our CLI for the exact layer list of `arch` at `size`x`size`."""
    out = subprocess.run(
        [str(repvgg), "info", "--arch", arch, "--size", str(size), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    info = json.loads(out)
    layers = []
    for entry in info["layers"]:
        if entry.get("se"):
            raise SystemExit(
                f"{arch}: layer {entry['name']} has squeeze-excitation; "
                "the peer exporters only handle plain conv+ReLU blocks"
            )
        layers.append(
            Layer(
                **{k: entry[k] for k in Layer.__dataclass_fields__}  # type: ignore[arg-type]
            )
        )
    head = info["head"]
    return Arch(
        name=info["arch"],
        height=info["height"],
        width=info["width"],
        layers=tuple(layers),
        features=head["in_features"],
        classes=head["classes"],
        macs=info["macs"],
    )


def make_weights(arch: Arch, seed: int) -> dict[str, np.ndarray]:
    """Deterministic deploy weights, keyed by the official deploy tensor names.

    Per layer: kernel [out, in/groups, 3, 3] ~ N(0, 2/(9*in/groups)) (He init), bias
    ~ N(0, 0.01). Head: linear [classes, features] ~ N(0, 1/features), bias ~ N(0, 0.01).
    """
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for layer in arch.layers:
        cin = layer.in_channels // layer.groups
        std = np.sqrt(2.0 / (9 * cin))
        shape = (layer.out_channels, cin, 3, 3)
        weights[f"{layer.name}.rbr_reparam.weight"] = (rng.standard_normal(shape) * std).astype(
            np.float32
        )
        weights[f"{layer.name}.rbr_reparam.bias"] = (
            rng.standard_normal(layer.out_channels) * 0.01
        ).astype(np.float32)
    weights["linear.weight"] = (
        rng.standard_normal((arch.classes, arch.features)) * np.sqrt(1.0 / arch.features)
    ).astype(np.float32)
    weights["linear.bias"] = (rng.standard_normal(arch.classes) * 0.01).astype(np.float32)
    return weights


def make_input(arch: Arch, batch: int, seed: int) -> np.ndarray:
    """Deterministic input, uniform in [-1, 1), shape [N, 3, H, W], float32."""
    rng = np.random.default_rng(seed + 1_000_003)
    shape = (batch, 3, arch.height, arch.width)
    return rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write float32 tensors as safetensors (contiguous copies)."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path))


def write_onnx(path: Path, arch: Arch, weights: dict[str, np.ndarray], batch: int) -> None:
    """Write the deploy network as a static-shape ONNX graph (opset 17).

    Conv(3x3, pads 1, strides, group) with bias -> Relu per layer, then
    GlobalAveragePool -> Flatten -> Gemm(transB=1). Input `input` [N, 3, H, W].
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    prev = "input"
    for i, layer in enumerate(arch.layers):
        w, b = f"{layer.name}.rbr_reparam.weight", f"{layer.name}.rbr_reparam.bias"
        inits += [numpy_helper.from_array(weights[w], w), numpy_helper.from_array(weights[b], b)]
        conv, relu = f"conv{i}", f"relu{i}"
        nodes.append(
            helper.make_node(
                "Conv",
                [prev, w, b],
                [conv],
                name=f"{layer.name}.conv",
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[layer.stride, layer.stride],
                group=layer.groups,
            )
        )
        nodes.append(helper.make_node("Relu", [conv], [relu], name=f"{layer.name}.relu"))
        prev = relu
    for name in ("linear.weight", "linear.bias"):
        inits.append(numpy_helper.from_array(weights[name], name))
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node(
            "Gemm", ["flat", "linear.weight", "linear.bias"], ["logits"], name="linear", transB=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        f"repvgg_{arch.name}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, arch.height, arch.width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, arch.classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every peer's ONNX importer
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_ncnn(param_path: Path, bin_path: Path, arch: Arch, weights: dict[str, np.ndarray]) -> None:
    """Write the deploy network as an ncnn `.param` (text) + `.bin` pair.

    ncnn runs one image (C x H x W) per extraction, so the graph has no batch axis.
    Layers: Input (0=w 1=h 2=c); Convolution, or ConvolutionDepthWise with 7=group when
    groups > 1 (ncnn's grouped convolution), 0=out 1=kernel 3=stride 4=pad 5=bias_term
    6=weight count 9=activation (1 = ReLU); Pooling 0=1 (average) 4=1 (global), whose
    output is already a flat vector; InnerProduct 0=out 1=bias_term 2=weight count.

    In the .bin, every weight blob starts with a 4-byte tag (0 = raw float32); biases are
    raw float32 with no tag. Grouped-convolution weights use the same [out, in/g, 3, 3]
    order as ONNX.
    """
    lines, blobs = [], []
    tag = np.zeros(1, dtype=np.uint32).tobytes()

    def add(kind: str, name: str, inputs: list[str], outputs: list[str], params: dict[int, int]):
        ps = " ".join(f"{k}={v}" for k, v in params.items())
        lines.append(f"{kind:<23} {name:<15} {len(inputs)} {len(outputs)} {' '.join(inputs + outputs)} {ps}".rstrip())

    add("Input", "input", [], ["input"], {0: arch.width, 1: arch.height, 2: 3})
    prev = "input"
    for i, layer in enumerate(arch.layers):
        w = weights[f"{layer.name}.rbr_reparam.weight"]
        b = weights[f"{layer.name}.rbr_reparam.bias"]
        params = {0: layer.out_channels, 1: 3, 3: layer.stride, 4: 1, 5: 1, 6: w.size, 9: 1}
        kind = "Convolution"
        if layer.groups > 1:
            kind = "ConvolutionDepthWise"
            params[7] = layer.groups
        out = f"c{i}"
        add(kind, layer.name, [prev], [out], params)
        blobs += [tag, np.ascontiguousarray(w, np.float32).tobytes(), b.astype(np.float32).tobytes()]
        prev = out
    add("Pooling", "gap", [prev], ["gap"], {0: 1, 4: 1})
    lw, lb = weights["linear.weight"], weights["linear.bias"]
    add("InnerProduct", "linear", ["gap"], ["logits"], {0: arch.classes, 1: 1, 2: lw.size})
    blobs += [tag, np.ascontiguousarray(lw, np.float32).tobytes(), lb.astype(np.float32).tobytes()]

    blob_count = 1 + len(arch.layers) + 2  # input, one per conv, gap, logits
    header = ["7767517", f"{len(lines)} {blob_count}"]
    param_path.write_text("\n".join(header + lines) + "\n")
    bin_path.write_bytes(b"".join(blobs))


def export_all(out_dir: Path, arch: Arch, batch: int, seed: int) -> dict[str, Path]:
    """Generate weights and input for one configuration and write every format.

    Returns the paths keyed by `weights`, `input`, `onnx`, `ncnn_param`, `ncnn_bin`.
    Weights depend on (arch, size, seed); the ONNX graph and input also on batch.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{arch.name}_{arch.height}x{arch.width}_s{seed}"
    paths = {
        "weights": out_dir / f"{stem}.safetensors",
        "input": out_dir / f"{stem}_b{batch}_input.safetensors",
        "onnx": out_dir / f"{stem}_b{batch}.onnx",
        "ncnn_param": out_dir / f"{stem}.param",
        "ncnn_bin": out_dir / f"{stem}.bin",
    }
    weights = make_weights(arch, seed)
    write_safetensors(paths["weights"], weights)
    write_safetensors(paths["input"], {"input": make_input(arch, batch, seed)})
    write_onnx(paths["onnx"], arch, weights, batch)
    write_ncnn(paths["ncnn_param"], paths["ncnn_bin"], arch, weights)
    return paths
