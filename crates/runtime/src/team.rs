//! The fork-join team that runs a forward pass: the calling thread plus `threads - 1`
//! helper threads, with dynamic self-scheduling and spin-waiting between loops.
//!
//! A forward pass is some 30 parallel loops (one or two per layer), each a few hundred
//! microseconds long. Two properties matter at that grain, and a general-purpose pool
//! has neither:
//!
//! - **Nobody sleeps inside a pass.** Between two loops a helper spins (`pause`) for up
//!   to [`Team::new`]'s `spin`, instead of blocking in the kernel. On a VM a blocked
//!   thread halts its vCPU, and waking a halted vCPU goes through the hypervisor; with
//!   rayon (whose idle workers sleep after a few microseconds) a two-thread A0 pass
//!   blocked ~20 times, and after an idle spell ran 10-50% slower than back to back.
//! - **Nobody waits for a late helper.** A loop is published to whichever helpers are
//!   awake; each joins only while the loop is open, and the caller works through the
//!   items itself. A helper that is parked, or descheduled by the host, costs nothing
//!   but its own share. Items are claimed from an atomic counter (a few at a time when
//!   there are many), so the split adapts to whoever shows up.
//!
//! Which thread runs an item never changes what the item computes, so results are
//! identical for any thread count (the kernels keep each output element's arithmetic
//! inside one item).
//!
//! # Protocol
//!
//! One `AtomicU64` holds `generation << 32 | CLOSED | active`. The caller writes the job
//! (closure pointer, item count), resets the item counter, and stores a new generation
//! with `active = 0` and `CLOSED` clear. A helper joins by incrementing `active` with a
//! compare-and-swap that fails if the word changed (closed, or a newer generation), so a
//! successful join proves the job it then reads is the current one. When its own items
//! run out, the caller sets `CLOSED` and spins until `active` is 0; only then can the
//! closure's borrow end and a new job be written.

