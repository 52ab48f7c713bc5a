//! Helpers shared by the runtime's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use repvgg_graph::{ArchSpec, TensorMap};
use safetensors::tensor::{Dtype, TensorView};

/// Storage dtypes the loader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    F32,
    F16,
    BF16,
}

impl Storage {
    /// Rounds a value to what this storage can hold, so that the same map saved in
    /// different dtypes loads to identical f32 values.
    pub fn round(self, v: f32) -> f32 {
        match self {
            Storage::F32 => v,
            Storage::F16 => half::f16::from_f32(v).to_f32(),
            Storage::BF16 => half::bf16::from_f32(v).to_f32(),
        }
    }
}

/// Rounds every tensor of `map` to `storage` precision.
pub fn rounded(map: &TensorMap, storage: Storage) -> TensorMap {
    let mut out = TensorMap::new();
    for (name, shape, data) in map.iter() {
        out.insert(name, shape.to_vec(), data.iter().map(|&v| storage.round(v)).collect());
    }
    out
}

/// Serializes `map` in the given dtype with `prefix` prepended to every name.
pub fn safetensors_bytes(map: &TensorMap, storage: Storage, prefix: &str) -> Vec<u8> {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = map
        .iter()
        .map(|(name, shape, data)| {
            let bytes = match storage {
                Storage::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Storage::F16 => data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
                Storage::BF16 => data.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
            };
            (format!("{prefix}{name}"), shape.to_vec(), bytes)
        })
        .collect();
    let dtype = match storage {
        Storage::F32 => Dtype::F32,
        Storage::F16 => Dtype::F16,
        Storage::BF16 => Dtype::BF16,
    };
    let views: Vec<(String, TensorView)> =
        encoded.iter().map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap())).collect();
    safetensors::serialize(views, None).unwrap()
}

pub fn write_map(path: &Path, map: &TensorMap, storage: Storage, prefix: &str) {
    std::fs::write(path, safetensors_bytes(map, storage, prefix)).unwrap();
}

/// A small architecture exercising groups, identity and non-identity blocks, and optionally SE.
pub fn tiny_arch(se: bool) -> ArchSpec {
    let text = format!(
        "name = 'tiny'\nblocks_per_stage = [2, 3, 2, 1]\nwidths = [16, 16, 32, 32, 48]\ngroups = 2\ngrouped_layers = [2, 4, 6]\nse = {se}\nnum_classes = 11\n"
    );
    ArchSpec::from_toml(&text, "tiny").unwrap()
}

/// The repository's `models/` directory.
pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}
