//! The deploy-time layer list of a RepVGG network, with shapes and costs.
//!
//! After structural re-parameterization (Ding et al. 2021, Sec. 3.3) every block is one
//! 3x3 convolution with bias (padding 1), optionally followed by squeeze-and-excitation,
//! and a ReLU. The head is a global average pool and a linear classifier.

use serde::Serialize;

use crate::arch::ArchSpec;
use crate::error::{Error, Result};

/// One re-parameterized block: a 3x3 convolution (pad 1) + bias, optional SE, ReLU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConvLayer {
    /// Global index: stage0 = 0, stage1.0 = 1, ...
    pub index: usize,
    /// Stage 0..=4.
    pub stage: usize,
    /// Block index within its stage.
    pub block: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    /// 1 or 2.
    pub stride: usize,
    /// Internal width of the SE block (out/16) if the block has one.
    pub se_channels: Option<usize>,
}

impl ConvLayer {
    /// Official name of the block, e.g. `stage0` or `stage3.7`.
    pub fn name(&self) -> String {
        if self.stage == 0 { "stage0".to_string() } else { format!("stage{}.{}", self.stage, self.block) }
    }

    /// True for the identity branch condition of the training-time block.
    pub fn has_identity(&self) -> bool {
        self.in_channels == self.out_channels && self.stride == 1
    }

    /// Deploy-form parameter count: kernel, bias and SE.
    pub fn params(&self) -> u64 {
        let conv = (self.out_channels * self.in_channels / self.groups * 9 + self.out_channels) as u64;
        conv + self.se_params()
    }

    fn se_params(&self) -> u64 {
        self.se_channels.map_or(0, |r| {
            let c = self.out_channels as u64;
            let r = r as u64;
            2 * c * r + r + c
        })
    }

    /// Output size for an input of `h` x `w` (3x3 kernel, padding 1).
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        ((h - 1) / self.stride + 1, (w - 1) / self.stride + 1)
    }

    /// Multiply-accumulates of the convolution alone at output size `oh` x `ow`.
    /// `None` if the count does not fit in 64 bits.
    pub fn conv_macs(&self, oh: usize, ow: usize) -> Option<u64> {
        let per_pixel = (self.out_channels as u64).checked_mul((self.in_channels / self.groups) as u64 * 9)?;
        per_pixel.checked_mul((oh as u64).checked_mul(ow as u64)?)
    }

    /// Multiply-accumulates of the SE block's two 1x1 convolutions.
    pub fn se_macs(&self) -> u64 {
        self.se_channels.map_or(0, |r| 2 * (self.out_channels * r) as u64)
    }
}

/// A layer placed at a concrete input size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerShape {
    pub name: String,
    pub index: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    pub stride: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub se: bool,
    pub params: u64,
    /// Convolution (+ SE) multiply-accumulates for one image.
    pub macs: u64,
}

/// Parameter and MAC totals for one image at a given size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cost {
    pub params: u64,
    pub macs: u64,
}

/// Largest input side accepted by default; larger maps are refused before any allocation.
pub const DEFAULT_MAX_SIDE: usize = 8192;

/// A RepVGG network: its architecture and its deploy-time layer list.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub arch: ArchSpec,
    pub layers: Vec<ConvLayer>,
    pub num_classes: usize,
}

impl Network {
    /// Expands an architecture into its layer list.
    pub fn new(arch: ArchSpec) -> Network {
        let widths = arch.stage_widths();
        let mut layers = Vec::with_capacity(arch.num_layers());
        let mut in_channels = 3;
        for stage in 0..5 {
            let blocks = if stage == 0 { 1 } else { arch.blocks_per_stage[stage - 1] };
            for block in 0..blocks {
                let index = layers.len();
                let out_channels = widths[stage];
                layers.push(ConvLayer {
                    index,
                    stage,
                    block,
                    in_channels,
                    out_channels,
                    groups: arch.groups_of(index),
                    stride: if block == 0 { 2 } else { 1 },
                    se_channels: arch.se.then_some(out_channels / 16),
                });
                in_channels = out_channels;
            }
        }
        Network { num_classes: arch.num_classes, arch, layers }
    }

    /// A built-in variant by name, or an architecture file by path.
    pub fn from_name(name_or_path: &str) -> Result<Network> {
        Ok(Network::new(ArchSpec::resolve(name_or_path)?))
    }

    /// Channels entering the classifier (width of stage4).
    pub fn feature_channels(&self) -> usize {
        self.layers.last().expect("a network has layers").out_channels
    }

    /// Output channels of stages 1..=4 (the C2..C5 feature maps).
    pub fn stage_channels(&self) -> [usize; 4] {
        let w = self.arch.stage_widths();
        [w[1], w[2], w[3], w[4]]
    }

    /// Index of the last layer of each stage 1..=4.
    pub fn stage_ends(&self) -> [usize; 4] {
        let mut ends = [0; 4];
        for l in &self.layers {
            if l.stage > 0 {
                ends[l.stage - 1] = l.index;
            }
        }
        ends
    }

    /// Classifier parameters.
    pub fn head_params(&self) -> u64 {
        (self.num_classes * self.feature_channels() + self.num_classes) as u64
    }

    /// Checks that `h` x `w` is a size the network can take (any side >= 1 leaves at least
    /// a 1x1 map after the five stride-2 layers) and within `max_side`.
    pub fn check_input_size(&self, h: usize, w: usize, max_side: usize) -> Result<()> {
        if h == 0 || w == 0 {
            return Err(Error::InvalidInputSize(format!("{h}x{w} has an empty side")));
        }
        if h > max_side || w > max_side {
            return Err(Error::InvalidInputSize(format!("{h}x{w} exceeds the limit of {max_side} pixels per side")));
        }
        Ok(())
    }