use std::cell::{Cell, UnsafeCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::buffers::SharedMut;
use crate::cpu;

const CLOSED: u64 = 1 << 31;
const ACTIVE: u64 = CLOSED - 1;

fn generation(state: u64) -> u32 {
    (state >> 32) as u32
}

/// The loop being run: the body (type and borrow erased, see [`for_each`]), the
/// monomorphized function that runs it over a range of items, the item count, and how
/// many items a thread claims at a time.
#[derive(Clone, Copy)]
struct Job {
    body: *const (),
    run: unsafe fn(*const (), usize, usize),
    items: usize,
    grain: usize,
}

impl Job {
    const NONE: Job = Job { body: std::ptr::null(), run: run_range::<fn(usize)>, items: 0, grain: 1 };
}

/// Runs `body(i)` for `i` in `start..end`.
///
/// # Safety
///
/// `body` must point to a live `F`.
unsafe fn run_range<F: Fn(usize)>(body: *const (), start: usize, end: usize) {
    // SAFETY: forwarded contract.
    let body = unsafe { &*(body as *const F) };
    for i in start..end {
        body(i);
    }
}

/// Keeps a hot atomic on its own cache lines (the adjacent-line prefetcher pairs lines).
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Shared {
    threads: usize,
    /// Spun on by waiting helpers; written once per loop.
    state: Line<AtomicU64>,
    /// Claimed by every thread during a loop.
    next: Line<AtomicUsize>,
    job: UnsafeCell<Job>,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    spin: Duration,
    sleepers: AtomicUsize,
    /// Helpers that have started and are waiting for work.
    started: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller while no helper is joined (after the
// previous job closed with `active == 0`) and read only by helpers that joined the
// current generation; the state word's release/acquire pairs order the two. The body it
// points to is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

impl Shared {
    fn new(threads: usize, spin: Duration) -> Shared {
        Shared {
            threads,
            state: Line(AtomicU64::new(CLOSED)),
            next: Line(AtomicUsize::new(0)),
            job: UnsafeCell::new(Job::NONE),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            spin,
            sleepers: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Claims and runs items of `job` until none are left.
    fn drain(&self, job: Job) {
        loop {
            let start = self.next.fetch_add(job.grain, Ordering::Relaxed);
            if start >= job.items {
                return;
            }
            // SAFETY: the caller keeps the body alive until every joined thread has left
            // (`active == 0`), and this runs only between a join and the matching leave.
            unsafe { (job.run)(job.body, start, (start + job.grain).min(job.items)) };
        }
    }

    /// Starts a new generation of the state word (`active = 0`, plus `flags`) and wakes
    /// parked helpers. A new job must be written before this, and shutdown set.
    fn publish(&self, flags: u64) {
        let state = self.state.load(Ordering::Relaxed);
        self.state.store(u64::from(generation(state).wrapping_add(1)) << 32 | flags, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            drop(self.lock.lock().unwrap_or_else(|poison| poison.into_inner()));
            self.wake.notify_all();
        }
    }

    /// Spins, then parks, until the generation differs from `seen`; returns the state.
    fn wait_for_job(&self, seen: u32) -> u64 {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let state = self.state.load(Ordering::Acquire);
            // A helper started after the team's last generation must still see shutdown.
            if generation(state) != seen || self.shutdown.load(Ordering::Relaxed) {
                return state;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) {
                if start.elapsed() >= self.spin {
                    break;
                }
                // Every few microseconds, let a thread the kernel queued on this core run
                // (a server's I/O thread woken by a request, a descheduled caller): the
                // scheduler would otherwise leave it waiting for this thread's time slice
                // (a sched trace showed a server's I/O thread, woken by a request, queued
                // ~0.3 ms behind a spinning helper). With nothing else to run, the yield
                // returns at once.
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
        let mut guard = self.lock.lock().unwrap_or_else(|poison| poison.into_inner());
        // SeqCst pairs with the caller's store of the state and load of `sleepers`: one
        // of the two threads sees the other, so a wake-up cannot be lost.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        loop {
            let state = self.state.load(Ordering::SeqCst);
            if generation(state) != seen || self.shutdown.load(Ordering::SeqCst) {
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                return state;
            }
            guard = self.wake.wait(guard).unwrap_or_else(|poison| poison.into_inner());
        }
    }

    fn helper(&self, index: usize) {
        INDEX.set(index);
        cpu::set_flush_denormals();
        let mut seen = generation(self.state.load(Ordering::Acquire));
        self.started.fetch_add(1, Ordering::Release);
        loop {
            let mut state = self.wait_for_job(seen);
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
            seen = generation(state);
            while state & CLOSED == 0 && generation(state) == seen {
                match self.state.compare_exchange_weak(state, state + 1, Ordering::Acquire, Ordering::Acquire) {
                    Ok(_) => {
                        // SAFETY: joined the open job of generation `seen`; see `Shared`.
                        let job = unsafe { *self.job.get() };
                        if catch_unwind(AssertUnwindSafe(|| self.drain(job))).is_err() {
                            self.panicked.store(true, Ordering::Relaxed);
                        }
                        self.state.fetch_sub(1, Ordering::Release);
                        break;
                    }
                    Err(now) => state = now,
                }
            }
        }
    }
}

thread_local! {
    /// The team whose caller this thread is, while inside [`Team::install`] and not
    /// inside a loop body.
    static CURRENT: Cell<Option<*const Shared>> = const { Cell::new(None) };
    /// The same for a team that lends a caller's rayon pool.
    static POOL: Cell<Option<*const rayon::ThreadPool>> = const { Cell::new(None) };
    /// This thread's index in its team (0 for the caller and outside any team).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// A calling thread plus helper threads that run parallel loops (`for_each`) together; or a
/// caller's rayon pool doing the same (see [`Team::on_pool`]).
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    in_use: AtomicBool,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Team {
    /// A team of `threads` (the caller counts as one, so `threads - 1` helpers are
    /// started). Helpers spin for up to `spin` waiting for the next loop, then park.
    ///
    /// With more threads than the machine has cores, helpers do not spin at all: a
    /// spinning helper would take a core from a thread with work (measured, A0 with 8
    /// threads on 2 cores, two rounds: 13.1-20.3 ms spinning, 12.5-15.4 ms parking).
    pub fn new(threads: usize, spin: Duration) -> std::io::Result<Team> {
        let threads = threads.max(1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spin = if threads > cores { Duration::ZERO } else { spin };
        let shared = Arc::new(Shared::new(threads, spin));
        let mut team =
            Team { shared, helpers: Vec::with_capacity(threads - 1), in_use: AtomicBool::new(false), pool: None };
        for index in 1..threads {
            let shared = Arc::clone(&team.shared);
            // On failure, `team` drops here and stops the helpers already started.
            let handle =
                std::thread::Builder::new().name(format!("repvgg-{index}")).spawn(move || shared.helper(index))?;
            team.helpers.push(handle);
        }
        // Wait until every helper runs: thread start-up allocates (in std), and a helper
        // the OS schedules late would otherwise do that during some later forward pass,
        // which promises to allocate nothing. It also has them spinning for the first run.
        while team.shared.started.load(Ordering::Acquire) < threads - 1 {
            std::thread::yield_now();
        }
        Ok(team)
    }

    /// A team whose loops run on `pool` (for embedders that already run rayon): the
    /// calling thread waits while the pool's workers take the items, and idle workers
    /// sleep as rayon's do, so nothing spins between passes (nor is the first loop after
    /// an idle spell as fast).
    pub fn on_pool(pool: Arc<rayon::ThreadPool>) -> Team {
        // The team's own state stays unused: `install` routes the loops to the pool.
        let shared = Arc::new(Shared::new(1, Duration::ZERO));
        Team { shared, helpers: Vec::new(), in_use: AtomicBool::new(false), pool: Some(pool) }
    }

    /// Threads in the team, the caller included (a pool's workers, for a pool team).
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(self.shared.threads, |p| p.current_num_threads())
    }

    /// How long helpers spin before they park (zero when the team oversubscribes the
    /// machine's cores, and for a pool team).
    pub fn spin(&self) -> Duration {
        self.shared.spin
    }

    /// Runs `f` on the calling thread with this team serving its parallel loops (`for_each`), and
    /// with denormals flushed (the previous float mode is restored after).
    ///
    /// If the team is already serving another caller, `f` runs with no team (serially).
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        let _denormals = cpu::FlushDenormals::new();
        if self.in_use.swap(true, Ordering::Acquire) {
            return without_team(f);
        }
        struct Restore<'a>(&'a AtomicBool, Option<*const Shared>, Option<*const rayon::ThreadPool>, usize);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                CURRENT.set(self.1);
                POOL.set(self.2);
                INDEX.set(self.3);
                self.0.store(false, Ordering::Release);
            }
        }
        let (team, pool) = match &self.pool {
            Some(pool) => (None, Some(Arc::as_ptr(pool))),
            None => (Some(Arc::as_ptr(&self.shared)), None),
        };
        let _restore = Restore(&self.in_use, CURRENT.replace(team), POOL.replace(pool), INDEX.replace(0));
        f()
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.publish(CLOSED);
        for handle in self.helpers.drain(..) {
            let _ = handle.join();
        }
    }
}

fn without_team<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(Option<*const Shared>, Option<*const rayon::ThreadPool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.set(self.0);
            POOL.set(self.1);
        }
    }
    let _restore = Restore(CURRENT.take(), POOL.take());
    f()
}

