//! Memory-mapped safetensors reading and writing.
//!
//! The header is parsed and fully validated (offsets contiguous, sizes equal to
//! dtype x shape with overflow checks, data ending exactly at the end of the file) before
//! any tensor is touched, so a truncated or lying file is refused up front; the header's
//! size and tensor count are bounded and duplicate names refused before that, so a hostile
//! header costs bounded time and memory. Files are opened through `repvgg_files` (regular
//! files only, size-bounded). F32 data that is 4-byte aligned in the map is borrowed
//! without copying; F16 and BF16 are widened.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use repvgg_files::Output;
use repvgg_graph::TensorSource;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, SafeTensorError};

use crate::error::{Error, Result};
use crate::limits::Limits;
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
    /// The header's `__metadata__` (string to string).
    metadata: BTreeMap<String, String>,
}

/// Largest safetensors header accepted, in bytes. Real checkpoints have a few hundred to
/// a few thousand tensors and headers of tens of KiB; a hostile header is refused before
/// its JSON is parsed.
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Most tensors accepted in one file (RepVGG-B3 in training form has about 1,500).
pub const MAX_TENSORS: usize = 1 << 16;

/// Largest input-tensor file [`read_input`] reads under `limits`: the header bound and
/// `limits.max_input_elements` four-byte values.
pub fn max_input_file_bytes(limits: &Limits) -> u64 {
    8 + MAX_HEADER_BYTES + 4 * limits.max_input_elements as u64
}

