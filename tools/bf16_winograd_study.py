#!/usr/bin/env python3
"""What BF16 would cost a Winograd layer in accuracy, before any kernel is written.

A BF16 Winograd layer would round the GEMM operands to bf16: the transformed input tiles
`B^T d B` and the transformed filters `G g G^T` (Lavin & Gray 2016), with the transforms
and the accumulation in f32. The transforms mix values of different magnitudes, and the
larger the tile the larger the transform's entries, so the rounding of the transformed
operands is amplified on the way back (`A^T . A`). This script measures it on one RepVGG
layer shape against the exact (f64) convolution, beside the direct BF16 convolution the
runtime runs (inputs and weights rounded once, exact products, f32 sums) and FP32 direct.

Points: F(2,3) {0, 1, -1}; F(4,3) {0, 1, -1, 2, -2}; F(6,3) {0, 1, -1, 2, -2, 1/2, -1/2}
(Lavin & Gray's and wincnn's usual choices; the runtime's FP32 F(4,3) uses sqrt(2)
points, which only help). numpy only:

    python3 tools/bf16_winograd_study.py [--channels 192] [--size 28] [--seed 0]
"""

import argparse

import numpy as np


def bf16(x):
    """Round float32 values to bfloat16 (nearest, ties to even), returned as float32."""
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    lsb = (bits >> 16) & 1
    rounded = ((bits + 0x7FFF + lsb) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def cook_toom(m, r, points):
    """A^T (m x n), G (n x r), B^T (n x n) of F(m, r) on `points` plus infinity (n = m + r - 1)."""
    n = m + r - 1
    p = np.array(points, dtype=np.float64)
    assert len(p) == n - 1
    # Rows of the Vandermonde-style evaluation at the finite points, then the point at infinity.
    def vander(cols):
        v = np.zeros((n, cols))
        for i, x in enumerate(p):
            v[i] = x ** np.arange(cols)
        v[n - 1, cols - 1] = 1.0
        return v

    at = vander(m).T  # m x n
    g = vander(r)  # n x r
    # B^T from the interpolation: the inverse of the full evaluation matrix, transposed,
    # with the normalisation folded into G so that A^T [(G g) * (B^T d)] = conv.
    full = vander(n)  # n x n
    inv = np.linalg.inv(full)
    bt = inv.T
    return at, g, bt


def conv_direct(x, w, dtype):
    """3x3 convolution, padding 1: x [C, H, W], w [K, C, 3, 3] -> [K, H, W] in `dtype`."""
    c, h, wd = x.shape
    xp = np.zeros((c, h + 2, wd + 2), dtype=dtype)
    xp[:, 1:-1, 1:-1] = x
    out = np.zeros((w.shape[0], h, wd), dtype=dtype)
    for ky in range(3):
        for kx in range(3):
            patch = xp[:, ky : ky + h, kx : kx + wd].reshape(c, -1)
            out += (w[:, :, ky, kx].astype(dtype) @ patch.astype(dtype)).reshape(out.shape)
    return out


def conv_winograd(x, w, m, points, round_operands):
    """F(m, 3) Winograd in f32, the GEMM operands optionally rounded to bf16."""
    at, g, bt = (t.astype(np.float32) for t in cook_toom(m, 3, points))
    n = m + 2
    c, h, wd = x.shape
    k = w.shape[0]
    th, tw = -(-h // m), -(-wd // m)
    xp = np.zeros((c, th * m + 2, tw * m + 2), dtype=np.float32)
    xp[:, 1 : h + 1, 1 : wd + 1] = x
    u = np.einsum("ij,kcjl,ml->kcim", g, w.astype(np.float32), g)  # [K, C, n, n]
    out = np.zeros((k, th * m, tw * m), dtype=np.float32)
    for ty in range(th):
        for tx in range(tw):
            d = xp[:, ty * m : ty * m + n, tx * m : tx * m + n]
            v = np.einsum("ij,cjl,ml->cim", bt, d, bt)  # [C, n, n]
            uu, vv = (bf16(u), bf16(v)) if round_operands else (u, v)
            mprod = np.einsum("kcij,cij->kij", uu, vv).astype(np.float32)
            y = np.einsum("ij,kjl,ml->kim", at, mprod, at)
            out[:, ty * m : ty * m + m, tx * m : tx * m + m] = y
    return out[:, :h, :wd]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=192)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    c = k = args.channels
    # A ReLU'd input and He-initialised weights, as between RepVGG layers.
    x = np.maximum(rng.standard_normal((c, args.size, args.size)), 0).astype(np.float32)
    w = (rng.standard_normal((k, c, 3, 3)) * np.sqrt(2.0 / (9 * c))).astype(np.float32)
    exact = conv_direct(x.astype(np.float64), w.astype(np.float64), np.float64)
    scale = np.abs(exact).max()

    def report(name, y):
        err = np.abs(y.astype(np.float64) - exact)
        print(f"| {name} | {err.max() / scale:.2e} | {np.sqrt((err ** 2).mean()) / np.sqrt((exact ** 2).mean()):.2e} |")

    print(f"{c} -> {k} channels at {args.size}x{args.size}, seed {args.seed}: error against the exact convolution")
    print("| variant | max abs / max abs(y) | RMS / RMS(y) |")
    print("|---|---:|---:|")
    report("FP32 direct", conv_direct(x, w, np.float32))
    report("BF16 direct (runtime)", conv_direct(bf16(x), bf16(w), np.float32))
    for m, points in [(2, [0, 1, -1]), (4, [0, 1, -1, 2, -2]), (6, [0, 1, -1, 2, -2, 0.5, -0.5])]:
        report(f"FP32 F({m},3)", conv_winograd(x, w, m, points, False))
        report(f"BF16 F({m},3)", conv_winograd(x, w, m, points, True))


if __name__ == "__main__":
    main()