/// This thread's index in the team running it: 0 for the caller (and outside any team),
/// `1..threads` for helpers. Distinct threads of one team have distinct indices.
pub fn thread_index() -> usize {
    INDEX.get()
}

/// Threads of the installed team or pool (1 outside any).
fn threads() -> usize {
    // SAFETY: as in `for_each`: the pointers are set only while their team or pool lives.
    if let Some(pool) = POOL.get().map(|pool| unsafe { &*pool }) {
        return pool.current_num_threads();
    }
    // SAFETY: likewise for the team.
    CURRENT.get().map_or(1, |shared| unsafe { (*shared).threads })
}

/// [`for_each`] in one contiguous share of the items per thread, `items / threads` each:
/// `body` gets each share as a range and runs its items in order. Where consecutive
/// layers order their items the same way (image, then row), a thread then takes the same
/// part of every layer's map, so the rows it reads are mostly the ones it wrote a layer
/// before and sit in its own core's L2, not the other's; the dynamic split of [`for_each`]
/// interleaves them. A body sets up once per share what its items reuse (buffers, a tile
/// configuration). For items of even cost: a share is not rebalanced when its thread is
/// slow.
pub fn for_each_share<F: Fn(std::ops::Range<usize>) + Sync>(items: usize, body: F) {
    let shares = threads().min(items);
    for_each(shares, |p| body(p * items / shares..(p + 1) * items / shares));
}

