#!/usr/bin/env python3
"""Generate golden test fixtures for repvgg-rs from training-time RepVGG graphs.

What this builds
----------------
For every fixture in ``FIXTURES`` this script

1. draws random *training-time* (multi-branch) RepVGG weights with a fixed
   per-fixture seed, using the official tensor names
   (``stage1.0.rbr_dense.conv.weight``, ``stage1.0.rbr_1x1.bn.running_var``,
   ``stage1.1.rbr_identity.weight``, ``stage0.se.down.bias``,
   ``linear.weight``, ...). BatchNorm statistics are deliberately
   non-trivial (gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1), mean ~ N(0, 0.1),
   var ~ U(0.5, 2.0)) so that a wrong BN fusion formula is caught;
2. builds the multi-branch graph directly with ``onnx.helper`` (opset 17,
   no torch): per block
   ``y = relu(SE(BN_d(conv3x3(x)) + BN_1(conv1x1(x)) + BN_id(x)))``
   followed by global average pool, flatten and a Gemm (transB=1) head;
   the output of the last block of each stage is exposed as an extra
   graph output ``stage1`` .. ``stage4``;
3. runs it with ONNX Runtime (CPU execution provider, float32) on a random
   input;
4. checks ORT against an independent float64 numpy re-implementation of the
   same forward pass (explicit im2col + einsum convolutions) and asserts
   that they agree to 1e-4 relative to max|logits|;
5. writes, under ``models/fixtures/<name>/``:

   * ``arch.toml``            architecture description parsed by the Rust side
   * ``train.safetensors``    training-time weights (F32; ``num_batches_tracked``
                              as I64 scalars)
   * ``input.safetensors``    ``input``  F32 [N, 3, H, W]
   * ``expected.safetensors`` ``logits`` F32 [N, classes] and ``stage1`` ..
                              ``stage4`` F32 NCHW (after the block ReLU),
                              all computed by ONNX Runtime.

The ONNX model itself is only held in memory and is never written to disk.
Running the script again regenerates every fixture bit-identically (given
the same numpy / onnxruntime versions, see ``tools/requirements.txt``).

How to run (from the repository root)
-------------------------------------
    python3 -m venv /tmp/venv && \
    /tmp/venv/bin/pip install numpy onnx onnxruntime safetensors && \
    /tmp/venv/bin/python tools/gen_fixtures.py

(``/tmp/venv/bin/pip install -r tools/requirements.txt`` pins the exact
versions the committed fixtures were generated with.)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = REPO_ROOT / "models" / "fixtures"

OPSET = 17
# Highest IR version we emit; clamped to what the installed onnx knows.
IR_VERSION = min(onnx.IR_VERSION, 8)
BN_EPS = 1e-5
NUM_BATCHES_TRACKED = 100
SE_REDUCTION = 16
REL_TOL = 1e-4
# Soft size budget per fixture file (bytes); exceeding it only warns.
SIZE_BUDGET = 200 * 1024


# --------------------------------------------------------------------------
# Architecture description
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixture:
    """One fixture: architecture, input geometry and RNG seed."""

    name: str
    blocks_per_stage: tuple[int, int, int, int]
    widths: tuple[int, int, int, int, int]  # stage0 .. stage4
    groups: int
    grouped_layers: tuple[int, ...]
    se: bool
    num_classes: int
    batch: int
    height: int
    width: int
    seed: int


@dataclass(frozen=True)
class Block:
    """One RepVGG block of the flattened network."""

    prefix: str  # "stage0" or "stage{S}.{J}"
    stage: int  # 0..4
    index: int  # global layer index (stage0 = 0)
    in_ch: int
    out_ch: int
    stride: int
    groups: int
    se: bool
    last_in_stage: bool = field(default=False)

    @property
    def has_identity(self) -> bool:
        """The identity BN branch exists only for shape-preserving blocks."""
        return self.in_ch == self.out_ch and self.stride == 1

    @property
    def se_hidden(self) -> int:
        """Internal SE width, C // 16 as in the official code."""
        return self.out_ch // SE_REDUCTION


FIXTURES = (
    Fixture(
        name="tiny-groups",
        blocks_per_stage=(2, 3, 2, 1),
        widths=(8, 16, 24, 32, 48),
        groups=2,
        grouped_layers=(2, 4, 6),
        se=False,
        num_classes=10,
        batch=2,
        height=40,
        width=36,
        seed=20210001,
    ),
    Fixture(
        name="tiny-se",
        blocks_per_stage=(1, 2, 2, 1),
        widths=(16, 16, 24, 32, 32),
        groups=1,
        grouped_layers=(),
        se=True,
        num_classes=7,
        batch=1,
        height=33,
        width=47,
        seed=20210002,
    ),
)


