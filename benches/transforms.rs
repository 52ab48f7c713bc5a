//! Winograd tile transforms on RepVGG-A0/B0 layer shapes, per instruction set this CPU
//! runs, with the batched GEMM they feed for scale.
//!
//! Each benchmark transforms a whole layer (every tile of every 16-channel block) so the
//! numbers compare directly with the layer's GEMM: `input` and `output` report tiles/s
//! (one tile = alpha^2 positions of 16 channels) in the `*_tiles` groups and bytes moved
//! (read + written) in the `*_bytes` groups; `gemm` is the batched GEMM of the same layer
//! through matrixmultiply (alpha^2 products of K x C by C x tiles), reported in FLOP/s of
//! the multiplies it performs.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use repvgg::simd::layout::CHANNEL_BLOCK;
use repvgg::simd::{Dispatch, dispatch};
use repvgg::winograd::{Variant, input_tile, output_tile};
use std::hint::black_box;

/// (name, channels, map side): A0 stages 1-3 and B0 stage 3.
const SHAPES: [(&str, usize, usize); 4] =
    [("a0_s1_48x56", 48, 56), ("a0_s2_96x28", 96, 28), ("a0_s3_192x14", 192, 14), ("b0_s3_256x14", 256, 14)];
const VARIANTS: [Variant; 3] = [Variant::F2, Variant::F4, Variant::F6];

struct Layer {
    isa: Dispatch,
    variant: Variant,
    channels: usize,
    side: usize,
    tiles_per_side: usize,
}

impl Layer {
    fn new(isa: Dispatch, variant: Variant, channels: usize, side: usize) -> Layer {
        Layer { isa, variant, channels, side, tiles_per_side: side.div_ceil(variant.m()) }
    }
    fn channel_blocks(&self) -> usize {
        self.channels / CHANNEL_BLOCK
    }
    fn tiles(&self) -> usize {
        self.tiles_per_side * self.tiles_per_side
    }
    fn positions(&self) -> usize {
        self.variant.alpha() * self.variant.alpha()
    }
    /// Channel-blocked activation of the layer.
    fn activation(&self) -> Vec<f32> {
        (0..self.channel_blocks() * self.side * self.side * CHANNEL_BLOCK)
            .map(|i| (i % 97) as f32 * 0.01 - 0.5)
            .collect()
    }
    /// Transformed tiles, `[cb][tile][p][16]`.
    fn transformed(&self) -> Vec<f32> {
        (0..self.channel_blocks() * self.tiles() * self.positions() * CHANNEL_BLOCK)
            .map(|i| (i % 89) as f32 * 0.01 - 0.4)
            .collect()
    }

    fn input(&self, src: &[f32], dst: &mut [f32]) {
        let (m, s, plane) = (self.variant.m(), self.side, self.side * self.side * CHANNEL_BLOCK);
        let tile_len = self.positions() * CHANNEL_BLOCK;
        for cb in 0..self.channel_blocks() {
            for t in 0..self.tiles() {
                let (ty, tx) = (t / self.tiles_per_side, t % self.tiles_per_side);
                let out = &mut dst[(cb * self.tiles() + t) * tile_len..];
                let (y0, x0) = ((ty * m) as isize - 1, (tx * m) as isize - 1);
                let src = &src[cb * plane..(cb + 1) * plane];
                dispatch!(self.isa, |k| input_tile(
                    k,
                    self.variant,
                    src,
                    s * CHANNEL_BLOCK,
                    s,
                    s,
                    y0,
                    x0,
                    out,
                    CHANNEL_BLOCK
                ));
            }
        }
    }

