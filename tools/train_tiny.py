"""Trains a small RepVGG in PyTorch on real data and exports the fixture that checks our
runtime on weights gradient descent produced (models/fixtures/trained-digits/).

The data is scikit-learn's handwritten digits (1797 8x8 images, 10 classes; it ships
inside the scikit-learn wheel: no download), upsampled to 24x24 and repeated over three
channels. The network is a custom RepVGG with the training-time blocks of Ding et al.
(2021): a 3x3 conv + BN branch, a 1x1 conv + BN branch and, where shapes allow, an
identity BN branch, summed, then ReLU; official parameter names, so the state dict is
what the official repository saves. It trains for a few minutes on a CPU (on a GPU when
there is one), is evaluated in eval mode (BatchNorm running statistics), and the
training-form state dict is written as safetensors with the held-out images (stored as
F16, and evaluated by PyTorch after that rounding, so both sides see the same inputs),
PyTorch's logits, the labels and the accuracy.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch scikit-learn safetensors numpy
    /tmp/torchenv/bin/python tools/train_tiny.py
    /tmp/torchenv/bin/python tools/train_tiny.py --calibration-only   # calibration split only
    /tmp/torchenv/bin/python tools/train_tiny.py --spread             # models/fixtures/spread-digits/

The calibration split (calibration.safetensors, for INT8 post-training quantization:
tools/int8_study.py) is drawn from the training images only, see calibration().
--spread trains and exports a second fixture the same way (see SPREAD_RECIPE), whose fused
kernels have the outlier that makes naive INT8 collapse (docs/precision.md, "INT8 accuracy
on the digits fixtures"); trained-digits' code path and weights are untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.datasets import load_digits

OUT = Path(__file__).resolve().parents[1] / "models" / "fixtures" / "trained-digits"
ARCH = {"name": "digits", "blocks_per_stage": [1, 2, 2, 1], "widths": [16, 16, 32, 48, 64], "num_classes": 10}
SIDE = 24
SEED = 0


def conv_bn(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(cin, cout, k, stride, k // 2, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(cout))
    return seq


class Block(nn.Module):
    """RepVGG's training-time block (official names: rbr_dense, rbr_1x1, rbr_identity)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.rbr_dense = conv_bn(cin, cout, 3, stride)
        self.rbr_1x1 = conv_bn(cin, cout, 1, stride)
        self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return F.relu(y)


class RepVGG(nn.Module):
    def __init__(self, arch: dict) -> None:
        super().__init__()
        w = arch["widths"]
        self.stage0 = Block(3, w[0], 2)
        cin = w[0]
        for s, blocks in enumerate(arch["blocks_per_stage"], start=1):
            layers = []
            for j in range(blocks):
                layers.append(Block(cin, w[s], 2 if j == 0 else 1))
                cin = w[s]
            setattr(self, f"stage{s}", nn.Sequential(*layers))
        self.linear = nn.Linear(cin, arch["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage0(x)
        for s in range(1, 5):
            x = getattr(self, f"stage{s}")(x)
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    images = ((images - 0.5) / 0.5).repeat(1, 3, 1, 1)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SEED))
    test, train = order[:297], order[297:]
    # The held-out images as they will be stored (F16), so PyTorch evaluates what we read.
    test_images = images[test].half().float()
    return images[train], labels[train], test_images, labels[test]


CALIBRATION = 128
CALIBRATION_SEED = 1