def build_blocks(fx: Fixture) -> list[Block]:
    """Flatten the architecture into its list of blocks, in layer order."""
    blocks = [
        Block(
            prefix="stage0",
            stage=0,
            index=0,
            in_ch=3,
            out_ch=fx.widths[0],
            stride=2,
            groups=fx.groups if 0 in fx.grouped_layers else 1,
            se=fx.se,
            last_in_stage=True,
        )
    ]
    in_ch = fx.widths[0]
    index = 1
    for s, n_blocks in enumerate(fx.blocks_per_stage, start=1):
        out_ch = fx.widths[s]
        for j in range(n_blocks):
            g = fx.groups if index in fx.grouped_layers else 1
            assert in_ch % g == 0 and out_ch % g == 0, (fx.name, index, g)
            blocks.append(
                Block(
                    prefix=f"stage{s}.{j}",
                    stage=s,
                    index=index,
                    in_ch=in_ch,
                    out_ch=out_ch,
                    stride=2 if j == 0 else 1,
                    groups=g,
                    se=fx.se,
                    last_in_stage=(j == n_blocks - 1),
                )
            )
            in_ch = out_ch
            index += 1
    return blocks


def arch_toml(fx: Fixture) -> str:
    """Render ``arch.toml`` in the exact format the Rust side parses."""

    def int_list(xs) -> str:
        return "[" + ", ".join(str(x) for x in xs) + "]"

    return (
        "# generated by tools/gen_fixtures.py\n"
        f'name = "{fx.name}"\n'
        f"blocks_per_stage = {int_list(fx.blocks_per_stage)}\n"
        f"widths = {int_list(fx.widths)}\n"
        f"groups = {fx.groups}\n"
        f"grouped_layers = {int_list(fx.grouped_layers)}\n"
        f"se = {'true' if fx.se else 'false'}\n"
        f"num_classes = {fx.num_classes}\n"
    )


# --------------------------------------------------------------------------
# Random weights
# --------------------------------------------------------------------------


def f32(a: np.ndarray) -> np.ndarray:
    """Cast to a contiguous float32 array."""
    return np.ascontiguousarray(a, dtype=np.float32)


def random_bn(rng: np.random.Generator, prefix: str, c: int) -> dict[str, np.ndarray]:
    """Eval-mode BatchNorm parameters with non-trivial statistics."""
    return {
        f"{prefix}.weight": f32(rng.uniform(0.5, 1.5, c)),
        f"{prefix}.bias": f32(rng.normal(0.0, 0.1, c)),
        f"{prefix}.running_mean": f32(rng.normal(0.0, 0.1, c)),
        f"{prefix}.running_var": f32(rng.uniform(0.5, 2.0, c)),
        f"{prefix}.num_batches_tracked": np.array(NUM_BATCHES_TRACKED, dtype=np.int64),
    }


def random_conv(rng: np.random.Generator, out_ch: int, in_per_group: int, k: int) -> np.ndarray:
    """He-initialised conv weight [out, in/groups, k, k] (no bias)."""
    fan_in = in_per_group * k * k
    return f32(rng.normal(0.0, np.sqrt(2.0 / fan_in), (out_ch, in_per_group, k, k)))


def random_weights(fx: Fixture, blocks: list[Block]) -> dict[str, np.ndarray]:
    """All training-time tensors, named as in the official RepVGG code."""
    rng = np.random.default_rng(fx.seed)
    w: dict[str, np.ndarray] = {}
    for b in blocks:
        p = b.prefix
        in_pg = b.in_ch // b.groups
        w[f"{p}.rbr_dense.conv.weight"] = random_conv(rng, b.out_ch, in_pg, 3)
        w.update(random_bn(rng, f"{p}.rbr_dense.bn", b.out_ch))
        w[f"{p}.rbr_1x1.conv.weight"] = random_conv(rng, b.out_ch, in_pg, 1)
        w.update(random_bn(rng, f"{p}.rbr_1x1.bn", b.out_ch))
        if b.has_identity:
            w.update(random_bn(rng, f"{p}.rbr_identity", b.in_ch))
        if b.se:
            c, h = b.out_ch, b.se_hidden
            assert h >= 1, f"{p}: SE needs at least {SE_REDUCTION} channels"
            w[f"{p}.se.down.weight"] = f32(rng.normal(0.0, 0.3, (h, c, 1, 1)))
            w[f"{p}.se.down.bias"] = f32(rng.normal(0.0, 0.3, h))
            w[f"{p}.se.up.weight"] = f32(rng.normal(0.0, 0.3, (c, h, 1, 1)))
            w[f"{p}.se.up.bias"] = f32(rng.normal(0.0, 0.3, c))
    last = fx.widths[4]
    w["linear.weight"] = f32(rng.normal(0.0, 0.1, (fx.num_classes, last)))
    w["linear.bias"] = f32(rng.normal(0.0, 0.1, fx.num_classes))
    return w


