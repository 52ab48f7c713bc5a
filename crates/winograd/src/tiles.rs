//! Input and output tile transforms, vectorized across a block of 16 channels.
//!
//! Activations are channel-blocked (`NCHWc16`): a plane of one channel block stores pixel
//! `(y, x)` as 16 consecutive floats, one per channel, at `y * row_stride + x * 16`. Every
//! arithmetic operation of a transform is then a lane-wise vector operation, with no
//! shuffles: an instruction set with 16-float vectors transforms a channel block at once,
//! one with 8 or 4 floats runs the same transform on each part of the block in turn, with
//! its own registers. Each output lane sees the same operations in the same order
//! whatever the vector width, so the FMA instruction sets (AVX-512, AVX2) produce
//! bitwise the same tiles. The transform of one tile reads or writes `alpha^2` positions,
//! each at `position * pos_stride` in the transformed buffer, so the caller chooses the
//! layout that its batched GEMM reads.
//!
//! The kernels are `#[inline(always)]` bodies generic over a [`Simd`] token: the caller
//! instantiates them inside its own `repvgg_simd::dispatch!`, together with the GEMM that
//! consumes the tiles. They take the constant tables at compile time. Zero coefficients
//! vanish and +-1 coefficients become plain adds. The symmetric points pair the rows of
//! `B^T` and the columns of `A^T` (see [`crate::matrices`]), so each pair costs one even
//! and one odd partial sum. [`scalar`] holds the twins: dense, lane-by-lane, same
//! signatures.

use repvgg_simd::Simd;
use repvgg_simd::layout::CHANNEL_BLOCK;

use crate::Variant;
use crate::tables;

#[inline(always)]
fn load<S: Simd>(s: S, src: &[f32], offset: usize) -> S::F32 {
    debug_assert!(offset + S::LANES <= src.len());
    // SAFETY: every caller passes an offset inside the range validated by
    // `check_input_args` / `check_output_args` on entry to the public kernel.
    unsafe { s.load(src.as_ptr().add(offset)) }
}

#[inline(always)]
fn store<S: Simd>(s: S, dst: &mut [f32], offset: usize, v: S::F32) {
    debug_assert!(offset + S::LANES <= dst.len());
    // SAFETY: as for `load`, the range was validated on entry to the public kernel.
    unsafe { s.store(dst.as_mut_ptr().add(offset), v) }
}

/// The 1-D transforms of one variant, written out by hand from its tables.
///
/// The formulas fix which table entries are zero or +-1 (asserted at compile time below)
/// and use the `+-p` pair structure: the rows of a pair share an even and an odd partial
/// sum, `r_(+p) = even + odd`, `r_(-p) = even - odd`, and in `A^T` even rows see pair sums
/// while odd rows see pair differences. The remaining coefficients are read from the
/// tables, so the kernels compute exactly the matrices the tests check against the generator.
trait OneD<const M: usize, const A: usize> {
    /// `B^T d` for a column (or row) of `alpha` vectors.
    fn input<S: Simd>(s: S, d: [S::F32; A]) -> [S::F32; A];
    /// `A^T x` for a column (or row) of `alpha` vectors.
    fn output<S: Simd>(s: S, x: [S::F32; A]) -> [S::F32; M];
}

struct F2;
impl OneD<2, 4> for F2 {
    #[inline(always)]
    fn input<S: Simd>(_: S, d: [S::F32; 4]) -> [S::F32; 4] {
        [d[2] - d[0], d[1] + d[2], d[2] - d[1], d[3] - d[1]]
    }
    #[inline(always)]
    fn output<S: Simd>(_: S, x: [S::F32; 4]) -> [S::F32; 2] {
        [x[0] + x[1] + x[2], x[1] - x[2] + x[3]]
    }
}
const _: () = {
    let (bt, at) = (tables::f2::BT, tables::f2::AT);
    assert!(bt[0][0] == -1.0 && bt[0][2] == 1.0 && bt[1][1] == 1.0 && bt[1][2] == 1.0 && bt[3][1] == -1.0);
    assert!(bt[3][3] == 1.0 && at[0][1] == 1.0 && at[1][1] == 1.0 && at[1][3] == 1.0);
};

