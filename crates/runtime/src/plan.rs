//! Execution plans: per layer, the algorithm and the buffer sizes, for one
//! (batch, height, width).

use std::fmt;
use std::str::FromStr;

use repvgg_graph::{ConvLayer, Network};
use repvgg_simd::Isa;
use repvgg_winograd::Variant;

use crate::error::{Error, Result};
use crate::exec::direct::{self, DirectShape, DirectWeights, InputLayout};
use crate::exec::pointwise;
use crate::exec::winograd::{self as wino, WinogradShape};
use crate::kernels::{CHANNEL_BLOCK, channel_blocks};

/// A convolution algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Algo {
    /// Implicit-im2col GEMM (any stride).
    Direct,
    /// Winograd F(2,3).
    F2,
    /// Winograd F(4,3), points 0, +-sqrt(2)/2, +-sqrt(2), inf.
    F4,
    /// Winograd F(6,3).
    F6,
    /// The plain blocked direct convolution for group shapes the packed paths do not take.
    Generic,
}

impl Algo {
    pub const ALL: [Algo; 5] = [Algo::Direct, Algo::F2, Algo::F4, Algo::F6, Algo::Generic];

    /// The Winograd variant, if this is a Winograd algorithm.
    pub fn variant(self) -> Option<Variant> {
        match self {
            Algo::F2 => Some(Variant::F2),
            Algo::F4 => Some(Variant::F4),
            Algo::F6 => Some(Variant::F6),
            Algo::Direct | Algo::Generic => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algo::Direct => "direct",
            Algo::F2 => "f2",
            Algo::F4 => "f4",
            Algo::F6 => "f6",
            Algo::Generic => "generic",
        }
    }

    /// Index into per-algorithm caches.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Multiplies per output (per input channel and output channel) under this algorithm.
    pub fn multiplies_per_output(self) -> f64 {
        self.variant().map_or(9.0, Variant::multiplies_per_output)
    }

    /// True if the algorithm can run this layer.
    pub fn supports(self, layer: &ConvLayer) -> bool {
        let cg = layer.in_channels / layer.groups;
        let layout = InputLayout::for_layer(layer.index);
        match self {
            Algo::Generic => layer.index != 0,
            Algo::Direct => DirectWeights::supports(layout, layer.out_channels, cg, layer.groups),
            Algo::F2 | Algo::F4 | Algo::F6 => {
                layer.stride == 1 && layer.index != 0 && wino::supports(layer.out_channels, cg, layer.groups)
            }
        }
    }
}

impl fmt::Display for Algo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlgoChoice {
    /// The default table (a cost model calibrated on our benchmarks), or measurement
    /// when the session autotunes.
    #[default]
    Auto,
    /// This algorithm wherever it applies (stride-2 layers and the stem fall back to
    /// direct, unsupported group shapes to generic).
    Force(Algo),
}

impl FromStr for AlgoChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => AlgoChoice::Auto,
            "direct" => AlgoChoice::Force(Algo::Direct),
            "f2" => AlgoChoice::Force(Algo::F2),
            "f4" => AlgoChoice::Force(Algo::F4),
            "f6" => AlgoChoice::Force(Algo::F6),
            "generic" => AlgoChoice::Force(Algo::Generic),
            other => {
                return Err(Error::Option(format!("unknown algorithm `{other}` (auto, direct, f2, f4, f6, generic)")));
            }
        })
    }
}

/// One layer placed at a concrete size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    pub index: usize,
    pub name: String,
    pub algo: Algo,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    pub stride: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub se: bool,
    pub macs: u64,
}

impl LayerPlan {
    pub fn direct_shape(&self, n: usize) -> DirectShape {
        DirectShape {
            n,
            kernel: 3,
            in_channels: self.in_channels,
            h: self.h,
            w: self.w,
            out_channels: self.out_channels,
            groups: self.groups,
            stride: self.stride,
            oh: self.oh,
            ow: self.ow,
        }
    }

    pub fn winograd_shape(&self, n: usize) -> WinogradShape {
        WinogradShape {
            n,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            groups: self.groups,
            h: self.h,
            w: self.w,
        }
    }

    /// Multiplies the algorithm performs for one image (tile overhang included).
    pub fn multiplies(&self) -> u64 {
        let pairs = (self.in_channels / self.groups * self.out_channels) as u64;
        self.algo.variant().map_or(self.macs, |v| v.multiplies(pairs, self.h, self.w))
    }

    /// Floats of the output activation (channel-blocked) for a batch of `n`.
    fn output_len(&self, n: usize) -> usize {
        n * channel_blocks(self.out_channels) * self.oh * self.ow * CHANNEL_BLOCK
    }
}

