//! AMX tile products that read their activations in place, shared by the INT8 and BF16
//! executors: `tdpbusd` (u8 x s8 -> i32, 4-deep groups) and `tdpbf16ps` (bf16 x bf16 ->
//! f32, pairs). Both take `A` as 16 rows of `run` bytes and `B` as `run / 4` rows of 64
//! bytes (16 output channels of one 4-byte group each), so one tile configuration serves
//! both and only the instruction differs.
//!
//! A 3x3 layer's activations, zero-bordered, hold each output pixel's window at a fixed
//! offset from the pixel before (`stride` bytes), so 16 output pixels of a row are 16 tile
//! rows read where they are: a product is a list of `offsets` (one per reduction step) and
//! the weight panel's matching `B` rows.
//!
//! Stable Rust has no AMX intrinsics: the tile loops are `asm!`.

/// The operation of a tile product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileOp {
    /// `tdpbusd`: u8 activations, s8 weights, i32 sums.
    U8S8,
    /// `tdpbf16ps`: bf16 activations and weights, f32 sums.
    Bf16,
}

/// Accumulator rows of one product: 16 rows (columns of the output, pixels) of `MR` = 32
/// 4-byte sums (i32 or f32), the first `width` of each row written.
pub const ROW_WORDS: usize = crate::kernels::gemm::MR;

/// The sums of one product, 16 rows of [`ROW_WORDS`].
pub type Acc<T> = [T; ROW_WORDS * 16];

/// A tile sum's type: i32 (`tdpbusd`) or f32 (`tdpbf16ps`).
pub trait Sum: Copy {
    const OP: TileOp;
}

impl Sum for i32 {
    const OP: TileOp = TileOp::U8S8;
}

impl Sum for f32 {
    const OP: TileOp = TileOp::Bf16;
}

/// Whether this process runs `op` on tiles: the CPU has it and Linux granted the tile data
/// state (asked once per process; cached).
pub fn available(op: TileOp) -> bool {
    use std::sync::OnceLock;
    static AVAILABLE: OnceLock<(bool, bool)> = OnceLock::new();
    let (u8s8, bf16) = *AVAILABLE.get_or_init(|| {
        use crate::kernels::probe_mixed::{amx_bf16_available, amx_int8_available, has_avx512bf16, has_avx512vnni};
        // Every AMX CPU has AVX-512 with VNNI and BF16; the executors' conversions and
        // epilogues use them.
        (amx_int8_available() && has_avx512vnni(), amx_bf16_available() && has_avx512bf16())
    });
    match op {
        TileOp::U8S8 => u8s8,
        TileOp::Bf16 => bf16,
    }
}

/// The tile configuration of [`AmxTiles`], loaded on this thread while it lives
/// (`ldtilecfg` when made, `tilerelease` when dropped): configuring costs about as much as
/// a short product, so a thread configures once for all the products of its share of a
/// layer's work items (again only where the rows change). One per thread
/// at a time; not `Send` (tile state is per thread).
pub struct AmxTiles {
    op: TileOp,
    run: usize,
    rows: usize,
    _per_thread: std::marker::PhantomData<*const ()>,
}

