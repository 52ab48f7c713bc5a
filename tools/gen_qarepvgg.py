#!/usr/bin/env python3
"""Generate the QARepVGG golden fixture ``models/fixtures/tiny-qarep/`` with PyTorch.

What this builds
----------------
A tiny RepVGG classifier (stage0, stage1..4, global average pool, linear) whose
blocks are PyTorch modules with the structure and state-dict names of YOLOv6's
``yolov6/layers/common.py`` (meituan/YOLOv6):

* ``QARepVGGBlock`` (Chu et al., "Make RepVGG Greater Again: A
  Quantization-aware Approach", arXiv 2212.01593):
  ``relu(bn(rbr_dense(x) + rbr_1x1(x) + x))`` with ``rbr_dense`` = conv 3x3
  (no bias) + BatchNorm2d (``rbr_dense.conv.weight``, ``rbr_dense.bn.*``),
  ``rbr_1x1`` = a plain 1x1 ``nn.Conv2d(bias=False)`` (``rbr_1x1.weight``),
  the identity (``nn.Identity``, no tensors) only when in == out and stride 1,
  and ``bn`` = BatchNorm2d after the sum (``bn.*``);
* ``QARepVGGBlockV2``: the same plus ``rbr_avg = nn.AvgPool2d(3, stride, 1)``
  (PyTorch's default ``count_include_pad=True``), created under the same
  condition as the identity, so it holds no tensors either;
* the official RepVGG training block (``rbr_dense``, ``rbr_1x1`` conv+BN,
  ``rbr_identity`` BN), the official deploy block (``rbr_reparam``) and
  YOLOv6's QARepVGG deploy block (``rbr_reparam`` followed by the kept ``bn``),
  to check that one checkpoint may mix forms.

The modules are written here from the structure above (YOLOv6's code is not
copied); the script asserts that their state-dict names are exactly the ones
listed, and that ``AvgPool2d`` counts the padding.

Two checkpoints share ``arch.toml`` and ``input.safetensors``:

* ``train.safetensors`` / ``expected.safetensors``: mixed forms, every QARepVGG
  block V1, BatchNorm eps 1e-5 (PyTorch's default, what the block classes use);
  the runtime's default reading (``Model::load``);
* ``train-v2.safetensors`` / ``expected-v2.safetensors``: every block
  ``QARepVGGBlockV2``, every BatchNorm eps 1e-3, as YOLOv6's detector ``Model``
  sets (``initialize_weights``); read with ``QaRepVariant::V2``, eps 1e-3.

BatchNorm running statistics are first measured on a calibration batch (so
activations keep their scale through the network) and then perturbed
(var x U(0.5, 2), mean + N(0, 0.1) std, gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1)),
so that a wrong fusion formula is caught. The expected outputs are PyTorch's in
float32 (eval mode, one thread); the script also runs the same model in float64
and prints the float32 error, which sets the Rust test's tolerance.

How to run (from the repository root; torch is not a project dependency)
-------------------------------------------------------------------------
    python3 -m venv /tmp/venv-qarep && \\
    /tmp/venv-qarep/bin/pip install safetensors torch && \\
    /tmp/venv-qarep/bin/python tools/gen_qarepvgg.py

(generated with torch 2.15.0, safetensors 0.8.0, Python 3.11).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT = REPO_ROOT / "models" / "fixtures" / "tiny-qarep"
SEED = 2212_01593

BLOCKS_PER_STAGE = (2, 2, 2, 1)
WIDTHS = (8, 16, 16, 24, 32)  # stage0 .. stage4; stage2.0 is 16 -> 16 with stride 2
GROUPED_LAYERS = (2, 4)  # stage1.1 and stage2.1, two groups each
GROUPS = 2
NUM_CLASSES = 5
BATCH, HEIGHT, WIDTH = 2, 29, 35  # odd sizes: the average pool sees every border case

# Form of each layer (global index) in train.safetensors.
MIXED_FORMS = ("training", "qarep", "qarep", "qarep", "deploy", "qarep-deploy", "qarep", "qarep")


class ConvBN(nn.Module):
    """YOLOv6 ``ConvModule`` without activation / official ``conv_bn``: conv (no bias) + BN."""

    def __init__(self, cin, cout, k, stride, groups, eps):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=eps)

    def forward(self, x):
        return self.bn(self.conv(x))


class RepVGGTrain(nn.Module):
    """Official RepVGG training block: BN_d(conv3) + BN_1(conv1) + BN_id(x), ReLU."""

    def __init__(self, cin, cout, stride, groups, eps):
        super().__init__()
        self.rbr_dense = ConvBN(cin, cout, 3, stride, groups, eps)
        self.rbr_1x1 = ConvBN(cin, cout, 1, stride, groups, eps)
        self.rbr_identity = nn.BatchNorm2d(cin, eps=eps) if cin == cout and stride == 1 else None

    def forward(self, x):
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return torch.relu(y)


class Deploy(nn.Module):
    """A deploy block ``rbr_reparam`` (conv 3x3 + bias), optionally with YOLOv6's kept ``bn``."""

    def __init__(self, cin, cout, stride, groups, eps, outer_bn):
        super().__init__()
        self.rbr_reparam = nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=True)
        self.bn = nn.BatchNorm2d(cout, eps=eps) if outer_bn else None

    def forward(self, x):
        y = self.rbr_reparam(x)
        if self.bn is not None:
            y = self.bn(y)
        return torch.relu(y)


