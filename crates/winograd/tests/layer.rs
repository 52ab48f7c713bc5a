//! A whole single-layer Winograd convolution (the crate's transforms plus a plain batched
//! GEMM written here) against an f64 direct convolution, over random shapes.

use repvgg_simd::layout::CHANNEL_BLOCK;
use repvgg_simd::{Dispatch, dispatch};
use repvgg_winograd::{PackedFilters, Variant, input_tile, output_tile};

struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

struct Case {
    n: usize,
    c: usize,
    k: usize,
    groups: usize,
    h: usize,
    w: usize,
}

/// Output size of a 3x3 convolution with padding 1 along a side of `len` pixels.
fn out_len(len: usize, stride: usize) -> usize {
    (len - 1) / stride + 1
}

/// f64 direct 3x3 convolution, pad 1, with bias (no ReLU): NCHW in, NCHW out.
fn direct(case: &Case, stride: usize, x: &[f32], weights: &[f32], bias: &[f32]) -> Vec<f64> {
    let Case { n, c, k, groups, h, w } = *case;
    let (cg, kg) = (c / groups, k / groups);
    let (oh, ow) = (out_len(h, stride), out_len(w, stride));
    let mut out = vec![0f64; n * k * oh * ow];
    for b in 0..n {
        for o in 0..k {
            let g = o / kg;
            for y in 0..oh {
                for xx in 0..ow {
                    let mut acc = bias[o] as f64;
                    for ci in 0..cg {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = ((stride * y + ky) as isize - 1, (stride * xx + kx) as isize - 1);
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    let v = x[((b * c + g * cg + ci) * h + iy as usize) * w + ix as usize];
                                    acc += weights[((o * cg + ci) * 3 + ky) * 3 + kx] as f64 * v as f64;
                                }
                            }
                        }
                    }
                    out[((b * k + o) * oh + y) * ow + xx] = acc;
                }
            }
        }
    }
    out
}

/// Winograd convolution from the crate's kernels: NCHW in, NCHW out (f32).
///
/// Each group's channels are laid out channel-blocked with padding to 16, transformed tile
/// by tile into `V[tile][p][c]`, multiplied position by position with the packed filters,
/// and inverse-transformed with bias.
fn winograd(isa: Dispatch, v: Variant, case: &Case, x: &[f32], weights: &[f32], bias: &[f32]) -> Vec<f32> {
    let Case { n, c, k, groups, h, w } = *case;
    let (cg, kg) = (c / groups, k / groups);
    let packed = PackedFilters::new(v, weights, k, cg, groups, 32).unwrap();
    let (m, a, stride) = (v.m(), v.alpha(), v.stride());
    let positions = a * a;
    let (c_pad, k_pad) = (packed.c_pad(), kg.div_ceil(CHANNEL_BLOCK) * CHANNEL_BLOCK);
    let (oh, ow) = (out_len(h, stride), out_len(w, stride));
    let (th, tw) = (oh.div_ceil(m), ow.div_ceil(m));
    let mut out = vec![0f32; n * k * oh * ow];
    for b in 0..n {
        for g in 0..groups {
            // Channel-blocked input of this group: [cb][y][x][16].
            let mut blocked = vec![0f32; c_pad * h * w];
            for ci in 0..cg {
                for p in 0..h * w {
                    blocked[((ci / CHANNEL_BLOCK) * h * w + p) * CHANNEL_BLOCK + ci % CHANNEL_BLOCK] =
                        x[(b * c + g * cg + ci) * h * w + p];
                }
            }
            let mut out_blocked = vec![0f32; k_pad * oh * ow];
            for ty in 0..th {
                for tx in 0..tw {
                    let mut tile = vec![0f32; positions * c_pad];
                    for cb in 0..c_pad / CHANNEL_BLOCK {
                        let plane = &blocked[cb * h * w * CHANNEL_BLOCK..(cb + 1) * h * w * CHANNEL_BLOCK];
                        let (y0, x0) = ((ty * m * stride) as isize - 1, (tx * m * stride) as isize - 1);
                        let dst = &mut tile[cb * CHANNEL_BLOCK..];
                        dispatch!(isa, |s| input_tile(s, v, plane, w * CHANNEL_BLOCK, h, w, y0, x0, dst, c_pad));
                    }
                    // The batched GEMM, one position at a time: M[p][k] = sum_c U[p][c][k] V[p][c].
                    let mut prod = vec![0f32; positions * k_pad];
                    for panel in 0..packed.panels_per_group() {
                        let f = packed.panel(g, panel);
                        for p in 0..positions {
                            let u = f.position(p);
                            for lane in 0..f.width {
                                let mut acc = 0f32;
                                for ci in 0..c_pad {
                                    acc += u[ci * f.width + lane] * tile[p * c_pad + ci];
                                }
                                prod[p * k_pad + f.k0 + lane] = acc;
                            }
                        }
                    }
                    let (rows, cols) = (m.min(oh - ty * m), m.min(ow - tx * m));
                    for kb in 0..k_pad / CHANNEL_BLOCK {
                        let mut bias16 = [0f32; CHANNEL_BLOCK];
                        for l in 0..CHANNEL_BLOCK.min(kg.saturating_sub(kb * CHANNEL_BLOCK)) {
                            bias16[l] = bias[g * kg + kb * CHANNEL_BLOCK + l];
                        }
                        let dst = &mut out_blocked[(kb * oh * ow + ty * m * ow + tx * m) * CHANNEL_BLOCK..];
                        let src = &prod[kb * CHANNEL_BLOCK..];
                        dispatch!(isa, |s| output_tile(
                            s,
                            v,
                            src,
                            k_pad,
                            &bias16,
                            false,
                            dst,
                            ow * CHANNEL_BLOCK,
                            rows,
                            cols
                        ));
                    }
                }
            }
            for o in 0..kg {
                for p in 0..oh * ow {
                    out[(b * k + g * kg + o) * oh * ow + p] =
                        out_blocked[((o / CHANNEL_BLOCK) * oh * ow + p) * CHANNEL_BLOCK + o % CHANNEL_BLOCK];
                }
            }
        }
    }
    out
}