def random_input(fx: Fixture) -> np.ndarray:
    """Input batch ~ U(-1, 1), NCHW float32 (own stream, derived from the seed)."""
    rng = np.random.default_rng(fx.seed + 1_000_000)
    return f32(rng.uniform(-1.0, 1.0, (fx.batch, 3, fx.height, fx.width)))


# --------------------------------------------------------------------------
# ONNX graph
# --------------------------------------------------------------------------


class GraphBuilder:
    """Tiny helper accumulating nodes and initializers for one graph."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.used: set[str] = set()

    def param(self, name: str) -> str:
        """Reference a weight tensor as an initializer (by its contract name)."""
        assert name in self.weights, name
        self.used.add(name)
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        """Append a node with a single output and return the output name."""
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv(self, x: str, weight: str, out: str, k: int, stride: int, groups: int,
             bias: str | None = None) -> str:
        """k x k convolution, padding k // 2."""
        pad = k // 2
        inputs = [x, self.param(weight)] + ([self.param(bias)] if bias else [])
        return self.node("Conv", inputs, out, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad, pad, pad, pad], group=groups, dilations=[1, 1])

    def bn(self, x: str, prefix: str, out: str) -> str:
        """Eval-mode BatchNormalization using ``prefix.{weight,bias,running_*}``."""
        inputs = [x] + [self.param(f"{prefix}.{n}")
                        for n in ("weight", "bias", "running_mean", "running_var")]
        return self.node("BatchNormalization", inputs, out, epsilon=BN_EPS, training_mode=0)

    def initializers(self) -> list[onnx.TensorProto]:
        """Initializers for every weight referenced by the graph."""
        return [numpy_helper.from_array(self.weights[n], n) for n in sorted(self.used)]


def add_block(g: GraphBuilder, b: Block, x: str) -> str:
    """Emit one training-time RepVGG block; return its (post-ReLU) output."""
    p = b.prefix
    dense = g.conv(x, f"{p}.rbr_dense.conv.weight", f"{p}.dense.conv", 3, b.stride, b.groups)
    dense = g.bn(dense, f"{p}.rbr_dense.bn", f"{p}.dense.bn")
    one = g.conv(x, f"{p}.rbr_1x1.conv.weight", f"{p}.1x1.conv", 1, b.stride, b.groups)
    one = g.bn(one, f"{p}.rbr_1x1.bn", f"{p}.1x1.bn")
    z = g.node("Add", [dense, one], f"{p}.sum2")
    if b.has_identity:
        ident = g.bn(x, f"{p}.rbr_identity", f"{p}.identity.bn")
        z = g.node("Add", [z, ident], f"{p}.sum3")
    if b.se:
        s = g.node("GlobalAveragePool", [z], f"{p}.se.pool")
        s = g.conv(s, f"{p}.se.down.weight", f"{p}.se.down", 1, 1, 1, bias=f"{p}.se.down.bias")
        s = g.node("Relu", [s], f"{p}.se.relu")
        s = g.conv(s, f"{p}.se.up.weight", f"{p}.se.up", 1, 1, 1, bias=f"{p}.se.up.bias")
        s = g.node("Sigmoid", [s], f"{p}.se.gate")
        z = g.node("Mul", [z, s], f"{p}.se.out")
    return g.node("Relu", [z], f"{p}.out")