/// F(4,3) for either point set: both share one sparsity pattern.
struct F4<const TEXTBOOK: bool>;
impl<const TEXTBOOK: bool> F4<TEXTBOOK> {
    const BT: [[f32; 6]; 6] = if TEXTBOOK { tables::f4_textbook::BT } else { tables::f4::BT };
    const AT: [[f32; 6]; 4] = if TEXTBOOK { tables::f4_textbook::AT } else { tables::f4::AT };
}
impl<const TEXTBOOK: bool> OneD<4, 6> for F4<TEXTBOOK> {
    #[inline(always)]
    fn input<S: Simd>(s: S, d: [S::F32; 6]) -> [S::F32; 6] {
        let b = Self::BT;
        let c = |v: f32| s.splat(v);
        let r0 = s.mul_add(d[0], c(b[0][0]), s.mul_add(d[2], c(b[0][2]), d[4]));
        let e1 = s.mul_add(d[2], c(b[1][2]), d[4]);
        let o1 = s.mul_add(d[1], c(b[1][1]), d[3] * c(b[1][3]));
        let e2 = s.mul_add(d[2], c(b[3][2]), d[4]);
        let o2 = s.mul_add(d[1], c(b[3][1]), d[3] * c(b[3][3]));
        let r5 = s.mul_add(d[1], c(b[5][1]), s.mul_add(d[3], c(b[5][3]), d[5]));
        [r0, e1 + o1, e1 - o1, e2 + o2, e2 - o2, r5]
    }
    #[inline(always)]
    fn output<S: Simd>(s: S, x: [S::F32; 6]) -> [S::F32; 4] {
        let a = Self::AT;
        let c = |v: f32| s.splat(v);
        let (s1, d1) = (x[1] + x[2], x[1] - x[2]);
        let (s2, d2) = (x[3] + x[4], x[3] - x[4]);
        [
            x[0] + s1 + s2,
            s.mul_add(d1, c(a[1][1]), d2 * c(a[1][3])),
            s.mul_add(s1, c(a[2][1]), s2 * c(a[2][3])),
            s.mul_add(d1, c(a[3][1]), s.mul_add(d2, c(a[3][3]), x[5])),
        ]
    }
}
const _: () = {
    let mut t = 0;
    while t < 2 {
        let (bt, at) =
            if t == 0 { (tables::f4::BT, tables::f4::AT) } else { (tables::f4_textbook::BT, tables::f4_textbook::AT) };
        assert!(bt[0][1] == 0.0 && bt[0][3] == 0.0 && bt[0][4] == 1.0 && bt[0][5] == 0.0);
        assert!(bt[1][0] == 0.0 && bt[1][4] == 1.0 && bt[1][5] == 0.0 && bt[3][0] == 0.0 && bt[3][4] == 1.0);
        assert!(bt[3][5] == 0.0 && bt[5][0] == 0.0 && bt[5][2] == 0.0 && bt[5][4] == 0.0 && bt[5][5] == 1.0);
        assert!(at[0][0] == 1.0 && at[0][1] == 1.0 && at[0][3] == 1.0 && at[0][5] == 0.0 && at[1][0] == 0.0);
        assert!(at[1][5] == 0.0 && at[2][0] == 0.0 && at[2][5] == 0.0 && at[3][0] == 0.0 && at[3][5] == 1.0);
        t += 1;
    }
};