class QARepVGG(nn.Module):
    """YOLOv6 ``QARepVGGBlock`` (v2=False) / ``QARepVGGBlockV2`` (v2=True), training form."""

    def __init__(self, cin, cout, stride, groups, eps, v2):
        super().__init__()
        shape_kept = cin == cout and stride == 1
        self.rbr_dense = ConvBN(cin, cout, 3, stride, groups, eps)
        self.rbr_1x1 = nn.Conv2d(cin, cout, 1, stride, groups=groups, bias=False)
        self.rbr_identity = nn.Identity() if shape_kept else None
        self.rbr_avg = nn.AvgPool2d(3, stride, 1) if v2 and shape_kept else None
        self.bn = nn.BatchNorm2d(cout, eps=eps)

    def forward(self, x):
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        if self.rbr_avg is not None:
            y = y + self.rbr_avg(x)
        return torch.relu(self.bn(y))


def layer_specs():
    """(name, stage, cin, cout, stride, groups) per layer, as the Rust side numbers them."""
    specs = [("stage0", 0, 3, WIDTHS[0], 2, 1)]
    cin = WIDTHS[0]
    for s, n in enumerate(BLOCKS_PER_STAGE, start=1):
        for j in range(n):
            index = len(specs)
            g = GROUPS if index in GROUPED_LAYERS else 1
            specs.append((f"stage{s}.{j}", s, cin, WIDTHS[s], 2 if j == 0 else 1, g))
            cin = WIDTHS[s]
    return specs


class Net(nn.Module):
    """stage0 .. stage4 as submodules named like the official checkpoints, GAP, linear."""

    def __init__(self, forms, eps):
        super().__init__()
        self.stage_ends = {}
        blocks = {}
        for (name, stage, cin, cout, stride, g), form in zip(layer_specs(), forms):
            if form == "training":
                m = RepVGGTrain(cin, cout, stride, g, eps)
            elif form == "deploy":
                m = Deploy(cin, cout, stride, g, eps, outer_bn=False)
            elif form == "qarep-deploy":
                m = Deploy(cin, cout, stride, g, eps, outer_bn=True)
            else:
                m = QARepVGG(cin, cout, stride, g, eps, v2=(form == "qarep-v2"))
            blocks[name] = m
        self.stage0 = blocks["stage0"]
        for s, n in enumerate(BLOCKS_PER_STAGE, start=1):
            setattr(self, f"stage{s}", nn.Sequential(*[blocks[f"stage{s}.{j}"] for j in range(n)]))
        self.linear = nn.Linear(WIDTHS[4], NUM_CLASSES)

    def forward(self, x):
        out = {}
        x = self.stage0(x)
        for s in range(1, 5):
            x = getattr(self, f"stage{s}")(x)
            out[f"stage{s}"] = x
        out["logits"] = self.linear(x.mean(dim=(2, 3)))
        return out


