//! Sessions: a thread team, execution plans and working memory for one [`Model`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use repvgg_simd::{Dispatch, IsaChoice};

use crate::buffers::Scratch;
use crate::error::{Error, Result};
use crate::exec::{Codes, InputLayout, REGISTRY, RunContext, direct_bf16, direct_int8, pointwise};
use crate::kernels::bf16::{Bf16Kernels, Bf16Set};
use crate::kernels::int8::{Int8Kernels, Int8Set};
use crate::limits::{check_finite, check_output};
use repvgg_simd::layout::{CHANNEL_BLOCK, channel_blocks};

use crate::model::Model;
use crate::plan::{AlgoChoice, LayerPlan, Plan, Precision};
use crate::team::Team;
use crate::tensor::Tensor;

/// How a session runs.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
    /// Algorithm per layer: the default table, or one forced everywhere it applies.
    pub algo: AlgoChoice,
    /// With `AlgoChoice::Auto`, time every applicable algorithm on each layer when a plan
    /// is first built for an input size, and keep the fastest.
    pub autotune: bool,
    /// How long helper threads spin waiting for more work before they sleep. Spinning
    /// keeps back-to-back requests at full speed (a sleeping thread must be woken, which
    /// on a VM goes through the hypervisor) at the price of that much CPU after each run.
    /// Ignored (no spinning) when `threads` exceeds the machine's cores.
    pub spin: Duration,
    /// Kernel set: `Auto` is `REPVGG_ISA` if set, else the best this CPU runs; forcing one
    /// the CPU lacks is refused ([`Error::Cpu`]).
    pub isa: IsaChoice,
    /// Run the parallel loops on this rayon pool (all its threads; `threads` and `spin`
    /// are then ignored) instead of the session's own team. For embedders that already
    /// run rayon and want one set of threads. The own team is faster for a dedicated
    /// inference thread, because its helpers spin between the network's loops instead of
    /// sleeping (docs/library.md).
    pub pool: Option<std::sync::Arc<rayon::ThreadPool>>,
    /// Arithmetic: `None` runs the model's own ([`Model::precision`]: INT8 for a quantized
    /// model, else FP32). FP32 on a quantized model runs its dequantized weights; INT8 on
    /// a float model is refused (quantize it first). BF16 rounds the (float or
    /// dequantized) weights at load; a CPU without AVX512-BF16, or a kernel set forced
    /// below AVX-512 (`isa`), refuses it ([`Error::Cpu`]).
    pub precision: Option<Precision>,
    /// The int8 kernel set of INT8 layers: `None` is the best that goes with `isa` (AMX
    /// where the CPU and OS allow it, else AVX512-VNNI, else AVX2); forcing one the CPU
    /// lacks is refused ([`Error::Cpu`]).
    pub int8_kernels: Option<Int8Set>,
    /// The bf16 kernel set of BF16 layers: `None` is the best this CPU runs (AMX where the
    /// CPU and OS allow it, else AVX512-BF16); forcing one the CPU lacks is refused
    /// ([`Error::Cpu`]).
    pub bf16_kernels: Option<Bf16Set>,
}

/// Default [`SessionOptions::spin`].
pub const DEFAULT_SPIN: Duration = Duration::from_millis(5);

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            threads: 0,
            algo: AlgoChoice::default(),
            autotune: false,
            spin: DEFAULT_SPIN,
            isa: IsaChoice::Auto,
            pool: None,
            precision: None,
            int8_kernels: None,
            bf16_kernels: None,
        }
    }
}

impl Model {
    /// A session: a thread team and working memory for running this model.
    pub fn session(&self, options: SessionOptions) -> Result<Session> {
        Session::new(self.clone(), options)
    }

    /// Runs the model once on a batch and returns the logits `[N, classes]`.
    ///
    /// Convenience for occasional calls: it builds a session (thread team, plan, arena)
    /// each time. Hold a [`Session`] to run many batches.
    pub fn run(&self, input: &Tensor) -> Result<Tensor> {
        self.session(SessionOptions::default())?.run(input)
    }
}

/// Logits and the stage outputs (C2..C5 feature maps, `NCHW`).
#[derive(Debug, Clone)]
pub struct Features {
    pub logits: Tensor,
    pub stages: [Tensor; 4],
}