def stage_shapes(fx: Fixture, blocks: list[Block]) -> list[list[int]]:
    """NCHW shapes of the stage1..stage4 outputs (3x3 pad 1: out = (in - 1) // s + 1)."""
    h, w, shapes = fx.height, fx.width, []
    for b in blocks:
        h, w = (h - 1) // b.stride + 1, (w - 1) // b.stride + 1
        if b.last_in_stage and b.stage >= 1:
            shapes.append([fx.batch, b.out_ch, h, w])
    return shapes


def build_model(fx: Fixture, blocks: list[Block], weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Build and check the full training-time ONNX model."""
    g = GraphBuilder(weights)
    x = "input"
    stage_outputs = []
    for b in blocks:
        x = add_block(g, b, x)
        if b.last_in_stage and b.stage >= 1:
            stage_outputs.append(g.node("Identity", [x], f"stage{b.stage}"))
    x = g.node("GlobalAveragePool", [x], "head.pool")
    x = g.node("Flatten", [x], "head.flatten", axis=1)
    g.node("Gemm", [x, g.param("linear.weight"), g.param("linear.bias")], "logits", transB=1)

    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             [fx.batch, fx.num_classes])]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
                for name, shape in zip(stage_outputs, stage_shapes(fx, blocks))]
    graph = helper.make_graph(
        g.nodes,
        f"repvgg-train-{fx.name}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                       [fx.batch, 3, fx.height, fx.width])],
        outputs,
        initializer=g.initializers(),
    )
    model = helper.make_model(graph, producer_name="repvgg-rs/tools/gen_fixtures.py",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)

    # Every non-bookkeeping weight must be consumed by the graph.
    unused = {n for n in weights if not n.endswith("num_batches_tracked")} - g.used
    assert not unused, f"weights not used by the graph: {sorted(unused)}"
    return model


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run the in-memory model with ORT on the CPU EP, single-threaded."""
    opts = ort.SessionOptions()
    # Run the graph exactly as written (no Conv+BN folding), deterministically.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts,
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return {n: f32(v) for n, v in zip(names, sess.run(names, {"input": x}))}


# --------------------------------------------------------------------------
# Independent numpy float64 reference
# --------------------------------------------------------------------------


def np_conv2d(x: np.ndarray, w: np.ndarray, stride: int, groups: int,
              bias: np.ndarray | None = None) -> np.ndarray:
    """Direct NCHW convolution (padding k // 2) via im2col + einsum, per group."""
    n, c, h, wd = x.shape
    oc, icg, k, _ = w.shape
    pad = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - k) // stride + 1
    ow = (wd + 2 * pad - k) // stride + 1
    # cols[n, c, ky, kx, oy, ox] = xp[n, c, oy*stride + ky, ox*stride + kx]
    cols = np.empty((n, c, k, k, oh, ow), dtype=np.float64)
    for ky in range(k):
        for kx in range(k):
            cols[:, :, ky, kx] = xp[:, :, ky:ky + stride * (oh - 1) + 1:stride,
                                    kx:kx + stride * (ow - 1) + 1:stride]
    ocg = oc // groups
    out = np.empty((n, oc, oh, ow), dtype=np.float64)
    for gi in range(groups):
        out[:, gi * ocg:(gi + 1) * ocg] = np.einsum(
            "ncklyx,ockl->noyx",
            cols[:, gi * icg:(gi + 1) * icg],
            w[gi * ocg:(gi + 1) * ocg].astype(np.float64),
        )
    if bias is not None:
        out += bias.astype(np.float64)[None, :, None, None]
    return out


