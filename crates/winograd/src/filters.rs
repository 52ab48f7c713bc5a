//! Filter transform `U = G g G^T` for whole layers, packed for the batched GEMM.
//!
//! Run once at load. The arithmetic is f64 straight from the Cook-Toom generator and is
//! rounded to f32 once, so the transformed filters carry no error beyond that rounding.
//!
//! # Packed layout
//!
//! For every group, the output channels are cut into panels of `panel` channels (a
//! multiple of 16: the GEMM's weight panel, `MR` rows of its microkernel). The last panel
//! is narrower when the group's width is not a multiple of `panel`: it is rounded up to
//! 16, zero-padded. Within a panel, the data is `[position p][input channel c][lane]`:
//!
//! ```text
//! U[p][c][k - k0]   for p in 0..alpha^2, c in 0..c_pad, k in k0..k0 + width
//! ```
//!
//! So the GEMM for one position streams `c_pad x width` contiguous floats. Input channels
//! are padded to `c_pad` (a multiple of 16) with zeros to match the channel-blocked
//! activation layout.

use crate::{Error, Variant};
use repvgg_simd::layout::CHANNEL_BLOCK;

/// One panel of output channels of one group, for all transform positions.
#[derive(Debug, Clone, Copy)]
pub struct FilterPanel<'a> {
    /// First output channel of the panel, counted within its group.
    pub k0: usize,
    /// Channels in the panel (a multiple of 16; padding channels have zero filters).
    pub width: usize,
    /// `[p][c_pad][width]`.
    pub data: &'a [f32],
    c_pad: usize,
}

impl<'a> FilterPanel<'a> {
    /// The `c_pad x width` panel of transform position `p`.
    pub fn position(&self, p: usize) -> &'a [f32] {
        let len = self.c_pad * self.width;
        &self.data[p * len..(p + 1) * len]
    }
}

/// Transformed, packed filters of one layer.
#[derive(Debug, Clone)]
pub struct PackedFilters {
    variant: Variant,
    groups: usize,
    out_per_group: usize,
    in_per_group: usize,
    c_pad: usize,
    panel: usize,
    panels_per_group: usize,
    group_len: usize,
    data: Vec<f32>,
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

impl PackedFilters {
    /// Transforms `weights` (`[K][C/groups][3][3]`, K = `out_channels`) and packs them into
    /// panels of at most `panel` output channels.
    pub fn new(
        variant: Variant,
        weights: &[f32],
        out_channels: usize,
        in_per_group: usize,
        groups: usize,
        panel: usize,
    ) -> Result<PackedFilters, Error> {
        if groups == 0 || out_channels == 0 || in_per_group == 0 || !out_channels.is_multiple_of(groups) {
            return Err(Error::Layout(format!(
                "{out_channels} output channels, {in_per_group} inputs per group, {groups} groups"
            )));
        }
        if panel == 0 || !panel.is_multiple_of(CHANNEL_BLOCK) {
            return Err(Error::Layout(format!("panel width {panel} is not a positive multiple of {CHANNEL_BLOCK}")));
        }
        if weights.len() != out_channels * in_per_group * 9 {
            return Err(Error::Layout(format!(
                "{} weights for a [{out_channels}, {in_per_group}, 3, 3] kernel",
                weights.len()
            )));
        }
        let out_per_group = out_channels / groups;
        let c_pad = round_up(in_per_group, CHANNEL_BLOCK);
        let k_pad = round_up(out_per_group, CHANNEL_BLOCK);
        let panels_per_group = k_pad.div_ceil(panel);
        let positions = variant.alpha() * variant.alpha();
        let group_len = positions * c_pad * k_pad;
        let mut data = vec![0f32; Self::len(variant, out_channels, in_per_group, groups)];

        let mats = variant.matrices();
        let a = mats.alpha;
        for grp in 0..groups {
            for b in 0..panels_per_group {
                let k0 = b * panel;
                let width = panel.min(k_pad - k0);
                let base = grp * group_len + k0 * positions * c_pad;
                for lane in 0..width.min(out_per_group.saturating_sub(k0)) {
                    let k = grp * out_per_group + k0 + lane;
                    for c in 0..in_per_group {
                        let g = &weights[(k * in_per_group + c) * 9..][..9];
                        // tmp = G g (alpha x 3), then U = tmp G^T (alpha x alpha).
                        let mut tmp = [[0f64; 3]; 8];
                        for i in 0..a {
                            for col in 0..3 {
                                tmp[i][col] = (0..3).map(|l| mats.g[i][l] * g[l * 3 + col] as f64).sum();
                            }
                        }
                        for i in 0..a {
                            for j in 0..a {
                                let u: f64 = (0..3).map(|l| tmp[i][l] * mats.g[j][l]).sum();
                                data[base + ((i * a + j) * c_pad + c) * width + lane] = u as f32;
                            }
                        }
                    }
                }
            }
        }
        Ok(PackedFilters {
            variant,
            groups,
            out_per_group,
            in_per_group,
            c_pad,
            panel,
            panels_per_group,
            group_len,
            data,
        })
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    pub fn out_per_group(&self) -> usize {
        self.out_per_group
    }

    pub fn in_per_group(&self) -> usize {
        self.in_per_group
    }

    /// Input channels per group after padding to a multiple of 16.
    pub fn c_pad(&self) -> usize {
        self.c_pad
    }

    /// Output-channel panels per group.
    pub fn panels_per_group(&self) -> usize {
        self.panels_per_group
    }

    /// Panel `b` of group `group`.
    pub fn panel(&self, group: usize, b: usize) -> FilterPanel<'_> {
        assert!(group < self.groups && b < self.panels_per_group, "panel ({group}, {b}) out of range");
        let positions = self.variant.alpha() * self.variant.alpha();
        let k0 = b * self.panel;
        let width = self.panel.min(round_up(self.out_per_group, CHANNEL_BLOCK) - k0);
        let start = group * self.group_len + k0 * positions * self.c_pad;
        FilterPanel { k0, width, data: &self.data[start..start + positions * self.c_pad * width], c_pad: self.c_pad }
    }