/// Per-layer timings of repeated runs.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The plan that ran.
    pub plan: Plan,
    /// For each layer, the duration of every run (conv, SE and ReLU).
    pub layers: Vec<Vec<Duration>>,
    /// Pooling and classifier, per run.
    pub head: Vec<Duration>,
    /// Whole forward passes, per run.
    pub total: Vec<Duration>,
}

/// Working memory, sized for the largest plan this session has run and reused after.
struct Arena {
    /// Ping-pong activations (channel-blocked).
    act: [Vec<f32>; 2],
    /// Winograd transformed inputs, or im2col panels, of one chunk.
    transformed: Vec<f32>,
    /// One buffer per worker: Winograd products, or a fused layer's panel / transforms.
    scratch: Scratch,
    /// SE and pooling scratch.
    pooled: Vec<f32>,
}

impl Arena {
    fn new(workers: usize) -> Arena {
        Arena {
            act: [Vec::new(), Vec::new()],
            transformed: Vec::new(),
            scratch: Scratch::new(workers, 0),
            pooled: Vec::new(),
        }
    }

    /// Bytes the arena would hold for `plan`.
    /// Bytes a request of `plan` needs: the arena, plus the caller's logits (`N x classes`,
    /// allocated by [`Session::run`]) and, with `features`, the four stage outputs.
    fn required_bytes(plan: &Plan, workers: usize, classes: usize, stage_ends: Option<[usize; 4]>) -> Option<usize> {
        let stages = stage_ends.map_or(Some(0), |ends| {
            ends.iter().try_fold(0usize, |a, &e| {
                let l = &plan.layers[e];
                a.checked_add(plan.n.checked_mul(l.out_channels)?.checked_mul(l.oh * l.ow)?)
            })
        })?;
        let floats = plan
            .activation_len
            .checked_mul(2)?
            .checked_add(plan.transformed_len)?
            .checked_add(plan.scratch_len.checked_mul(workers)?)?
            .checked_add(plan.pooled_len)?
            .checked_add(plan.n.checked_mul(classes)?)?
            .checked_add(stages)?;
        floats.checked_mul(4)
    }

    /// Grows the buffers to fit `plan`; never shrinks.
    fn reserve(&mut self, plan: &Plan, workers: usize) {
        let grow = |v: &mut Vec<f32>, len: usize| {
            if v.len() < len {
                *v = vec![0.0; len];
            }
        };
        grow(&mut self.act[0], plan.activation_len);
        grow(&mut self.act[1], plan.activation_len);
        grow(&mut self.transformed, plan.transformed_len);
        grow(&mut self.pooled, plan.pooled_len);
        if self.scratch.len() < plan.scratch_len {
            self.scratch = Scratch::new(workers, plan.scratch_len);
        }
    }

    fn bytes(&self, workers: usize) -> usize {
        4 * (self.act[0].len()
            + self.act[1].len()
            + self.transformed.len()
            + self.pooled.len()
            + self.scratch.len() * workers)
    }
}

/// What [`Session::run_observed`] calls with each layer's output.
pub(crate) type Observer<'a> = dyn FnMut(&LayerPlan, &[f32]) + 'a;

/// A thread team, cached plans and working memory for running one model.
///
/// Sessions are `Send`: give each serving thread its own, or share one behind a mutex.
/// After the first run at a given input size, a run allocates nothing but its result.
pub struct Session {
    model: Model,
    options: SessionOptions,
    isa: Dispatch,
    team: Team,
    workers: usize,
    plans: PlanCache,
    arena: Arena,
    /// The arithmetic this session runs in.
    precision: Precision,
    /// Layers (by network index) this session runs in `precision` rather than FP32.
    reduced: Vec<bool>,
    int8_kernels: Int8Kernels,
    bf16_kernels: Option<Bf16Kernels>,
}

/// Plans a session keeps, least recently used evicted first. A plan is a few kilobytes,
/// so this bounds what a caller cycling through input sizes (a server's clients) can make
/// a session hold, while any realistic set of sizes stays planned.
pub const MAX_CACHED_PLANS: usize = 64;

/// Plans by `(n, h, w)`, each with the tick of its last use.
struct PlanCache {
    plans: HashMap<(usize, usize, usize), (Plan, u64)>,
    tick: u64,
}

impl PlanCache {
    fn new() -> PlanCache {
        PlanCache { plans: HashMap::new(), tick: 0 }
    }