def np_bn(x: np.ndarray, w: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    """Eval-mode BatchNorm: gamma * (x - mean) / sqrt(var + eps) + beta."""
    def p(n):
        return w[f"{prefix}.{n}"].astype(np.float64)[None, :, None, None]
    return p("weight") * (x - p("running_mean")) / np.sqrt(p("running_var") + BN_EPS) + p("bias")


def np_forward(blocks: list[Block], w: dict[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    """float64 training-time forward; returns logits and stage outputs."""
    out: dict[str, np.ndarray] = {}
    h = x.astype(np.float64)
    for b in blocks:
        p = b.prefix
        z = np_bn(np_conv2d(h, w[f"{p}.rbr_dense.conv.weight"], b.stride, b.groups), w,
                  f"{p}.rbr_dense.bn")
        z = z + np_bn(np_conv2d(h, w[f"{p}.rbr_1x1.conv.weight"], b.stride, b.groups), w,
                      f"{p}.rbr_1x1.bn")
        if b.has_identity:
            z = z + np_bn(h, w, f"{p}.rbr_identity")
        if b.se:
            s = z.mean(axis=(2, 3), keepdims=True)
            s = np.maximum(np_conv2d(s, w[f"{p}.se.down.weight"], 1, 1, w[f"{p}.se.down.bias"]), 0)
            s = np_conv2d(s, w[f"{p}.se.up.weight"], 1, 1, w[f"{p}.se.up.bias"])
            z = z * (1.0 / (1.0 + np.exp(-s)))
        h = np.maximum(z, 0.0)
        if b.last_in_stage and b.stage >= 1:
            out[f"stage{b.stage}"] = h
    pooled = h.mean(axis=(2, 3))
    out["logits"] = pooled @ w["linear.weight"].astype(np.float64).T + w["linear.bias"]
    return out


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def check_against_reference(fx: Fixture, ort_out: dict[str, np.ndarray],
                            ref: dict[str, np.ndarray]) -> None:
    """Assert ORT matches the numpy reference (logits and stage outputs)."""
    for name in ("logits", "stage1", "stage2", "stage3", "stage4"):
        a, r = ort_out[name], ref[name]
        assert a.shape == r.shape, (fx.name, name, a.shape, r.shape)
        assert np.all(np.isfinite(a)), (fx.name, name)
        scale = float(np.max(np.abs(r)))
        diff = float(np.max(np.abs(a.astype(np.float64) - r)))
        print(f"  {name:7s} shape={list(a.shape)!s:18s} max|ref|={scale:.6g}  "
              f"max|numpy-ort|={diff:.3e}  rel={diff / scale:.3e}")
        assert scale > 1e-3, f"{fx.name}/{name}: activations vanished (max {scale})"
        assert diff <= REL_TOL * scale, f"{fx.name}/{name}: ORT disagrees with numpy reference"


def write_fixture(fx: Fixture, weights: dict[str, np.ndarray], x: np.ndarray,
                  ort_out: dict[str, np.ndarray]) -> list[Path]:
    """Write arch.toml and the three safetensors files; return their paths."""
    d = FIXTURES_DIR / fx.name
    d.mkdir(parents=True, exist_ok=True)
    stale = d / "model.onnx"
    if stale.exists():
        stale.unlink()
    # A single metadata key: safetensors keeps metadata in a hash map, so with
    # several keys their order (and the file bytes) would vary between runs.
    meta = {"generator": f"tools/gen_fixtures.py ({fx.name})"}
    (d / "arch.toml").write_text(arch_toml(fx))
    save_file(weights, str(d / "train.safetensors"), metadata=meta)
    save_file({"input": x}, str(d / "input.safetensors"), metadata=meta)
    expected = {n: ort_out[n] for n in ("logits", "stage1", "stage2", "stage3", "stage4")}
    save_file(expected, str(d / "expected.safetensors"), metadata=meta)
    return [d / n for n in ("arch.toml", "train.safetensors", "input.safetensors",
                            "expected.safetensors")]


def generate(fx: Fixture) -> list[Path]:
    """Build, run, verify and write one fixture."""
    print(f"[{fx.name}] seed={fx.seed} input=[{fx.batch}, 3, {fx.height}, {fx.width}]")
    blocks = build_blocks(fx)
    weights = random_weights(fx, blocks)
    x = random_input(fx)
    model = build_model(fx, blocks, weights)
    ort_out = run_ort(model, x)
    ref = np_forward(blocks, weights, x)
    check_against_reference(fx, ort_out, ref)
    max_logit = float(np.max(np.abs(ort_out["logits"])))
    diff = float(np.max(np.abs(ort_out["logits"].astype(np.float64) - ref["logits"])))
    print(f"  => max|logits| = {max_logit:.6g}, numpy-vs-ORT logits max abs diff = {diff:.3e}")
    return write_fixture(fx, weights, x, ort_out)


def main() -> int:
    """Regenerate every fixture and report file sizes."""
    print(f"numpy {np.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
          f"opset {OPSET}, ir_version {IR_VERSION}")
    written: list[Path] = []
    for fx in FIXTURES:
        written += generate(fx)
    print("files written:")
    over = False
    for path in written:
        size = os.path.getsize(path)
        flag = ""
        if size > SIZE_BUDGET:
            flag, over = "  (over size budget!)", True
        print(f"  {path.relative_to(REPO_ROOT)}  {size} bytes{flag}")
    if over:
        print(f"warning: some files exceed {SIZE_BUDGET} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
