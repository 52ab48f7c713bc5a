//! Hot kernels: the GEMM microkernel, the direct (implicit im2col) and Winograd
//! convolution executors, and the element-wise passes (SE, pooling, layout changes).
//!
//! Everything here works on slices, strides and raw pointers over the channel-blocked
//! `NCHWc16` activation layout: image `n`, channel block `cb`, pixel `(y, x)` and lane `l`
//! live at `((n * CB + cb) * H * W + y * W + x) * 16 + l`.

pub mod direct;
pub mod gemm;
pub mod generic;
pub mod parallel;
pub mod pointwise;
pub mod winograd;

use std::sync::Mutex;

pub use repvgg_winograd::LANES;

/// Number of 16-channel blocks needed for `c` channels.
pub fn blocks(c: usize) -> usize {
    c.div_ceil(LANES)
}

/// A mutable buffer that parallel tasks write through, each into a region no other task
/// touches (different output tiles, pixels or channel blocks).
#[derive(Clone, Copy)]
pub struct SharedMut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: `SharedMut` only hands out sub-slices through the unsafe `region`, whose
// contract requires callers to keep concurrent regions disjoint.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    pub fn new(buf: &mut [f32]) -> Self {
        SharedMut { ptr: buf.as_mut_ptr(), len: buf.len() }
    }

    /// The sub-slice `[offset, offset + len)`.
    ///
    /// # Safety
    ///
    /// No other live reference (from this or another thread) may overlap the region, and
    /// the underlying buffer must outlive the returned slice.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn region(&self, offset: usize, len: usize) -> &mut [f32] {
        assert!(offset <= self.len && len <= self.len - offset, "region [{offset}, +{len}) outside {}", self.len);
        // SAFETY: in bounds by the assert; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }

    /// A raw pointer to `[offset, offset + len)`, bounds-checked. For writers whose regions
    /// interleave with other workers' (the rows of neighbouring tiles), where even a
    /// disjointly-written shared slice would alias.
    pub fn raw(&self, offset: usize, len: usize) -> *mut f32 {
        assert!(offset <= self.len && len <= self.len - offset, "region [{offset}, +{len}) outside {}", self.len);
        // SAFETY: offset is within the allocation (asserted above).
        unsafe { self.ptr.add(offset) }
    }

    /// Everything from `offset` to the end.
    ///
    /// # Safety
    ///
    /// As for [`SharedMut::region`].
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn tail(&self, offset: usize) -> &mut [f32] {
        // SAFETY: forwarded contract.
        unsafe { self.region(offset, self.len - offset.min(self.len)) }
    }
}

/// Per-worker scratch buffers, indexed by the team thread that runs the task
/// ([`parallel::thread_index`]).
///
/// Each worker only ever locks its own slot, so the mutexes are never contended; they
/// exist to make the exclusivity checkable rather than assumed.
pub struct Scratch {
    slots: Vec<Mutex<Vec<f32>>>,
}

impl Scratch {
    /// `workers` buffers of `len` floats each, allocated once.
    pub fn new(workers: usize, len: usize) -> Scratch {
        Scratch { slots: (0..workers.max(1)).map(|_| Mutex::new(vec![0.0; len])).collect() }
    }

    /// Floats held per worker.
    pub fn len(&self) -> usize {
        self.slots[0].lock().map(|b| b.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` with the calling worker's buffer.
    pub fn with<R>(&self, f: impl FnOnce(&mut [f32]) -> R) -> R {
        let slot = parallel::thread_index() % self.slots.len();
        let mut guard = self.slots[slot].lock().unwrap_or_else(|poison| poison.into_inner());
        f(&mut guard)
    }
}
