//! Layer executors: each convolution algorithm's packed weights, buffer sizes, cost and
//! schedule, behind one trait ([`ConvExecutor`]) and one table ([`REGISTRY`]), calling the
//! per-instruction-set kernels (`crate::kernels`, `repvgg_winograd::tiles`) through
//! `repvgg_simd::dispatch!` once per work item.
//!
//! - [`direct`]: implicit-im2col GEMM (stride-2 layers, the stem, small maps; kernel
//!   sides 1, 3, 5 and 7 on the channel-blocked layout);
//! - [`direct_int8`]: the same GEMM in INT8 (u8 activations, s8 weights, i32 sums), for
//!   the layers of a quantized model;
//! - [`direct_bf16`]: 3x3 convolution in BF16 (bf16 operands, f32 sums) on a pixel-major
//!   copy of the input read in place, for sessions that ask for BF16;
//! - [`winograd`]: Winograd F(m,3) for stride-1 layers, one executor per variant;
//! - [`generic`]: a plain loop for group shapes without whole channel blocks;
//! - [`schedule`]: the fused and two-phase schedules direct and Winograd share;
//! - [`depthwise`]: depthwise 3x3, lane per channel (for `repvgg density` only, not a
//!   network layer, so not in the registry);
//! - [`pointwise`]: pooling, squeeze-and-excitation, the classifier, layout changes.
//!
//! # Adding an algorithm
//!
//! One file here with a type implementing [`ConvExecutor`] (which layers it takes, how it
//! packs a layer's weights, the memory it needs, its cost, its `run`), one line in
//! [`REGISTRY`], and its name in [`Algo`]. The plan, the model's weight cache and the
//! session only ever iterate over the registry.

use std::any::Any;
use std::fmt;

use repvgg_simd::layout::CHANNEL_BLOCK;
use repvgg_simd::{Dispatch, Isa};

use crate::buffers::Scratch;
use crate::kernels::bf16::Bf16Kernels;
use crate::kernels::int8::Int8Kernels;
use crate::plan::{Algo, Precision};
use crate::quant::Int8Layer;

pub(crate) mod depthwise;
pub(crate) mod direct;
pub(crate) mod direct_bf16;
pub(crate) mod direct_int8;
pub(crate) mod generic;
pub(crate) mod pointwise;
pub(crate) mod schedule;
pub(crate) mod winograd;

/// Every layer executor, in the order of preference for a fallback: where the algorithm a
/// plan asks for cannot run a layer, the first entry of the same precision that can runs
/// it (direct for stride-2 layers and the stem, generic for group shapes without whole
/// channel blocks). The automatic choice also breaks cost ties in this order.
pub(crate) static REGISTRY: &[&dyn ConvExecutor] = &[
    &direct::Direct,
    &winograd::F2,
    &winograd::F4,
    &winograd::F6,
    &winograd::P2,
    &generic::Generic,
    &direct_int8::DirectInt8,
    &direct_bf16::DirectBf16,
];

/// The registry entry that runs `algo` in `precision`, and its index (the key of the
/// model's weight cache).
pub(crate) fn lookup(algo: Algo, precision: Precision) -> (usize, &'static dyn ConvExecutor) {
    REGISTRY
        .iter()
        .copied()
        .enumerate()
        .find(|(_, e)| e.algo() == algo && e.precision() == precision)
        .expect("every algorithm and precision a plan names is registered")
}

/// How a layer's input activation is stored, which follows from where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputLayout {
    /// `NCHWc16`: the output of the layer before, the layout between layers.
    Blocked,
    /// Plain `NCHW`: the network input itself. The direct executor first repacks it into
    /// a zero-bordered `NHWC` copy, so that each row of a 3x3 window is `3 C` contiguous
    /// floats; the others cannot read it.
    Planar,
}

/// Geometry of one convolution (padding `kernel / 2`) over a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvShape {
    pub n: usize,
    /// Kernel side (odd; 3 for every RepVGG layer, others for `repvgg density`).
    pub kernel: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    pub stride: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub input: InputLayout,
}

impl ConvShape {
    /// Input channels per group.
    pub fn in_per_group(&self) -> usize {
        self.in_channels / self.groups
    }

    /// True without groups, or when every group holds whole channel blocks, in and out
    /// (what the channel-blocked packings need).
    pub fn whole_channel_blocks(&self) -> bool {
        self.groups == 1
            || (self.in_per_group().is_multiple_of(CHANNEL_BLOCK)
                && (self.out_channels / self.groups).is_multiple_of(CHANNEL_BLOCK))
    }
}

/// A layer's weights as one executor reads them on every run, built once per model and
/// layer (`Model::prepare`) and shared by every session.
pub(crate) trait PackedWeights: Any + Send + Sync + fmt::Debug {
    /// Bytes read per run (at batch 1 a network's Winograd filters exceed the L3, so this
    /// is the layer's DRAM stream).
    fn bytes(&self) -> usize;
}

/// A layer's weights as the model holds them, for [`ConvExecutor::pack`].
#[derive(Clone, Copy)]
pub(crate) struct LayerWeights<'a> {
    /// The deploy kernel `[K][C/groups][k][k]` (of an INT8 model: its weights dequantized).
    pub deploy: &'a [f32],
    /// The layer's INT8 parameters, where the model has them.
    pub int8: Option<&'a Int8Layer>,
}

