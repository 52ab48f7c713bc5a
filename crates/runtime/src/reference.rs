//! The reference executor: a plain, obviously-correct forward pass in f64.
//!
//! This is the oracle every fast path is tested against. It favours readability over
//! speed: activations are f64, every convolution is the textbook seven-deep loop, and
//! nothing is fused. It is never used for serving except as the `--algo reference`
//! fallback of the CLI.

use repvgg_graph::{ConvLayer, DeployWeights, Network, SeParams, TrainingWeights};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// An NCHW activation in f64.
#[derive(Debug, Clone)]
pub struct Activation {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f64>,
}

impl Activation {
    /// Widens an `[N, C, H, W]` tensor.
    pub fn from_tensor(t: &Tensor) -> Result<Activation> {
        let [n, c, h, w] =
            t.dims4().ok_or_else(|| Error::Input(format!("expected a 4-D tensor, got {:?}", t.shape())))?;
        Ok(Activation { n, c, h, w, data: t.data().iter().map(|&v| v as f64).collect() })
    }

    /// Rounds to an f32 tensor.
    pub fn to_tensor(&self) -> Tensor {
        Tensor::new(vec![self.n, self.c, self.h, self.w], self.data.iter().map(|&v| v as f32).collect())
            .expect("activation shape matches its data")
    }

    fn at(&self, n: usize, c: usize, y: usize, x: usize) -> f64 {
        self.data[((n * self.c + c) * self.h + y) * self.w + x]
    }
}

