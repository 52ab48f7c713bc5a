//! After the first run at a given size, a forward pass allocates nothing: the arena, the
//! plans and the prepared weights are all reused. Counted with a global allocator that
//! counts every allocation made while a flag is set, on any thread (so the helper threads
//! count too). That is why this file holds one test only: the harness allocates when it
//! reports another test's result, and that could land inside the counting window.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use repvgg_graph::{ArchSpec, synthetic};
use repvgg_runtime::{Model, Precision, SessionOptions, Tensor};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; the counters are atomics
// and allocation-free.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn a_forward_pass_allocates_nothing_after_the_first() {
    let se = ArchSpec::from_toml(
        "name='se'\nblocks_per_stage=[2,2,2,1]\nwidths=[32,32,48,64,96]\ngroups=2\ngrouped_layers=[2]\nse=true\nnum_classes=10\n",
        "t",
    )
    .unwrap();
    for arch in [ArchSpec::builtin("A0").unwrap(), se] {
        let model = Model::synthetic(arch, 1).unwrap();
        // FP32, and BF16 where the CPU has it (its packed and bordered buffers live in the
        // arena too).
        let precisions = [Precision::F32, Precision::Bf16];
        for (threads, precision) in [1, 2].into_iter().flat_map(|t| precisions.map(|p| (t, p))) {
            let options = SessionOptions { threads, precision: Some(precision), ..Default::default() };
            let Ok(mut session) = model.session(options) else {
                assert_eq!(precision, Precision::Bf16, "FP32 runs everywhere");
                continue;
            };
            let x = Tensor::new(vec![2, 3, 64, 48], synthetic::input(2 * 3 * 64 * 48, 2)).unwrap();
            let mut logits = Tensor::zeros(vec![2, model.network().num_classes]);
            // The first run plans, packs weights and sizes the arena: the counter sees it.
            ALLOCATIONS.store(0, Ordering::Relaxed);
            COUNTING.store(true, Ordering::Relaxed);
            session.run_into(&x, &mut logits).unwrap();
            COUNTING.store(false, Ordering::Relaxed);
            assert!(ALLOCATIONS.load(Ordering::Relaxed) > 0, "the counting allocator is in use");
            ALLOCATIONS.store(0, Ordering::Relaxed);
            COUNTING.store(true, Ordering::Relaxed);
            for _ in 0..3 {
                session.run_into(&x, &mut logits).unwrap();
            }
            COUNTING.store(false, Ordering::Relaxed);
            let name = &model.network().arch.name;
            assert_eq!(ALLOCATIONS.load(Ordering::Relaxed), 0, "{name} in {precision} with {threads} threads");
        }
    }
}