    fn contains(&self, key: (usize, usize, usize)) -> bool {
        self.plans.contains_key(&key)
    }

    /// The plan for `key`, marked as used now. Callers plan first (`ensure_plan`).
    fn get(&mut self, key: (usize, usize, usize)) -> &Plan {
        self.tick += 1;
        let entry = self.plans.get_mut(&key).expect("planned before use");
        entry.1 = self.tick;
        &entry.0
    }

    /// Adds a plan, evicting the least recently used one when full.
    fn insert(&mut self, key: (usize, usize, usize), plan: Plan) {
        if self.plans.len() >= MAX_CACHED_PLANS
            && let Some(oldest) = self.plans.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| *k)
        {
            self.plans.remove(&oldest);
        }
        self.tick += 1;
        self.plans.insert(key, (plan, self.tick));
    }

    fn len(&self) -> usize {
        self.plans.len()
    }
}

/// Most worker threads a session (or anything else running a [`Team`]) may start.
pub(crate) const MAX_THREADS: usize = 1024;

/// The workers `threads` asks for: 0 means one per core; more than 1024 is refused.
pub fn worker_count(threads: usize) -> Result<usize> {
    let workers = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    if workers > MAX_THREADS {
        return Err(Error::Option(format!("{workers} threads requested; at most {MAX_THREADS}")));
    }
    Ok(workers)
}