/// Runs `body(i)` for every `i < items`, on the installed team if there is one (see
/// [`Team::install`]), else serially. Returns when all items are done. Loops nested in a
/// body run serially on the thread that runs the body.
pub fn for_each<F: Fn(usize) + Sync>(items: usize, body: F) {
    // SAFETY: POOL is set only inside `Team::install`, which holds the pool alive.
    if let Some(pool) = POOL.get().map(|pool| unsafe { &*pool }) {
        return for_each_on_pool(pool, items, body);
    }
    // SAFETY: CURRENT is set only inside `Team::install`, which holds the team alive.
    let team = CURRENT.get().map(|shared| unsafe { &*shared });
    let Some(shared) = team.filter(|shared| items > 1 && shared.threads > 1) else {
        without_team(|| (0..items).for_each(&body));
        return;
    };
    // Claims of several items when there are many: one claim is an atomic add on a line
    // both threads write, which costs more than a tiny item. Still 16 claims per thread,
    // so the split stays adaptive.
    let grain = (items / (16 * shared.threads)).max(1);
    // Helpers use the pointer only between joining this job and leaving it, and `Close`
    // below does not return (or unwind) before every joined helper has left.
    let job = Job { body: &body as *const F as *const (), run: run_range::<F>, items, grain };
    // SAFETY: no helper is joined (the previous job ended with active == 0), so nothing
    // reads the slot while it is written; `publish` (a SeqCst store) makes it visible.
    unsafe { *shared.job.get() = job };
    shared.next.store(0, Ordering::Relaxed);
    shared.panicked.store(false, Ordering::Relaxed);
    shared.publish(0);

    /// Closes the job and waits for joined helpers, also when the caller's share panics.
    struct Close<'a>(&'a Shared);
    impl Drop for Close<'_> {
        fn drop(&mut self) {
            self.0.state.fetch_or(CLOSED, Ordering::AcqRel);
            let mut spins = 0u32;
            while self.0.state.load(Ordering::Acquire) & ACTIVE != 0 {
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(1024) {
                    std::thread::yield_now();
                }
                std::hint::spin_loop();
            }
        }
    }
    {
        let _close = Close(shared);
        without_team(|| shared.drain(job));
    }
    if shared.panicked.swap(false, Ordering::Relaxed) {
        panic!("a worker thread panicked in a parallel loop");
    }
}