thread_local! {
    static TILES_LOADED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl AmxTiles {
    /// Configures the tiles for `op` on runs of `run` bytes (a multiple of 4 up to 64).
    /// Panics where the process cannot run `op` ([`available`]): the executors choose AMX
    /// only where it can.
    pub fn new(op: TileOp, run: usize) -> AmxTiles {
        AmxTiles::with_rows(op, run, 16)
    }

    /// [`AmxTiles::new`] with `rows` (1 to 16) rows per `A` tile and accumulator: a product
    /// then reads and sums only those pixels (a 14-pixel row's tiles skip the two the
    /// epilogue would drop), and the accumulator rows past them are left as they were.
    pub fn with_rows(op: TileOp, run: usize, rows: usize) -> AmxTiles {
        assert!(available(op), "AMX {op:?} is not available to this process");
        assert!(run.is_multiple_of(4) && (4..=64).contains(&run), "run of {run} bytes");
        assert!((1..=16).contains(&rows), "{rows} tile rows");
        assert!(!TILES_LOADED.replace(true), "one tile configuration per thread at a time");
        #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
        // SAFETY: AMX with the OS permission (`available`); `run` and `rows` checked.
        unsafe {
            tiles::configure(run, rows)
        };
        AmxTiles { op, run, rows, _per_thread: std::marker::PhantomData }
    }

    /// Rows per `A` tile and accumulator.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn run(&self) -> usize {
        self.run
    }

    /// One product without a packed panel: for `steps` = `offsets.len()`, `A_i` is 16 rows
    /// of `run` bytes read from `input[base + offsets[i]..]` at a stride of `stride` bytes
    /// (rows may overlap), `B_i` the `run / 4` rows `i * run / 4 ..` of the weight panel
    /// `a` (`[.. / 4][width][4 bytes]`), and `acc[j][k] = sum_i (A_i B_i)[j][k]` for all 16
    /// rows `j` and the `width` (16 or 32) channels `k`, in words of `op`'s sum type.
    #[allow(clippy::too_many_arguments)] // a kernel entry point: buffers, offsets and strides
    pub fn product<T: Sum>(
        &self,
        input: &[u8],
        base: usize,
        offsets: &[usize],
        stride: usize,
        a: &[u8],
        width: usize,
        acc: &mut Acc<T>,
    ) {
        assert_eq!(T::OP, self.op, "sums of another operation");
        self.check(input, base, offsets, stride, a, width);
        #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
        // SAFETY: the tiles are configured on this thread for this run (`AmxTiles` is not
        // Send, and one per thread); `check` proved every tile read inside `input` or `a`,
        // and the stores fill the accumulator's 16 rows.
        unsafe {
            let input = input.as_ptr().add(base);
            let acc = acc.as_mut_ptr().cast();
            match self.op {
                TileOp::U8S8 => tiles::segment_u8s8(input, offsets, stride, self.run, a.as_ptr(), width, acc),
                TileOp::Bf16 => tiles::segment_bf16(input, offsets, stride, self.run, a.as_ptr(), width, acc),
            }
        };
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
        let _ = (input, base, offsets, stride, a, acc);
    }

    /// [`AmxTiles::product`] for two segments at once, `A` at `bases[0] + offsets[i]` and
    /// `bases[1] + offsets[i]` (two output rows): each weight tile loaded serves both,
    /// which halves the weight traffic that bounds a single segment.
    #[allow(clippy::too_many_arguments)] // a kernel entry point: buffers, offsets and strides
    pub fn pair_product<T: Sum>(
        &self,
        input: &[u8],
        bases: [usize; 2],
        offsets: &[usize],
        stride: usize,
        a: &[u8],
        width: usize,
        acc: [&mut Acc<T>; 2],
    ) {
        assert_eq!(T::OP, self.op, "sums of another operation");
        self.check(input, bases[0].max(bases[1]), offsets, stride, a, width);
        #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
        // SAFETY: as in `product`, for both bases (the larger one was checked).
        unsafe {
            let inputs = [input.as_ptr().add(bases[0]), input.as_ptr().add(bases[1])];
            let [acc0, acc1] = acc;
            let acc = [acc0.as_mut_ptr().cast(), acc1.as_mut_ptr().cast()];
            match self.op {
                TileOp::U8S8 => tiles::pair_u8s8(inputs, offsets, stride, self.run, a.as_ptr(), width, acc),
                TileOp::Bf16 => tiles::pair_bf16(inputs, offsets, stride, self.run, a.as_ptr(), width, acc),
            }
        };
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
        let _ = (input, bases, offsets, stride, a, acc);
    }

    /// The bounds every tile load of a product must keep.
    fn check(&self, input: &[u8], base: usize, offsets: &[usize], stride: usize, a: &[u8], width: usize) {
        assert!(width == ROW_WORDS || width == 16, "weight panel width {width}");
        assert!(!offsets.is_empty(), "a product of no steps");
        assert!(a.len() >= offsets.len() * self.run * width, "weight panel shorter than its steps");
        let reach = base + offsets.iter().max().expect("steps") + (self.rows - 1) * stride + self.run;
        assert!(reach <= input.len(), "tile rows reach byte {reach} of {}", input.len());
        assert!(stride <= 1 << 16, "tile stride {stride}");
    }
}