impl Session {
    /// Creates a session; see [`Model::session`].
    pub fn new(model: Model, options: SessionOptions) -> Result<Session> {
        crate::cpu::check_build_features()?;
        let isa = Dispatch::choose(options.isa)?;
        let (team, workers) = match &options.pool {
            Some(pool) => (Team::on_pool(pool.clone()), pool.current_num_threads()),
            None => {
                let workers = worker_count(options.threads)?;
                let team = Team::new(workers, options.spin)
                    .map_err(|e| Error::Option(format!("cannot start {workers} worker threads: {e}")))?;
                (team, workers)
            }
        };
        let int8_kernels = match options.int8_kernels {
            None => Int8Kernels::for_dispatch(isa),
            Some(set) => Int8Kernels::new(set).ok_or_else(|| {
                let available: Vec<&str> = Int8Kernels::all_supported().iter().map(|k| k.set().name()).collect();
                Error::Cpu(format!(
                    "int8 kernel set {} needs what this CPU (or OS) lacks (it runs: {})",
                    set.name(),
                    available.join(", ")
                ))
            })?,
        };
        let precision = options.precision.unwrap_or(model.precision());
        let reduced = match precision {
            Precision::F32 => Vec::new(),
            Precision::Int8 => match model.int8_layers() {
                Some(layers) => layers,
                None => {
                    return Err(Error::Option(
                        "INT8 needs a quantized model (repvgg quantize, Model::quantize); this one has float weights"
                            .into(),
                    ));
                }
            },
            Precision::Bf16 => vec![true; model.network().layers.len()],
        };
        let bf16_kernels = match (precision, options.bf16_kernels) {
            (Precision::Bf16, wanted) => Some(bf16_kernels(isa, wanted)?),
            _ => None,
        };
        // Sessions that round their activations (BF16, INT8) run the classifier on bf16
        // weights: half of batch 1's largest read, an error far below theirs.
        if precision != Precision::F32 {
            model.prepare_classifier_bf16()?;
        }
        Ok(Session {
            model,
            options,
            isa,
            team,
            workers,
            plans: PlanCache::new(),
            arena: Arena::new(workers),
            precision,
            reduced,
            int8_kernels,
            bf16_kernels,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The arithmetic this session runs in (INT8 runs the stem, and the layers a quantized
    /// model keeps in FP32, in FP32).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The int8 kernel set this session's INT8 layers run, if it runs any.
    pub fn int8_kernels(&self) -> Option<crate::Int8Set> {
        (self.precision == Precision::Int8).then_some(self.int8_kernels.set())
    }

    /// The bf16 kernel set this session's BF16 layers run, if it runs any.
    pub fn bf16_kernels(&self) -> Option<Bf16Set> {
        self.bf16_kernels.map(|k| k.set())
    }

    /// Worker threads of this session.
    pub fn threads(&self) -> usize {
        self.workers
    }

    /// The instruction set whose kernels this session runs.
    pub fn isa(&self) -> repvgg_simd::Isa {
        self.isa.isa()
    }

    /// The kernel set as the kernels take it (for `crate::lab`'s probes).
    pub(crate) fn dispatch(&self) -> Dispatch {
        self.isa
    }

    /// Bytes of working memory currently held.
    pub fn arena_bytes(&self) -> usize {
        self.arena.bytes(self.workers)
    }

    /// Frees the working memory if it holds more than `keep_bytes`, so that one oversized
    /// input does not leave its arena behind for the life of the session; the next run
    /// allocates what its own size needs. A caller that serves steady traffic passes the
    /// arena its usual sizes need (read [`Session::arena_bytes`] after planning them), so
    /// that only runs above it pay for allocating again.
    pub fn trim_arena(&mut self, keep_bytes: usize) {
        if self.arena_bytes() > keep_bytes {
            self.arena = Arena::new(self.workers);
            // glibc keeps freed blocks below its mmap threshold (which grows up to 32 MiB
            // as large blocks are freed) in its heaps: without a trim, the memory would
            // stay resident although nothing uses it.
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim has no preconditions; it only returns free memory.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    /// Plans held (at most [`MAX_CACHED_PLANS`]).
    pub fn cached_plans(&self) -> usize {
        self.plans.len()
    }

    /// Runs a batch `[N, 3, H, W]` and returns the logits `[N, classes]`.
    pub fn run(&mut self, input: &Tensor) -> Result<Tensor> {
        let [n, _, h, w] = self.model.limits().check_input(self.model.network(), input.shape())?;
        // The plan's memory check covers the logits, so plan before allocating them.
        self.ensure_plan(n, h, w)?;
        let mut logits = Tensor::zeros(vec![n, self.model.network().num_classes]);
        self.run_slice(input.data(), input.shape(), logits.data_mut())?;
        Ok(logits)
    }

    /// Like [`Session::run`], writing into `logits` (`[N, classes]`), so that a serving
    /// loop allocates nothing at all.
    pub fn run_into(&mut self, input: &Tensor, logits: &mut Tensor) -> Result<()> {
        let [n, ..] = self.model.limits().check_input(self.model.network(), input.shape())?;
        let classes = self.model.network().num_classes;
        if logits.shape() != [n, classes] {
            return Err(Error::Option(format!(
                "logits tensor has shape {:?}, expected [{n}, {classes}]",
                logits.shape()
            )));
        }
        self.run_slice(input.data(), input.shape(), logits.data_mut())
    }

    /// [`Session::run_into`] on borrowed memory: `input` holds `shape` = `[N, 3, H, W]`
    /// (NCHW, contiguous), `logits` receives `N x classes` values. For callers whose data
    /// lives elsewhere (a numpy array, a C buffer): nothing is copied.
    pub fn run_slice(&mut self, input: &[f32], shape: &[usize], logits: &mut [f32]) -> Result<()> {
        let shape = self.check_slices(input, shape, logits)?;
        check_finite(input, shape)?;
        self.forward(input, shape, logits, None, None, None)?;
        check_output("logits", logits, &[shape[0], self.model.network().num_classes])
    }

    /// [`Session::run_slice`] for a batch whose images belong to independent callers (a
    /// server's merged requests): a non-finite value in one image's input, or a non-finite
    /// logit that its values produced, fails that image alone. The result holds, per
    /// image, `None` or that image's error (naming the value inside the image:
    /// `input[c, y, x]`, `logits[class]`); the other images' logits are valid. Images are
    /// computed independently (no kernel mixes values of two images), so each one's
    /// logits are the bits it gets in the same batch without the failing image. An error
    /// of the whole batch (shape, limits, memory) is the outer `Err`.
    pub fn run_rows(&mut self, input: &[f32], shape: &[usize], logits: &mut [f32]) -> Result<Vec<Option<Error>>> {
        let shape = self.check_slices(input, shape, logits)?;
        let [n, c, h, w] = shape;
        self.forward(input, shape, logits, None, None, None)?;
        let classes = self.model.network().num_classes;
        Ok((0..n)
            .map(|i| {
                let image = &input[i * c * h * w..(i + 1) * c * h * w];
                let row = &logits[i * classes..(i + 1) * classes];
                let bad_input = image.iter().position(|v| !v.is_finite()).map(|at| {
                    Error::Input(format!(
                        "input[{}, {}, {}] is {} (inputs must be finite)",
                        at / (h * w),
                        at % (h * w) / w,
                        at % w,
                        image[at]
                    ))
                });
                bad_input.or_else(|| check_output("logits", row, &[classes]).err())
            })
            .collect())
    }

    /// Runs a checked batch and shows `observe` every layer's output (channel-blocked, as
    /// the next layer reads it) as soon as it is computed; returns the logits.
    pub(crate) fn run_observed(
        &mut self,
        input: &Tensor,
        observe: &mut dyn FnMut(&LayerPlan, &[f32]),
    ) -> Result<Tensor> {
        let mut logits = Tensor::zeros(vec![input.shape()[0], self.model.network().num_classes]);
        let shape = self.check_slices(input.data(), input.shape(), logits.data())?;
        check_finite(input.data(), shape)?;
        self.forward(input.data(), shape, logits.data_mut(), None, None, Some(observe))?;
        check_output("logits", logits.data(), logits.shape())?;
        Ok(logits)
    }

    /// Runs a batch and returns the logits and the four stage outputs (for backbone use).
    pub fn features(&mut self, input: &Tensor) -> Result<Features> {
        self.features_slice(input.data(), input.shape())
    }

    /// [`Session::features`] on borrowed memory (see [`Session::run_slice`]).
    pub fn features_slice(&mut self, input: &[f32], shape: &[usize]) -> Result<Features> {
        let [n, _, h, w] = self.model.limits().check_input(self.model.network(), shape)?;
        self.ensure_plan(n, h, w)?;
        check_memory(&self.model, self.workers, self.plans.get((n, h, w)), true)?;
        let mut logits = Tensor::zeros(vec![n, self.model.network().num_classes]);
        let shape = self.check_slices(input, shape, logits.data())?;
        check_finite(input, shape)?;
        let mut stages = Vec::with_capacity(4);
        self.forward(input, shape, logits.data_mut(), Some(&mut stages), None, None)?;
        check_output("logits", logits.data(), logits.shape())?;
        for (s, stage) in stages.iter().enumerate() {
            check_output(&format!("stage {} output", s + 1), stage.data(), stage.shape())?;
        }
        Ok(Features { logits, stages: stages.try_into().expect("four stages") })
    }

    /// Checks `shape` against the limits and the slices' lengths against it.
    fn check_slices(&self, input: &[f32], shape: &[usize], logits: &[f32]) -> Result<[usize; 4]> {
        let shape = self.model.limits().check_input(self.model.network(), shape)?;
        let classes = self.model.network().num_classes;
        let (values, outputs) = (shape.iter().product::<usize>(), shape[0] * classes);
        if input.len() != values {
            return Err(Error::Input(format!("{} input values for shape {shape:?} ({values} needed)", input.len())));
        }
        if logits.len() != outputs {
            return Err(Error::Option(format!("{} logits for a batch of {} x {classes}", logits.len(), shape[0])));
        }
        Ok(shape)
    }

    /// Runs `repeats` times and records per-layer times. Warm up first (e.g. with
    /// [`Session::run`]): the first run at a new size also plans and packs weights.
    pub fn profile(&mut self, input: &Tensor, repeats: usize) -> Result<Profile> {
        let [n, _, h, w] = self.model.limits().check_input(self.model.network(), input.shape())?;
        self.ensure_plan(n, h, w)?;
        let classes = self.model.network().num_classes;
        let mut logits = vec![0f32; n * classes];
        let layers = self.model.network().layers.len();
        check_finite(input.data(), [n, 3, h, w])?;
        let mut profile = Profile {
            plan: self.plans.get((n, h, w)).clone(),
            layers: vec![Vec::with_capacity(repeats); layers],
            head: Vec::with_capacity(repeats),
            total: Vec::with_capacity(repeats),
        };
        let mut times = vec![Duration::ZERO; layers + 1];
        for _ in 0..repeats {
            let start = Instant::now();
            self.forward(input.data(), [n, 3, h, w], &mut logits, None, Some(&mut times), None)?;
            profile.total.push(start.elapsed());
            check_output("logits", &logits, &[n, classes])?;
            for (l, t) in times[..layers].iter().enumerate() {
                profile.layers[l].push(*t);
            }
            profile.head.push(times[layers]);
        }
        Ok(profile)
    }

    /// The plan this session uses for an input of `n x h x w` (building it if needed).
    pub fn plan(&mut self, n: usize, h: usize, w: usize) -> Result<&Plan> {
        self.model.limits().check_input(self.model.network(), &[n, 3, h, w])?;
        self.ensure_plan(n, h, w)?;
        Ok(self.plans.get((n, h, w)))
    }

    fn ensure_plan(&mut self, n: usize, h: usize, w: usize) -> Result<()> {
        if self.plans.contains((n, h, w)) {
            return Ok(());
        }
        let network = self.model.network();
        let mut plan = Plan::for_choice(network, n, h, w, self.options.algo, self.isa.isa()).with_precision(
            network,
            &self.reduced,
            self.precision,
            self.isa.isa(),
        );
        self.reserve(&plan)?;
        if self.options.autotune && self.options.algo == AlgoChoice::Auto {
            plan = self.autotune(plan)?;
        }
        self.plans.insert((n, h, w), plan);
        Ok(())
    }

    /// Checks the memory limits, grows the arena and prepares the weights for `plan`.
    fn reserve(&mut self, plan: &Plan) -> Result<()> {
        check_memory(&self.model, self.workers, plan, false)?;
        for lp in &plan.layers {
            self.model.prepare(lp)?;
        }
        self.arena.reserve(plan, self.workers);
        Ok(())
    }

    /// Times every executor the automatic choice considers on each layer it can run, and
    /// keeps the fastest.
    fn autotune(&mut self, mut plan: Plan) -> Result<Plan> {
        let (n, h, w) = (plan.n, plan.h, plan.w);
        let isa = self.isa.isa();
        let network = self.model.network().clone();
        let mut chosen: Vec<_> = plan.layers.iter().map(|lp| lp.executor().1).collect();
        for i in 0..plan.layers.len() {
            if plan.layers[i].precision != Precision::F32 {
                continue;
            }
            let shape = plan.layers[i].shape(n);
            let candidates: Vec<_> = REGISTRY
                .iter()
                .copied()
                .filter(|e| e.automatic() && e.precision() == Precision::F32 && e.supports(&shape, isa))
                .collect();
            if candidates.len() < 2 {
                continue;
            }
            let mut best = (Duration::MAX, chosen[i]);
            for executor in candidates {
                // The other layers take the fallback: only this one's packing matters.
                let trial = Plan::new(&network, n, h, w, isa, |lp| (lp.index == i).then_some(executor)).with_precision(
                    &network,
                    &self.reduced,
                    self.precision,
                    isa,
                );
                self.reserve(&trial)?;
                let lp = trial.layers[i].clone();
                let mut fastest = Duration::MAX;
                for _ in 0..3 {
                    let start = Instant::now();
                    self.run_one_layer(&lp, n);
                    fastest = fastest.min(start.elapsed());
                }
                if fastest < best.0 {
                    best = (fastest, executor);
                }
            }
            chosen[i] = best.1;
        }
        // Re-derive buffer sizes for the chosen mix.
        plan = Plan::new(&network, n, h, w, isa, |lp| Some(chosen[lp.index])).with_precision(
            &network,
            &self.reduced,
            self.precision,
            isa,
        );
        self.reserve(&plan)?;
        Ok(plan)
    }

    /// Runs one layer on whatever the arena holds (for autotuning: values do not matter).
    fn run_one_layer(&mut self, lp: &LayerPlan, n: usize) {
        let model = self.model.clone();
        let Arena { act, transformed, scratch, pooled } = &mut self.arena;
        let (first, second) = act.split_at_mut(1);
        let input_len = match lp.input {
            InputLayout::Planar => n * lp.in_channels * lp.h * lp.w,
            InputLayout::Blocked => n * channel_blocks(lp.in_channels) * lp.h * lp.w * CHANNEL_BLOCK,
        };
        let input = &first[0][..input_len];
        let output = &mut second[0];
        let kernels = LayerKernels { isa: self.isa, int8: self.int8_kernels, bf16: self.bf16_kernels };
        let mut buffers = LayerBuffers { transformed, scratch, pooled };
        self.team.install(|| conv_layer(kernels, &model, lp, n, input, output, Codes::NONE, &mut buffers));
    }

    /// One forward pass over `input` of the checked `shape`.
    fn forward(
        &mut self,
        input: &[f32],
        shape: [usize; 4],
        logits: &mut [f32],
        mut stages: Option<&mut Vec<Tensor>>,
        mut times: Option<&mut Vec<Duration>>,
        mut observe: Option<&mut Observer<'_>>,
    ) -> Result<()> {
        let [n, _, h, w] = shape;
        self.ensure_plan(n, h, w)?;
        let plan = self.plans.get((n, h, w));
        // The arena may have been trimmed since this plan was made.
        self.arena.reserve(plan, self.workers);
        let model = &self.model;
        let network = model.network();
        let stage_ends = network.stage_ends();
        let Arena { act, transformed, scratch, pooled } = &mut self.arena;
        let mut buffers = LayerBuffers { transformed, scratch, pooled };
        let kernels = LayerKernels { isa: self.isa, int8: self.int8_kernels, bf16: self.bf16_kernels };
        let (isa, int8, precision) = (self.isa, self.int8_kernels, self.precision);
        // Outputs someone looks at stay floats; otherwise INT8 layers hand codes on.
        let handoff = observe.is_none();
        let stage_outputs = stages.is_some();
        self.team.install(|| {
            let mut current = 0;
            let mut codes_in = false;
            for (i, lp) in plan.layers.iter().enumerate() {
                let start = times.as_ref().map(|_| Instant::now());
                let (a, b) = act.split_at_mut(1);
                let (src, dst) = if current == 0 { (&a[0], &mut b[0]) } else { (&b[0], &mut a[0]) };
                let src: &[f32] = if lp.input == InputLayout::Planar { input } else { src };
                let watched = stage_outputs && stage_ends.contains(&lp.index);
                let handed = (handoff && !watched).then(|| hands_codes(model, plan, i, int8)).flatten();
                let codes =
                    Codes { input: codes_in, output: handed.map(|(value, _)| value), block: handed.map_or(0, |h| h.1) };
                conv_layer(kernels, model, lp, n, src, dst, codes, &mut buffers);
                codes_in = handed.is_some();
                if let (Some(t), Some(start)) = (times.as_deref_mut(), start) {
                    t[lp.index] = start.elapsed();
                }
                if let Some(observe) = observe.as_deref_mut() {
                    observe(lp, dst);
                }
                if let Some(stages) = stages.as_deref_mut()
                    && lp.index > 0
                    && stage_ends.contains(&lp.index)
                {
                    let mut planar = Tensor::zeros(vec![n, lp.out_channels, lp.oh, lp.ow]);
                    pointwise::to_planar(dst, n, lp.out_channels, lp.oh * lp.ow, planar.data_mut());
                    stages.push(planar);
                }
                current = 1 - current;
            }
            let start = Instant::now();
            let last = plan.layers.last().expect("layers");
            let features = network.feature_channels();
            let weights = model.weights();
            let pooled = &mut *buffers.pooled;
            pointwise::global_average_pool(isa, &act[current], n, features, last.oh * last.ow, pooled);
            if precision == Precision::F32 {
                pointwise::linear(isa, pooled, n, features, &weights.linear_weight, &weights.linear_bias, logits)
            } else {
                pointwise::linear(isa, pooled, n, features, model.classifier_bf16(), &weights.linear_bias, logits)
            }
            if let Some(t) = times {
                t[plan.layers.len()] = start.elapsed();
            }
        });
        Ok(())
    }
}

/// Checks a request of `plan` (with the stage outputs if `features`) against
/// [`Limits::max_arena_bytes`](crate::Limits::max_arena_bytes).
fn check_memory(model: &Model, workers: usize, plan: &Plan, features: bool) -> Result<()> {
    let limit = model.limits().max_arena_bytes;
    let network = model.network();
    let stage_ends = features.then(|| network.stage_ends());
    match Arena::required_bytes(plan, workers, network.num_classes, stage_ends) {
        Some(bytes) if bytes <= limit => Ok(()),
        needed => Err(Error::Limit(format!(
            "input [{}, 3, {}, {}] needs {} of working memory, over the limit of {} MiB",
            plan.n,
            plan.h,
            plan.w,
            needed.map_or("more than the address space".to_string(), |b| format!("{} MiB", b >> 20)),
            limit >> 20
        ))),
    }
}

/// The arena's buffers a layer works in besides its input and output.
struct LayerBuffers<'a> {
    /// The executor's shared buffer (transformed inputs or packed panels).
    transformed: &'a mut [f32],
    scratch: &'a Scratch,
    /// SE and pooling scratch.
    pooled: &'a mut [f32],
}

/// `1 / s_x` of layer `i + 1` and the layout it reads (`direct_int8::code_block`) if layer
/// `i` hands it its input as u8 codes: both INT8 and reading their input in place with
/// `kernels`, no SE between them, and the codes fit the activation buffer. The codes are
/// what layer `i + 1` would compute from layer `i`'s floats, so the results are the same
/// bits either way. Between BF16 layers, `(1, 0)`: bf16 values in their one layout.
fn hands_codes(model: &Model, plan: &Plan, i: usize, kernels: Int8Kernels) -> Option<(f32, usize)> {
    let (lp, next) = (&plan.layers[i], plan.layers.get(i + 1)?);
    let (here, there) = (lp.shape(plan.n), next.shape(plan.n));
    if lp.precision == Precision::Bf16 && next.precision == Precision::Bf16 {
        // Every BF16 layer reads its input in place; the value is not a scale.
        return (!lp.se && direct_bf16::input_len(&there) <= plan.activation_len).then_some((1.0, 0));
    }
    let int8 = |l: &LayerPlan| l.precision == Precision::Int8;
    let linked = int8(lp)
        && int8(next)
        && !lp.se
        && direct_int8::takes_codes(&here, kernels)
        && direct_int8::takes_codes(&there, kernels)
        && direct_int8::codes_len(&there) <= plan.activation_len;
    let layer = model.quant()?.layers[next.index].as_ref()?;
    linked.then(|| (1.0 / layer.input_scale, direct_int8::code_block(&there, kernels)))
}

/// The kernel sets of a session's layers.
#[derive(Clone, Copy)]
struct LayerKernels {
    isa: Dispatch,
    int8: Int8Kernels,
    bf16: Option<Bf16Kernels>,
}

/// The bf16 kernel set of a BF16 session: `wanted`, or the best the CPU runs; refused
/// without AVX512-BF16, or when the float kernels are forced below AVX-512.
fn bf16_kernels(isa: Dispatch, wanted: Option<Bf16Set>) -> Result<Bf16Kernels> {
    let available: Vec<&str> = Bf16Kernels::all_supported().iter().map(|k| k.set().name()).collect();
    if available.is_empty() {
        return Err(Error::Cpu("BF16 needs AVX512-BF16, which this CPU lacks; run FP32 or INT8".into()));
    }
    if isa.isa() != repvgg_simd::Isa::Avx512 {
        return Err(Error::Cpu(format!(
            "BF16 needs AVX512-BF16 and the AVX-512 kernels; the {} kernel set was forced (--isa, REPVGG_ISA)",
            isa.isa().name()
        )));
    }
    match wanted {
        None => Ok(Bf16Kernels::best().expect("a set is available")),
        Some(set) => Bf16Kernels::new(set).ok_or_else(|| {
            Error::Cpu(format!(
                "bf16 kernel set {} needs what this CPU (or OS) lacks (it runs: {})",
                set.name(),
                available.join(", ")
            ))
        }),
    }
}

/// One RepVGG block: convolution + bias by the layer's executor (one call per layer), then
/// SE and ReLU (or ReLU fused into the convolution).
#[allow(clippy::too_many_arguments)] // the kernel sets, the layer, its data and buffers
fn conv_layer(
    kernels: LayerKernels,
    model: &Model,
    lp: &LayerPlan,
    n: usize,
    input: &[f32],
    output: &mut [f32],
    codes: Codes,
    buffers: &mut LayerBuffers<'_>,
) {
    let relu = !lp.se;
    let prepared = model.prepared(lp);
    let shape = lp.shape(n);
    let layer = &model.weights().layers[lp.index];
    let LayerKernels { isa, int8, bf16 } = kernels;
    lp.executor().1.run(RunContext {
        isa,
        int8,
        bf16,
        shape: &shape,
        weights: &*prepared,
        deploy: &layer.conv.weight,
        bias: model.bias(lp.index),
        relu,
        input,
        output: &mut *output,
        shared: &mut *buffers.transformed,
        scratch: buffers.scratch,
        codes,
    });
    if lp.se {
        let se = layer.se.as_ref().expect("SE layers have SE weights");
        pointwise::squeeze_excite_relu(isa, output, n, lp.out_channels, lp.oh * lp.ow, se, buffers.pooled);
    }
}