/// max |winograd - direct| / max |direct|.
fn relative_error(isa: Dispatch, v: Variant, case: &Case, seed: u64) -> f64 {
    let mut rng = Rng(seed);
    let x: Vec<f32> = (0..case.n * case.c * case.h * case.w).map(|_| rng.uniform()).collect();
    let weights: Vec<f32> = (0..case.k * case.c / case.groups * 9).map(|_| rng.uniform()).collect();
    let bias: Vec<f32> = (0..case.k).map(|_| rng.uniform()).collect();
    let want = direct(case, v.stride(), &x, &weights, &bias);
    let got = winograd(isa, v, case, &x, &weights, &bias);
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    want.iter().zip(&got).fold(0f64, |m, (a, b)| m.max((a - *b as f64).abs())) / scale
}

/// Bound on max|err| / max|ref| for fp32, per variant, as a function of the reduction
/// length `9 c`. Winograd's error is the direct convolution's accumulation error times a
/// growth factor set by the transform coefficients (Lavin & Gray 2016, Sec. 5; Barabasz
/// et al. 2020): F(2,3) has coefficients in {0, +-1, 1/2} and stays near direct
/// (~1e-6); F(4,3) with the sqrt(2) points keeps |coefficients| <= 2.83 (2e-6 to 4e-6);
/// F(6,3) reaches 32 in A^T and 5.25 in B^T (1e-5 to 2e-5). Accumulation error grows like
/// sqrt(c) for random data, so the bound does too; the base values leave a 2-3x margin
/// over what this test measures.
fn bound(v: Variant, c: usize) -> f64 {
    let base = match v {
        Variant::F2 => 1.5e-6,
        Variant::F4 => 4e-6,
        Variant::F4Textbook => 1.5e-5,
        Variant::F6 => 3e-5,
        // Coefficients in {0, +-1, 1/2}: direct's error, over a third fewer products.
        Variant::P2 | Variant::P3 => 1.5e-6,
    };
    base * (c as f64 / 64.0).sqrt().max(1.0)
}

#[test]
fn winograd_layer_matches_f64_direct_convolution() {
    let cases = [
        // Odd and even sizes, non-square, smaller than one tile, channel counts not a
        // multiple of 16, groups, batch > 1.
        Case { n: 1, c: 16, k: 16, groups: 1, h: 8, w: 8 },
        Case { n: 2, c: 5, k: 7, groups: 1, h: 7, w: 11 },
        Case { n: 1, c: 3, k: 33, groups: 1, h: 1, w: 1 },
        Case { n: 1, c: 20, k: 50, groups: 1, h: 2, w: 3 },
        Case { n: 3, c: 32, k: 48, groups: 2, h: 13, w: 9 },
        Case { n: 1, c: 64, k: 64, groups: 4, h: 14, w: 14 },
        Case { n: 1, c: 48, k: 40, groups: 1, h: 17, w: 6 },
    ];
    for isa in Dispatch::all_supported() {
        for v in Variant::ALL {
            for (i, case) in cases.iter().enumerate() {
                let err = relative_error(isa, v, case, 100 + i as u64);
                let limit = bound(v, case.c / case.groups);
                assert!(err < limit, "{:?} {v:?} case {i}: relative error {err:.2e} exceeds {limit:.2e}", isa.isa());
            }
        }
    }
}

/// The error table recorded in the crate docs (run with `--nocapture` to print it), and
/// the ordering the docs claim: the sqrt(2) points beat the textbook points. Per
/// instruction set: the portable set's unfused multiply-adds round twice.
#[test]
fn error_table() {
    for isa in Dispatch::all_supported() {
        println!("{}", isa.isa());
        error_table_for(isa);
    }
}

fn error_table_for(isa: Dispatch) {
    let mut rows = Vec::new();
    for c in [32, 128, 512] {
        let case = Case { n: 1, c, k: 16, groups: 1, h: 24, w: 24 };
        let errs: Vec<f64> = Variant::ALL.iter().map(|&v| relative_error(isa, v, &case, 7 + c as u64)).collect();
        println!(
            "C={c:4}  F2 {:.2e}  F4(sqrt2) {:.2e}  F4(textbook) {:.2e}  F6 {:.2e}  P2 (stride 2) {:.2e}  P3 {:.2e}",
            errs[0], errs[1], errs[2], errs[3], errs[4], errs[5]
        );
        for (v, e) in Variant::ALL.iter().zip(&errs) {
            assert!(*e < bound(*v, c), "{v:?} at C={c}: {e:.2e}");
        }
        assert!(errs[1] < errs[2], "sqrt(2) points should be more accurate than 0, +-1, +-2 at C={c}");
        rows.push(errs);
    }
}
