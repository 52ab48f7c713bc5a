//! PyTorch zip checkpoints (`torch.save` since PyTorch 1.6), read without executing
//! anything.
//!
//! A checkpoint is a zip of stored (uncompressed) entries: `<prefix>/data.pkl`, a pickle
//! that describes the saved object, and one entry `<prefix>/data/<key>` per storage,
//! holding its elements. Only the subset of pickle that `torch.save` emits for a state
//! dict is interpreted, on a small stack machine of plain values: the only globals are
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and the typed storages (`torch.FloatStorage`, ...);
//! any other global or opcode is refused, naming it. Nothing is called: a "call"
//! (`REDUCE`) of one of those globals builds the value it stands for, after checking its
//! arguments. Every size the file declares is checked (pickle length, memo, stack,
//! nesting, tensor count, each tensor against its storage and each storage against its
//! zip entry) before it is used, and no tensor data is copied: each tensor is a byte range
//! of the file, read by the safetensors code paths.

use std::collections::HashMap;
use std::io::Cursor;
use std::rc::Rc;

use safetensors::tensor::Dtype;
use zip::{CompressionMethod, ZipArchive};

use crate::loader::MAX_TENSORS;

/// The first bytes of a zip file (a local file header).
pub const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// The first bytes of a legacy (before PyTorch 1.6) `torch.save` file: protocol 2, then
/// the magic number 0x1950a86a20f9469cfc6c as a LONG1.
pub const LEGACY_MAGIC: &[u8] = &[0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Largest `data.pkl` accepted. A state dict's pickle takes about 200 bytes per tensor
/// (RepVGG-B3 in training form: about 300 KB); a checkpoint with optimizer state more.
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Most memo entries, stack values and open marks (nesting) a pickle may use.
const MAX_MEMO: usize = 1 << 20;
const MAX_STACK: usize = 1 << 20;
const MAX_MARKS: usize = 1024;
/// Most objects and container items a pickle may build, all told (a state dict builds
/// about ten per tensor): bounds the memory a hostile pickle costs to about 100 MB.
const MAX_CELLS: usize = 1 << 22;
/// Most dimensions of a tensor.
const MAX_DIMS: usize = 64;
/// Most entries in the zip (one per storage and a few more).
const MAX_ZIP_ENTRIES: usize = MAX_TENSORS + 64;

/// One tensor of a checkpoint: its name in the state dict, and its bytes within the file.
#[derive(Debug, Clone)]
pub struct PthTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// Reads the tensors of the state dict in a PyTorch zip checkpoint held in `bytes`; the
/// error is a sentence about the file.
pub fn read(bytes: &[u8]) -> Result<Vec<PthTensor>, String> {
    let mut archive =
        ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("the zip container is broken or truncated ({e})"))?;
    if archive.len() > MAX_ZIP_ENTRIES {
        return Err(format!("the zip holds {} entries, over the limit of {MAX_ZIP_ENTRIES}", archive.len()));
    }
    // `<prefix>/data.pkl`, where the prefix is the archive name torch chose (one folder).
    let mut pickle_entry = None;
    for index in 0..archive.len() {
        let Some(Ok(name)) = archive.name_for_index(index) else { continue };
        if let Some(prefix) = name.strip_suffix("/data.pkl")
            && !prefix.is_empty()
            && !prefix.contains('/')
        {
            if pickle_entry.is_some() {
                return Err("the zip holds more than one `data.pkl`".into());
            }
            pickle_entry = Some((index, prefix.to_string()));
        }
    }
    let Some((pickle_index, prefix)) = pickle_entry else {
        return Err("the zip has no `<name>/data.pkl`: it is not a torch.save checkpoint".into());
    };
    if let Some(index) = archive.index_for_name(&format!("{prefix}/byteorder")) {
        let range = stored_range(&mut archive, index, bytes.len())?;
        if &bytes[range.clone()] != b"little" {
            return Err(format!(
                "the checkpoint's byte order is `{}`; only little-endian checkpoints are read",
                String::from_utf8_lossy(&bytes[range.start..range.end.min(range.start + 16)])
            ));
        }
    }
    let range = stored_range(&mut archive, pickle_index, bytes.len())?;
    if range.len() as u64 > MAX_PICKLE_BYTES {
        return Err(format!(
            "`{prefix}/data.pkl` is {} bytes, over the limit of {MAX_PICKLE_BYTES} bytes",
            range.len()
        ));
    }
    let mut machine = Machine::default();
    let top = machine.run(&bytes[range]).map_err(|e| format!("`{prefix}/data.pkl`: {e}"))?;
    let entries = machine.state_dict(&top)?;
    if entries.len() > MAX_TENSORS {
        return Err(format!("the state dict holds {} entries, over the limit of {MAX_TENSORS}", entries.len()));
    }
    let mut storages: HashMap<Rc<str>, std::ops::Range<usize>> = HashMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let Value::Str(name) = key else {
            return Err(format!("the state dict has a key that is not a string ({})", machine.kind(key)));
        };
        let tensor = match value {
            Value::Obj(id) => match &machine.objects[*id] {
                Obj::Tensor(t) => t,
                _ => return Err(format!("state dict entry `{name}` is {}, not a tensor", machine.kind(value))),
            },
            _ => return Err(format!("state dict entry `{name}` is {}, not a tensor", machine.kind(value))),
        };
        let entry = format!("{prefix}/data/{}", tensor.key);
        let storage = match storages.get(&tensor.key) {
            Some(range) => range.clone(),
            None => {
                let index = archive
                    .index_for_name(&entry)
                    .ok_or_else(|| format!("tensor `{name}` refers to storage `{entry}`, which the zip lacks"))?;
                let range = stored_range(&mut archive, index, bytes.len())?;
                storages.insert(tensor.key.clone(), range.clone());
                range
            }
        };
        // Every tensor's persistent id declares its storage's size: each must match.
        let declared = tensor.storage_numel.checked_mul(elem_size(tensor.dtype) as u64);
        if declared != Some(storage.len() as u64) {
            return Err(format!(
                "storage `{entry}` holds {} bytes, but tensor `{name}` declares it as {} elements of {:?}",
                storage.len(),
                tensor.storage_numel,
                tensor.dtype
            ));
        }
        // The tensor lies within its storage (checked when it was built) and the storage
        // within the file: these cannot overflow.
        let size = elem_size(tensor.dtype);
        let start = storage.start + tensor.offset as usize * size;
        let end = start + tensor.numel as usize * size;
        debug_assert!(end <= storage.end);
        tensors.push(PthTensor {
            name: name.to_string(),
            dtype: tensor.dtype,
            shape: tensor.shape.clone(),
            start,
            end,
        });
    }
    Ok(tensors)
}

