//! Execution plans: per layer, the algorithm and the buffer sizes, for one
//! (batch, height, width).

use std::fmt;
use std::str::FromStr;

use repvgg_graph::Network;
use repvgg_simd::Isa;

use crate::cpu::Vendor;
use crate::error::{Error, Result};
use crate::exec::{self, ConvExecutor, ConvShape, CostModel, InputLayout, REGISTRY, pointwise};
use repvgg_simd::layout::{CHANNEL_BLOCK, channel_blocks};

/// A convolution algorithm: the name of a plan entry (its behaviour is its executor's,
/// `crate::exec`).
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
    /// Polyphase Winograd for stride-2 layers: F(2,2) on the even samples, 2x2 output
    /// tiles (measured slower than direct on RepVGG's layers; for `--autotune` and
    /// comparison).
    P2,
    /// The plain blocked direct convolution for group shapes the packed paths do not take.
    Generic,
}

impl Algo {
    pub const ALL: [Algo; 6] = [Algo::Direct, Algo::F2, Algo::F4, Algo::F6, Algo::P2, Algo::Generic];

    /// The name `--algo` takes.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Direct => "direct",
            Algo::F2 => "f2",
            Algo::F4 => "f4",
            Algo::F6 => "f6",
            Algo::P2 => "p2",
            Algo::Generic => "generic",
        }
    }
}

impl fmt::Display for Algo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The arithmetic a layer runs in. Each keeps results bitwise identical for any thread
/// count and, in INT8, for every kernel set.
///
/// Serialized (`repvgg quantize --json`, `repvgg bench --json`) by the names `--precision`
/// takes: `f32`, `int8`, `bf16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// FP32 throughout: the error bounds of the tests against the f64 reference.
    #[default]
    F32,
    /// u8 activations and per-channel s8 weights of a quantized model, summed exactly in
    /// i32 (`repvgg quantize`, [`Model::quantize`](crate::Model::quantize)); the stem and
    /// the layers the model keeps in FP32 run FP32.
    Int8,
    /// bf16 activations and weights with f32 sums, bias and ReLU (AVX512-BF16 or AMX-BF16
    /// CPUs only; a float model's own weights rounded at load): logits within `1e-2 x
    /// max(1, max |logit|)` of FP32 (`docs/precision.md`). Layers the BF16 executor cannot
    /// run and SE blocks run FP32; the classifier sums in f32 over bf16-rounded weights.
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Int8, Precision::Bf16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
            Precision::Bf16 => "bf16",
        }
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let name = s.trim().to_ascii_lowercase();
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| Error::Option(format!("unknown precision `{s}` (f32, int8, bf16)")))
    }
}

impl fmt::Display for Precision {
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
        let name = s.to_ascii_lowercase();
        if name == "auto" {
            return Ok(AlgoChoice::Auto);
        }
        match Algo::ALL.into_iter().find(|a| a.name() == name) {
            Some(algo) => Ok(AlgoChoice::Force(algo)),
            None => {
                let names: Vec<&str> = Algo::ALL.iter().map(|a| a.name()).collect();
                Err(Error::Option(format!("unknown algorithm `{name}` (auto, {})", names.join(", "))))
            }
        }
    }
}

/// One layer placed at a concrete size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    pub index: usize,
    pub name: String,
    pub algo: Algo,
    pub precision: Precision,
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
    /// How the layer's input is stored: the network input (planar) for the first layer,
    /// the previous layer's channel-blocked output for every other.
    pub(crate) input: InputLayout,
}

impl LayerPlan {
    /// The layer's convolution over a batch of `n`.
    pub(crate) fn shape(&self, n: usize) -> ConvShape {
        ConvShape {
            n,
            kernel: 3,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            groups: self.groups,
            stride: self.stride,
            h: self.h,
            w: self.w,
            oh: self.oh,
            ow: self.ow,
            input: self.input,
        }
    }