    /// Deploy-form parameters of the whole network: convolutions, SE and classifier.
    pub fn params(&self) -> u64 {
        self.layers.iter().map(ConvLayer::params).sum::<u64>() + self.head_params()
    }

    /// Layer shapes for an input of `h` x `w`; an error if a count overflows 64 bits.
    pub fn shapes(&self, h: usize, w: usize) -> Result<Vec<LayerShape>> {
        self.check_input_size(h, w, usize::MAX)?;
        let (mut in_h, mut in_w) = (h, w);
        self.layers
            .iter()
            .map(|l| {
                let (out_h, out_w) = l.output_size(in_h, in_w);
                let macs = l.conv_macs(out_h, out_w).and_then(|m| m.checked_add(l.se_macs())).ok_or_else(|| {
                    Error::InvalidInputSize(format!(
                        "{h}x{w}: the multiply-accumulates of {} do not fit in 64 bits",
                        l.name()
                    ))
                })?;
                let shape = LayerShape {
                    name: l.name(),
                    index: l.index,
                    in_channels: l.in_channels,
                    out_channels: l.out_channels,
                    groups: l.groups,
                    stride: l.stride,
                    in_h,
                    in_w,
                    out_h,
                    out_w,
                    se: l.se_channels.is_some(),
                    params: l.params(),
                    macs,
                };
                (in_h, in_w) = (out_h, out_w);
                Ok(shape)
            })
            .collect()
    }

    /// Total deploy parameters and MACs (convs, SE, classifier) for one `h` x `w` image.
    pub fn cost(&self, h: usize, w: usize) -> Result<Cost> {
        let shapes = self.shapes(h, w)?;
        let head_macs = (self.num_classes * self.feature_channels()) as u64;
        let macs = shapes.iter().try_fold(head_macs, |total, s| total.checked_add(s.macs)).ok_or_else(|| {
            Error::InvalidInputSize(format!("{h}x{w}: the network's multiply-accumulates do not fit in 64 bits"))
        })?;
        Ok(Cost { params: self.params(), macs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ding et al. (2021), Table 2/3: deploy parameters (M) and multiply-adds (B) at 224.
    const PAPER: &[(&str, f64, f64)] = &[
        ("A0", 8.30, 1.4),
        ("A1", 12.78, 2.4),
        ("A2", 25.49, 5.1),
        ("B0", 14.33, 3.1),
        ("B1", 51.82, 11.8),
        ("B1g2", 41.36, 8.8),
        ("B1g4", 36.12, 7.3),
        ("B2", 80.31, 18.4),
        ("B2g4", 55.77, 11.3),
        ("B3", 110.96, 26.2),
        ("B3g4", 75.62, 16.1),
    ];

    #[test]
    fn counts_reproduce_the_paper_table() {
        for &(name, params_m, macs_b) in PAPER {
            let cost = Network::from_name(name).unwrap().cost(224, 224).unwrap();
            let params = cost.params as f64 / 1e6;
            let macs = cost.macs as f64 / 1e9;
            assert!((params - params_m).abs() / params_m < 0.005, "{name}: {params:.3} M params vs paper {params_m}");
            assert!((macs - macs_b).abs() <= 0.05, "{name}: {macs:.3} B MACs vs paper {macs_b}");
        }
    }

    #[test]
    fn a0_layer_list() {
        let net = Network::from_name("A0").unwrap();
        assert_eq!(net.layers.len(), 22);
        let shapes = net.shapes(224, 224).unwrap();
        assert_eq!((shapes[0].out_h, shapes[0].out_channels), (112, 48));
        assert_eq!(shapes[1].name, "stage1.0");
        assert_eq!((shapes[1].stride, shapes[1].out_h), (2, 56));
        let last = shapes.last().unwrap();
        assert_eq!((last.name.as_str(), last.in_channels, last.out_channels, last.out_h), ("stage4.0", 192, 1280, 7));
        assert_eq!(net.stage_ends(), [2, 6, 20, 21]);
    }

    #[test]
    fn groups_land_on_even_layers() {
        let net = Network::from_name("B1g4").unwrap();
        let grouped: Vec<_> = net.layers.iter().filter(|l| l.groups == 4).map(|l| l.index).collect();
        assert_eq!(grouped, (2..=26).step_by(2).collect::<Vec<_>>());
        // Layer 2 is stage1.1: 128 -> 128 in 4 groups of 32.
        assert_eq!(net.layers[2].name(), "stage1.1");
    }

    #[test]
    fn non_square_and_tiny_inputs() {
        let net = Network::from_name("A0").unwrap();
        let s = net.shapes(97, 130).unwrap();
        assert_eq!((s[0].out_h, s[0].out_w), (49, 65));
        assert_eq!((s.last().unwrap().out_h, s.last().unwrap().out_w), (4, 5));
        let s = net.shapes(1, 1).unwrap();
        assert!(s.iter().all(|l| l.out_h == 1 && l.out_w == 1));
        assert!(net.shapes(0, 5).is_err());
        assert!(net.check_input_size(9000, 10, DEFAULT_MAX_SIDE).is_err());
    }

    #[test]
    fn d2se_has_se_everywhere() {
        let net = Network::from_name("D2se").unwrap();
        assert!(net.layers.iter().all(|l| l.se_channels == Some(l.out_channels / 16)));
        assert_eq!(net.layers.len(), 48);
    }
}