/// The byte range of a stored zip entry within the file; compressed or encrypted entries
/// are refused.
fn stored_range(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    index: usize,
    file_len: usize,
) -> Result<std::ops::Range<usize>, String> {
    let file = archive.by_index_raw(index).map_err(|e| format!("zip entry {index} is broken ({e})"))?;
    let name = file.name().map(|n| n.to_string()).unwrap_or_else(|_| format!("#{index}"));
    if file.compression() != CompressionMethod::Stored {
        return Err(format!(
            "zip entry `{name}` is compressed ({}); torch.save stores entries uncompressed",
            file.compression()
        ));
    }
    if file.encrypted() {
        return Err(format!("zip entry `{name}` is encrypted"));
    }
    if file.compressed_size() != file.size() {
        return Err(format!(
            "zip entry `{name}` is stored, but its sizes differ ({} and {} bytes)",
            file.compressed_size(),
            file.size()
        ));
    }
    let start = file.data_start().ok_or_else(|| format!("zip entry `{name}` has no data offset"))?;
    match start.checked_add(file.size()) {
        Some(end) if end <= file_len as u64 => Ok(start as usize..end as usize),
        _ => Err(format!(
            "zip entry `{name}` declares {} bytes at offset {start}, past the end of the {file_len}-byte file (truncated?)",
            file.size()
        )),
    }
}

