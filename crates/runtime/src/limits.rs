//! What a request may be, checked before anything large is allocated ([`Limits`]), and
//! the finiteness checks of inputs and outputs: in one place that the loader, the model
//! and the session all read.

use repvgg_graph::Network;

use crate::error::{Error, Result};

/// Resource limits applied to every request before anything large is allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted input height or width.
    pub max_side: usize,
    /// Largest accepted batch.
    pub max_batch: usize,
    /// Largest accepted input tensor, in elements (`N * 3 * H * W`).
    pub max_input_elements: usize,
    /// Largest working memory (activations, transforms, scratch) a session may allocate
    /// for one request, in bytes.
    pub max_arena_bytes: usize,
    /// Largest weights a model may hold, in bytes: the weights file (mapped), the f32
    /// deploy weights (loaded or synthetic), and every packing of them the plans need
    /// (a Winograd F(6,3) packing is about 7x the deploy kernel).
    pub max_weight_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_side: 8192,
            max_batch: 1024,
            max_input_elements: 1 << 28,
            max_arena_bytes: 8 << 30,
            max_weight_bytes: 8 << 30,
        }
    }
}

impl Limits {
    /// Checks an input shape against the limits and the network's needs.
    pub fn check_input(&self, network: &Network, shape: &[usize]) -> Result<[usize; 4]> {
        let [n, c, h, w] = <[usize; 4]>::try_from(shape)
            .map_err(|_| Error::Input(format!("input has shape {shape:?}, expected [N, 3, H, W]")))?;
        if c != 3 {
            return Err(Error::Input(format!("input has shape {shape:?}, expected 3 channels in [N, 3, H, W]")));
        }
        if n == 0 {
            return Err(Error::Input(format!("input has shape {shape:?}: the batch is empty")));
        }
        if n > self.max_batch {
            return Err(Error::Limit(format!("batch {n} exceeds the limit of {}", self.max_batch)));
        }
        if h > self.max_side || w > self.max_side {
            return Err(Error::Limit(format!("input {h}x{w} exceeds the limit of {} pixels per side", self.max_side)));
        }
        let elements = [n, c, h, w].iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if elements.is_none_or(|e| e > self.max_input_elements) {
            return Err(Error::Limit(format!(
                "input {shape:?} exceeds the limit of {} elements",
                self.max_input_elements
            )));
        }
        network.check_input_size(h, w, self.max_side)?;
        Ok([n, c, h, w])
    }
}

/// Refuses NaN and infinity in an input `[N, C, H, W]`, naming the first one: the caller
/// learns which value was bad, rather than that the logits came out non-finite (where
/// such a value would end up: the ReLUs keep NaN, and a Winograd transform spreads one
/// over a tile). Every run checks its input; a server checks each request with it before
/// queueing, so that a bad request is refused alone rather than inside a merged batch.
pub fn check_finite(input: &[f32], [_, c, h, w]: [usize; 4]) -> Result<()> {
    let Some(index) = first_non_finite(input) else { return Ok(()) };
    let (n, rest) = (index / (c * h * w), index % (c * h * w));
    Err(Error::Input(format!(
        "input[{n}, {}, {}, {}] is {} (inputs must be finite)",
        rest / (h * w),
        rest % (h * w) / w,
        rest % w,
        input[index]
    )))
}

/// The index of the first NaN or infinity in `data`. Every run scans its whole input, so
/// the scan is branch-free over blocks (an early-exit search runs one value per cycle; the
/// fold compiles to vector compares) and searches value by value only in a block that has
/// one.
fn first_non_finite(data: &[f32]) -> Option<usize> {
    const BLOCK: usize = 1024;
    data.chunks(BLOCK).enumerate().find_map(|(b, block)| {
        let bad = block.iter().fold(false, |bad, v| bad | !v.is_finite());
        bad.then(|| b * BLOCK + block.iter().position(|v| !v.is_finite()).expect("a non-finite value"))
    })
}

/// Refuses a non-finite output. Weights and inputs are finite (both are checked), so one
/// means that a value overflowed f32 inside the network; the ReLUs keep NaN
/// (`repvgg_simd::relu`), so an overflow anywhere reaches the logits instead of being
/// hidden by a later layer. Returning such logits would be silent garbage.
pub(crate) fn check_output(what: &str, data: &[f32], shape: &[usize]) -> Result<()> {
    let Some(index) = first_non_finite(data) else { return Ok(()) };
    let mut at = Vec::with_capacity(shape.len());
    let mut rest = index;
    for d in shape.iter().rev() {
        at.push(rest % d);
        rest /= d;
    }
    at.reverse();
    let at = at.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
    Err(Error::NonFiniteOutput(format!(
        "{what}[{at}] is {}: finite weights and input overflowed f32 inside the network \
         (weights or input too large in magnitude)",
        data[index]
    )))
}

#[cfg(test)]
mod tests {
    use super::first_non_finite;

    /// The first bad value wins, wherever the blocks begin and end; finite data (with
    /// subnormals, the largest floats and -0) has none.
    #[test]
    fn the_first_non_finite_value_is_found_across_blocks() {
        let finite: Vec<f32> = (0..5000).map(|i| [1e-40, f32::MAX, -0.0, -f32::MAX, i as f32][i % 5]).collect();
        assert_eq!(first_non_finite(&finite), None);
        assert_eq!(first_non_finite(&[]), None);
        for first in [0, 1, 1023, 1024, 1025, 2047, 4096, 4999] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut data = finite.clone();
                data[first] = bad;
                // A later one in the same block and one in the last block.
                for later in [first + 1, first + 700, 4999] {
                    if later < data.len() {
                        data[later] = f32::NAN;
                    }
                }
                assert_eq!(first_non_finite(&data), Some(first), "{bad} at {first}");
            }
        }
    }
}
