//! Memory-mapped safetensors reading and writing.
//!
//! The header is parsed and fully validated (offsets contiguous, sizes equal to
//! dtype x shape with overflow checks, data ending exactly at the end of the file) before
//! any tensor is touched, so a truncated or lying file is refused up front. F32 data that
//! is 4-byte aligned in the map is borrowed without copying; F16 and BF16 are widened.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use repvgg_graph::TensorSource;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, SafeTensorError, TensorView};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Prefix of multi-GPU (DataParallel) checkpoints, ignored.
const DATA_PARALLEL_PREFIX: &str = "module.";

#[derive(Debug)]
struct Entry {
    /// Name as stored in the file (with any `module.` prefix).
    stored_name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range within the map.
    start: usize,
    end: usize,
}

/// The bytes of a safetensors file: memory-mapped, or owned (received over a wire, fuzzed).
#[derive(Debug)]
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Owned(bytes) => bytes,
        }
    }
}

/// A safetensors file mapped into memory, with names stripped of `module.`.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    map: Bytes,
    tensors: BTreeMap<String, Entry>,
}

impl SafetensorsFile {
    /// Maps and validates a file.
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let io = |source| Error::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 8 {
            return Err(Error::Format {
                path: path.to_path_buf(),
                reason: format!("the file is {len} bytes, too short for the 8-byte header length"),
            });
        }
        // SAFETY: the map is read-only and private to this process. Another process
        // truncating or rewriting the file while it is mapped is outside what we can
        // defend against (as for every mmap-based loader); the file is only read during
        // `Model::load` and the map is dropped afterwards.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_path_buf(), Bytes::Mapped(map))
    }

    /// Parses a safetensors file held in memory; `name` stands for its path in messages.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<SafetensorsFile> {
        if bytes.len() < 8 {
            return Err(Error::Format {
                path: PathBuf::from(name),
                reason: format!("the file is {} bytes, too short for the 8-byte header length", bytes.len()),
            });
        }
        Self::parse(PathBuf::from(name), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, map: Bytes) -> Result<SafetensorsFile> {
        let (header_len, metadata) = SafeTensors::read_metadata(&map)
            .map_err(|e| Error::Format { path: path.clone(), reason: describe_format_error(&e, &map) })?;
        let data_start = 8 + header_len;
        let mut tensors = BTreeMap::new();
        for (stored_name, info) in metadata.tensors() {
            let name = stored_name.strip_prefix(DATA_PARALLEL_PREFIX).unwrap_or(&stored_name).to_string();
            let entry = Entry {
                stored_name: stored_name.clone(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: data_start + info.data_offsets.0,
                end: data_start + info.data_offsets.1,
            };
            if let Some(previous) = tensors.insert(name.clone(), entry) {
                return Err(Error::Format {
                    path: path.clone(),
                    reason: format!("tensors `{}` and `{stored_name}` both resolve to `{name}`", previous.stored_name),
                });
            }
        }
        Ok(SafetensorsFile { path, map, tensors })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Dtype name of a tensor (`F32`, `BF16`, ...).
    pub fn dtype(&self, name: &str) -> Option<String> {
        self.tensors.get(name).map(|e| format!("{:?}", e.dtype))
    }

    /// A tensor converted to f32, borrowed from the map when possible.
    pub fn tensor_f32(&self, name: &str) -> Result<Cow<'_, [f32]>> {
        let entry = self.tensors.get(name).ok_or_else(|| {
            Error::Graph(repvgg_graph::Error::MissingTensor {
                name: name.to_string(),
                hint: format!(" in {}", self.path.display()),
            })
        })?;
        let bytes = &self.map[entry.start..entry.end];
        match entry.dtype {
            Dtype::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
                Ok(floats) if cfg!(target_endian = "little") => Ok(Cow::Borrowed(floats)),
                _ => Ok(Cow::Owned(
                    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                )),
            },
            Dtype::F16 => {
                Ok(Cow::Owned(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()))
            }
            Dtype::BF16 => Ok(Cow::Owned(
                bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            )),
            other => Err(Error::Dtype {
                path: self.path.clone(),
                tensor: entry.stored_name.clone(),
                dtype: format!("{other:?}"),
            }),
        }
    }
}