/// A pickle value. Containers and torch objects live in [`Machine::objects`] and are
/// referred to by index, so that `BINGET` copies nothing large.
#[derive(Debug, Clone)]
enum Value {
    None,
    /// Booleans and floats (`requires_grad`, a learning rate beside the state dict)
    /// are only passed over.
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Obj(usize),
}

#[derive(Debug)]
enum Obj {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(Storage),
    Tensor(Tensor),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(Dtype, &'static str),
}

#[derive(Debug)]
struct Storage {
    dtype: Dtype,
    key: Rc<str>,
    numel: u64,
}

#[derive(Debug)]
struct Tensor {
    dtype: Dtype,
    key: Rc<str>,
    storage_numel: u64,
    offset: u64,
    numel: u64,
    shape: Vec<usize>,
}

/// The storage types torch writes (`torch.<Name>Storage`, also in PyTorch 2) and their dtypes.
const STORAGES: &[(&str, Dtype)] = &[
    ("FloatStorage", Dtype::F32),
    ("HalfStorage", Dtype::F16),
    ("BFloat16Storage", Dtype::BF16),
    ("DoubleStorage", Dtype::F64),
    ("LongStorage", Dtype::I64),
    ("IntStorage", Dtype::I32),
    ("ShortStorage", Dtype::I16),
    ("CharStorage", Dtype::I8),
    ("ByteStorage", Dtype::U8),
    ("BoolStorage", Dtype::BOOL),
];

/// Bytes per element (every dtype a storage can have is whole bytes).
fn elem_size(dtype: Dtype) -> usize {
    dtype.bitsize().div_ceil(8)
}

fn global(module: &str, name: &str) -> Result<Global, String> {
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
        ("torch", storage) => STORAGES
            .iter()
            .find(|(n, _)| *n == storage)
            .map(|&(n, dtype)| Global::Storage(dtype, n))
            .ok_or_else(|| refused_global(module, name)),
        _ => Err(refused_global(module, name)),
    }
}

fn refused_global(module: &str, name: &str) -> String {
    let shown = |s: &str| s.chars().take(80).collect::<String>().escape_debug().to_string();
    format!(
        "the pickle refers to the global `{}.{}`, which is not part of a state dict; refused \
         (nothing in a checkpoint is executed: save `model.state_dict()` alone)",
        shown(module),
        shown(name)
    )
}

#[derive(Default)]
struct Machine {
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Obj>,
    /// Objects and container items built so far, against [`MAX_CELLS`].
    cells: usize,
}

/// A cursor over the pickle's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(format!("truncated: {n} bytes wanted at offset {}, {left} left", self.pos));
        }
        let out = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N as u64)?.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.bytes[self.pos..];
        let end = rest.iter().take(256).position(|&b| b == b'\n').ok_or("a GLOBAL name is unterminated or too long")?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| "a GLOBAL name is not UTF-8".to_string())
    }
    fn string(&mut self, n: u64) -> Result<Rc<str>, String> {
        let raw = self.take(n)?;
        std::str::from_utf8(raw).map(Rc::from).map_err(|_| format!("a string at offset {} is not UTF-8", self.pos))
    }
}

