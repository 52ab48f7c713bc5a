//! Every SIMD tile kernel against its scalar twin, on random tiles, positions and strides.

use proptest::prelude::*;
use repvgg_simd::layout::CHANNEL_BLOCK;
use repvgg_simd::{Dispatch, dispatch};
use repvgg_winograd::Variant;
use repvgg_winograd::tiles::{self, scalar};

fn variant() -> impl Strategy<Value = Variant> {
    prop::sample::select(Variant::ALL.to_vec())
}

/// Every instruction set this CPU runs (the others cannot be executed here).
fn isa() -> impl Strategy<Value = Dispatch> {
    prop::sample::select(Dispatch::all_supported())
}

/// The twins sum in different orders (pairs and skipped zeros vs dense rows), so they
/// agree to a few ulps of the largest intermediate: bound relative to the inputs' scale
/// times the transform's gain (the largest row sum of |B^T| squared, or |A^T| squared).
fn gain(rows: &[&[f32]]) -> f32 {
    let g = rows.iter().map(|r| r.iter().map(|c| c.abs()).sum::<f32>()).fold(0f32, f32::max);
    g * g
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn input_tile_matches_scalar(
        isa in isa(),
        v in variant(),
        h in 1usize..14,
        w in 1usize..14,
        extra_stride in 0usize..3,
        ty in -1isize..4,
        tx in -1isize..4,
        extra_pos in 0usize..2,
        seed in any::<u64>(),
    ) {
        let row_stride = (w + extra_stride) * CHANNEL_BLOCK;
        let mut rng = seed;
        let src: Vec<f32> = (0..h * row_stride).map(|_| {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }).collect();
        let a = v.alpha();
        // Tiles start at multiples of m (2m at stride 2) minus the padding of 1, and may hang
        // past the map.
        let step = (v.m() * v.stride()) as isize;
        let (y0, x0) = (ty * step - 1, tx * step - 1);
        let pos_stride = CHANNEL_BLOCK * (1 + extra_pos);
        let mut simd = vec![f32::NAN; a * a * pos_stride];
        let mut twin = simd.clone();
        dispatch!(isa, |s| tiles::input_tile(s, v, &src, row_stride, h, w, y0, x0, &mut simd, pos_stride));
        scalar::input_tile(v, &src, row_stride, h, w, y0, x0, &mut twin, pos_stride);
        let tol = 4.0 * f32::EPSILON * gain(&v.bt_rows());
        for p in 0..a * a {
            for l in 0..CHANNEL_BLOCK {
                let (s, t) = (simd[p * pos_stride + l], twin[p * pos_stride + l]);
                prop_assert!((s - t).abs() <= tol, "{:?} {v:?} p={p} lane={l}: {s} vs {t}", isa.isa());
            }
            // Gaps between positions are never written.
            for l in CHANNEL_BLOCK..pos_stride {
                prop_assert!(simd[p * pos_stride + l].is_nan());
            }
        }
    }

    #[test]
    fn output_tile_matches_scalar(
        isa in isa(),
        v in variant(),
        rows_cut in 0usize..6,
        cols_cut in 0usize..6,
        relu in any::<bool>(),
        extra_pos in 0usize..2,
        seed in any::<u64>(),
    ) {
        let (a, m) = (v.alpha(), v.m());
        let rows = m - rows_cut.min(m - 1);
        let cols = m - cols_cut.min(m - 1);
        let pos_stride = CHANNEL_BLOCK * (1 + extra_pos);
        let mut rng = seed;
        let mut next = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let src: Vec<f32> = (0..a * a * pos_stride).map(|_| next()).collect();
        let bias: [f32; CHANNEL_BLOCK] = std::array::from_fn(|_| next());
        let row_stride = (m + 1) * CHANNEL_BLOCK;
        let mut simd = vec![f32::NAN; m * row_stride];
        let mut twin = simd.clone();
        dispatch!(isa, |s| tiles::output_tile(s, v, &src, pos_stride, &bias, relu, &mut simd, row_stride, rows, cols));
        scalar::output_tile(v, &src, pos_stride, &bias, relu, &mut twin, row_stride, rows, cols);
        let tol = 4.0 * f32::EPSILON * (gain(&v.at_rows()) + 1.0);
        for y in 0..m {
            for x in 0..m + 1 {
                for l in 0..CHANNEL_BLOCK {
                    let i = y * row_stride + x * CHANNEL_BLOCK + l;
                    if y < rows && x < cols {
                        prop_assert!((simd[i] - twin[i]).abs() <= tol, "{v:?} ({y},{x}) lane {l}: {} vs {}", simd[i], twin[i]);
                        if relu {
                            prop_assert!(simd[i] >= 0.0);
                        }
                    } else {
                        // Outside the valid part nothing is stored.
                        prop_assert!(simd[i].is_nan() && twin[i].is_nan(), "({y},{x}) written");
                    }
                }
            }
        }
    }
}