/// Direct 2-D convolution (cross-correlation, as in PyTorch) with zero padding.
///
/// `weight` is `[k][c / groups][kh][kw]`; accumulation is in f64.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    input: &Activation,
    weight: &[f32],
    bias: Option<&[f32]>,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    groups: usize,
) -> Activation {
    let (n, c, h, w) = (input.n, input.c, input.h, input.w);
    let oh = (h + 2 * pad - kernel) / stride + 1;
    let ow = (w + 2 * pad - kernel) / stride + 1;
    let cin_g = c / groups;
    let cout_g = out_channels / groups;
    assert_eq!(weight.len(), out_channels * cin_g * kernel * kernel, "kernel size");
    let mut out = vec![0f64; n * out_channels * oh * ow];
    for b in 0..n {
        for k in 0..out_channels {
            let g = k / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |bias| bias[k] as f64);
                    for ci in 0..cin_g {
                        let ch = g * cin_g + ci;
                        for ky in 0..kernel {
                            let Some(y) = (oy * stride + ky).checked_sub(pad).filter(|&y| y < h) else { continue };
                            for kx in 0..kernel {
                                let Some(x) = (ox * stride + kx).checked_sub(pad).filter(|&x| x < w) else {
                                    continue;
                                };
                                acc += weight[((k * cin_g + ci) * kernel + ky) * kernel + kx] as f64
                                    * input.at(b, ch, y, x);
                            }
                        }
                    }
                    out[((b * out_channels + k) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    Activation { n, c: out_channels, h: oh, w: ow, data: out }
}

/// Element-wise ReLU in place, keeping NaN like the fast paths (`repvgg_simd::relu`).
pub fn relu(a: &mut Activation) {
    a.data.iter_mut().for_each(|v| *v = relu_f64(*v));
}

fn relu_f64(v: f64) -> f64 {
    if 0.0 > v { 0.0 } else { v }
}

/// Per-(image, channel) mean over the spatial map.
pub fn global_average_pool(a: &Activation) -> Vec<f64> {
    let hw = a.h * a.w;
    a.data.chunks_exact(hw).map(|plane| plane.iter().sum::<f64>() / hw as f64).collect()
}

/// Squeeze-and-excitation: `x * sigmoid(up(relu(down(gap(x)))))` (Hu et al. 2018), in place.
pub fn squeeze_excite(a: &mut Activation, se: &SeParams) {
    let c = a.c;
    let r = se.down_bias.len();
    let pooled = global_average_pool(a);
    let hw = a.h * a.w;
    for b in 0..a.n {
        let x = &pooled[b * c..(b + 1) * c];
        let hidden: Vec<f64> = (0..r)
            .map(|j| {
                let s: f64 = (0..c).map(|i| se.down_weight[j * c + i] as f64 * x[i]).sum();
                relu_f64(s + se.down_bias[j] as f64)
            })
            .collect();
        for i in 0..c {
            let s: f64 = (0..r).map(|j| se.up_weight[i * r + j] as f64 * hidden[j]).sum::<f64>() + se.up_bias[i] as f64;
            let gate = 1.0 / (1.0 + (-s).exp());
            a.data[(b * c + i) * hw..(b * c + i + 1) * hw].iter_mut().for_each(|v| *v *= gate);
        }
    }
}

/// Global average pool followed by the linear classifier: `[N, classes]` logits.
pub fn head(a: &Activation, weight: &[f32], bias: &[f32]) -> Tensor {
    let pooled = global_average_pool(a);
    let classes = bias.len();
    let c = a.c;
    let mut logits = Vec::with_capacity(a.n * classes);
    for b in 0..a.n {
        for k in 0..classes {
            let s: f64 = (0..c).map(|i| weight[k * c + i] as f64 * pooled[b * c + i]).sum();
            logits.push((s + bias[k] as f64) as f32);
        }
    }
    Tensor::new(vec![a.n, classes], logits).expect("logits shape")
}

/// Logits and the outputs of stages 1..=4 (C2..C5 feature maps).
#[derive(Debug, Clone)]
pub struct Outputs {
    pub logits: Tensor,
    pub stages: [Tensor; 4],
}

fn check_input(network: &Network, input: &Tensor) -> Result<()> {
    match input.dims4() {
        Some([n, 3, h, w]) if n > 0 => Ok(network.check_input_size(h, w, usize::MAX)?),
        _ => Err(Error::Input(format!("input has shape {:?}, expected [N, 3, H, W] with N >= 1", input.shape()))),
    }
}

/// Runs the body block by block, collecting stage outputs, then the head.
fn run_blocks(
    network: &Network,
    input: &Tensor,
    linear_weight: &[f32],
    linear_bias: &[f32],
    mut block: impl FnMut(&ConvLayer, &Activation) -> Activation,
) -> Result<Outputs> {
    check_input(network, input)?;
    let mut x = Activation::from_tensor(input)?;
    let ends = network.stage_ends();
    let mut stages: Vec<Tensor> = Vec::with_capacity(4);
    for layer in &network.layers {
        x = block(layer, &x);
        if ends.contains(&layer.index) && layer.stage > 0 {
            stages.push(x.to_tensor());
        }
    }
    let logits = head(&x, linear_weight, linear_bias);
    let stages: [Tensor; 4] = stages.try_into().expect("four stages");
    Ok(Outputs { logits, stages })
}

/// Forward pass of the deploy (re-parameterized) network.
pub fn forward(network: &Network, weights: &DeployWeights, input: &Tensor) -> Result<Outputs> {
    run_blocks(network, input, &weights.linear_weight, &weights.linear_bias, |layer, x| {
        let params = &weights.layers[layer.index];
        let mut y = conv2d(
            x,
            &params.conv.weight,
            Some(&params.conv.bias),
            layer.out_channels,
            3,
            layer.stride,
            1,
            layer.groups,
        );
        if let Some(se) = &params.se {
            squeeze_excite(&mut y, se);
        }
        relu(&mut y);
        y
    })
}

/// Forward pass of the training-time multi-branch network in eval mode:
/// `relu(se(BN(conv3x3 x) + BN(conv1x1 x) + BN(x)))` per block (Ding et al. 2021, Fig. 4).
pub fn forward_training(network: &Network, weights: &TrainingWeights, input: &Tensor) -> Result<Outputs> {
    let bn = |a: &mut Activation, bn: &repvgg_graph::BatchNorm| {
        let hw = a.h * a.w;
        for (i, plane) in a.data.chunks_exact_mut(hw).enumerate() {
            let (t, shift) = bn.scale_shift(i % a.c);
            plane.iter_mut().for_each(|v| *v = *v * t + shift);
        }
    };
    run_blocks(network, input, &weights.linear_weight, &weights.linear_bias, |layer, x| {
        let block = &weights.blocks[layer.index];
        let (k, s, g) = (layer.out_channels, layer.stride, layer.groups);
        let mut y = conv2d(x, &block.dense, None, k, 3, s, 1, g);
        bn(&mut y, &block.dense_bn);
        let mut one = conv2d(x, &block.one_by_one, None, k, 1, s, 0, g);
        bn(&mut one, &block.one_by_one_bn);
        y.data.iter_mut().zip(&one.data).for_each(|(a, b)| *a += b);
        if let Some(id_bn) = &block.identity_bn {
            let mut id = x.clone();
            bn(&mut id, id_bn);
            y.data.iter_mut().zip(&id.data).for_each(|(a, b)| *a += b);
        }
        if let Some(se) = &block.se {
            squeeze_excite(&mut y, se);
        }
        relu(&mut y);
        y
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv2d_matches_a_hand_computed_case() {
        // 1x1x3x3 input 1..9, all-ones 3x3 kernel, pad 1: the centre sums everything.
        let x = Activation { n: 1, c: 1, h: 3, w: 3, data: (1..=9).map(f64::from).collect() };
        let y = conv2d(&x, &[1.0; 9], Some(&[0.5]), 1, 3, 1, 1, 1);
        assert_eq!(y.data[4], 45.5);
        assert_eq!(y.data[0], 1.0 + 2.0 + 4.0 + 5.0 + 0.5);
        let y2 = conv2d(&x, &[1.0; 9], None, 1, 3, 2, 1, 1);
        assert_eq!((y2.h, y2.w), (2, 2));
        assert_eq!(y2.data, vec![12.0, 16.0, 24.0, 28.0]);
    }

    #[test]
    fn grouped_conv_keeps_groups_apart() {
        // Two groups of one channel each; kernel of group 1 is zero.
        let x = Activation { n: 1, c: 2, h: 1, w: 1, data: vec![3.0, 7.0] };
        let mut k = vec![0f32; 2 * 9];
        k[4] = 2.0;
        let y = conv2d(&x, &k, None, 2, 3, 1, 1, 2);
        assert_eq!(y.data, vec![6.0, 0.0]);
    }
}
