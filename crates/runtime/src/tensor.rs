//! A dense, owned, row-major f32 tensor.

use crate::error::{Error, Result};

/// A dense row-major f32 tensor (NCHW for images and feature maps, `[N, classes]` for logits).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// Wraps `data`; fails if its length is not the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor> {
        let expected = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if expected != Some(data.len()) {
            return Err(Error::Input(format!("shape {shape:?} does not match {} elements", data.len())));
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor { shape, data: vec![0.0; n] }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// `[N, C, H, W]` of a 4-D tensor.
    pub fn dims4(&self) -> Option<[usize; 4]> {
        <[usize; 4]>::try_from(self.shape.as_slice()).ok()
    }

    /// Largest absolute value (0 for an empty tensor).
    pub fn max_abs(&self) -> f32 {
        self.data.iter().fold(0f32, |m, v| m.max(v.abs()))
    }

    /// max |self - other| / max |other|: the relative error measure used throughout the tests.
    pub fn rel_diff(&self, reference: &Tensor) -> f32 {
        assert_eq!(self.shape, reference.shape, "rel_diff of tensors with different shapes");
        let scale = reference.max_abs().max(f32::MIN_POSITIVE);
        let diff = self.data.iter().zip(&reference.data).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        diff / scale
    }

    /// Indices of the `k` largest entries of row `row` of a 2-D tensor, largest first.
    pub fn top_k(&self, row: usize, k: usize) -> Vec<(usize, f32)> {
        let cols = self.shape[1];
        let values = &self.data[row * cols..(row + 1) * cols];
        let mut idx: Vec<usize> = (0..cols).collect();
        idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        idx.into_iter().take(k).map(|i| (i, values[i])).collect()
    }
}