def expected_names(forms) -> set[str]:
    """The state-dict names YOLOv6's modules (and the official ones) produce, written out."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names = {"linear.weight", "linear.bias"}
    for (p, _, cin, cout, stride, _), form in zip(layer_specs(), forms):
        kept = cin == cout and stride == 1
        if form == "training":
            names |= {f"{p}.rbr_dense.conv.weight", f"{p}.rbr_1x1.conv.weight"}
            names |= {f"{p}.{b}.{f}" for b in ("rbr_dense.bn", "rbr_1x1.bn") for f in bn}
            if kept:
                names |= {f"{p}.rbr_identity.{f}" for f in bn}
        elif form in ("deploy", "qarep-deploy"):
            names |= {f"{p}.rbr_reparam.weight", f"{p}.rbr_reparam.bias"}
            if form == "qarep-deploy":
                names |= {f"{p}.bn.{f}" for f in bn}
        else:
            names |= {f"{p}.rbr_dense.conv.weight", f"{p}.rbr_1x1.weight"}
            names |= {f"{p}.{b}.{f}" for b in ("rbr_dense.bn", "bn") for f in bn}
    return names


def init(net: Net, gen: torch.Generator, calib: torch.Tensor) -> None:
    """Random weights; BN statistics measured on `calib`, then perturbed."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5 * 0.6)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                m.momentum = 1.0  # running stats := this batch's stats
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.3)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        net.train()
        net(calib)
        net.eval()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                std = m.running_var.sqrt()
                m.running_mean.add_(torch.randn(c, generator=gen) * 0.1 * std)
                m.running_var.mul_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(100)


def f32_state(net: Net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def run(net: Net, x: torch.Tensor, dtype) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {k: v.to(torch.float64) for k, v in net.to(dtype)(x.to(dtype)).items()}


def build(forms, eps, gen, x, calib, label):
    net = Net(forms, eps)
    init(net, gen, calib)
    names = set(net.state_dict())
    want = expected_names(forms)
    assert names == want, f"{label}: state-dict names differ: extra {names - want}, missing {want - names}"
    state = f32_state(net)
    out32 = run(net, x, torch.float32)
    out64 = run(net, x, torch.float64)
    net.to(torch.float32)
    for k in ("logits", "stage1", "stage2", "stage3", "stage4"):
        scale = out64[k].abs().max().item()
        err = (out32[k] - out64[k]).abs().max().item() / scale
        print(f"  {label} {k:7s} max|out|={scale:.4g} float32 vs float64 rel err {err:.2e}")
        assert 1e-2 < scale < 1e3, f"{label}/{k}: activations vanished or exploded ({scale})"
    return state, {k: v.to(torch.float32).contiguous() for k, v in out32.items()}


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    assert nn.AvgPool2d(3, 1, 1).count_include_pad, "PyTorch's AvgPool2d default changed"
    assert nn.BatchNorm2d(1).eps == 1e-5
    gen = torch.Generator().manual_seed(SEED)
    x = torch.rand((BATCH, 3, HEIGHT, WIDTH), generator=gen) * 2 - 1
    calib = torch.rand((4, 3, HEIGHT, WIDTH), generator=gen) * 2 - 1
    print(f"torch {torch.__version__}, input {list(x.shape)}")

    v1_state, v1_out = build(MIXED_FORMS, 1e-5, gen, x, calib, "v1")
    v2_state, v2_out = build(("qarep-v2",) * len(MIXED_FORMS), 1e-3, gen, x, calib, "v2")

    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"generator": "tools/gen_qarepvgg.py"}
    (OUT / "arch.toml").write_text(
        "# generated by tools/gen_qarepvgg.py\n"
        'name = "tiny-qarep"\n'
        f"blocks_per_stage = {list(BLOCKS_PER_STAGE)}\n"
        f"widths = {list(WIDTHS)}\n"
        f"groups = {GROUPS}\n"
        f"grouped_layers = {list(GROUPED_LAYERS)}\n"
        "se = false\n"
        f"num_classes = {NUM_CLASSES}\n"
    )
    save_file({"input": x.contiguous()}, str(OUT / "input.safetensors"), metadata=meta)
    save_file(v1_state, str(OUT / "train.safetensors"), metadata=meta)
    save_file(v1_out, str(OUT / "expected.safetensors"), metadata=meta)
    save_file(v2_state, str(OUT / "train-v2.safetensors"), metadata=meta)
    save_file(v2_out, str(OUT / "expected-v2.safetensors"), metadata=meta)
    for p in sorted(OUT.iterdir()):
        print(f"  {p.relative_to(REPO_ROOT)}  {p.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