/// An execution plan for one (batch, height, width).
#[derive(Debug, Clone)]
pub struct Plan {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub layers: Vec<LayerPlan>,
    /// Floats of each ping-pong activation buffer.
    pub activation_len: usize,
    /// Floats of the shared buffer of packed column panels: transformed inputs (Winograd)
    /// or im2col panels (direct), and the NHWC copy of the network input.
    pub transformed_len: usize,
    /// Floats of each worker's scratch.
    pub scratch_len: usize,
    /// Floats of the SE / pooling scratch.
    pub pooled_len: usize,
}

impl Plan {
    /// Lays out `network` at `n x h x w`, choosing each layer's algorithm with `choose`.
    pub fn new(network: &Network, n: usize, h: usize, w: usize, mut choose: impl FnMut(&LayerPlan) -> Algo) -> Plan {
        let shapes = network.shapes(h, w).expect("input size was validated");
        let mut layers = Vec::with_capacity(shapes.len());
        for (layer, s) in network.layers.iter().zip(&shapes) {
            let mut lp = LayerPlan {
                index: layer.index,
                name: s.name.clone(),
                algo: Algo::Direct,
                in_channels: s.in_channels,
                out_channels: s.out_channels,
                groups: s.groups,
                stride: s.stride,
                h: s.in_h,
                w: s.in_w,
                oh: s.out_h,
                ow: s.out_w,
                se: s.se,
                macs: layer.conv_macs(s.out_h, s.out_w).expect("shapes() checked the count"),
            };
            let wanted = choose(&lp);
            lp.algo = resolve(wanted, layer);
            layers.push(lp);
        }
        let mut plan = Plan { n, h, w, layers, activation_len: 0, transformed_len: 0, scratch_len: 0, pooled_len: 0 };
        plan.size_buffers(network);
        plan
    }

    fn size_buffers(&mut self, network: &Network) {
        let n = self.n;
        for (lp, layer) in self.layers.iter().zip(&network.layers) {
            self.activation_len = self.activation_len.max(lp.output_len(n));
            match lp.algo.variant() {
                Some(v) => {
                    self.transformed_len = self.transformed_len.max(wino::shared_len(v, &lp.winograd_shape(n)));
                    self.scratch_len = self.scratch_len.max(wino::scratch_len(v, &lp.winograd_shape(n)));
                }
                None if lp.algo == Algo::Direct => {
                    let layout = InputLayout::for_layer(lp.index);
                    let shape = lp.direct_shape(n);
                    self.transformed_len = self.transformed_len.max(direct::shared_len(layout, &shape));
                    self.scratch_len = self.scratch_len.max(direct::scratch_len(layout, &shape));
                }
                None => {}
            }
            if let Some(r) = layer.se_channels {
                self.pooled_len = self.pooled_len.max(pointwise::se_scratch_len(n, lp.out_channels, r));
            }
        }
        let features = network.feature_channels();
        self.pooled_len = self.pooled_len.max(n * channel_blocks(features) * CHANNEL_BLOCK);
    }
}

/// The algorithm actually used for a request: stride-2 layers and the stem can only run
/// direct; group shapes without whole channel blocks only generic.
fn resolve(wanted: Algo, layer: &ConvLayer) -> Algo {
    if wanted.supports(layer) {
        wanted
    } else if Algo::Direct.supports(layer) {
        Algo::Direct
    } else {
        Algo::Generic
    }
}

/// What streaming one float of (transformed) weights costs, in the cost model's FMA
/// slots: the one constant of [`default_algo_with`] that differs between the machines we
/// measured, because it relates the memory system to the kernel set's arithmetic.
///
/// - 0.3 on the Zen 4 it was first calibrated on, and for every CPU we have not measured;
/// - 1.5 with the AVX-512 and AVX2 kernels on Intel: on the Xeon of 2026-12-02 the
///   batch-1 weight stream runs far below DRAM bandwidth, and `--autotune` picked F(2,3)
///   over F(4,3) on 14x14 maps and F(4,3) over F(6,3) on 28x28 and 56x56 ones. Any
///   value from 1.1 to 4.3 makes those choices on A0, B0 and B1g4 (the test below);
/// - 0.3 with the portable kernels everywhere: their slot (no FMA, narrower vectors)
///   costs several times an AVX-512 one, so the same stream weighs that much less, and
///   1.5 measured slower there.
///
/// It is chosen from the vendor and the kernel set, never by timing, so that a plan is the
/// same on every run on one machine; `--autotune` is there to measure.
pub fn weight_stream_cost(vendor: crate::cpu::Vendor, isa: Isa) -> f64 {
    use crate::cpu::Vendor;
    match (vendor, isa) {
        (Vendor::Intel, Isa::Avx512 | Isa::Avx2) => 1.5,
        _ => 0.3,
    }
}