    /// Floats that [`PackedFilters::new`] allocates for this layer shape, known before
    /// building it (for memory limits): `groups x alpha^2 x C/groups x K/groups`, each
    /// channel count rounded up to whole 16-channel blocks.
    pub fn len(variant: Variant, out_channels: usize, in_per_group: usize, groups: usize) -> usize {
        let positions = variant.alpha() * variant.alpha();
        groups * positions * round_up(in_per_group, CHANNEL_BLOCK) * round_up(out_channels / groups, CHANNEL_BLOCK)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_places_every_transformed_filter() {
        // 2 groups, 40 outputs per group (panels 32 + 16 with 8 padding), 3 inputs per group.
        let (k, cg, groups) = (80, 3, 2);
        let weights: Vec<f32> = (0..k * cg * 9).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let variant = Variant::F4;
        let packed = PackedFilters::new(variant, &weights, k, cg, groups, 32).unwrap();
        assert_eq!((packed.panels_per_group(), packed.c_pad()), (2, 16));
        let mats = variant.matrices();
        for grp in 0..groups {
            for b in 0..2 {
                let blk = packed.panel(grp, b);
                assert_eq!((blk.k0, blk.width), (b * 32, if b == 0 { 32 } else { 16 }));
                for lane in 0..blk.width {
                    let kk = blk.k0 + lane;
                    for c in 0..16 {
                        let u = if kk < 40 && c < cg {
                            let g = &weights[((grp * 40 + kk) * cg + c) * 9..][..9];
                            let g3 = [0, 1, 2].map(|r| [0, 1, 2].map(|s| g[r * 3 + s] as f64));
                            Some(mats.filter(&g3))
                        } else {
                            None
                        };
                        for p in 0..36 {
                            let got = blk.position(p)[c * blk.width + lane];
                            let want = u.as_ref().map_or(0.0, |u| u[p / 6][p % 6] as f32);
                            assert_eq!(got, want, "group {grp} panel {b} lane {lane} c {c} p {p}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert!(PackedFilters::new(Variant::F2, &[0.0; 9], 1, 1, 1, 24).is_err());
        assert!(PackedFilters::new(Variant::F2, &[0.0; 8], 1, 1, 1, 16).is_err());
        assert!(PackedFilters::new(Variant::F2, &[0.0; 27], 3, 1, 2, 16).is_err());
    }
}
