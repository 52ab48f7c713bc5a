//! Buffers the team's workers share: a mutable buffer written in disjoint regions, and
//! per-worker scratch.

use std::sync::Mutex;

use crate::team;
use repvgg_simd::layout::CHANNEL_BLOCK;

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
    /// interleave with other workers' (the rows of neighbouring tiles, the pixels of a
    /// column panel), where even a disjointly-written shared slice would alias.
    pub fn raw(&self, offset: usize, len: usize) -> *mut f32 {
        assert!(offset <= self.len && len <= self.len - offset, "region [{offset}, +{len}) outside {}", self.len);
        // SAFETY: offset is within the allocation (asserted above).
        unsafe { self.ptr.add(offset) }
    }
}

/// Per-worker scratch buffers, indexed by the team thread that runs the task
/// ([`team::thread_index`]).
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

    /// Runs `f` with the calling worker's buffer.
    pub fn with<R>(&self, f: impl FnOnce(&mut [f32]) -> R) -> R {
        let slot = team::thread_index() % self.slots.len();
        let mut guard = self.slots[slot].lock().unwrap_or_else(|poison| poison.into_inner());
        f(&mut guard)
    }
}

/// Bytes of a cache line: where tile rows and vector loads should start, so that each
/// reads one line rather than two.
pub const LINE: usize = 64;

/// Elements of `T` to skip from `ptr` to the next cache-line boundary.
pub fn line_skip<T>(ptr: *const T) -> usize {
    (ptr as usize).wrapping_neg() % LINE / std::mem::size_of::<T>()
}

/// Zeroes the one-pixel border ring of zero-bordered planes, leaving the interior for
/// the layer's items to write. Each `plane` holds rows of `row` values, `pw` pixels of
/// `pixel` values each (plus any padding at the row's end); the ring is the first and
/// last row, and in the rows between the first pixel and everything from the last one on.
///
/// A border of one channel block (16 values) is cleared by a store of that fixed size: a
/// fill of a run-time length is a `memset` call, two per row of every plane, and the
/// channel-blocked INT8 codes have many planes (it measured 8% of a batch-1 run).
#[inline]
pub fn zero_border<T: Copy + Default>(planes: &mut [T], plane: usize, row: usize, pw: usize, pixel: usize) {
    let zero = T::default();
    let clear = |dst: &mut [T]| {
        if dst.len() == CHANNEL_BLOCK {
            dst[..CHANNEL_BLOCK].copy_from_slice(&[zero; CHANNEL_BLOCK]);
        } else {
            dst.fill(zero);
        }
    };
    for p in planes.chunks_exact_mut(plane) {
        p[..row].fill(zero);
        p[plane - row..].fill(zero);
        for r in p[row..plane - row].chunks_exact_mut(row) {
            clear(&mut r[..pixel]);
            clear(&mut r[(pw - 1) * pixel..]);
        }
    }
}

/// A zeroed heap slice of `len` elements whose first element starts a cache line (the
/// allocator only promises the element's alignment: large blocks come back 16 bytes
/// into a page).
#[derive(Debug)]
pub struct LineAligned<T> {
    data: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default> LineAligned<T> {
    pub fn zeroed(len: usize) -> LineAligned<T> {
        let data = vec![T::default(); len + LINE / std::mem::size_of::<T>()];
        let start = line_skip(data.as_ptr());
        LineAligned { data, start, len }
    }

    pub fn as_slice(&self) -> &[T] {
        &self.data[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.data[self.start..self.start + self.len]
    }
}
