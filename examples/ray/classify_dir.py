"""Classifies a directory of JPEG/PNG images with Ray Data, one repvgg session per worker:
the Python package scaled past one process (and, on a Ray cluster, past one machine).

    python examples/ray/classify_dir.py IMAGES_DIR [--weights W.safetensors] [--workers 2]
        [--threads 1] [--batch 16] [--make 256]

`--make N` first writes N synthetic 320x240 PNGs into IMAGES_DIR (no downloads), which
is how the figure in docs/python.md was measured. Without `--weights` the workers run RepVGG-A0
with synthetic weights (1000 classes), so the labels are meaningless but the work is
real. Needs `pip install "ray[data]" pillow` beside the repvgg package; not run in CI.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import ray

import repvgg


class Classifier:
    """Holds one model and one session for the life of a Ray worker."""

    def __init__(self, weights: str | None, threads: int) -> None:
        model = repvgg.Model.load(weights) if weights else repvgg.Model.synthetic("A0")
        self.session = model.session(threads=threads)
        self.labels = repvgg.imagenet_labels()

    def __call__(self, batch: dict) -> dict:
        x = np.stack([repvgg.preprocess(data, str(path)) for data, path in zip(batch["bytes"], batch["path"])])
        logits = self.session.run(x)
        best = logits.argmax(axis=1)
        return {"path": batch["path"], "class": best, "label": [self.labels[i] for i in best]}


def make_images(directory: Path, count: int) -> None:
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        base = rng.integers(0, 256, size=(1, 1, 3))
        ramp = np.linspace(0, 255, 320)[None, :, None] * rng.random((1, 1, 3))
        img = np.clip(base * 0.5 + ramp * 0.5 + rng.normal(0, 20, (240, 320, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(directory / f"img{i:04d}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", type=Path)
    p.add_argument("--weights")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="session threads per worker")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--make", type=int, default=0, metavar="N")
    args = p.parse_args()
    if args.make:
        make_images(args.images, args.make)
    # One CPU beyond the workers' for the tasks that read the files: with none left over,
    # the readers wait for the workers and the workers for input.
    ray.init(num_cpus=args.workers * args.threads + 1, include_dashboard=False, log_to_driver=False)
    ds = ray.data.read_binary_files(str(args.images), include_paths=True)
    start = time.perf_counter()
    rows = ds.map_batches(
        Classifier,
        fn_constructor_args=(args.weights, args.threads),
        batch_size=args.batch,
        concurrency=args.workers,
        num_cpus=args.threads,
    ).take_all()
    seconds = time.perf_counter() - start
    print(f"{len(rows)} images in {seconds:.2f} s: {len(rows) / seconds:.1f} images/s "
          f"({args.workers} workers x {args.threads} threads, batches of {args.batch})")
    for row in rows[:3]:
        print(f"  {Path(row['path']).name}: class {row['class']} ({row['label']})")


if __name__ == "__main__":
    main()