struct F6;
impl OneD<6, 8> for F6 {
    #[inline(always)]
    fn input<S: Simd>(s: S, d: [S::F32; 8]) -> [S::F32; 8] {
        let b = tables::f6::BT;
        let c = |v: f32| s.splat(v);
        // Rows 0 and 7 share the coefficient 5.25 on their inner terms.
        let r0 = s.mul_add(d[2] - d[4], c(b[0][2]), d[6] - d[0]);
        let r7 = s.mul_add(d[3] - d[5], c(b[7][3]), d[7] - d[1]);
        let pair = |k: usize| {
            let even = s.mul_add(d[2], c(b[k][2]), s.mul_add(d[4], c(b[k][4]), d[6]));
            let odd = s.mul_add(d[1], c(b[k][1]), s.mul_add(d[3], c(b[k][3]), d[5] * c(b[k][5])));
            (even + odd, even - odd)
        };
        let (r1, r2) = pair(1);
        let (r3, r4) = pair(3);
        let (r5, r6) = pair(5);
        [r0, r1, r2, r3, r4, r5, r6, r7]
    }
    #[inline(always)]
    fn output<S: Simd>(s: S, x: [S::F32; 8]) -> [S::F32; 6] {
        let a = tables::f6::AT;
        let c = |v: f32| s.splat(v);
        let (s1, d1) = (x[1] + x[2], x[1] - x[2]);
        let (s2, d2) = (x[3] + x[4], x[3] - x[4]);
        let (s3, d3) = (x[5] + x[6], x[5] - x[6]);
        let even = |i: usize| s.mul_add(s2, c(a[i][3]), s.mul_add(s3, c(a[i][5]), s1));
        let odd = |i: usize| s.mul_add(d2, c(a[i][3]), s.mul_add(d3, c(a[i][5]), d1));
        [x[0] + s1 + s2 + s3, odd(1), even(2), odd(3), even(4), odd(5) + x[7]]
    }
}
const _: () = {
    let (bt, at) = (tables::f6::BT, tables::f6::AT);
    assert!(bt[0][0] == -1.0 && bt[0][4] == -bt[0][2] && bt[0][6] == 1.0 && bt[0][1] == 0.0 && bt[0][3] == 0.0);
    assert!(bt[7][1] == -1.0 && bt[7][5] == -bt[7][3] && bt[7][7] == 1.0 && bt[7][2] == 0.0 && bt[7][4] == 0.0);
    let mut k = 1;
    while k < 7 {
        assert!(bt[k][0] == 0.0 && bt[k][6] == 1.0 && bt[k][7] == 0.0);
        k += 2;
    }
    let mut i = 0;
    while i < 6 {
        assert!(at[i][1] == 1.0 && at[i][2] == if i % 2 == 0 { 1.0 } else { -1.0 });
        assert!(at[i][0] == if i == 0 { 1.0 } else { 0.0 } && at[i][7] == if i == 5 { 1.0 } else { 0.0 });
        i += 1;
    }
    assert!(at[0][3] == 1.0 && at[0][5] == 1.0);
};

/// `sum_i c_i v_i` over the nonzero `c_i` of a compile-time row, in index order: the
/// zeros vanish and +-1 become adds and subtracts (the loop unrolls over constants). Plain
/// loops, no closures: a closure would not inherit the caller's target features, and its
/// vector operations would become calls.
#[inline(always)]
fn combine<S: Simd, const N: usize>(s: S, c: [f32; N], v: [S::F32; N]) -> S::F32 {
    let mut acc = s.zero();
    let mut first = true;
    for i in 0..N {
        let c = c[i];
        if c == 0.0 {
            continue;
        }
        acc = match (first, c) {
            (true, 1.0) => v[i],
            (true, -1.0) => s.zero() - v[i],
            (true, _) => v[i] * s.splat(c),
            (false, 1.0) => acc + v[i],
            (false, -1.0) => acc - v[i],
            (false, _) => s.mul_add(v[i], s.splat(c), acc),
        };
        first = false;
    }
    acc
}

/// The polyphase stride-2 transforms (`crate::matrices::polyphase`) from F(m, 2)'s tables
/// (`E = m + 1`, `A = 2m + 1`): the even samples through F(m, 2), the odd ones through.
trait EvenPhase<const M: usize, const E: usize> {
    const BT: [[f32; E]; E];
    const AT: [[f32; E]; M];
}