impl SafetensorsFile {
    /// Maps and validates a regular file of at most `max_bytes`; `what` names it in
    /// messages (`"weights file"`).
    pub fn open(path: &Path, what: &'static str, max_bytes: u64) -> Result<SafetensorsFile> {
        Self::parse(path.to_path_buf(), map_file(path, what, max_bytes)?)
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

    /// Maps a weights file of at most `max_bytes` and reads it as what its first bytes say
    /// it is: a PyTorch zip checkpoint (`PK\x03\x04`, see [`crate::pth`]) or safetensors.
    /// Anything else is [`Error::Unrecognized`].
    pub fn open_weights(path: &Path, max_bytes: u64) -> Result<SafetensorsFile> {
        Self::parse_weights(path.to_path_buf(), map_file(path, "weights file", max_bytes)?)
    }

    /// [`SafetensorsFile::open_weights`] for a file held in memory; `name` stands for its path.
    pub fn weights_from_bytes(name: &str, bytes: Vec<u8>) -> Result<SafetensorsFile> {
        if bytes.len() < 8 {
            return Err(Error::Format {
                path: PathBuf::from(name),
                reason: format!("the file is {} bytes, too short for the 8-byte header length", bytes.len()),
            });
        }
        Self::parse_weights(PathBuf::from(name), Bytes::Owned(bytes))
    }

    fn parse_weights(path: PathBuf, map: Bytes) -> Result<SafetensorsFile> {
        if map.starts_with(crate::pth::ZIP_MAGIC) {
            return Self::parse_pth(path, map);
        }
        if map.starts_with(crate::pth::LEGACY_MAGIC) {
            return Err(Error::Checkpoint {
                path,
                reason: "this is a legacy torch.save file (before PyTorch 1.6), not the zip format; \
                         re-save it with a newer torch (`torch.save(torch.load(f), g)`) or as safetensors"
                    .into(),
            });
        }
        if let Some(detail) = foreign(&map) {
            return Err(Error::Unrecognized { path, detail });
        }
        Self::parse(path, map)
    }

    fn parse_pth(path: PathBuf, map: Bytes) -> Result<SafetensorsFile> {
        let found = crate::pth::read(&map).map_err(|reason| Error::Checkpoint { path: path.clone(), reason })?;
        let mut tensors = BTreeMap::new();
        for t in found {
            let name = t.name.strip_prefix(DATA_PARALLEL_PREFIX).unwrap_or(&t.name).to_string();
            let entry = Entry { stored_name: t.name, dtype: t.dtype, shape: t.shape, start: t.start, end: t.end };
            if let Some(previous) = tensors.insert(name.clone(), entry) {
                return Err(Error::Checkpoint {
                    path,
                    reason: format!("state dict entries `{}` both resolve to `{name}`", previous.stored_name),
                });
            }
        }
        Ok(SafetensorsFile { path, map, tensors, metadata: BTreeMap::new() })
    }

    fn parse(path: PathBuf, map: Bytes) -> Result<SafetensorsFile> {
        check_header(&map).map_err(|reason| Error::Format { path: path.clone(), reason })?;
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
        let metadata = metadata.metadata().clone().unwrap_or_default().into_iter().collect();
        Ok(SafetensorsFile { path, map, tensors, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Dtype name of a tensor (`F32`, `BF16`, ...).
    pub fn dtype(&self, name: &str) -> Option<String> {
        self.tensors.get(name).map(|e| format!("{:?}", e.dtype))
    }

    /// The header's `__metadata__` entries.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// An I8 tensor's elements, borrowed from the map; any other dtype is an error.
    pub fn tensor_i8(&self, name: &str) -> Result<&[i8]> {
        let entry = self.tensors.get(name).ok_or_else(|| {
            Error::Graph(repvgg_graph::Error::MissingTensor {
                name: name.to_string(),
                hint: format!(" in {}", self.path.display()),
            })
        })?;
        if entry.dtype != Dtype::I8 {
            return Err(Error::Dtype {
                path: self.path.clone(),
                tensor: entry.stored_name.clone(),
                dtype: format!("{:?} (expected I8)", entry.dtype),
            });
        }
        Ok(bytemuck::cast_slice(&self.map[entry.start..entry.end]))
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
            Dtype::F64 => Ok(Cow::Owned(
                bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
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

/// What the safetensors crate does not check: the header's size against
/// [`MAX_HEADER_BYTES`], its tensor count against [`MAX_TENSORS`], and duplicate keys
/// (its JSON map keeps the last of two equal keys without a word). A header that is not
/// valid JSON passes here, for the crate to describe.
fn check_header(file: &[u8]) -> std::result::Result<(), String> {
    use serde::de::{Deserializer, Error as _, IgnoredAny, MapAccess, Visitor};

    struct Keys<'a>(&'a mut Option<String>);
    impl<'de> Visitor<'de> for Keys<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if seen.contains(&key) {
                    *self.0 = Some(format!("the header lists `{key}` twice"));
                    return Err(A::Error::custom("refused"));
                }
                seen.insert(key);
                // `__metadata__` is one more key than there are tensors.
                if seen.len() > MAX_TENSORS + 1 {
                    *self.0 = Some(format!("the header lists more than {MAX_TENSORS} tensors"));
                    return Err(A::Error::custom("refused"));
                }
            }
            Ok(())
        }
    }

    let declared = u64::from_le_bytes(file[..8].try_into().expect("callers check 8 bytes"));
    // A safetensors header is JSON right after its length. A length beyond the limit or
    // the file, with no `{` after it, is some other file (a JPEG's first bytes declare
    // exabytes): say that, rather than quote the number as if the header were too long.
    let absurd = declared > MAX_HEADER_BYTES || declared > (file.len() - 8) as u64;
    if absurd && file.get(8) != Some(&b'{') {
        return Err(format!(
            "this is not a safetensors file at all: read as a header length, its first 8 bytes declare \
             {declared} bytes, and no JSON header follows them"
        ));
    }
    if declared > MAX_HEADER_BYTES {
        return Err(format!("the declared header length {declared} exceeds the limit of {MAX_HEADER_BYTES} bytes"));
    }
    let Some(header) = file.get(8..8 + declared as usize) else { return Ok(()) };
    let mut problem = None;
    let _ = serde_json::Deserializer::from_slice(header).deserialize_map(Keys(&mut problem));
    problem.map_or(Ok(()), Err)
}

/// Maps a regular file of at most `max_bytes` and at least 8; `what` names it in messages.
fn map_file(path: &Path, what: &'static str, max_bytes: u64) -> Result<Bytes> {
    let (file, len) = repvgg_files::open(path, what, max_bytes)?;
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
    let map = unsafe { Mmap::map(&file) }.map_err(|source| repvgg_files::Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Bytes::Mapped(map))
}

/// Why `file` (at least 8 bytes) is not a safetensors file at all, if its first 8 bytes
/// read as an absurd header length with no JSON after them (a JPEG's declare exabytes).
fn foreign(file: &[u8]) -> Option<String> {
    let declared = u64::from_le_bytes(file[..8].try_into().expect("callers check 8 bytes"));
    let absurd = declared > MAX_HEADER_BYTES || declared > (file.len() - 8) as u64;
    (absurd && file.get(8) != Some(&b'{')).then(|| {
        format!(
            "read as a safetensors header length, its first 8 bytes declare {declared} bytes, and no JSON follows them"
        )
    })
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

/// Reads the network input: a file holding a tensor `input` of shape `[N, 3, H, W]`, of
/// at most [`max_input_file_bytes`] under `limits`.
pub fn read_input(path: &Path, limits: &Limits) -> Result<Tensor> {
    input_from(SafetensorsFile::open(path, "input file", max_input_file_bytes(limits))?)
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
    let dtype = file.tensors["input"].dtype;
    if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        return Err(Error::Input(format!(
            "{}: tensor `input` has dtype {dtype:?}, expected F32 (or F16, BF16)",
            path.display()
        )));
    }
    let data = file.tensor_f32("input")?.into_owned();
    Tensor::new(shape, data)
}

/// Writes named f32 tensors as a safetensors file through `output` (atomically: see
/// [`repvgg_files::Output`]), streaming the data rather than copying it into one buffer.
pub fn write_tensors<'a>(
    output: &Output,
    tensors: impl IntoIterator<Item = (String, Vec<usize>, &'a [f32])>,
) -> Result<()> {
    write_safetensors(output, &BTreeMap::new(), tensors.into_iter().map(|(n, s, d)| (n, s, TensorData::F32(d))))
}

/// A tensor's elements, for [`write_safetensors`].
#[derive(Debug, Clone, Copy)]
pub enum TensorData<'a> {
    F32(&'a [f32]),
    I8(&'a [i8]),
}

impl TensorData<'_> {
    fn len(&self) -> usize {
        match self {
            TensorData::F32(d) => d.len(),
            TensorData::I8(d) => d.len(),
        }
    }

    fn dtype(&self) -> (&'static str, usize) {
        match self {
            TensorData::F32(_) => ("F32", 4),
            TensorData::I8(_) => ("I8", 1),
        }
    }
}

/// Writes named tensors and `metadata` (besides `producer`) as a safetensors file through
/// `output`, atomically and streaming, as [`write_tensors`].
pub fn write_safetensors<'a>(
    output: &Output,
    metadata: &BTreeMap<String, String>,
    tensors: impl IntoIterator<Item = (String, Vec<usize>, TensorData<'a>)>,
) -> Result<()> {
    let tensors: Vec<_> = tensors.into_iter().collect();
    let mut meta = BTreeMap::from([("producer".to_string(), "repvgg-rs".to_string())]);
    meta.extend(metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut header = format!(r#"{{"__metadata__":{}"#, serde_json::to_string(&meta).expect("strings serialize"));
    let mut offset = 0usize;
    for (name, shape, data) in &tensors {
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(data.len()) {
            return Err(Error::Option(format!("tensor `{name}` has {} values for shape {shape:?}", data.len())));
        }
        let (dtype, size) = data.dtype();
        let end = offset + size * data.len();
        let name = serde_json::to_string(name).expect("strings serialize");
        let dims = shape.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        header += &format!(r#",{name}:{{"dtype":"{dtype}","shape":[{dims}],"data_offsets":[{offset},{end}]}}"#);
        offset = end;
    }
    header.push('}');
    // The format pads the header with spaces so that the data starts 8-byte aligned.
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    output.write_with(|w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for (_, _, data) in &tensors {
            match data {
                TensorData::F32(data) if cfg!(target_endian = "little") => w.write_all(bytemuck::cast_slice(data))?,
                TensorData::F32(data) => {
                    for v in *data {
                        w.write_all(&v.to_le_bytes())?;
                    }
                }
                TensorData::I8(data) => w.write_all(bytemuck::cast_slice(data))?,
            }
        }
        Ok(())
    })?;
    Ok(())
}
