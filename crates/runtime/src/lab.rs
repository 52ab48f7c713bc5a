//! Instruments for benchmarks and the density study; not a stable API.
//!
//! What `repvgg bench`, `benches/layers.rs` and `repvgg density` need from inside the
//! runtime, in one place: a single convolution layer run alone by any registered
//! algorithm ([`Conv`]), the depthwise 3x3 layer that only the density study runs
//! ([`Depthwise`]), the thread team they run on ([`Team`]), and the machine probes that
//! set measured times against what the kernels could do at most ([`peak_gflops`],
//! [`read_gbps`], and the bf16 and int8 instruction peaks: [`mixed_peaks`], the
//! interleaved [`instruction_table`] and [`latencies`] behind docs/precision.md, and the
//! AMX tile products the probes' correctness checks compare with scalar ones), and each
//! layer's drift from FP32 in a reduced precision ([`layer_errors`]). An embedder runs
//! whole networks through [`Session`] instead.

use repvgg_simd::{Dispatch, dispatch};

use crate::buffers::Scratch;
use crate::error::{Error, Result};
use crate::exec::depthwise::{self, DepthwiseShape, DepthwiseWeights};
use crate::exec::{self, ConvExecutor, ConvShape, InputLayout, LayerWeights, PackedWeights, RunContext};
use crate::kernels::probe;
pub use crate::kernels::probe_mixed::{
    Latencies, MixedPeaks, Probe, amx_bf16_matmul, amx_int8_matmul, amx_u8s8_matmul, instruction_table, latencies,
    mixed_peaks,
};
use crate::plan::{Algo, Precision};
use crate::session::Session;
pub use crate::team::Team;
use repvgg_simd::layout::{CHANNEL_BLOCK, channel_blocks};

/// One convolution on channel-blocked activations (`NCHWc16`, the layout between
/// layers): `n` maps of `h x w`, `kernel x kernel` with padding `kernel / 2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub n: usize,
    pub kernel: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    pub stride: usize,
    pub h: usize,
    pub w: usize,
}

impl ConvSpec {
    /// Output height and width.
    pub fn output_size(&self) -> (usize, usize) {
        ((self.h - 1) / self.stride + 1, (self.w - 1) / self.stride + 1)
    }

    /// Floats of the channel-blocked input.
    pub fn input_len(&self) -> usize {
        self.n * channel_blocks(self.in_channels) * self.h * self.w * CHANNEL_BLOCK
    }

    /// Floats of the channel-blocked output.
    pub fn output_len(&self) -> usize {
        let (oh, ow) = self.output_size();
        self.n * channel_blocks(self.out_channels) * oh * ow * CHANNEL_BLOCK
    }

    fn shape(&self) -> ConvShape {
        let (oh, ow) = self.output_size();
        ConvShape {
            n: self.n,
            kernel: self.kernel,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            groups: self.groups,
            stride: self.stride,
            h: self.h,
            w: self.w,
            oh,
            ow,
            input: InputLayout::Blocked,
        }
    }

    fn check(&self, weights: &[f32], bias: &[f32]) -> Result<()> {
        let valid = self.n > 0
            && self.kernel % 2 == 1
            && self.groups > 0
            && self.stride > 0
            && self.h > 0
            && self.w > 0
            && self.in_channels.is_multiple_of(self.groups)
            && self.out_channels.is_multiple_of(self.groups);
        if !valid {
            return Err(Error::Option(format!("{self:?} is not a convolution")));
        }
        let expected = self.out_channels * self.in_channels / self.groups * self.kernel * self.kernel;
        if weights.len() != expected || bias.len() != self.out_channels {
            return Err(Error::Option(format!(
                "{} weights and {} biases for {self:?} ({expected} and {} needed)",
                weights.len(),
                bias.len(),
                self.out_channels
            )));
        }
        Ok(())
    }
}

/// Bias padded to whole output channel blocks.
fn padded_bias(bias: &[f32]) -> Vec<f32> {
    let mut padded = bias.to_vec();
    padded.resize(channel_blocks(bias.len()) * CHANNEL_BLOCK, 0.0);
    padded
}

/// One layer run alone by one registered executor (FP32), with its packed weights and
/// working memory: what a network layer does inside a session, without the network.
/// `output = relu(conv(input) + bias)`.
pub struct Conv {
    executor: &'static dyn ConvExecutor,
    shape: ConvShape,
    packed: Box<dyn PackedWeights>,
    /// The deploy kernel, kept only for executors that read it as is.
    deploy: Vec<f32>,
    bias: Vec<f32>,
    shared: Vec<f32>,
    scratch: Scratch,
}

impl Conv {
    /// Packs `weights` (`[K][C/groups][k][k]`) for `algo`, refusing a layer it cannot run,
    /// with scratch for every worker of `team`.
    pub fn new(algo: Algo, spec: ConvSpec, weights: &[f32], bias: &[f32], team: &Team) -> Result<Conv> {
        spec.check(weights, bias)?;
        let executor = exec::lookup(algo, Precision::F32).1;
        let shape = spec.shape();
        if !Dispatch::all_supported().into_iter().all(|isa| executor.supports(&shape, isa.isa())) {
            return Err(Error::Option(format!("{algo} cannot run {spec:?}")));
        }
        Ok(Conv {
            executor,
            packed: executor.pack(&shape, LayerWeights::f32(weights)),
            deploy: if executor.reads_deploy_kernel() { weights.to_vec() } else { Vec::new() },
            bias: padded_bias(bias),
            shared: vec![0.0; executor.shared_len(&shape)],
            scratch: Scratch::new(team.threads(), executor.scratch_len(&shape)),
            shape,
        })
    }