struct P2;
impl EvenPhase<2, 3> for P2 {
    const BT: [[f32; 3]; 3] = tables::p2::BT_EVEN;
    const AT: [[f32; 3]; 2] = tables::p2::AT_EVEN;
}

struct P3;
impl EvenPhase<3, 4> for P3 {
    const BT: [[f32; 4]; 4] = tables::p3::BT_EVEN;
    const AT: [[f32; 4]; 3] = tables::p3::AT_EVEN;
}

/// One polyphase variant's 1-D transforms.
struct Polyphase<T, const E: usize>(std::marker::PhantomData<T>);

macro_rules! polyphase_one_d {
    ($t:ty, $m:literal, $e:literal, $a:literal) => {
        impl OneD<$m, $a> for Polyphase<$t, $e> {
            #[inline(always)]
            fn input<S: Simd>(s: S, d: [S::F32; $a]) -> [S::F32; $a] {
                let mut even = [s.zero(); $e];
                for i in 0..$e {
                    even[i] = d[2 * i];
                }
                let mut out = [s.zero(); $a];
                for j in 0..$e {
                    out[j] = combine(s, <$t as EvenPhase<$m, $e>>::BT[j], even);
                }
                for j in 0..$m {
                    out[$e + j] = d[2 * j + 1];
                }
                out
            }
            #[inline(always)]
            fn output<S: Simd>(s: S, x: [S::F32; $a]) -> [S::F32; $m] {
                let mut even = [s.zero(); $e];
                even.copy_from_slice(&x[..$e]);
                let mut out = [s.zero(); $m];
                for i in 0..$m {
                    out[i] = combine(s, <$t as EvenPhase<$m, $e>>::AT[i], even) + x[$e + i];
                }
                out
            }
        }
    };
}
polyphase_one_d!(P2, 2, 3, 5);
polyphase_one_d!(P3, 3, 4, 7);

/// Reads pixel `(y, x)` of the tile, relative to its top-left corner, for the lanes
/// starting at `lane` of the channel block.
trait TileReader<S: Simd> {
    fn get(&self, y: usize, x: usize, lane: usize) -> S::F32;
}

/// A tile entirely inside the map: plain loads.
struct Interior<'a, S> {
    s: S,
    src: &'a [f32],
    base: usize,
    row_stride: usize,
}

impl<S: Simd> TileReader<S> for Interior<'_, S> {
    #[inline(always)]
    fn get(&self, y: usize, x: usize, lane: usize) -> S::F32 {
        load(self.s, self.src, self.base + y * self.row_stride + x * CHANNEL_BLOCK + lane)
    }
}

/// A tile crossing the map's edge: every load reads a clamped, valid address and is
/// ANDed with an all-ones or all-zeros mask, so outside pixels read as exact zeros
/// (the convolution's padding) without branches and without a padded copy.
struct Border<'a, S: Simd, const A: usize> {
    s: S,
    src: &'a [f32],
    row_stride: usize,
    rows: [usize; A],
    cols: [usize; A],
    row_mask: [S::F32; A],
    col_mask: [S::F32; A],
}

impl<'a, S: Simd, const A: usize> Border<'a, S, A> {
    #[inline(always)]
    fn new(s: S, src: &'a [f32], row_stride: usize, h: usize, w: usize, y0: isize, x0: isize) -> Self {
        // Loops rather than `array::from_fn`: its closures are functions of their own,
        // compiled without the trampoline's target features, so each lane mask became an
        // outlined `splat` call passing its vector through memory.
        let (mut rows, mut cols, mut row_mask, mut col_mask) = ([0; A], [0; A], [s.zero(); A], [s.zero(); A]);
        for (start, len, pos, mask) in [(y0, h, &mut rows, &mut row_mask), (x0, w, &mut cols, &mut col_mask)] {
            for i in 0..A {
                let p = start + i as isize;
                pos[i] = p.clamp(0, len.max(1) as isize - 1) as usize;
                mask[i] = s.mask(p >= 0 && p < len as isize);
            }
        }
        Border { s, src, row_stride, rows, cols, row_mask, col_mask }
    }
}