impl Machine {
    fn push(&mut self, value: Value) -> Result<(), String> {
        if self.stack.len() >= MAX_STACK {
            return Err(format!("the pickle's stack exceeds {MAX_STACK} values"));
        }
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self, op: &str) -> Result<Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(format!("{op} on an empty stack"));
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn pop_mark(&mut self, op: &str) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or_else(|| format!("{op} without a MARK"))?;
        Ok(self.stack.split_off(mark))
    }

    fn count(&mut self, cells: usize) -> Result<(), String> {
        self.cells = self.cells.saturating_add(cells);
        if self.cells > MAX_CELLS {
            return Err(format!("the pickle builds more than {MAX_CELLS} objects and items"));
        }
        Ok(())
    }

    fn new_obj(&mut self, obj: Obj) -> Result<Value, String> {
        let items = match &obj {
            Obj::Tuple(items) | Obj::List(items) => items.len(),
            _ => 0,
        };
        self.count(1 + items)?;
        self.objects.push(obj);
        Ok(Value::Obj(self.objects.len() - 1))
    }

    fn put(&mut self, index: u32) -> Result<(), String> {
        let top = self.stack.last().ok_or("a memo put on an empty stack")?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&index) {
            return Err(format!("the pickle's memo exceeds {MAX_MEMO} entries"));
        }
        self.memo.insert(index, top);
        Ok(())
    }

    fn get(&mut self, index: u32) -> Result<(), String> {
        let value =
            self.memo.get(&index).cloned().ok_or_else(|| format!("memo entry {index} is read before it is written"))?;
        self.push(value)
    }

    fn obj(&self, value: &Value) -> Option<&Obj> {
        match value {
            Value::Obj(id) => self.objects.get(*id),
            _ => None,
        }
    }

    fn kind(&self, value: &Value) -> &'static str {
        match value {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Obj(_) => match self.obj(value) {
                Some(Obj::Tuple(_)) => "a tuple",
                Some(Obj::List(_)) => "a list",
                Some(Obj::Dict(_)) => "a dict",
                Some(Obj::Global(_)) => "a class or function",
                Some(Obj::Storage(_)) => "a storage",
                Some(Obj::Tensor(_)) => "a tensor",
                None => "nothing",
            },
        }
    }

    fn tuple(&self, value: &Value) -> Option<&[Value]> {
        match self.obj(value) {
            Some(Obj::Tuple(items)) => Some(items),
            _ => None,
        }
    }

    /// Runs the pickle to its STOP and returns the value it built.
    fn run(&mut self, bytes: &[u8]) -> Result<Value, String> {
        let mut r = Reader { bytes, pos: 0 };
        loop {
            let at = r.pos;
            let op = r.u8().map_err(|_| "truncated: no STOP opcode".to_string())?;
            match op {
                // PROTO
                0x80 => {
                    let version = r.u8()?;
                    if !(2..=5).contains(&version) {
                        return Err(format!("pickle protocol {version} is not one torch.save writes (2 to 5)"));
                    }
                }
                // FRAME: a length hint, nothing to do.
                0x95 => {
                    r.take(8)?;
                }
                b'.' => {
                    let top = self.pop("STOP")?;
                    return Ok(top);
                }
                b'}' => {
                    let v = self.new_obj(Obj::Dict(Vec::new()))?;
                    self.push(v)?;
                }
                b']' => {
                    let v = self.new_obj(Obj::List(Vec::new()))?;
                    self.push(v)?;
                }
                b')' => {
                    let v = self.new_obj(Obj::Tuple(Vec::new()))?;
                    self.push(v)?;
                }
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(format!("the pickle nests deeper than {MAX_MARKS} levels"));
                    }
                    self.marks.push(self.stack.len());
                }
                b't' => {
                    let items = self.pop_mark("TUPLE")?;
                    let v = self.new_obj(Obj::Tuple(items))?;
                    self.push(v)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop("TUPLE1/2/3")?);
                    }
                    items.reverse();
                    let v = self.new_obj(Obj::Tuple(items))?;
                    self.push(v)?;
                }
                b'X' => {
                    let n = u32::from_le_bytes(r.array()?);
                    let s = r.string(n as u64)?;
                    self.push(Value::Str(s))?;
                }
                0x8c => {
                    let n = r.u8()?;
                    let s = r.string(n as u64)?;
                    self.push(Value::Str(s))?;
                }
                0x8d => {
                    let n = u64::from_le_bytes(r.array()?);
                    let s = r.string(n)?;
                    self.push(Value::Str(s))?;
                }
                b'J' => self.push(Value::Int(i32::from_le_bytes(r.array()?) as i64))?,
                b'K' => self.push(Value::Int(r.u8()? as i64))?,
                b'M' => self.push(Value::Int(u16::from_le_bytes(r.array()?) as i64))?,
                // LONG1: little-endian two's complement of n bytes; at most 8 are taken.
                0x8a => {
                    let n = r.u8()?;
                    if n > 8 {
                        return Err(format!("an integer of {n} bytes (LONG1) is larger than any size in a checkpoint"));
                    }
                    let raw = r.take(n as u64)?;
                    let mut buf = if raw.last().is_some_and(|b| b & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
                    buf[..raw.len()].copy_from_slice(raw);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => {
                    r.take(8)?;
                    self.push(Value::Float)?;
                }
                0x88 => self.push(Value::Bool)?,
                0x89 => self.push(Value::Bool)?,
                b'N' => self.push(Value::None)?,
                b'c' => {
                    let module = r.line()?;
                    let name = r.line()?;
                    let g = global(module, name)?;
                    let v = self.new_obj(Obj::Global(g))?;
                    self.push(v)?;
                }
                0x93 => {
                    let name = self.pop("STACK_GLOBAL")?;
                    let module = self.pop("STACK_GLOBAL")?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err("STACK_GLOBAL of values that are not strings".into());
                    };
                    let g = global(&module, &name)?;
                    let v = self.new_obj(Obj::Global(g))?;
                    self.push(v)?;
                }
                b'Q' => {
                    let pid = self.pop("BINPERSID")?;
                    let storage = self.storage(&pid)?;
                    let v = self.new_obj(Obj::Storage(storage))?;
                    self.push(v)?;
                }
                b'R' => {
                    let args = self.pop("REDUCE")?;
                    let callable = self.pop("REDUCE")?;
                    let v = self.reduce(&callable, &args)?;
                    self.push(v)?;
                }
                b'b' => {
                    let state = self.pop("BUILD")?;
                    let target = self.stack.last().ok_or("BUILD on an empty stack")?;
                    // An OrderedDict from `state_dict()` carries its `_metadata` (module
                    // versions) as instance state: ignored.
                    match (self.obj(target), self.obj(&state)) {
                        (Some(Obj::Dict(_)), Some(Obj::Dict(_))) => {}
                        _ => {
                            return Err(format!(
                                "BUILD of {} with {} (only an OrderedDict's attributes are accepted)",
                                self.kind(target),
                                self.kind(&state)
                            ));
                        }
                    }
                }
                b's' => {
                    let value = self.pop("SETITEM")?;
                    let key = self.pop("SETITEM")?;
                    self.extend_dict(vec![key, value], "SETITEM")?;
                }
                b'u' => {
                    let items = self.pop_mark("SETITEMS")?;
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of values".into());
                    }
                    self.extend_dict(items, "SETITEMS")?;
                }
                b'a' => {
                    let value = self.pop("APPEND")?;
                    self.extend_list(vec![value], "APPEND")?;
                }
                b'e' => {
                    let items = self.pop_mark("APPENDS")?;
                    self.extend_list(items, "APPENDS")?;
                }
                b'q' => {
                    let i = r.u8()?;
                    self.put(i as u32)?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(r.array()?);
                    self.put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?;
                    self.put(i)?;
                }
                b'h' => {
                    let i = r.u8()?;
                    self.get(i as u32)?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(r.array()?);
                    self.get(i)?;
                }
                other => {
                    return Err(format!(
                        "opcode {} (0x{other:02x}) at offset {at} is not one torch.save writes for a state dict; refused",
                        opcode_name(other)
                    ));
                }
            }
        }
    }

    fn extend_dict(&mut self, items: Vec<Value>, op: &str) -> Result<(), String> {
        self.count(items.len())?;
        let target = self.stack.last().ok_or_else(|| format!("{op} on an empty stack"))?.clone();
        match target {
            Value::Obj(id) if matches!(self.objects[id], Obj::Dict(_)) => {
                let Obj::Dict(entries) = &mut self.objects[id] else { unreachable!() };
                let mut items = items.into_iter();
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    entries.push((k, v));
                }
                Ok(())
            }
            other => Err(format!("{op} on {}, not a dict", self.kind(&other))),
        }
    }

    fn extend_list(&mut self, items: Vec<Value>, op: &str) -> Result<(), String> {
        self.count(items.len())?;
        let target = self.stack.last().ok_or_else(|| format!("{op} on an empty stack"))?.clone();
        match target {
            Value::Obj(id) if matches!(self.objects[id], Obj::List(_)) => {
                let Obj::List(list) = &mut self.objects[id] else { unreachable!() };
                list.extend(items);
                Ok(())
            }
            other => Err(format!("{op} on {}, not a list", self.kind(&other))),
        }
    }

    /// A persistent id: `('storage', torch.<T>Storage, key, location, numel)`.
    fn storage(&self, pid: &Value) -> Result<Storage, String> {
        let bad = || "a persistent id that is not ('storage', type, key, location, size)".to_string();
        let items = self.tuple(pid).ok_or_else(bad)?;
        let [Value::Str(tag), ty, Value::Str(key), Value::Str(_location), Value::Int(numel)] = items else {
            return Err(bad());
        };
        if &**tag != "storage" {
            return Err(bad());
        }
        let Some(Obj::Global(Global::Storage(dtype, _))) = self.obj(ty) else {
            return Err(format!("a storage whose type is {}, not a torch storage type", self.kind(ty)));
        };
        if key.is_empty() || key.len() > 64 || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("a storage key `{}` that is not a plain name", key.escape_debug()));
        }
        let numel = u64::try_from(*numel).map_err(|_| format!("storage `{key}` has a negative size {numel}"))?;
        Ok(Storage { dtype: *dtype, key: key.clone(), numel })
    }

    /// A "call": builds what an accepted global stands for from checked arguments.
    fn reduce(&mut self, callable: &Value, args: &Value) -> Result<Value, String> {
        let Some(Obj::Global(g)) = self.obj(callable) else {
            return Err(format!("REDUCE of {}, not an accepted global", self.kind(callable)));
        };
        let g = *g;
        let args = self.tuple(args).ok_or_else(|| format!("REDUCE with {} for arguments", self.kind(args)))?;
        match g {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err("OrderedDict called with arguments".into());
                }
                self.new_obj(Obj::Dict(Vec::new()))
            }
            Global::RebuildParameter => match args {
                [tensor @ Value::Obj(id), Value::Bool, hooks]
                    if matches!(self.objects[*id], Obj::Tensor(_)) && matches!(self.obj(hooks), Some(Obj::Dict(_))) =>
                {
                    Ok(tensor.clone())
                }
                _ => Err("_rebuild_parameter with arguments other than (tensor, requires_grad, hooks)".into()),
            },
            Global::RebuildTensorV2 => {
                let tensor = self.rebuild_tensor(args)?;
                self.new_obj(Obj::Tensor(tensor))
            }
            Global::Storage(_, name) => Err(format!("torch.{name} called directly; refused")),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    fn rebuild_tensor(&self, args: &[Value]) -> Result<Tensor, String> {
        let bad = || {
            "_rebuild_tensor_v2 with arguments other than (storage, offset, size, stride, requires_grad, hooks)"
                .to_string()
        };
        let (storage, offset, size, stride, hooks) = match args {
            [s, Value::Int(o), size, stride, Value::Bool, hooks] => (s, o, size, stride, hooks),
            [s, Value::Int(o), size, stride, Value::Bool, hooks, meta]
                if matches!(self.obj(meta), Some(Obj::Dict(_))) || matches!(meta, Value::None) =>
            {
                (s, o, size, stride, hooks)
            }
            _ => return Err(bad()),
        };
        let Some(Obj::Storage(storage)) = self.obj(storage) else { return Err(bad()) };
        if !matches!(self.obj(hooks), Some(Obj::Dict(_))) {
            return Err(bad());
        }
        let ints = |v: &Value| -> Result<Vec<u64>, String> {
            let items = self.tuple(v).ok_or_else(bad)?;
            if items.len() > MAX_DIMS {
                return Err(format!("a tensor of {} dimensions (at most {MAX_DIMS})", items.len()));
            }
            items
                .iter()
                .map(|i| match i {
                    Value::Int(n) => u64::try_from(*n).map_err(|_| format!("a negative size or stride {n}")),
                    _ => Err(bad()),
                })
                .collect()
        };
        let (size, stride) = (ints(size)?, ints(stride)?);
        let offset = u64::try_from(*offset).map_err(|_| format!("a negative storage offset {offset}"))?;
        if size.len() != stride.len() {
            return Err(format!("a tensor of size {size:?} with strides {stride:?}"));
        }
        let numel = size.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let numel = numel
            .filter(|n| n.checked_mul(8).is_some())
            .ok_or_else(|| format!("a tensor of size {size:?} overflows"))?;
        // Row-major strides; dimensions of one element may have any stride.
        let mut expected = 1u64;
        for (&d, &s) in size.iter().zip(&stride).rev() {
            if d != 1 && s != expected && numel != 0 {
                return Err(format!(
                    "a tensor of size {size:?} with strides {stride:?} is not contiguous; save `t.contiguous()` instead"
                ));
            }
            expected = expected.saturating_mul(d);
        }
        if offset.checked_add(numel).is_none_or(|end| end > storage.numel) {
            return Err(format!(
                "a tensor of size {size:?} at offset {offset} reaches past its storage `{}` of {} elements",
                storage.key, storage.numel
            ));
        }
        let shape = size
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("a size {d} too large")))
            .collect::<Result<_, _>>()?;
        Ok(Tensor {
            dtype: storage.dtype,
            key: storage.key.clone(),
            storage_numel: storage.numel,
            offset,
            numel,
            shape,
        })
    }

    /// The state dict within the unpickled object: the object itself when it holds
    /// tensors, else the dict under `state_dict` or `model`.
    fn state_dict<'m>(&'m self, top: &Value) -> Result<&'m [(Value, Value)], String> {
        let dict = |v: &Value| match self.obj(v) {
            Some(Obj::Dict(entries)) => Some(entries.as_slice()),
            _ => None,
        };
        let entries =
            dict(top).ok_or_else(|| format!("the checkpoint holds {}, not a dict of tensors", self.kind(top)))?;
        let is_tensor = |v: &Value| matches!(self.obj(v), Some(Obj::Tensor(_)));
        if entries.is_empty() || entries.iter().any(|(_, v)| is_tensor(v)) {
            return Ok(entries);
        }
        for wrapper in ["state_dict", "model"] {
            let found = entries.iter().find(|(k, _)| matches!(k, Value::Str(s) if &**s == wrapper));
            if let Some((_, value)) = found {
                return dict(value)
                    .ok_or_else(|| format!("`{wrapper}` holds {}, not a dict of tensors", self.kind(value)));
            }
        }
        let keys: Vec<String> = entries
            .iter()
            .take(5)
            .map(|(k, _)| match k {
                Value::Str(s) => format!("`{}`", s.escape_debug()),
                other => self.kind(other).to_string(),
            })
            .collect();
        Err(format!(
            "no state dict found: the checkpoint is a dict of {} entries ({}{}) without tensors, `state_dict` or `model`",
            entries.len(),
            keys.join(", "),
            if entries.len() > 5 { ", ..." } else { "" }
        ))
    }
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        b'B' | b'C' | 0x8e => "BINBYTES",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        b'S' | b'T' | b'U' => "STRING",
        b'V' => "UNICODE",
        b'I' => "INT",
        b'L' => "LONG",
        0x8b => "LONG4",
        b'F' => "FLOAT",
        b'P' => "PERSID",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'g' => "GET",
        b'p' => "PUT",
        b'l' => "LIST",
        b'd' => "DICT",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x82..=0x84 => "EXT",
        _ => "unknown",
    }
}