/// The default algorithm table for this CPU and kernel set: [`default_algo_with`] at
/// their [`weight_stream_cost`].
pub fn default_algo(lp: &LayerPlan, n: usize, isa: Isa) -> Algo {
    default_algo_with(lp, n, weight_stream_cost(crate::cpu::vendor(), isa))
}

/// The default algorithm table: a cost model whose constants come from our benchmarks
/// on a Zen 4 core (`benches/transforms.rs`, `benches/layers.rs`, `repvgg bench`).
///
/// Cost is counted in 16-wide FMA slots (cycles of one core):
///
/// - the GEMM: `K C alpha^2 T / 16` for Winograd over `T` tiles, or `K C 9 P / 16` for
///   direct over `P` pixels (divided by 0.9: im2col packing and a longer reduction);
/// - the transforms: a fixed number of slots per tile and channel block, measured as
///   ns/tile times 3.6 GHz (F(2,3) 65 + 47, F(4,3) 216 + 137, F(6,3) 504 + 396 for input
///   + output);
/// - streaming the (transformed) weights: `stream` slots per float. At batch 1, a
///   network's Winograd filters exceed the L3 cache, so every layer reads its own from
///   DRAM once per run. This term is what makes F(4,3) beat F(6,3) on 14x14 maps: they
///   multiply equally often there (tile overhang), but F(6,3)'s filters are 1.8x larger;
///   where the stream costs more, it makes F(2,3) (filters 16/36 of F(4,3)'s) win there.
pub fn default_algo_with(lp: &LayerPlan, n: usize, stream: f64) -> Algo {
    if lp.stride != 1 || lp.index == 0 {
        return Algo::Direct;
    }
    let (cb, kb) =
        (channel_blocks(lp.in_channels / lp.groups) as f64, channel_blocks(lp.out_channels / lp.groups) as f64);
    let groups = lp.groups as f64;
    let weight_floats = |positions: usize| groups * kb * cb * 256.0 * positions as f64;
    let pixels = (n * lp.oh * lp.ow) as f64;
    let direct = groups * kb * cb * 16.0 * 9.0 * pixels / 0.9 + stream * weight_floats(9);
    let winograd = |v: Variant, input_slots: f64, output_slots: f64| {
        let positions = v.alpha() * v.alpha();
        let tiles = (n * lp.h.div_ceil(v.m()) * lp.w.div_ceil(v.m())) as f64;
        let gemm = groups * kb * cb * 16.0 * positions as f64 * tiles;
        gemm + tiles * groups * (cb * input_slots + kb * output_slots) + stream * weight_floats(positions)
    };
    let candidates = [
        (Algo::Direct, direct),
        (Algo::F2, winograd(Variant::F2, 65.0, 47.0)),
        (Algo::F4, winograd(Variant::F4, 216.0, 137.0)),
        (Algo::F6, winograd(Variant::F6, 504.0, 396.0)),
    ];
    candidates.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map(|c| c.0).expect("candidates")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Vendor;

    /// The stride-1 layers' algorithms (the stem and stride-2 layers are always direct),
    /// with their output side.
    fn choices(arch: &str, n: usize, stream: f64) -> Vec<(usize, Algo)> {
        let network = Network::from_name(arch).unwrap();
        let plan = Plan::new(&network, n, 224, 224, |lp| default_algo_with(lp, n, stream));
        plan.layers.iter().filter(|l| l.stride == 1 && l.index > 0).map(|l| (l.oh, l.algo)).collect()
    }

    #[test]
    fn the_stream_cost_picks_the_tile_size() {
        let amd = weight_stream_cost(Vendor::Amd, Isa::Avx512);
        let intel = weight_stream_cost(Vendor::Intel, Isa::Avx512);
        assert_eq!(weight_stream_cost(Vendor::Intel, Isa::Avx2), intel);
        for arch in ["A0", "B0", "B1g4"] {
            // Where the weight stream is dear, the smallest filters win on 14x14 maps and
            // F(4,3) everywhere else (what `--autotune` chose on the Intel Xeon).
            // Any cost from 1.1 to 4.3 slots per float makes the same choices.
            for stream in [intel, 1.15, 4.3] {
                for (side, algo) in choices(arch, 1, stream) {
                    assert_eq!(algo, if side == 14 { Algo::F2 } else { Algo::F4 }, "{arch} at {side}x{side}, {stream}");
                }
            }
            // The Zen 4 calibration: F(4,3) on 14x14 maps, where F(6,3)'s tiles overhang.
            for (side, algo) in choices(arch, 1, amd) {
                if side == 14 {
                    assert_eq!(algo, Algo::F4, "{arch} at 14x14");
                }
            }
        }
        assert!(choices("A0", 1, amd).contains(&(56, Algo::F6)));
        assert_eq!(weight_stream_cost(Vendor::Other, Isa::Avx512), amd);
        assert_eq!(weight_stream_cost(Vendor::Intel, Isa::Portable), amd);
    }
}