impl<S: Simd, const A: usize> TileReader<S> for Border<'_, S, A> {
    #[inline(always)]
    fn get(&self, y: usize, x: usize, lane: usize) -> S::F32 {
        let v = load(self.s, self.src, self.rows[y] * self.row_stride + self.cols[x] * CHANNEL_BLOCK + lane);
        self.s.and(v, self.s.and(self.row_mask[y], self.col_mask[x]))
    }
}

/// `V = B^T d B` for the lanes at `lane`: columns first into a small stack tile, then
/// rows straight to `dst`.
#[inline(always)]
fn input_2d<S: Simd, const M: usize, const A: usize, T: OneD<M, A>, R: TileReader<S>>(
    s: S,
    d: &R,
    lane: usize,
    dst: &mut [f32],
    pos_stride: usize,
) {
    let mut t = [[s.zero(); A]; A];
    for x in 0..A {
        let col = T::input(s, std::array::from_fn(|y| d.get(y, x, lane)));
        for y in 0..A {
            t[y][x] = col[y];
        }
    }
    for (i, row) in t.iter().enumerate() {
        for (j, v) in T::input(s, *row).iter().enumerate() {
            store(s, dst, (i * A + j) * pos_stride + lane, *v);
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)] // a kernel entry point: slices, strides and sizes
fn input_tile_impl<S: Simd, const M: usize, const A: usize, T: OneD<M, A>>(
    s: S,
    src: &[f32],
    row_stride: usize,
    h: usize,
    w: usize,
    y0: isize,
    x0: isize,
    dst: &mut [f32],
    pos_stride: usize,
) {
    let interior = y0 >= 0 && x0 >= 0 && y0 as usize + A <= h && x0 as usize + A <= w;
    if interior {
        let reader = Interior { s, src, base: y0 as usize * row_stride + x0 as usize * CHANNEL_BLOCK, row_stride };
        for lane in (0..CHANNEL_BLOCK).step_by(S::LANES) {
            input_2d::<S, M, A, T, _>(s, &reader, lane, dst, pos_stride);
        }
    } else {
        let reader = Border::<S, A>::new(s, src, row_stride, h, w, y0, x0);
        for lane in (0..CHANNEL_BLOCK).step_by(S::LANES) {
            input_2d::<S, M, A, T, _>(s, &reader, lane, dst, pos_stride);
        }
    }
}

/// `Y = A^T M A` + bias, then ReLU, for the valid `rows x cols` part.
///
/// # Safety
///
/// `src` must hold `alpha^2` vectors at `pos_stride`, and `dst` must be valid for writes of
/// `rows x cols` pixels at `row_stride`.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // a kernel entry point: slices, strides and sizes
unsafe fn output_tile_impl<S: Simd, const M: usize, const A: usize, T: OneD<M, A>>(
    s: S,
    src: &[f32],
    pos_stride: usize,
    bias: &[f32; CHANNEL_BLOCK],
    relu: bool,
    dst: *mut f32,
    row_stride: usize,
    rows: usize,
    cols: usize,
) {
    for lane in (0..CHANNEL_BLOCK).step_by(S::LANES) {
        let mut t = [[s.zero(); A]; M];
        for x in 0..A {
            let col = T::output(s, std::array::from_fn(|y| load(s, src, (y * A + x) * pos_stride + lane)));
            for i in 0..M {
                t[i][x] = col[i];
            }
        }
        let bias = s.read(&bias[lane..]);
        for (i, row) in t.iter().enumerate().take(rows) {
            for (j, v) in T::output(s, *row).iter().enumerate().take(cols) {
                let v = *v + bias;
                let v = if relu { s.relu(v) } else { v };
                // SAFETY: (i, j) is inside the rows x cols block the caller vouches for, and
                // lane + LANES <= 16.
                unsafe { s.store(dst.add(i * row_stride + j * CHANNEL_BLOCK + lane), v) };
            }
        }
    }
}

/// Checks the bounds every kernel relies on, so that an out-of-range call panics with a
/// message here instead of deep in a slice index.
#[inline(always)]
fn check_input_args(v: Variant, src: &[f32], row_stride: usize, h: usize, w: usize, dst: &[f32], pos_stride: usize) {
    let a = v.alpha();
    let cb = CHANNEL_BLOCK;
    assert!(row_stride >= w * cb, "row stride {row_stride} shorter than {w} pixels");
    assert!(h == 0 || src.len() >= (h - 1) * row_stride + w * cb, "source plane too short");
    assert!(pos_stride >= cb && dst.len() >= (a * a - 1) * pos_stride + cb, "destination too short");
}

#[inline(always)]
fn check_output_args(
    v: Variant,
    src: &[f32],
    pos_stride: usize,
    dst: &[f32],
    row_stride: usize,
    rows: usize,
    cols: usize,
) {
    check_output_src(v, src, pos_stride, rows, cols);
    assert!(
        rows == 0 || cols == 0 || dst.len() >= (rows - 1) * row_stride + cols * CHANNEL_BLOCK,
        "destination too short"
    );
}

#[inline(always)]
fn check_output_src(v: Variant, src: &[f32], pos_stride: usize, rows: usize, cols: usize) {
    let (a, m) = (v.alpha(), v.m());
    assert!(rows <= m && cols <= m, "{rows}x{cols} exceeds the {m}x{m} output tile");
    assert!(pos_stride >= CHANNEL_BLOCK && src.len() >= (a * a - 1) * pos_stride + CHANNEL_BLOCK, "source too short");
}

/// Transforms one input tile, `V = B^T d B`, for the 16 channels of a channel block.
///
/// The tile's top-left pixel is `(y0, x0)` (negative at the top/left border, the
/// convolution's padding). `src` is the channel block's plane of `h x w` pixels with
/// `row_stride` floats per row. Pixels outside it read as zero, so no padded copy of the
/// input is needed. Position `p = i * alpha + j` of the result goes to
/// `dst[p * pos_stride..][..16]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // a kernel entry point: slices, strides and sizes
pub fn input_tile<S: Simd>(
    s: S,
    variant: Variant,
    src: &[f32],
    row_stride: usize,
    h: usize,
    w: usize,
    y0: isize,
    x0: isize,
    dst: &mut [f32],
    pos_stride: usize,
) {
    check_input_args(variant, src, row_stride, h, w, dst, pos_stride);
    let (rs, p) = (row_stride, pos_stride);
    match variant {
        Variant::F2 => input_tile_impl::<S, 2, 4, F2>(s, src, rs, h, w, y0, x0, dst, p),
        Variant::F4 => input_tile_impl::<S, 4, 6, F4<false>>(s, src, rs, h, w, y0, x0, dst, p),
        Variant::F4Textbook => input_tile_impl::<S, 4, 6, F4<true>>(s, src, rs, h, w, y0, x0, dst, p),
        Variant::F6 => input_tile_impl::<S, 6, 8, F6>(s, src, rs, h, w, y0, x0, dst, p),
        Variant::P2 => input_tile_impl::<S, 2, 5, Polyphase<P2, 3>>(s, src, rs, h, w, y0, x0, dst, p),
        Variant::P3 => input_tile_impl::<S, 3, 7, Polyphase<P3, 4>>(s, src, rs, h, w, y0, x0, dst, p),
    }
}

/// Inverse-transforms one tile, `Y = A^T M A`, adds `bias`, optionally applies ReLU, and
/// stores the top-left `rows x cols` pixels (a partial tile at the right or bottom edge
/// stores only its valid part).
///
/// Position `p` of `M` is read from `src[p * pos_stride..][..16]`; output pixel `(i, j)`
/// goes to `dst[i * row_stride + j * 16..][..16]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // a kernel entry point: slices, strides and sizes
pub fn output_tile<S: Simd>(
    s: S,
    variant: Variant,
    src: &[f32],
    pos_stride: usize,
    bias: &[f32; CHANNEL_BLOCK],
    relu: bool,
    dst: &mut [f32],
    row_stride: usize,
    rows: usize,
    cols: usize,
) {
    check_output_args(variant, src, pos_stride, dst, row_stride, rows, cols);
    // SAFETY: `check_output_args` verified that `dst` holds the rows x cols block.
    unsafe { output_tile_raw(s, variant, src, pos_stride, bias, relu, dst.as_mut_ptr(), row_stride, rows, cols) }
}

/// [`output_tile`] writing through a raw pointer, for callers whose concurrent tiles
/// interleave in one buffer (tiles of one row of a map share its rows, so they cannot be
/// handed out as disjoint slices).
///
/// # Safety
///
/// `dst` must be valid for writes of the `rows x cols` pixels (16 floats each) at
/// `i * row_stride + j * 16`, and no other thread may access those floats concurrently.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // a kernel entry point: slices, strides and sizes
pub unsafe fn output_tile_raw<S: Simd>(
    s: S,
    variant: Variant,
    src: &[f32],
    pos_stride: usize,
    bias: &[f32; CHANNEL_BLOCK],
    relu: bool,
    dst: *mut f32,
    row_stride: usize,
    rows: usize,
    cols: usize,
) {
    check_output_src(variant, src, pos_stride, rows, cols);
    let (p, rs) = (pos_stride, row_stride);
    // SAFETY: forwarded contract of this function.
    unsafe {
        match variant {
            Variant::F2 => output_tile_impl::<S, 2, 4, F2>(s, src, p, bias, relu, dst, rs, rows, cols),
            Variant::F4 => output_tile_impl::<S, 4, 6, F4<false>>(s, src, p, bias, relu, dst, rs, rows, cols),
            Variant::F4Textbook => output_tile_impl::<S, 4, 6, F4<true>>(s, src, p, bias, relu, dst, rs, rows, cols),
            Variant::F6 => output_tile_impl::<S, 6, 8, F6>(s, src, p, bias, relu, dst, rs, rows, cols),
            Variant::P2 => output_tile_impl::<S, 2, 5, Polyphase<P2, 3>>(s, src, p, bias, relu, dst, rs, rows, cols),
            Variant::P3 => output_tile_impl::<S, 3, 7, Polyphase<P3, 4>>(s, src, p, bias, relu, dst, rs, rows, cols),
        }
    }
}

/// Scalar twins of the SIMD kernels: the same signatures, computed lane by lane with the
/// dense matrices (no pairing, no skipped zeros). They exist to test the SIMD kernels
/// against an implementation whose correctness is evident from reading it.
pub mod scalar {
    use super::*;

    /// Dense `mat * x` for one lane.
    fn apply(mat: &[Vec<f32>], x: &[f32]) -> Vec<f32> {
        mat.iter().map(|row| row.iter().zip(x).fold(0f32, |acc, (c, v)| c.mul_add(*v, acc))).collect()
    }

    fn f32_rows(rows: &[&[f32]]) -> Vec<Vec<f32>> {
        rows.iter().map(|r| r.to_vec()).collect()
    }

    /// Scalar twin of [`super::input_tile`].
    #[allow(clippy::too_many_arguments)] // a kernel entry point: slices, strides and sizes
    pub fn input_tile(
        variant: Variant,
        src: &[f32],
        row_stride: usize,
        h: usize,
        w: usize,
        y0: isize,
        x0: isize,
        dst: &mut [f32],
        pos_stride: usize,
    ) {
        check_input_args(variant, src, row_stride, h, w, dst, pos_stride);
        let a = variant.alpha();
        let bt = f32_rows(&variant.bt_rows());
        for lane in 0..CHANNEL_BLOCK {
            let pixel = |y: isize, x: isize| {
                if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                    0.0
                } else {
                    src[y as usize * row_stride + x as usize * CHANNEL_BLOCK + lane]
                }
            };
            let d: Vec<Vec<f32>> =
                (0..a).map(|i| (0..a).map(|j| pixel(y0 + i as isize, x0 + j as isize)).collect()).collect();
            // t = B^T d, column by column; v = t B, row by row.
            let cols: Vec<Vec<f32>> =
                (0..a).map(|x| apply(&bt, &(0..a).map(|y| d[y][x]).collect::<Vec<_>>())).collect();
            for i in 0..a {
                let trow: Vec<f32> = (0..a).map(|x| cols[x][i]).collect();
                for (j, v) in apply(&bt, &trow).into_iter().enumerate() {
                    dst[(i * a + j) * pos_stride + lane] = v;
                }
            }
        }
    }

    /// Scalar twin of [`super::output_tile`].
    #[allow(clippy::too_many_arguments)] // a kernel entry point: slices, strides and sizes
    pub fn output_tile(
        variant: Variant,
        src: &[f32],
        pos_stride: usize,
        bias: &[f32; CHANNEL_BLOCK],
        relu: bool,
        dst: &mut [f32],
        row_stride: usize,
        rows: usize,
        cols: usize,
    ) {
        check_output_args(variant, src, pos_stride, dst, row_stride, rows, cols);
        let a = variant.alpha();
        let at = f32_rows(&variant.at_rows());
        for lane in 0..CHANNEL_BLOCK {
            let mm = |i: usize, j: usize| src[(i * a + j) * pos_stride + lane];
            let tcols: Vec<Vec<f32>> =
                (0..a).map(|x| apply(&at, &(0..a).map(|y| mm(y, x)).collect::<Vec<_>>())).collect();
            for i in 0..rows {
                let trow: Vec<f32> = (0..a).map(|x| tcols[x][i]).collect();
                for (j, v) in apply(&at, &trow).into_iter().enumerate().take(cols) {
                    let v = v + bias[lane];
                    dst[i * row_stride + j * CHANNEL_BLOCK + lane] = if relu { repvgg_simd::relu(v) } else { v };
                }
            }
        }
    }
}

