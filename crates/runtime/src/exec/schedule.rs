//! The two schedules of a GEMM-based convolution layer, shared by the direct and the
//! Winograd executors.
//!
//! A layer is a set of *column panels* (NR tiles or pixels each), each *packed* once (the
//! Winograd input transform, or im2col), and a set of *weight panels*; every (weight
//! panel, column panel) pair is one *product* (the panel GEMM with its epilogue: the
//! output transform, or bias and ReLU).
//!
//! - **Fused** (small weights): one parallel pass over column panels; the worker packs
//!   its panel into its own scratch and multiplies it by every weight panel, which stay
//!   in its L2. No barrier between packing and multiplying.
//! - **Two-phase** (weights beyond the L2): column panels in chunks; phase 1 packs a
//!   chunk into the shared buffer in parallel, phase 2 runs the (weight panel, column
//!   panel) items in parallel, weight-panel major, so each worker reads its share of the
//!   weights once per chunk instead of once per column panel; a chunk small enough for
//!   the L2 runs one item per weight panel instead, its column panels in turn.
//!
//! The schedule and the split into items depend only on the layer's shape, and each
//! product is computed by one item, so results are identical for any thread count.

use crate::buffers::Scratch;
use crate::team::{for_each, for_each_chunk_mut};

/// Chunks of packed column panels up to this size stay in a core's L2 next to a weight
/// panel. Then phase 2 hands out whole weight panels, each running its products with
/// every column panel of the chunk in turn, so that a weight panel streams from memory
/// once; otherwise the threads would take its products side by side and each stream it
/// (at batch 1 a chunk has only a few column panels, so nearly all of a layer's time is
/// that stream). Bigger chunks keep one item per product, for balance and because the
/// weight panel would not survive a pass over the chunk anyway: with many column panels it
/// does not stay in the L2 across them, and a few items balance worse than many.
const CHUNK_IN_L2_BYTES: usize = 1 << 20;

/// How a layer's packing and products are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Fused,
    /// Column panels in chunks of this many.
    TwoPhase {
        chunk: usize,
    },
}

/// A layer's work: its panel counts and the floats of one packed column panel.
#[derive(Debug, Clone, Copy)]
pub struct Work {
    pub column_panels: usize,
    pub weight_panels: usize,
    pub panel_floats: usize,
    pub schedule: Schedule,
}

impl Work {
    /// Floats of the shared buffer the two-phase schedule packs a chunk into.
    pub fn shared_len(&self) -> usize {
        match self.schedule {
            Schedule::Fused => 0,
            Schedule::TwoPhase { chunk } => chunk.min(self.column_panels) * self.panel_floats,
        }
    }

    /// Floats of per-worker scratch: the packed panel of the fused schedule, plus `extra`
    /// that each product needs for itself.
    pub fn scratch_len(&self, extra: usize) -> usize {
        extra
            + match self.schedule {
                Schedule::Fused => self.panel_floats,
                Schedule::TwoPhase { .. } => 0,
            }
    }

    /// Runs the layer: `locate(column_panel)` works out where a column panel's tiles or
    /// pixels are (once per column panel in the fused schedule, where every product of
    /// the panel shares it); `pack(column_panel, located, panel)` fills a packed column
    /// panel; `product(weight_panel, located, panel, extra)` multiplies the weight panel by
    /// that column panel, with the worker's `extra` scratch floats.
    pub fn run<L>(
        &self,
        shared: &mut [f32],
        scratch: &Scratch,
        extra: usize,
        locate: impl Fn(usize) -> L + Sync,
        pack: impl Fn(usize, &L, &mut [f32]) + Sync,
        product: impl Fn(usize, &L, &[f32], &mut [f32]) + Sync,
    ) {
        let len = self.panel_floats;
        assert!(scratch.len() >= self.scratch_len(extra), "scratch too small");
        match self.schedule {
            Schedule::Fused => for_each(self.column_panels, |col| {
                let located = locate(col);
                scratch.with(|buf| {
                    let (panel, rest) = buf.split_at_mut(len);
                    pack(col, &located, panel);
                    for weights in 0..self.weight_panels {
                        product(weights, &located, panel, &mut rest[..extra]);
                    }
                })
            }),
            Schedule::TwoPhase { chunk } => {
                assert!(shared.len() >= self.shared_len(), "shared panel buffer too small");
                for start in (0..self.column_panels).step_by(chunk) {
                    let count = chunk.min(self.column_panels - start);
                    for_each_chunk_mut(&mut shared[..count * len], len, |local, panel| {
                        pack(start + local, &locate(start + local), panel)
                    });
                    let panels = &*shared;
                    let item = |weights: usize, local: usize| {
                        let panel = &panels[local * len..(local + 1) * len];
                        let located = locate(start + local);
                        scratch.with(|buf| product(weights, &located, panel, &mut buf[..extra]));
                    };
                    if count * len * size_of::<f32>() <= CHUNK_IN_L2_BYTES {
                        for_each(self.weight_panels, |weights| (0..count).for_each(|local| item(weights, local)));
                    } else {
                        for_each(self.weight_panels * count, |i| item(i / count, i % count));
                    }
                }
            }
        }
    }
}