def calibration(train_x: torch.Tensor, train_y: torch.Tensor, n: int = CALIBRATION) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The calibration split for post-training quantization: n training images
    (never held-out ones), the first of a permutation of the training split drawn from its
    own generator (seed CALIBRATION_SEED: training's random state is not touched), without
    augmentation, rounded to F16 like the held-out input. Returns the images, their labels
    and their positions in the training split."""
    pick = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(CALIBRATION_SEED))[:n]
    return train_x[pick].half().float(), train_y[pick], pick


def write_calibration(out: Path, n: int = CALIBRATION) -> None:
    """Writes out/calibration.safetensors: `input` [N, 3, SIDE, SIDE] F16 (as input.safetensors),
    `labels` F32 (as expected.safetensors) and `train_index` F32 (positions in the training
    split, i.e. in load_digits() order `order[297:][train_index]` of data()). No training:
    the fixture's weights are untouched."""
    train_x, train_y, _, _ = data()
    x, y, pick = calibration(train_x, train_y, n)
    save_file({"input": x.half().contiguous(), "labels": y.float().contiguous(), "train_index": pick.float().contiguous()},
              str(out / "calibration.safetensors"))
    print(f"wrote {out / 'calibration.safetensors'} ({len(y)} training images, classes {torch.bincount(y, minlength=10).tolist()})")


def main() -> None:
    torch.manual_seed(SEED)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_x, train_y, test_x, test_y = data()
    model = RepVGG(ARCH).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    epochs = 30
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * ((len(train_y) + 63) // 64))
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train_y))
        total = 0.0
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            x, y = train_x[idx].to(device), train_y[idx].to(device)
            # Light augmentation: shifts by up to two pixels.
            dx, dy = np.random.randint(-2, 3, size=2)
            x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        print(f"epoch {epoch + 1}: loss {total / len(train_y):.4f}")
    model.eval().cpu()
    with torch.no_grad():
        logits = model(test_x)
    accuracy = float((logits.argmax(1) == test_y).float().mean())
    correct = int((logits.argmax(1) == test_y).sum())
    print(f"held-out accuracy {accuracy:.4f} ({correct}/{len(test_y)})")

    OUT.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(OUT / "train.safetensors"))
    save_file({"input": test_x.half().contiguous()}, str(OUT / "input.safetensors"))
    save_file({"logits": logits.contiguous(), "labels": test_y.float().contiguous()}, str(OUT / "expected.safetensors"))
    toml = "\n".join(
        [f"name = \"{ARCH['name']}\"", f"blocks_per_stage = {ARCH['blocks_per_stage']}", f"widths = {ARCH['widths']}",
         f"num_classes = {ARCH['num_classes']}", ""]
    )
    (OUT / "arch.toml").write_text(toml)
    (OUT / "accuracy.json").write_text(json.dumps({
        "accuracy": accuracy, "correct": correct, "total": len(test_y), "epochs": epochs,
        "torch": torch.__version__, "device": device, "side": SIDE,
    }, indent=1) + "\n")
    write_calibration(OUT)
    print(f"wrote {OUT}")


# ---------------------------------------------------------------------------- spread-digits
# A second fixture, models/fixtures/spread-digits/: the same data, split and export, trained
# with a recipe under which RepVGG's fused kernels get the wide per-output-channel ranges
# that make naive (per-tensor) INT8 post-training quantization collapse on real checkpoints
# (QARepVGG, Chu et al., arXiv 2212.01593). trained-digits (main() above) is untouched.

SPREAD_OUT = OUT.parent / "spread-digits"
# The same network as trained-digits. The recipe is the classic one of ResNets on small
# images: SGD with momentum, lr 0.1 on a cosine schedule, weight decay 5e-4 on every
# parameter (BN scales and shifts included), here with batches of 16 (3760 steps). Under it
# a channel of stage2.0's output dies (always 0 after the ReLU, running variance ~0), and
# stage2.1's identity BN divides its scale by sqrt(0 + eps): a centre weight of ~196 in a
# fused kernel whose other weights are < 0.5. Batches of 64 or weight decay 2e-4 kept every
# channel alive in our runs (no collapse); so did the official repository's custom L2.
SPREAD_ARCH = dict(ARCH)
SPREAD_RECIPE = {"opt": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "bn_weight_decay": True,
                 "custom_l2": False, "official_decay": False, "epochs": 40, "batch": 16, "seed": 0}
SPREAD_CALIBRATION = 64


def custom_l2(block: Block) -> torch.Tensor:
    """The official repository's get_custom_L2 (RepVGG, Ding et al.): L2 on the 3x3 kernel's
    ring plus on the centre of the equivalent kernel (3x3 centre and 1x1 with their BN scales,
    normalized), instead of plain weight decay on those convolutions."""
    k3, k1 = block.rbr_dense.conv.weight, block.rbr_1x1.conv.weight
    bn3, bn1 = block.rbr_dense.bn, block.rbr_1x1.bn
    t3 = (bn3.weight / (bn3.running_var + bn3.eps).sqrt()).reshape(-1, 1, 1, 1).detach()
    t1 = (bn1.weight / (bn1.running_var + bn1.eps).sqrt()).reshape(-1, 1, 1, 1).detach()
    ring = (k3**2).sum() - (k3[:, :, 1:2, 1:2] ** 2).sum()
    eq = k3[:, :, 1:2, 1:2] * t3 + k1 * t1
    return ring + (eq**2 / (t3**2 + t1**2)).sum()