impl Variant {
    /// Rows of the shipped f32 `B^T`.
    pub fn bt_rows(self) -> Vec<&'static [f32]> {
        match self {
            Variant::F2 => tables::f2::BT.iter().map(|r| r.as_slice()).collect(),
            Variant::F4 => tables::f4::BT.iter().map(|r| r.as_slice()).collect(),
            Variant::F4Textbook => tables::f4_textbook::BT.iter().map(|r| r.as_slice()).collect(),
            Variant::F6 => tables::f6::BT.iter().map(|r| r.as_slice()).collect(),
            Variant::P2 => tables::p2::BT.iter().map(|r| r.as_slice()).collect(),
            Variant::P3 => tables::p3::BT.iter().map(|r| r.as_slice()).collect(),
        }
    }

    /// Rows of the shipped f32 `A^T`.
    pub fn at_rows(self) -> Vec<&'static [f32]> {
        match self {
            Variant::F2 => tables::f2::AT.iter().map(|r| r.as_slice()).collect(),
            Variant::F4 => tables::f4::AT.iter().map(|r| r.as_slice()).collect(),
            Variant::F4Textbook => tables::f4_textbook::AT.iter().map(|r| r.as_slice()).collect(),
            Variant::F6 => tables::f6::AT.iter().map(|r| r.as_slice()).collect(),
            Variant::P2 => tables::p2::AT.iter().map(|r| r.as_slice()).collect(),
            Variant::P3 => tables::p3::AT.iter().map(|r| r.as_slice()).collect(),
        }
    }
}