    fn output(&self, src: &[f32], dst: &mut [f32]) {
        let (m, s, plane) = (self.variant.m(), self.side, self.side * self.side * CHANNEL_BLOCK);
        let tile_len = self.positions() * CHANNEL_BLOCK;
        let bias = [0.1f32; CHANNEL_BLOCK];
        for cb in 0..self.channel_blocks() {
            for t in 0..self.tiles() {
                let (ty, tx) = (t / self.tiles_per_side, t % self.tiles_per_side);
                let (rows, cols) = (m.min(s - ty * m), m.min(s - tx * m));
                let out = &mut dst[cb * plane + (ty * m * s + tx * m) * CHANNEL_BLOCK..];
                let src = &src[(cb * self.tiles() + t) * tile_len..];
                dispatch!(self.isa, |k| output_tile(
                    k,
                    self.variant,
                    src,
                    CHANNEL_BLOCK,
                    &bias,
                    true,
                    out,
                    s * CHANNEL_BLOCK,
                    rows,
                    cols
                ));
            }
        }
    }

    /// Bytes an input transform reads (the map once, plus tile overlap) and writes.
    fn input_bytes(&self) -> u64 {
        let a = self.variant.alpha();
        ((self.tiles() * a * a * 2) * self.channel_blocks() * CHANNEL_BLOCK * 4) as u64
    }
    fn output_bytes(&self) -> u64 {
        ((self.tiles() * self.positions() + self.side * self.side) * self.channel_blocks() * CHANNEL_BLOCK * 4) as u64
    }
}

fn transforms(c: &mut Criterion) {
    for (unit, group_name) in [("tiles", "winograd_tiles"), ("bytes", "winograd_bytes")] {
        let mut group = c.benchmark_group(group_name);
        group.sample_size(20).warm_up_time(std::time::Duration::from_millis(300));
        group.measurement_time(std::time::Duration::from_millis(800));
        for (name, channels, side) in SHAPES {
            for (v, isa) in
                VARIANTS.into_iter().flat_map(|v| Dispatch::all_supported().into_iter().map(move |d| (v, d)))
            {
                let layer = Layer::new(isa, v, channels, side);
                let act = layer.activation();
                let mut tr = layer.transformed();
                let tiles = (layer.tiles() * layer.channel_blocks()) as u64;
                let id = |op: &str| BenchmarkId::new(format!("{op}/{v:?}/{}", isa.isa()), name);
                group.throughput(if unit == "tiles" {
                    Throughput::Elements(tiles)
                } else {
                    Throughput::Bytes(layer.input_bytes())
                });
                group.bench_function(id("input"), |b| b.iter(|| layer.input(black_box(&act), &mut tr)));
                let mut out = layer.activation();
                group.throughput(if unit == "tiles" {
                    Throughput::Elements(tiles)
                } else {
                    Throughput::Bytes(layer.output_bytes())
                });
                group.bench_function(id("output"), |b| b.iter(|| layer.output(black_box(&tr), &mut out)));
            }
        }
        group.finish();
    }
}

/// The batched GEMM of the same layer (K = C), for scale: alpha^2 sgemms of C x C by C x tiles.
fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("winograd_gemm");
    group.sample_size(20).warm_up_time(std::time::Duration::from_millis(300));
    group.measurement_time(std::time::Duration::from_millis(800));
    for (name, channels, side) in SHAPES {
        for v in VARIANTS {
            let layer = Layer::new(Dispatch::best(), v, channels, side);
            let (k, t, p) = (channels, layer.tiles(), layer.positions());
            let u: Vec<f32> = (0..p * k * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let vv: Vec<f32> = (0..p * k * t).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut m = vec![0f32; p * k * t];
            group.throughput(Throughput::Elements((2 * p * k * k * t) as u64));
            group.bench_function(BenchmarkId::new(format!("matrixmultiply/{v:?}"), name), |b| {
                b.iter(|| {
                    for pos in 0..p {
                        // SAFETY: the three buffers hold p * (k x k), (k x t), (k x t) row-major matrices.
                        unsafe {
                            matrixmultiply::sgemm(
                                k,
                                k,
                                t,
                                1.0,
                                u[pos * k * k..].as_ptr(),
                                k as isize,
                                1,
                                vv[pos * k * t..].as_ptr(),
                                t as isize,
                                1,
                                0.0,
                                m[pos * k * t..].as_mut_ptr(),
                                t as isize,
                                1,
                            );
                        }
                    }
                    black_box(&m);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, transforms, gemm);
criterion_main!(benches);