def train_recipe(arch: dict, recipe: dict, log: bool = True) -> tuple[RepVGG, dict]:
    """Trains arch on the training split under recipe (see SPREAD_RECIPE); returns the model in
    eval mode on the CPU and the held-out result."""
    torch.manual_seed(recipe["seed"])
    np.random.seed(recipe["seed"])
    train_x, train_y, test_x, test_y = data()
    model = RepVGG(arch)
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    conv_l2 = {id(b.rbr_dense.conv.weight) for b in blocks} | {id(b.rbr_1x1.conv.weight) for b in blocks}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if recipe.get("official_decay"):
            # The official repository's sgd_optimizer: no decay on names with 'bias' or 'bn',
            # nor on rbr_dense / rbr_1x1 under custom L2; so the identity BN's weight
            # (`rbr_identity.weight`, no 'bn' in it) is the only BN scale that decays.
            skip = "bias" in name or "bn" in name or (recipe["custom_l2"] and ("rbr_dense" in name or "rbr_1x1" in name))
        else:
            is_bn = p.ndim == 1 and not name.startswith("linear")
            skip = (recipe["custom_l2"] and id(p) in conv_l2) or (is_bn and not recipe["bn_weight_decay"])
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe["opt"] == "sgd":
        opt = torch.optim.SGD(groups, lr=recipe["lr"], momentum=recipe["momentum"])
    else:
        opt = torch.optim.AdamW(groups, lr=recipe["lr"])
    batch, epochs = recipe["batch"], recipe["epochs"]
    steps = epochs * ((len(train_y) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train_y))
        total = 0.0
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            x, y = train_x[idx], train_y[idx]
            dx, dy = np.random.randint(-2, 3, size=2)
            x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))
            loss = F.cross_entropy(model(x), y)
            if recipe["custom_l2"]:
                loss = loss + 0.5 * recipe["weight_decay"] * sum(custom_l2(b) for b in blocks)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log and (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: loss {total / len(train_y):.4f}")
    model.eval()
    with torch.no_grad():
        logits = model(test_x)
    correct = int((logits.argmax(1) == test_y).sum())
    return model, {"logits": logits, "test_x": test_x, "test_y": test_y, "correct": correct}


def export(out: Path, arch: dict, model: RepVGG, held: dict, meta: dict, calibration_n: int) -> None:
    """Writes a fixture the way main() writes trained-digits (train.safetensors, input.safetensors
    F16, expected.safetensors, arch.toml, accuracy.json) plus calibration.safetensors."""
    out.mkdir(parents=True, exist_ok=True)
    test_x, test_y, logits, correct = held["test_x"], held["test_y"], held["logits"], held["correct"]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "train.safetensors"))
    save_file({"input": test_x.half().contiguous()}, str(out / "input.safetensors"))
    save_file({"logits": logits.contiguous(), "labels": test_y.float().contiguous()}, str(out / "expected.safetensors"))
    (out / "arch.toml").write_text("\n".join(
        [f"name = \"{arch['name']}\"", f"blocks_per_stage = {arch['blocks_per_stage']}", f"widths = {arch['widths']}",
         f"num_classes = {arch['num_classes']}", ""]))
    (out / "accuracy.json").write_text(json.dumps({
        "accuracy": correct / len(test_y), "correct": correct, "total": len(test_y), "torch": torch.__version__,
        "device": "cpu", "side": SIDE, **meta}, indent=1) + "\n")
    write_calibration(out, calibration_n)


def main_spread() -> None:
    torch.set_num_threads(1)
    model, held = train_recipe(SPREAD_ARCH, SPREAD_RECIPE)
    print(f"held-out accuracy {held['correct']}/{len(held['test_y'])}")
    export(SPREAD_OUT, SPREAD_ARCH, model, held, {"recipe": SPREAD_RECIPE}, SPREAD_CALIBRATION)
    print(f"wrote {SPREAD_OUT}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Trains and exports models/fixtures/trained-digits/.")
    ap.add_argument("--calibration-only", action="store_true",
                    help="write only calibration.safetensors for the committed weights (no training)")
    ap.add_argument("--spread", action="store_true",
                    help="train and export models/fixtures/spread-digits/ instead (SPREAD_ARCH, SPREAD_RECIPE)")
    args = ap.parse_args()
    if args.calibration_only:
        write_calibration(SPREAD_OUT, SPREAD_CALIBRATION) if args.spread else write_calibration(OUT)
    elif args.spread:
        main_spread()
    else:
        main()
