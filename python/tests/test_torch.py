"""`repvgg.export` and torch tensors as inputs, against PyTorch itself: runs where torch is
installed (the development machine has it; CI skips it, torch being a multi-GB install)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")
# tools/train_tiny.py, which defines the PyTorch model, imports scikit-learn's digits.
pytest.importorskip("sklearn", reason="scikit-learn is not installed (tools/train_tiny.py needs it)")

import repvgg  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "models" / "fixtures" / "trained-digits"


@pytest.fixture(scope="module")
def trained():
    sys.path.insert(0, str(REPO / "tools"))
    import train_tiny

    net = train_tiny.RepVGG(train_tiny.ARCH)
    net.load_state_dict(safetensors_torch.load_file(str(FIXTURE / "train.safetensors")))
    net.eval()
    x = safetensors_torch.load_file(str(FIXTURE / "input.safetensors"))["input"].float()
    with torch.no_grad():
        return net, x, net(x).numpy()


@pytest.mark.parametrize("form", ["module", "data-parallel state dict"])
def test_export_reproduces_pytorch(trained, tmp_path, form):
    net, x, want = trained
    source = net if form == "module" else {f"module.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "exported.safetensors"
    repvgg.export(source, path)
    got = repvgg.Model.load(path, arch=str(FIXTURE / "arch.toml")).session(threads=1).run(x)
    assert float(np.abs(got - want).max() / np.abs(want).max()) < 1e-4


def test_a_cpu_tensor_is_read_without_a_copy(trained):
    _, x, want = trained
    assert np.shares_memory(np.ascontiguousarray(x, dtype=np.float32), x.numpy())
    sess = repvgg.Model.load(FIXTURE / "train.safetensors", arch=str(FIXTURE / "arch.toml")).session(threads=1)
    np.testing.assert_array_equal(sess.run(x), sess.run(x.numpy()))
