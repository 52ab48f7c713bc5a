//! Deterministic synthetic weights: the embedded default of `repvgg bench` and the raw
//! material of the tests. A fixed-seed SplitMix64 generator keeps them identical on every
//! platform without depending on a random-number crate's stream stability.

use crate::network::Network;
use crate::weights::{BlockForm, Convention, Role, TensorMap, expected_tensors};

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast, and a good enough stream for weights.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f32 {
        (lo + (hi - lo) * self.next_f64()) as f32
    }

    /// Standard normal (Box-Muller), scaled.
    pub fn normal(&mut self, std: f64) -> f32 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    pub fn normals(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| self.normal(std)).collect()
    }

    pub fn uniforms(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// A complete checkpoint for `network` in the given naming convention and form.
///
/// Kernels use He initialisation (std = sqrt(2 / fan_in)) so activations keep their scale
/// through any depth (training-form branches are scaled by 0.6 so that their sum does too);
/// BN statistics are far from identity (gamma in [0.5, 1.5), var in [0.5, 2)) so a wrong
/// fusion formula cannot hide.
pub fn checkpoint(network: &Network, convention: Convention, form: BlockForm, seed: u64) -> TensorMap {
    let mut rng = SplitMix64::new(seed);
    let mut map = TensorMap::new();
    let branch_scale = match form {
        BlockForm::Deploy => 1.0,
        BlockForm::Training | BlockForm::QaRep | BlockForm::QaRepV2 => 0.6,
        BlockForm::QaRepDeploy => 1.0,
    };
    for spec in expected_tensors(network, convention, form) {
        let n: usize = spec.shape.iter().product();
        let fan_in = spec.shape.get(1..).map_or(1, |s| s.iter().product::<usize>()) as f64;
        let data = match spec.role {
            Role::Kernel => rng.normals(n, branch_scale * (2.0 / fan_in).sqrt()),
            Role::Bias | Role::BnBeta | Role::BnMean => rng.normals(n, 0.1),
            Role::BnGamma => rng.uniforms(n, 0.5, 1.5),
            Role::BnVar => rng.uniforms(n, 0.5, 2.0),
            Role::SeKernel | Role::Linear => rng.normals(n, (1.0 / fan_in).sqrt()),
        };
        map.insert(spec.name, spec.shape, data);
    }
    map
}

/// Uniform [-1, 1) input data of `n` elements.
pub fn input(n: usize, seed: u64) -> Vec<f32> {
    SplitMix64::new(seed).uniforms(n, -1.0, 1.0)
}