impl TensorSource for SafetensorsFile {
    fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    fn to_f32(&self, name: &str) -> repvgg_graph::Result<Cow<'_, [f32]>> {
        self.tensor_f32(name).map_err(|e| match e {
            Error::Graph(g) => g,
            other => repvgg_graph::Error::Source(other.to_string()),
        })
    }
}

/// Turns the safetensors crate's terse errors into a sentence about the file.
fn describe_format_error(error: &SafeTensorError, file: &[u8]) -> String {
    let declared = file.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    match error {
        SafeTensorError::HeaderTooLarge => format!("the declared header length {} is too large", declared.unwrap_or(0)),
        SafeTensorError::HeaderTooSmall => "the file is too short for a header".into(),
        SafeTensorError::InvalidHeaderLength => format!(
            "the header claims {} bytes but the file has only {} (truncated?)",
            declared.unwrap_or(0),
            file.len().saturating_sub(8)
        ),
        SafeTensorError::InvalidHeader(_) => "the header is not UTF-8".into(),
        SafeTensorError::InvalidHeaderDeserialization(e) | SafeTensorError::JsonError(e) => {
            format!("the header is not valid safetensors JSON ({e})")
        }
        SafeTensorError::InvalidOffset(name) => format!("tensor `{name}` has data offsets that overlap or leave gaps"),
        SafeTensorError::TensorInvalidInfo => "a tensor's byte size does not match its dtype and shape".into(),
        SafeTensorError::ValidationOverflow => "a tensor's shape overflows the address space".into(),
        SafeTensorError::MetadataIncompleteBuffer => {
            "the tensor data does not end where the file ends (truncated or trailing bytes)".into()
        }
        SafeTensorError::MisalignedSlice => "a tensor's size is not a whole number of bytes".into(),
        other => other.to_string(),
    }
}

/// Reads the network input: a file holding a tensor `input` of shape `[N, 3, H, W]`.
pub fn read_input(path: &Path) -> Result<Tensor> {
    input_from(SafetensorsFile::open(path)?)
}

/// [`read_input`] from bytes in memory; `name` stands for the path in messages.
pub fn input_from_bytes(name: &str, bytes: Vec<u8>) -> Result<Tensor> {
    input_from(SafetensorsFile::from_bytes(name, bytes)?)
}

fn input_from(file: SafetensorsFile) -> Result<Tensor> {
    let path = file.path().to_path_buf();
    let shape = file
        .shape("input")
        .ok_or_else(|| {
            Error::Input(format!(
                "{} has no tensor named `input` (found: {})",
                path.display(),
                file.names().iter().take(5).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            ))
        })?
        .to_vec();
    if shape.len() != 4 || shape[1] != 3 {
        return Err(Error::Input(format!(
            "{}: tensor `input` has shape {shape:?}, expected [N, 3, H, W]",
            path.display()
        )));
    }
    let data = file.tensor_f32("input")?.into_owned();
    Tensor::new(shape, data)
}

/// Writes named f32 tensors as a safetensors file.
pub fn write_tensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (String, Vec<usize>, &'a [f32])>,
) -> Result<()> {
    let views = tensors
        .into_iter()
        .map(|(name, shape, data)| {
            let bytes: &[u8] = bytemuck::cast_slice(data);
            TensorView::new(Dtype::F32, shape, bytes).map(|v| (name, v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Format { path: path.to_path_buf(), reason: e.to_string() })?;
    let metadata = std::collections::HashMap::from([("producer".to_string(), "repvgg-rs".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| match e {
        SafeTensorError::IoError(source) => Error::Io { path: path.to_path_buf(), source },
        other => Error::Format { path: path.to_path_buf(), reason: other.to_string() },
    })
}