    /// The executor that runs this layer, and its registry index.
    pub(crate) fn executor(&self) -> (usize, &'static dyn ConvExecutor) {
        exec::lookup(self.algo, self.precision)
    }

    /// Multiplies the algorithm performs for one image (tile overhang included).
    pub fn multiplies(&self) -> u64 {
        self.executor().1.multiplies(&self.shape(1), self.macs)
    }

    /// Floats of the output activation (channel-blocked) for a batch of `n`.
    pub(crate) fn output_len(&self, n: usize) -> usize {
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

/// The executor a plan asks for at one layer; `None` asks for the fallback.
pub(crate) type Choice = Option<&'static dyn ConvExecutor>;

impl Plan {
    /// The plan a session with `choice` (and no autotuning) runs for `network` at
    /// `n x h x w` with the kernel set `isa`, on this CPU.
    pub fn for_choice(network: &Network, n: usize, h: usize, w: usize, choice: AlgoChoice, isa: Isa) -> Plan {
        match choice {
            AlgoChoice::Force(algo) => {
                let forced = exec::lookup(algo, Precision::F32).1;
                Plan::new(network, n, h, w, isa, |_| Some(forced))
            }
            AlgoChoice::Auto => {
                let model = CostModel { stream: weight_stream_cost(crate::cpu::vendor(), isa) };
                Plan::new(network, n, h, w, isa, |lp| default_executor(lp, n, isa, &model))
            }
        }
    }

    /// Lays out `network` at `n x h x w`, choosing each layer's executor with `choose`;
    /// where it cannot run the layer with `isa`, the fallback ([`REGISTRY`]'s order) does.
    pub(crate) fn new(
        network: &Network,
        n: usize,
        h: usize,
        w: usize,
        isa: Isa,
        mut choose: impl FnMut(&LayerPlan) -> Choice,
    ) -> Plan {
        let shapes = network.shapes(h, w).expect("input size was validated");
        let mut layers = Vec::with_capacity(shapes.len());
        // The first layer reads the network input; each later one its predecessor's output.
        let mut input = InputLayout::Planar;
        for (layer, s) in network.layers.iter().zip(&shapes) {
            let mut lp = LayerPlan {
                index: layer.index,
                name: s.name.clone(),
                algo: Algo::Direct,
                precision: Precision::F32,
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
                input,
            };
            let chosen = resolve(choose(&lp), &lp.shape(n), isa);
            (lp.algo, lp.precision) = (chosen.algo(), chosen.precision());
            layers.push(lp);
            input = InputLayout::Blocked;
        }
        let mut plan = Plan { n, h, w, layers, activation_len: 0, transformed_len: 0, scratch_len: 0, pooled_len: 0 };
        plan.size_buffers(network);
        plan
    }

    /// Runs the layers marked in `layers` (by network index) in `precision` where its
    /// direct executor can, the others as planned.
    pub(crate) fn with_precision(mut self, network: &Network, layers: &[bool], precision: Precision, isa: Isa) -> Plan {
        if precision == Precision::F32 {
            return self;
        }
        let executor = exec::lookup(Algo::Direct, precision).1;
        for lp in &mut self.layers {
            if layers.get(lp.index).copied().unwrap_or(false) && executor.supports(&lp.shape(self.n), isa) {
                (lp.algo, lp.precision) = (executor.algo(), executor.precision());
            }
        }
        (self.activation_len, self.transformed_len, self.scratch_len, self.pooled_len) = (0, 0, 0, 0);
        self.size_buffers(network);
        self
    }

    fn size_buffers(&mut self, network: &Network) {
        let n = self.n;
        for (lp, layer) in self.layers.iter().zip(&network.layers) {
            self.activation_len = self.activation_len.max(lp.output_len(n));
            let (shape, executor) = (lp.shape(n), lp.executor().1);
            self.transformed_len = self.transformed_len.max(executor.shared_len(&shape));
            self.scratch_len = self.scratch_len.max(executor.scratch_len(&shape));
            if let Some(r) = layer.se_channels {
                self.pooled_len = self.pooled_len.max(pointwise::se_scratch_len(n, lp.out_channels, r));
            }
        }
        let features = network.feature_channels();
        self.pooled_len = self.pooled_len.max(n * channel_blocks(features) * CHANNEL_BLOCK);
    }
}

/// The executor actually used for a request: the one asked for if it can run the layer,
/// else the first in [`REGISTRY`] of the same precision that can (direct for stride-2
/// layers and the stem, generic for group shapes without whole channel blocks).
fn resolve(wanted: Choice, shape: &ConvShape, isa: Isa) -> &'static dyn ConvExecutor {
    let precision = wanted.map_or(Precision::F32, |e| e.precision());
    match wanted {
        Some(executor) if executor.supports(shape, isa) => executor,
        _ => REGISTRY
            .iter()
            .copied()
            .find(|e| e.precision() == precision && e.supports(shape, isa))
            .unwrap_or(REGISTRY[REGISTRY.len() - 1]),
    }
}

/// What streaming one float of (transformed) weights costs, in the cost model's FMA
/// slots, per vendor and kernel set: the one constant of the cost model that differs
/// between the machines we measured, because it relates the memory system to the kernel
/// set's arithmetic. Chosen from the vendor and the kernel set, never by timing, so that
/// a plan is the same on every run on one machine; `--autotune` is there to measure.
const WEIGHT_STREAM: &[(Vendor, Isa, f64)] = &[
    // The Zen 4 (2-core AMD EPYC KVM guest, 2 MiB L2 per core, 32 MiB L3) on which the
    // whole cost model was first calibrated (2026-11-27): F(4,3) on 14x14 maps, where
    // F(6,3)'s tiles overhang, F(6,3) on the large ones.
    (Vendor::Amd, Isa::Avx512, 0.3),
    // The Intel Xeon of 2026-12-02: the batch-1 weight stream runs far below DRAM
    // bandwidth, and `--autotune` picked F(2,3) over F(4,3) on 14x14 maps and F(4,3) over
    // F(6,3) on 28x28 and 56x56 ones. Any value from 1.1 to 4.3 makes those choices on A0,
    // B0 and B1g4 (the test below). New / old time at batch 1 (fe48f47): A0 0.824 (two
    // threads) and 0.842 (one), B0 0.888 and 0.818, B1g4 0.895; batch-8 plans unchanged.
    (Vendor::Intel, Isa::Avx512, 1.5),
    // The same Xeon with `--isa avx2`: new / old 0.852.
    (Vendor::Intel, Isa::Avx2, 1.5),
    // The portable kernels on the same Xeon: their slot (no FMA, narrower vectors) costs
    // several times an AVX-512 one, so the same stream weighs that much less, and 1.5
    // measured slower there.
    (Vendor::Intel, Isa::Portable, 0.3),
];

/// [`WEIGHT_STREAM`] for every CPU and kernel set not measured: the Zen 4 calibration.
const DEFAULT_WEIGHT_STREAM: f64 = 0.3;

/// The weight-stream cost of this vendor and kernel set ([`WEIGHT_STREAM`]).
pub(crate) fn weight_stream_cost(vendor: Vendor, isa: Isa) -> f64 {
    WEIGHT_STREAM.iter().find(|(v, i, _)| *v == vendor && *i == isa).map_or(DEFAULT_WEIGHT_STREAM, |e| e.2)
}

/// The default choice for a layer: of the executors that the automatic choice considers
/// and that can run it, the one of least cost under `model` ([`ConvExecutor::cost`],
/// constants from our benchmarks on a Zen 4 core: `benches/transforms.rs`,
/// `benches/layers.rs`, `repvgg bench`), the earlier in [`REGISTRY`] on a tie. Cost is
/// counted in 16-wide FMA slots (cycles of one core): the GEMM, the transforms or
/// packing, and streaming the (transformed) weights.
pub(crate) fn default_executor(lp: &LayerPlan, n: usize, isa: Isa, model: &CostModel) -> Choice {
    let shape = lp.shape(n);
    REGISTRY
        .iter()
        .copied()
        .filter(|e| e.automatic() && e.precision() == Precision::F32 && e.supports(&shape, isa))
        .map(|e| (e, e.cost(&shape, model)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(e, _)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stride-1 layers' algorithms (the stem and stride-2 layers are always direct),
    /// with their output side.
    fn choices(arch: &str, n: usize, stream: f64) -> Vec<(usize, Algo)> {
        let network = Network::from_name(arch).unwrap();
        let model = CostModel { stream };
        let plan = Plan::new(&network, n, 224, 224, Isa::Portable, |lp| default_executor(lp, n, Isa::Portable, &model));
        plan.layers.iter().filter(|l| l.stride == 1 && l.index > 0).map(|l| (l.oh, l.algo)).collect()
    }

    /// The cost model as it was written before the executors held their own terms (one
    /// function over every algorithm), kept as the oracle of the test below.
    fn table_before_the_registry(lp: &LayerPlan, n: usize, stream: f64) -> Algo {
        if lp.stride != 1 || lp.index == 0 {
            return Algo::Direct;
        }
        let (cb, kb) =
            (channel_blocks(lp.in_channels / lp.groups) as f64, channel_blocks(lp.out_channels / lp.groups) as f64);
        let groups = lp.groups as f64;
        let weight_floats = |positions: usize| groups * kb * cb * 256.0 * positions as f64;
        let pixels = (n * lp.oh * lp.ow) as f64;
        let direct = groups * kb * cb * 16.0 * 9.0 * pixels / 0.9 + stream * weight_floats(9);
        let winograd = |m: usize, input_slots: f64, output_slots: f64| {
            let positions = (m + 2) * (m + 2);
            let tiles = (n * lp.h.div_ceil(m) * lp.w.div_ceil(m)) as f64;
            let gemm = groups * kb * cb * 16.0 * positions as f64 * tiles;
            gemm + tiles * groups * (cb * input_slots + kb * output_slots) + stream * weight_floats(positions)
        };
        let candidates = [
            (Algo::Direct, direct),
            (Algo::F2, winograd(2, 65.0, 47.0)),
            (Algo::F4, winograd(4, 216.0, 137.0)),
            (Algo::F6, winograd(6, 504.0, 396.0)),
        ];
        candidates.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map(|c| c.0).expect("candidates")
    }

    /// Every built-in architecture, at several sizes, batches and stream costs: the
    /// registry's default plans are the plans of the cost model before it (the same
    /// algorithm on every layer).
    #[test]
    fn the_registry_keeps_the_default_plans() {
        for arch in ["A0", "A1", "A2", "B0", "B1", "B1g2", "B1g4", "B2", "B2g4", "B3", "B3g4", "D2se"] {
            let network = Network::from_name(arch).unwrap();
            for (n, h, w) in [(1, 224, 224), (8, 224, 224), (1, 97, 131), (2, 320, 320)] {
                for stream in [0.3, 1.5] {
                    let model = CostModel { stream };
                    let new =
                        Plan::new(&network, n, h, w, Isa::Avx512, |lp| default_executor(lp, n, Isa::Avx512, &model));
                    let old = Plan::new(&network, n, h, w, Isa::Avx512, |lp| {
                        Some(exec::lookup(table_before_the_registry(lp, n, stream), Precision::F32).1)
                    });
                    let algos = |p: &Plan| p.layers.iter().map(|l| l.algo).collect::<Vec<_>>();
                    assert_eq!(algos(&new), algos(&old), "{arch} {n}x{h}x{w} stream {stream}");
                    assert_eq!(
                        (new.transformed_len, new.scratch_len, new.activation_len, new.pooled_len),
                        (old.transformed_len, old.scratch_len, old.activation_len, old.pooled_len)
                    );
                }
            }
        }
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