/// [`for_each`] on a rayon pool. The pool's workers flush denormals as the team's helpers
/// do (so results equal the team's bit for bit) and index the per-thread scratch by
/// their pool index; loops nested in a body run serially, as on the team.
fn for_each_on_pool<F: Fn(usize) + Sync>(pool: &rayon::ThreadPool, items: usize, body: F) {
    use rayon::prelude::*;
    without_team(|| {
        if items <= 1 || pool.current_num_threads() == 1 {
            return (0..items).for_each(&body);
        }
        let grain = (items / (16 * pool.current_num_threads())).max(1);
        pool.install(|| {
            (0..items).into_par_iter().with_min_len(grain).for_each_init(cpu::FlushDenormals::new, |_, i| {
                INDEX.set(rayon::current_thread_index().unwrap_or(0));
                body(i)
            })
        });
    })
}

/// Runs `body(i, chunk)` over the `chunk`-float chunks of `buf` (the last may be
/// shorter), in parallel as [`for_each`].
pub fn for_each_chunk_mut(buf: &mut [f32], chunk: usize, body: impl Fn(usize, &mut [f32]) + Sync) {
    assert!(chunk > 0, "chunk length 0");
    let len = buf.len();
    let shared = SharedMut::new(buf);
    for_each(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        // SAFETY: item i alone gets [i * chunk, (i + 1) * chunk), and `buf` is borrowed
        // mutably for the whole loop.
        body(i, unsafe { shared.region(start, chunk.min(len - start)) });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_item_runs_once() {
        for threads in [1, 2, 3, 5] {
            let team = Team::new(threads, Duration::from_micros(200)).unwrap();
            for items in [0, 1, 2, 7, 1000] {
                let counts: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
                team.install(|| for_each(items, |i| _ = counts[i].fetch_add(1, Ordering::Relaxed)));
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{threads} threads, {items} items");
            }
        }
    }

    #[test]
    fn shares_run_every_item_once_each_share_in_order_on_one_thread() {
        for threads in [1, 2, 3] {
            let team = Team::new(threads, Duration::from_micros(200)).unwrap();
            let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap());
            for team in [team, Team::on_pool(pool)] {
                for items in [0, 1, 2, 7, 1000] {
                    // Per item: the thread that ran it and when (a global sequence number).
                    let ran: Vec<(AtomicUsize, AtomicUsize)> =
                        (0..items).map(|_| (AtomicUsize::new(usize::MAX), AtomicUsize::new(0))).collect();
                    let clock = AtomicUsize::new(0);
                    team.install(|| {
                        for_each_share(items, |share| {
                            for i in share {
                                assert_eq!(
                                    ran[i].0.swap(thread_index(), Ordering::Relaxed),
                                    usize::MAX,
                                    "item {i} twice"
                                );
                                ran[i].1.store(clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
                            }
                        })
                    });
                    let shares = threads.min(items).max(1);
                    for p in 0..shares {
                        let share = &ran[p * items / shares..(p + 1) * items / shares];
                        assert!(share.iter().all(|r| r.0.load(Ordering::Relaxed) != usize::MAX), "an item never ran");
                        for pair in share.windows(2) {
                            let (a, b) = (&pair[0], &pair[1]);
                            assert_eq!(a.0.load(Ordering::Relaxed), b.0.load(Ordering::Relaxed), "a share split");
                            assert!(a.1.load(Ordering::Relaxed) < b.1.load(Ordering::Relaxed), "a share out of order");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_pool_team_runs_every_item_once_with_distinct_indices() {
        for threads in [1, 2, 3] {
            let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap());
            let team = Team::on_pool(pool.clone());
            assert_eq!(team.threads(), threads);
            let busy = AtomicUsize::new(0);
            for items in [0, 1, 2, 7, 1000] {
                let counts: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
                let body = || {
                    for_each(items, |i| {
                        let index = thread_index();
                        assert!(index < threads);
                        assert_eq!(busy.fetch_or(1 << index, Ordering::AcqRel) & (1 << index), 0);
                        // Nested loops run serially on the thread that runs the body.
                        for_each(3, |_| assert_eq!(thread_index(), index));
                        counts[i].fetch_add(1, Ordering::Relaxed);
                        busy.fetch_and(!(1 << index), Ordering::AcqRel);
                    })
                };
                team.install(body);
                pool.install(|| team.install(body));
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 2), "{threads} threads, {items} items");
            }
        }
    }

    #[test]
    fn helpers_take_part_and_indices_are_distinct() {
        let team = Team::new(3, Duration::from_millis(50)).unwrap();
        let seen: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        let busy = AtomicUsize::new(0);
        team.install(|| {
            for _ in 0..100 {
                for_each(64, |_| {
                    // Two threads never share an index at the same time.
                    let index = thread_index();
                    assert_eq!(busy.fetch_or(1 << index, Ordering::AcqRel) & (1 << index), 0);
                    seen[index].fetch_add(1, Ordering::Relaxed);
                    let start = Instant::now();
                    while start.elapsed() < Duration::from_micros(20) {
                        std::hint::spin_loop();
                    }
                    busy.fetch_and(!(1 << index), Ordering::AcqRel);
                });
            }
        });
        assert_eq!(seen.iter().map(|s| s.load(Ordering::Relaxed)).sum::<usize>(), 100 * 64);
        assert!(seen[1].load(Ordering::Relaxed) + seen[2].load(Ordering::Relaxed) > 0, "no helper ever joined");
    }

    #[test]
    fn parked_helpers_wake_up() {
        let team = Team::new(2, Duration::ZERO).unwrap();
        let helped = AtomicUsize::new(0);
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(1));
            team.install(|| {
                for_each(8, |_| {
                    if thread_index() == 1 {
                        helped.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_micros(300));
                })
            });
        }
        assert!(helped.load(Ordering::Relaxed) > 0, "the parked helper never took an item");
    }

    #[test]
    fn helpers_do_not_spin_on_an_oversubscribed_machine() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spin = Duration::from_millis(5);
        assert_eq!(Team::new(cores, spin).unwrap().spin(), spin);
        let team = Team::new(cores + 1, spin).unwrap();
        assert_eq!(team.spin(), Duration::ZERO);
        let count = AtomicUsize::new(0);
        team.install(|| for_each(100, |_| _ = count.fetch_add(1, Ordering::Relaxed)));
        assert_eq!(count.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn chunks_cover_the_buffer() {
        let team = Team::new(2, Duration::from_micros(100)).unwrap();
        let mut buf = vec![0f32; 1003];
        team.install(|| for_each_chunk_mut(&mut buf, 10, |i, chunk| chunk.fill(i as f32)));
        assert!(buf.iter().enumerate().all(|(k, v)| *v == (k / 10) as f32));
    }

    #[test]
    fn nested_loops_run_serially_and_complete() {
        let team = Team::new(2, Duration::from_micros(100)).unwrap();
        let total = AtomicUsize::new(0);
        team.install(|| {
            for_each(10, |_| for_each(10, |_| _ = total.fetch_add(1, Ordering::Relaxed)));
        });
        assert_eq!(total.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn a_panicking_item_reaches_the_caller_and_the_team_still_works() {
        let team = Team::new(2, Duration::from_millis(5)).unwrap();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            team.install(|| {
                for_each(1000, |i| {
                    if i == 500 {
                        panic!("item 500");
                    }
                })
            })
        }));
        assert!(result.is_err());
        let count = AtomicUsize::new(0);
        team.install(|| for_each(100, |_| _ = count.fetch_add(1, Ordering::Relaxed)));
        assert_eq!(count.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn without_install_loops_run_on_the_calling_thread() {
        let ran_on = Mutex::new(Vec::new());
        for_each(4, |_| ran_on.lock().unwrap().push(std::thread::current().id()));
        assert!(ran_on.lock().unwrap().iter().all(|id| *id == std::thread::current().id()));
    }
}