impl<'a> LayerWeights<'a> {
    /// Float weights only.
    pub fn f32(deploy: &'a [f32]) -> LayerWeights<'a> {
        LayerWeights { deploy, int8: None }
    }
}

/// The constants of the cost model that depend on the machine rather than on an
/// algorithm (`crate::plan::weight_stream_cost`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CostModel {
    /// FMA slots per float of weights streamed from memory.
    pub stream: f64,
}

/// Everything one layer run reads and writes.
pub(crate) struct RunContext<'a> {
    /// The kernel set (each work item enters it through `dispatch!`). The thread team is
    /// the one the caller installed (`Team::install`).
    pub isa: Dispatch,
    /// The int8 kernel set, for INT8 executors.
    pub int8: Int8Kernels,
    /// The bf16 kernel set, for BF16 executors (`None` in sessions that run no BF16,
    /// which is every session on a CPU without AVX512-BF16).
    pub bf16: Option<Bf16Kernels>,
    pub shape: &'a ConvShape,
    /// What [`ConvExecutor::pack`] built for this layer.
    pub weights: &'a dyn PackedWeights,
    /// The deploy kernel `[K][C/groups][k][k]`, for executors that read it as is
    /// ([`ConvExecutor::reads_deploy_kernel`]).
    pub deploy: &'a [f32],
    /// Bias padded to whole output channel blocks.
    pub bias: &'a [f32],
    /// Apply ReLU to the output (otherwise the squeeze-and-excitation that follows does).
    pub relu: bool,
    pub input: &'a [f32],
    /// Channel-blocked output, `n * channel_blocks(K) * oh * ow * 16` floats at least.
    pub output: &'a mut [f32],
    /// The shared buffer of packed column panels, [`ConvExecutor::shared_len`] floats.
    pub shared: &'a mut [f32],
    /// Per-worker scratch of [`ConvExecutor::scratch_len`] floats each.
    pub scratch: &'a Scratch,
    /// Activations handed between two INT8 layers as u8 codes instead of floats
    /// (`direct_int8`); [`Codes::NONE`] for every other layer.
    pub codes: Codes,
}

/// How a layer's input arrives and its output leaves when the session hands activations
/// between two layers in the consumer's own input layout instead of floats: u8 codes
/// between INT8 layers (the requantization fused into the producer's epilogue), bf16
/// between BF16 layers (the rounding fused likewise). Results are the same bits as
/// through floats, since the consumer would compute the same codes or bf16 values from the
/// same floats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Codes {
    /// `input` holds the layer's zero-bordered u8 codes (`direct_int8::codes_len`) or bf16
    /// values (`direct_bf16::input_len`), not floats.
    pub input: bool,
    /// Write the output as the next layer's bordered input: INT8 codes at `1 / s_x` of
    /// that layer (the value), or bf16 values (the value is 1).
    pub output: Option<f32>,
    /// INT8 codes out: the bytes per pixel of one plane of the next layer's bordered
    /// layout (`direct_int8::code_block`: 16, or all its channels); 0 otherwise.
    pub block: usize,
}

impl Codes {
    pub const NONE: Codes = Codes { input: false, output: None, block: 0 };
}

/// Packed weights as the executor's own type (one check per layer run).
pub(crate) fn downcast<T: PackedWeights>(weights: &dyn PackedWeights) -> &T {
    let any: &dyn Any = weights;
    any.downcast_ref::<T>().expect("weights packed by the executor that runs them")
}

/// One convolution algorithm in one precision: `output = relu?(conv(input) + bias)`.
///
/// The results of [`ConvExecutor::run`] must not depend on the number of threads: each
/// output element is computed by one work item, in an order fixed by the shape.
pub(crate) trait ConvExecutor: Sync {
    /// The name a plan gives this executor's layers.
    fn algo(&self) -> Algo;

    /// The arithmetic it runs in.
    fn precision(&self) -> Precision;

    /// True if it can run a layer of this shape with this kernel set.
    fn supports(&self, shape: &ConvShape, isa: Isa) -> bool;

    /// Whether the automatic choice (the cost model and autotuning) considers it; a
    /// fallback for shapes the others cannot run says no.
    fn automatic(&self) -> bool {
        true
    }

    /// True if `run` reads the deploy kernel ([`RunContext::deploy`]) rather than (only)
    /// its packing.
    fn reads_deploy_kernel(&self) -> bool {
        false
    }

    /// Floats [`ConvExecutor::pack`] allocates for a layer of this shape, known before
    /// building it (for the weight limit).
    fn packed_len(&self, shape: &ConvShape) -> usize;

    /// Packs a supported layer's weights (the deploy kernel `[K][C/groups][k][k]`, or its
    /// INT8 form for an INT8 executor).
    fn pack(&self, shape: &ConvShape, weights: LayerWeights<'_>) -> Box<dyn PackedWeights>;

    /// Floats of the shared buffer `run` needs for this shape (and batch).
    fn shared_len(&self, shape: &ConvShape) -> usize;

    /// Floats of scratch per worker `run` needs for this shape (and batch).
    fn scratch_len(&self, shape: &ConvShape) -> usize;

    /// Multiplies for one image, `macs` being the direct convolution's count.
    fn multiplies(&self, shape: &ConvShape, macs: u64) -> u64 {
        let _ = shape;
        macs
    }

    /// The cost model's estimate for the shape (and batch), in 16-wide FMA slots (cycles
    /// of one core); see `crate::plan::default_executor`.
    fn cost(&self, shape: &ConvShape, model: &CostModel) -> f64;

    /// Runs the layer.
    fn run(&self, ctx: RunContext<'_>);
}
