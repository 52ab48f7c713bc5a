"""Writes the PyTorch-checkpoint fixtures (models/fixtures/tiny-groups/*.pth) from the
training-form weights in models/fixtures/tiny-groups/train.safetensors, with torch.save
itself, so that the runtime's `.pth` reader is tested on what PyTorch writes:

- train.pth: a plain state dict, an OrderedDict carrying `_metadata` as
  `model.state_dict()` does (pickle protocol 2, torch.save's default);
- train-wrapped.pth: `{"state_dict": ..., "epoch", "best_acc1", "optimizer", "arch"}`, the
  layout of the official RepVGG repository's training script;
- train-module.pth: `{"model": ...}` with every name prefixed by `module.` (DataParallel),
  written with pickle protocol 4 (FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL);
- hostile-os-system.pth: a checkpoint whose pickle calls `os.system` (it would run
  `true` under torch.load(weights_only=False)); the runtime must refuse it unexecuted.

Every BatchNorm keeps its int64 `num_batches_tracked`, as real checkpoints do. The
weights are float32, bitwise those of the safetensors file.

    /path/to/venv-with-torch/bin/python tools/make_pth_fixtures.py
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
DIR = ROOT / "models" / "fixtures" / "tiny-groups"


class RunsACommand:
    """Pickles as a call of os.system: what a malicious checkpoint does."""

    def __reduce__(self):
        return (os.system, ("true",))


def state_dict() -> collections.OrderedDict:
    tensors = load_file(DIR / "train.safetensors")
    assert any(k.endswith("num_batches_tracked") and v.dtype == torch.int64 for k, v in tensors.items())
    sd = collections.OrderedDict((k, tensors[k].contiguous()) for k in sorted(tensors))
    # What Module.state_dict() attaches: each module's version, pickled as the dict's state.
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    for name in sorted({k.rsplit(".", 1)[0] for k in tensors}):
        sd._metadata[name] = {"version": 2} if name.endswith("bn") else {"version": 1}
    return sd


def main() -> None:
    torch.manual_seed(0)
    sd = state_dict()
    torch.save(sd, DIR / "train.pth")
    torch.save(
        {
            "epoch": 120,
            "arch": "tiny-groups",
            "state_dict": sd,
            "best_acc1": 72.41,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "nesterov": False, "params": [0, 1, 2]}]},
        },
        DIR / "train-wrapped.pth",
    )
    module = collections.OrderedDict(("module." + k, v) for k, v in sd.items())
    torch.save({"model": module}, DIR / "train-module.pth", pickle_protocol=4)
    torch.save({"state_dict": {"linear.bias": torch.zeros(10)}, "hook": RunsACommand()}, DIR / "hostile-os-system.pth")
    for name in ["train.pth", "train-wrapped.pth", "train-module.pth", "hostile-os-system.pth"]:
        print(f"{DIR / name}: {(DIR / name).stat().st_size} bytes")
    # The weights fuzzer's seeds: a small deploy checkpoint as a .pth, and a truncated copy.
    seeds = ROOT / "fuzz" / "seeds" / "weights"
    tiny = load_file(seeds / "tiny-Official-Deploy-F32.safetensors")
    seed = seeds / "tiny-Official-Deploy-F32.pth"
    torch.save(collections.OrderedDict(sorted(tiny.items())), seed)
    data = seed.read_bytes()
    (seeds / "tiny-Official-Deploy-F32.pth.truncated").write_bytes(data[: len(data) * 2 // 3])
    # The reader's own fuzzer (fuzz/fuzz_targets/pth.rs): the same seed, and one it refuses.
    pth_seeds = ROOT / "fuzz" / "seeds" / "pth"
    pth_seeds.mkdir(exist_ok=True)
    (pth_seeds / seed.name).write_bytes(data)
    (pth_seeds / "hostile-os-system.pth.refused").write_bytes((DIR / "hostile-os-system.pth").read_bytes())
    print(f"{seed}: {len(data)} bytes")


if __name__ == "__main__":
    main()
