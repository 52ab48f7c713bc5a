//! Machine probes that hold on a shared host. Another tenant can halve one measurement
//! of the FMA peak or the memory bandwidth (the same binary read 113 and 233 GFLOP/s on
//! two threads minutes apart), so a report takes several short ones spread over its run
//! and keeps the best: what the machine can do when nobody else runs. Their spread says
//! how far the run's own timings can be trusted.

/// The lowest sample may be this fraction of the best before a run is called noisy.
pub const STEADY: f64 = 0.8;

/// Repeated measurements of one rate.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn push(&mut self, rate: f64) {
        self.0.push(rate);
    }

    /// The best sample (0 with none).
    pub fn best(&self) -> f64 {
        self.0.iter().copied().fold(0.0, f64::max)
    }

    /// The lowest sample (0 with none).
    pub fn lowest(&self) -> f64 {
        self.0.iter().copied().reduce(f64::min).unwrap_or(0.0)
    }

    /// True if the samples agree within [`STEADY`].
    pub fn steady(&self) -> bool {
        self.lowest() >= STEADY * self.best()
    }
}

/// A share of a peak as a printed percentage, at most 100: a kernel measured above the
/// best probe means the probe was slowed, and the share is then a bound, which the
/// report's noise line says.
pub fn percent_of_peak(share: f64) -> f64 {
    (100.0 * share).min(100.0)
}

/// The line a report prints when its probes disagree or a kernel beat them.
pub fn noise_line(what: &str, samples: &Samples, unit: &str) -> String {
    format!(
        "note: the host was noisy: the {what} probe read {:.1} to {:.1} {unit} over the run; the best is used, \
         and shares of it are bounds",
        samples.lowest(),
        samples.best()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_sample_is_kept_and_a_wide_spread_is_noisy() {
        let mut s = Samples::default();
        assert_eq!((s.best(), s.lowest()), (0.0, 0.0));
        for rate in [180.0, 120.0, 200.0] {
            s.push(rate);
        }
        assert_eq!((s.best(), s.lowest()), (200.0, 120.0));
        assert!(!s.steady());
        let mut t = Samples::default();
        t.push(190.0);
        t.push(200.0);
        assert!(t.steady());
        assert_eq!(percent_of_peak(1.44), 100.0);
        assert_eq!(percent_of_peak(0.5), 50.0);
        assert!(noise_line("FMA", &s, "GFLOP/s").contains("120.0 to 200.0 GFLOP/s"));
    }
}