impl Drop for AmxTiles {
    fn drop(&mut self) {
        #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
        // SAFETY: made only with AMX present (`new`).
        unsafe {
            tiles::release()
        };
        TILES_LOADED.set(false);
    }
}

/// A tile configuration (palette 1), 64-byte aligned as `ldtilecfg` wants.
#[repr(C, align(64))]
pub(crate) struct Config(pub [u8; 64]);

impl Config {
    /// Palette 1 with tile `t` of `tiles[t].0` rows of `tiles[t].1` bytes.
    pub(crate) fn new(tiles: &[(usize, usize)]) -> Config {
        let mut c = [0u8; 64];
        c[0] = 1;
        for (t, &(rows, bytes)) in tiles.iter().enumerate() {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(bytes as u16).to_le_bytes());
            c[48 + t] = rows as u8;
        }
        Config(c)
    }

    /// The configuration of the in-place products: tmm0-3 accumulate (segment, channel
    /// half), tmm4-5 hold the two `A` tiles, tmm6-7 the two `B` tiles.
    fn pair(run: usize, rows: usize) -> Config {
        let (acc, a, b) = ((rows, 64), (rows, run), (run / 4, 64));
        Config::new(&[acc, acc, acc, acc, a, a, b, b])
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod tiles {
    use std::arch::asm;

    use super::{Config, ROW_WORDS};

    /// Loads [`Config::pair`] for runs of `run` bytes and tiles of `rows` rows.
    ///
    /// # Safety
    ///
    /// AMX-TILE with the OS's permission; `run` a multiple of 4 up to 64, `rows` 1 to 16.
    pub unsafe fn configure(run: usize, rows: usize) {
        let config = Config::pair(run, rows);
        // SAFETY: the caller guarantees CPU and OS support; the configuration is valid and
        // 64-byte aligned, and read only by the instruction.
        unsafe { asm!("ldtilecfg [{cfg}]", cfg = in(reg) config.0.as_ptr(), options(nostack, readonly)) };
    }

    /// Releases the tile state ([`configure`]'s).
    ///
    /// # Safety
    ///
    /// AMX-TILE.
    pub unsafe fn release() {
        // SAFETY: the caller guarantees AMX-TILE; releasing touches no memory.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// Template lines of width-32 panels only (the second `B` tile, its products and its
    /// accumulators): `wide` keeps them, `narrow` (width-16 panels) drops them.
    macro_rules! wide {
        (wide, $($line:expr),+ $(,)?) => { concat!($($line, "\n"),+) };
        (narrow, $($line:expr),+ $(,)?) => { "" };
    }

    /// The weights `bb` bytes after `pa` (2 KiB, 32 lines: in the pipelined pair loop, the
    /// step after the one being loaded) into L1 while the products run: a tile register is
    /// not renamed, so its next load waits for the products reading it, and from L2 that
    /// wait is exposed. Width-32 pairs only: on width-16 panels it measured within the
    /// noise.
    macro_rules! prefetch_next_weights {
        () => {
            concat!(
                "prefetcht0 [{pa} + {bb}*1 + 0]\n",
                "prefetcht0 [{pa} + {bb}*1 + 64]\n",
                "prefetcht0 [{pa} + {bb}*1 + 128]\n",
                "prefetcht0 [{pa} + {bb}*1 + 192]\n",
                "prefetcht0 [{pa} + {bb}*1 + 256]\n",
                "prefetcht0 [{pa} + {bb}*1 + 320]\n",
                "prefetcht0 [{pa} + {bb}*1 + 384]\n",
                "prefetcht0 [{pa} + {bb}*1 + 448]\n",
                "prefetcht0 [{pa} + {bb}*1 + 512]\n",
                "prefetcht0 [{pa} + {bb}*1 + 576]\n",
                "prefetcht0 [{pa} + {bb}*1 + 640]\n",
                "prefetcht0 [{pa} + {bb}*1 + 704]\n",
                "prefetcht0 [{pa} + {bb}*1 + 768]\n",
                "prefetcht0 [{pa} + {bb}*1 + 832]\n",
                "prefetcht0 [{pa} + {bb}*1 + 896]\n",
                "prefetcht0 [{pa} + {bb}*1 + 960]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1024]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1088]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1152]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1216]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1280]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1344]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1408]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1472]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1536]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1600]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1664]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1728]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1792]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1856]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1920]\n",
                "prefetcht0 [{pa} + {bb}*1 + 1984]\n",
            )
        };
    }

    /// One segment's products: tmm0 (and tmm1 when wide) accumulate, tmm4 holds `A`,
    /// tmm6 (and tmm7) the `B` tiles.
    macro_rules! segment_asm {
        ($op:literal, $w:ident, $input:expr, $offsets:expr, $stride:expr, $a:expr, $b_stride:expr, $b_step:expr, $acc:expr) => {
            asm!(
                "tilezero tmm0",
                wide!($w, "tilezero tmm1"),
                "2:",
                "mov {t}, [{offs}]",
                "add {t}, {input}",
                "tileloadd tmm4, [{t} + {sa}*1]",
                "tileloadd tmm6, [{pa} + {sb}*1]",
                wide!($w, "tileloadd tmm7, [{pa} + {sb}*1 + 64]"),
                concat!($op, " tmm0, tmm4, tmm6"),
                wide!($w, concat!($op, " tmm1, tmm4, tmm7")),
                "add {offs}, 8",
                "add {pa}, {bb}",
                "dec {n}",
                "jnz 2b",
                "tilestored [{c} + {sc}*1], tmm0",
                wide!($w, "tilestored [{c} + {sc}*1 + 64], tmm1"),
                input = in(reg) $input,
                offs = inout(reg) $offsets.as_ptr() => _,
                t = out(reg) _,
                pa = inout(reg) $a => _,
                sa = in(reg) $stride,
                sb = in(reg) $b_stride,
                sc = in(reg) ROW_WORDS * 4,
                bb = in(reg) $b_step,
                c = in(reg) $acc,
                n = inout(reg) $offsets.len() => _,
                options(nostack),
            )
        };
    }

    /// A pair of segments' products: tmm0 and tmm2 (and tmm1, tmm3 when wide) accumulate,
    /// tmm4 and tmm5 hold the two `A` tiles, tmm6 (and tmm7) the shared `B` tiles.
    ///
    /// Software-pipelined: a tile register is not renamed, so a load into it waits for
    /// every product reading it. Each step's products run in the order that frees a tile
    /// earliest (both products of `B` tmm6 first), and the next step's load into that tile
    /// follows right behind its last reader, overlapping the products still running; the
    /// first step's loads come before the loop and the last step's products after it.
    macro_rules! pair_asm {
        ($op:literal, $w:ident, $input:expr, $offsets:expr, $stride:expr, $a:expr, $b_stride:expr, $b_step:expr, $acc:expr) => {
            asm!(
                "tilezero tmm0",
                "tilezero tmm2",
                wide!($w, "tilezero tmm1", "tilezero tmm3"),
                "mov {t}, [{offs}]",
                "tileloadd tmm6, [{pa} + {sb}*1]",
                wide!($w, "tileloadd tmm7, [{pa} + {sb}*1 + 64]"),
                "lea {u}, [{t} + {in0}]",
                "tileloadd tmm4, [{u} + {sa}*1]",
                "add {t}, {in1}",
                "tileloadd tmm5, [{t} + {sa}*1]",
                "dec {n}",
                "jz 3f",
                "2:",
                "add {offs}, 8",
                "add {pa}, {bb}",
                "mov {t}, [{offs}]",
                wide!($w, prefetch_next_weights!()),
                concat!($op, " tmm0, tmm4, tmm6"),
                concat!($op, " tmm2, tmm5, tmm6"),
                "tileloadd tmm6, [{pa} + {sb}*1]",
                wide!($w, concat!($op, " tmm1, tmm4, tmm7")),
                "lea {u}, [{t} + {in0}]",
                "tileloadd tmm4, [{u} + {sa}*1]",
                wide!($w, concat!($op, " tmm3, tmm5, tmm7")),
                "add {t}, {in1}",
                "tileloadd tmm5, [{t} + {sa}*1]",
                wide!($w, "tileloadd tmm7, [{pa} + {sb}*1 + 64]"),
                "dec {n}",
                "jnz 2b",
                "3:",
                concat!($op, " tmm0, tmm4, tmm6"),
                concat!($op, " tmm2, tmm5, tmm6"),
                wide!($w, concat!($op, " tmm1, tmm4, tmm7")),
                wide!($w, concat!($op, " tmm3, tmm5, tmm7")),
                "tilestored [{c0} + {sc}*1], tmm0",
                wide!($w, "tilestored [{c0} + {sc}*1 + 64], tmm1"),
                "tilestored [{c1} + {sc}*1], tmm2",
                wide!($w, "tilestored [{c1} + {sc}*1 + 64], tmm3"),
                in0 = in(reg) $input[0],
                in1 = in(reg) $input[1],
                offs = inout(reg) $offsets.as_ptr() => _,
                t = out(reg) _,
                u = out(reg) _,
                pa = inout(reg) $a => _,
                sa = in(reg) $stride,
                sb = in(reg) $b_stride,
                sc = in(reg) ROW_WORDS * 4,
                bb = in(reg) $b_step,
                c0 = in(reg) $acc[0],
                c1 = in(reg) $acc[1],
                n = inout(reg) $offsets.len() => _,
                options(nostack),
            )
        };
    }

    /// The single-segment and pair functions of one tile instruction.
    macro_rules! products {
        ($segment:ident, $pair:ident, $op:literal) => {
            /// # Safety
            ///
            /// The tiles configured by [`configure`] with this `run` on this thread, and
            /// the instruction's extension; for every step `i`, 16 rows of `run` bytes at
            /// `input + offsets[i] + r * stride` are readable, and so are the
            /// `offsets.len() * run * width` bytes of `a`; `width` 16 or 32; `offsets` not
            /// empty; `acc` writable for 16 rows of `ROW_WORDS` 4-byte words.
            pub unsafe fn $segment(
                input: *const u8,
                offsets: &[usize],
                stride: usize,
                run: usize,
                a: *const u8,
                width: usize,
                acc: *mut u8,
            ) {
                let (b_step, b_stride) = (run / 4 * width * 4, width * 4);
                // SAFETY: the caller guarantees the configuration and that every tile load
                // (step i: A at input + offsets[i], 16 rows at `stride`; B at a + i *
                // b_step, `run / 4` rows at `width * 4`, plus 64 for the second tile when
                // width is 32) is readable. The stores write 16 rows of 64 bytes at a
                // stride of ROW_WORDS * 4 into the accumulator.
                unsafe {
                    if width == ROW_WORDS {
                        segment_asm!($op, wide, input, offsets, stride, a, b_stride, b_step, acc);
                    } else {
                        segment_asm!($op, narrow, input, offsets, stride, a, b_stride, b_step, acc);
                    }
                }
            }

            /// # Safety
            ///
            /// As the single segment's, for both inputs. The prefetches may reach past
            /// the last step's weights; a prefetch does not fault.
            pub unsafe fn $pair(
                input: [*const u8; 2],
                offsets: &[usize],
                stride: usize,
                run: usize,
                a: *const u8,
                width: usize,
                acc: [*mut u8; 2],
            ) {
                let (b_step, b_stride) = (run / 4 * width * 4, width * 4);
                // SAFETY: as in the single segment: the configuration is the caller's, every
                // load is readable by the caller's guarantee for both inputs, and the
                // stores fill 16 rows of each accumulator.
                unsafe {
                    if width == ROW_WORDS {
                        pair_asm!($op, wide, input, offsets, stride, a, b_stride, b_step, acc);
                    } else {
                        pair_asm!($op, narrow, input, offsets, stride, a, b_stride, b_step, acc);
                    }
                }
            }
        };
    }

    products!(segment_u8s8, pair_u8s8, "tdpbusd");
    products!(segment_bf16, pair_bf16, "tdpbf16ps");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::probe_mixed::Probe;

    /// The in-place pair product alone, at A0's stage-3 geometry (14x14 output, 192 channels,
    /// pixel-major, batch 8: 56 row pairs x 6 weight panels of 32 channels, 14-row tiles as
    /// the executors configure them), against the same instruction with resident tiles.
    /// What the executors' 14x14 layers cannot go below without another blocking or
    /// algorithm: the products with their operand loads and accumulator stores, no
    /// epilogue. Run it with
    /// `cargo test --release -p repvgg-runtime --lib tile_loop_at_stage_3 -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn tile_loop_at_stage_3() {
        for (op, bytes_per_value, probe) in [(TileOp::U8S8, 1, Probe::AmxU8S8), (TileOp::Bf16, 2, Probe::AmxBf16)] {
            if !available(op) {
                println!("{op:?}: not available here");
                continue;
            }
            let (images, out, channels) = (8, 14, 192);
            let (pixel, width) = (channels * bytes_per_value, 32);
            let (row, image) = ((out + 2) * pixel, (out + 2) * (out + 2) * pixel);
            let mut state = 0x2545_F491_4F6C_DD1Du64;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            };
            // bf16 operands in +-[1, 2) (a value's high byte 0x3F or 0xBF); int8 any byte.
            let mut byte = |i: usize| if bytes_per_value == 2 && i % 2 == 1 { 0x3F | (next() & 0x80) } else { next() };
            // Line-aligned, as the executors' buffers are: a tile row across two cache lines
            // costs these layers most of a factor of two.
            let mut input = crate::buffers::LineAligned::<u8>::zeroed(images * image + 64);
            input.as_mut_slice().iter_mut().enumerate().for_each(|(i, b)| *b = byte(i));
            let chunks = 3 * pixel / 64;
            let offsets: Vec<usize> = (0..3 * chunks).map(|i| i / chunks * row + i % chunks * 64).collect();
            let panel = offsets.len() * 64 * width;
            let mut weights = crate::buffers::LineAligned::<u8>::zeroed(channels / width * panel);
            weights.as_mut_slice().iter_mut().enumerate().for_each(|(i, b)| *b = byte(i));
            let (input, weights) = (input.as_slice(), weights.as_slice());
            let tiles = AmxTiles::with_rows(op, 64, out);
            let mut acc = [[0i32; ROW_WORDS * 16]; 2];
            let mut accf = [[0f32; ROW_WORDS * 16]; 2];
            let layer = |acc: &mut [Acc<i32>; 2], accf: &mut [Acc<f32>; 2]| {
                for pair in 0..images * out / 2 {
                    let base = pair / (out / 2) * image + pair % (out / 2) * 2 * row;
                    for p in 0..channels / width {
                        let a = &weights[p * panel..][..panel];
                        let [a0, a1] = acc;
                        let [f0, f1] = accf;
                        match op {
                            TileOp::U8S8 => {
                                tiles.pair_product(input, [base, base + row], &offsets, pixel, a, width, [a0, a1])
                            }
                            TileOp::Bf16 => {
                                tiles.pair_product(input, [base, base + row], &offsets, pixel, a, width, [f0, f1])
                            }
                        }
                    }
                }
            };
            let mut times = Vec::new();
            for round in 0..25 {
                let start = std::time::Instant::now();
                for _ in 0..10 {
                    layer(&mut acc, &mut accf);
                }
                if round >= 5 {
                    times.push(start.elapsed().as_secs_f64() / 10.0);
                }
            }
            drop(tiles);
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let products = (images * out / 2 * 2 * channels / 16 * offsets.len()) as f64;
            // Two ops per multiply-add, 16 x 16 sums of 64 bytes' values, as the probe counts
            // (the tiles' 14 rows do 14/16 of that work).
            let ops_per_product = (16 * 16 * 64 / bytes_per_value * 2) as f64;
            let rate = products * ops_per_product / median / 1e9;
            let resident = probe.measure(200).expect("the probe runs where the tiles do");
            println!(
                "{op:?}: {:.3} ms per layer, {:.2} ns per product, {rate:.0} G/s; resident tiles {resident:.0} G/s: {:.0}%",
                median * 1e3,
                median * 1e9 / products,
                100.0 * rate / resident
            );
            std::hint::black_box((&acc, &accf));
        }
    }
}