    /// Bytes of the packed weights.
    pub fn weight_bytes(&self) -> usize {
        self.packed.bytes()
    }

    /// Runs the layer once on `team` with the kernel set `isa`; `input` and `output` hold
    /// at least [`ConvSpec::input_len`] and [`ConvSpec::output_len`] floats.
    pub fn run(&mut self, team: &Team, isa: Dispatch, input: &[f32], output: &mut [f32]) {
        let ctx = RunContext {
            isa,
            int8: crate::kernels::int8::Int8Kernels::for_dispatch(isa),
            bf16: None,
            shape: &self.shape,
            weights: &*self.packed,
            deploy: &self.deploy,
            bias: &self.bias,
            relu: true,
            input,
            output,
            shared: &mut self.shared,
            scratch: &self.scratch,
            codes: crate::exec::Codes::NONE,
        };
        team.install(|| self.executor.run(ctx));
    }
}

/// A depthwise 3x3 layer (`groups = C`, padding 1): MobileNet's layer kind, which RepVGG's
/// paper sets against its dense 3x3s. `output = relu(depthwise(input) + bias)`.
pub struct Depthwise {
    weights: DepthwiseWeights,
    shape: DepthwiseShape,
    bias: Vec<f32>,
}

impl Depthwise {
    /// `spec` has `groups = in_channels = out_channels` and `kernel = 3`; `weights` are
    /// `[C][1][3][3]`.
    pub fn new(spec: ConvSpec, weights: &[f32], bias: &[f32]) -> Result<Depthwise> {
        spec.check(weights, bias)?;
        let c = spec.in_channels;
        if spec.kernel != 3 || spec.groups != c || spec.out_channels != c {
            return Err(Error::Option(format!("{spec:?} is not a depthwise 3x3 convolution")));
        }
        let (oh, ow) = spec.output_size();
        let shape = DepthwiseShape { n: spec.n, channels: c, h: spec.h, w: spec.w, stride: spec.stride, oh, ow };
        Ok(Depthwise { weights: DepthwiseWeights::new(weights, c), shape, bias: padded_bias(bias) })
    }

    /// Runs the layer once on `team` with the kernel set `isa`.
    pub fn run(&self, team: &Team, isa: Dispatch, input: &[f32], output: &mut [f32]) {
        team.install(|| depthwise::run(isa, &self.weights, &self.bias, true, &self.shape, input, output));
    }
}

/// The FP32 multiply-add peak of `session`'s workers with its kernel set, in GFLOP/s,
/// measured now: as many fresh threads as it has workers, each running 12 independent
/// chains of vector multiply-adds (enough to cover the latency of two FMA pipes) for
/// about `millis` ms, the rates summed.
pub fn peak_gflops(session: &Session, millis: u64) -> f64 {
    peak_gflops_on(session.dispatch(), session.threads(), millis)
}

/// [`peak_gflops`] of `threads` threads with the kernel set `isa`, without a session.
pub fn peak_gflops_on(isa: Dispatch, threads: usize, millis: u64) -> f64 {
    probe::peak_gflops(isa, threads, millis)
}

/// The DRAM read bandwidth of `session`'s workers in GB/s, measured now: all workers at
/// once, each summing its own `mib`-MiB buffer (written once first, so that the timed
/// passes only read) pass after pass for about `millis` ms.
pub fn read_gbps(session: &Session, mib: usize, millis: u64) -> f64 {
    let isa = session.dispatch();
    probe::on_threads(session.threads(), || {
        let buffer: Vec<f32> = (0..(mib.max(1) << 20) / 4).map(|i| (i % 7) as f32).collect();
        dispatch!(isa, |s| probe::read_gbps(s, &buffer, millis))
    })
}

/// How far each layer's output drifts from FP32 in a reduced precision: `max |reduced -
/// fp32| / max |fp32|` over the layer's whole output on `input`, accumulated through the
/// layers before it (what a user of that precision gets at that depth), in plan order,
/// with the layer's name. `options` names the precision (a session of its own is made;
/// another one in FP32 with the same threads gives the reference).
pub fn layer_errors(
    model: &crate::Model,
    options: crate::SessionOptions,
    input: &crate::Tensor,
) -> Result<Vec<(String, f64)>> {
    let fp32 = crate::SessionOptions { precision: Some(Precision::F32), ..options.clone() };
    let n = input.shape().first().copied().unwrap_or(0);
    let mut reference = Vec::new();
    model.session(fp32)?.run_observed(input, &mut |lp, out| reference.push(out[..lp.output_len(n)].to_vec()))?;
    let mut errors = Vec::new();
    model.session(options)?.run_observed(input, &mut |lp, out| {
        let (out, want) = (&out[..lp.output_len(n)], &reference[errors.len()]);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE) as f64;
        let diff = out.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) as f64;
        errors.push((lp.name.clone(), diff / scale));
    })?;
    Ok(errors)
}
