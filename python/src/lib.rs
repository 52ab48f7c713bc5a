//! `repvgg._native`: the Python bindings of repvgg-rs (the pure-Python `repvgg` package
//! wraps and documents them; `repvgg/_native.pyi` types them).
//!
//! An input's shape is checked against the model's limits from the array's metadata
//! before anything is converted; inputs are then read in place when they are aligned,
//! C-contiguous float32 arrays and converted once otherwise. The GIL is released while a
//! session runs, so Python threads with one session each run in parallel. Errors become Python exceptions carrying the CLI's
//! one-line messages, by kind (see `exception`).

use std::path::PathBuf;
use std::sync::Mutex;

use numpy::{
    PyArray1, PyArray2, PyArray4, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray4, PyUntypedArray,
    PyUntypedArrayMethods, ToPyArray,
};
use pyo3::create_exception;
use pyo3::exceptions::{
    PyFileNotFoundError, PyFloatingPointError, PyOSError, PyOverflowError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList};
use repvgg::files::Output;
use repvgg::runtime::loader;
use repvgg::runtime::{Calibration, KeepFp32, Precision, QuantizeOptions};
use repvgg::{ArchSpec, ErrorKind, IsaChoice, ModelOptions, Network, SessionOptions};

create_exception!(_native, ModelError, PyValueError, "Weights or an architecture that cannot be used.");
create_exception!(_native, InputError, PyValueError, "An input the model cannot take.");
create_exception!(_native, LimitError, PyValueError, "A request beyond a resource limit (refused before allocating).");
create_exception!(
    _native,
    UsageError,
    PyValueError,
    "An option out of its range or unknown (threads, isa, precision, top_k, a calibration method)."
);
create_exception!(_native, CpuError, PyRuntimeError, "The CPU lacks an instruction set that was asked for.");
create_exception!(
    _native,
    NonFiniteError,
    PyFloatingPointError,
    "Finite weights and input overflowed float32 inside the network."
);

/// The Python exception of a runtime error: FileNotFoundError for a missing file, OSError
/// for other I/O, ValueError subclasses for bad weights, inputs and limits.
fn exception(error: repvgg::Error) -> PyErr {
    let message = error.to_string();
    if let repvgg::Error::File(repvgg::files::Error::Io { source, .. }) = &error
        && source.kind() == std::io::ErrorKind::NotFound
    {
        return PyFileNotFoundError::new_err(message);
    }
    of_kind(error.kind(), message)
}

/// The Python exception of an error kind.
fn of_kind(kind: ErrorKind, message: String) -> PyErr {
    match kind {
        ErrorKind::Io => PyOSError::new_err(message),
        ErrorKind::Format | ErrorKind::Model | ErrorKind::Arch => ModelError::new_err(message),
        ErrorKind::Input => InputError::new_err(message),
        ErrorKind::Limit => LimitError::new_err(message),
        ErrorKind::Cpu => CpuError::new_err(message),
        ErrorKind::Numeric => NonFiniteError::new_err(message),
        ErrorKind::Usage => UsageError::new_err(message),
    }
}

fn graph(error: repvgg::graph::Error) -> PyErr {
    exception(repvgg::Error::from(error))
}

fn options(arch: Option<&str>) -> PyResult<ModelOptions> {
    let arch = arch.map(ArchSpec::resolve).transpose().map_err(graph)?;
    Ok(ModelOptions { arch, ..ModelOptions::default() })
}

/// `threads` as a count: a negative or huge integer is the package's `UsageError` (a
/// `ValueError`) saying what is allowed, not the bare `OverflowError` of converting it
/// to an unsigned size; a non-integer stays a `TypeError`.
fn thread_count(threads: &Bound<'_, PyAny>) -> PyResult<usize> {
    let refuse = || {
        let shown = threads.repr().map_or_else(|_| "?".to_string(), |r| r.to_string());
        UsageError::new_err(format!("threads must be 0 (one per core) or a positive count, not {shown}"))
    };
    if threads.is_instance_of::<PyBool>() {
        return Err(pyo3::exceptions::PyTypeError::new_err("threads must be an integer, not a bool"));
    }
    match threads.extract::<i64>() {
        Ok(n) => usize::try_from(n).map_err(|_| refuse()),
        Err(e) if e.is_instance_of::<PyOverflowError>(threads.py()) => Err(refuse()),
        Err(e) => Err(e),
    }
}

/// A loaded, re-parameterized RepVGG model; cheap to share between threads.
#[pyclass(frozen, module = "repvgg._native")]
struct Model {
    inner: repvgg::Model,
}

#[pymethods]
impl Model {
    /// Loads a safetensors checkpoint in any naming form (official, timm), dtype
    /// (F32, F16, BF16) and form (deploy, or training, fused at load), or `hf:NAME` from
    /// the Hugging Face hub (as `repvgg pull` fetches it).
    #[staticmethod]
    #[pyo3(signature = (path, arch=None))]
    fn load(py: Python<'_>, path: PathBuf, arch: Option<&str>) -> PyResult<Model> {
        // `hf:NAME`: the hub's file, pulled into (or found in) the cache `huggingface_hub` shares.
        let pulled = match path.to_str() {
            Some(text) => py
                .detach(|| repvgg::hub::resolve(text))
                .map_err(|e| of_kind(repvgg::hub::error_kind(&e), e.to_string()))?,
            None => None,
        };
        if let Some(reason) = pulled.as_ref().and_then(|p| p.fallback_reason.as_ref()) {
            let warning = py.get_type::<pyo3::exceptions::PyUserWarning>();
            PyErr::warn(
                py,
                &warning,
                &std::ffi::CString::new(format!("{reason}; using the cached copy")).unwrap_or_default(),
                1,
            )?;
        }
        let config_arch = pulled.as_ref().and_then(repvgg::hub::config_arch);
        let path = pulled.map_or(path, |p| p.weights);
        let options = options(arch.or(config_arch.as_deref()))?;
        let inner = py.detach(|| repvgg::Model::load(&path, &options)).map_err(exception)?;
        Ok(Model { inner })
    }

    /// A model with deterministic synthetic weights (what `repvgg bench` runs by default).
    #[staticmethod]
    #[pyo3(signature = (arch="A0", seed=0))]
    fn synthetic(arch: &str, seed: u64) -> PyResult<Model> {
        let spec = ArchSpec::resolve(arch).map_err(graph)?;
        Ok(Model { inner: repvgg::Model::synthetic(spec, seed).map_err(exception)? })
    }

    /// A session with `threads` workers (0: one per core), a kernel set (`"auto"`,
    /// `"avx512"`, `"avx2"`, `"portable"`) and an arithmetic (`None`: the model's own,
    /// `"f32"`, or `"int8"`, which needs a quantized model).
    #[pyo3(signature = (threads=None, isa="auto", precision=None))]
    fn session(&self, threads: Option<&Bound<'_, PyAny>>, isa: &str, precision: Option<&str>) -> PyResult<Session> {
        let threads = threads.map_or(Ok(0), thread_count)?;
        let isa: IsaChoice = isa.parse().map_err(|e| UsageError::new_err(format!("isa: {e}")))?;
        let precision = precision
            .map(str::parse::<Precision>)
            .transpose()
            .map_err(|e| UsageError::new_err(format!("precision: {e}")))?;
        let options = SessionOptions { threads, isa, precision, ..SessionOptions::default() };
        let inner = self.inner.session(options).map_err(exception)?;
        Ok(Session { inner: Mutex::new(inner), model: self.inner.clone() })
    }

    /// The arithmetic the model runs in by default: `"int8"` for a quantized model
    /// (`repvgg.quantize`, `repvgg quantize`), else `"f32"`.
    #[getter]
    fn precision(&self) -> &'static str {
        self.inner.precision().name()
    }

    /// How a quantized model was quantized (calibration method, samples, the calibration
    /// tensor's SHA-256, the layers kept in FP32), or None for a float model.
    #[getter]
    fn quantization<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner.quantization().map(|info| to_python(py, info)).transpose()
    }

    /// Writes the model as a safetensors file, atomically: a quantized model in the
    /// quantized format (what `Model.load` and `repvgg serve` read as INT8), a float one
    /// as deploy weights (official names, F32).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| -> repvgg::Result<()> { self.inner.write(&Output::new(&path, &[])?) }).map_err(exception)
    }

    #[getter]
    fn num_classes(&self) -> usize {
        self.inner.network().num_classes
    }

    #[getter]
    fn arch(&self) -> String {
        self.inner.network().arch.name.clone()
    }

    /// One line saying what was loaded.
    #[getter]
    fn description(&self) -> String {
        self.inner.description().to_string()
    }

    fn __repr__(&self) -> String {
        format!("<repvgg.Model {}>", self.inner.description())
    }
}

/// A session: a thread team, plans and buffers. One Python thread at a time uses it
/// (others wait); make one per thread to run in parallel.
#[pyclass(frozen, module = "repvgg._native")]
struct Session {
    inner: Mutex<repvgg::Session>,
    /// The session's model, whose limits an input's shape is checked against with the
    /// GIL held (the session's lock is only ever taken without it).
    model: repvgg::Model,
}

#[pymethods]
impl Session {
    /// Logits `[N, classes]` (float32) of a batch `[N, 3, H, W]`.
    fn run<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (logits, n, classes) = self.logits(py, x)?;
        PyArray1::from_vec(py, logits).reshape([n, classes])
    }

    /// The `top_k` classes of each image of a batch `[N, 3, H, W]` (or of one image
    /// `[3, H, W]`, as `repvgg.preprocess` gives it): per image, a list of `(index,
    /// probability, label)`, most probable first. Probabilities are the softmax of the
    /// logits; labels are ImageNet's when the model has 1000 classes, else the index.
    #[pyo3(signature = (x, top_k=5))]
    fn classify<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>, top_k: i64) -> PyResult<Bound<'py, PyList>> {
        let classes = self.model.network().num_classes;
        let k = usize::try_from(top_k)
            .ok()
            .filter(|k| (1..=classes).contains(k))
            .ok_or_else(|| UsageError::new_err(format!("top_k must be between 1 and {classes}, not {top_k}")))?;
        let array = as_array(x)?;
        // One image is a batch of one; its answer is still a list with one entry per image.
        let batch = if array.ndim() == 3 {
            py.import("numpy")?.getattr("expand_dims")?.call1((&array, 0))?
        } else {
            array.into_any()
        };
        let (logits, _, classes) = self.logits(py, &batch)?;
        let labels = (classes == repvgg::imagenet::labels().len()).then(repvgg::imagenet::labels);
        let images = PyList::empty(py);
        for row in logits.chunks(classes) {
            let top = PyList::empty(py);
            for (index, probability) in top_k_softmax(row, k) {
                let label = labels.as_ref().map_or_else(|| index.to_string(), |l| l[index].to_string());
                top.append((index, probability, label))?;
            }
            images.append(top)?;
        }
        Ok(images)
    }

    /// The four stage outputs `[N, C_s, H_s, W_s]` (for backbone use; `run` gives the logits).
    fn features<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let input = self.input(x)?;
        let shape = input.shape().to_vec();
        let values = input.as_slice()?;
        let features = py.detach(|| self.lock()?.features_slice(values, &shape)).map_err(exception)?;
        let to_numpy = |t: &repvgg::Tensor| -> PyResult<Bound<'py, PyAny>> {
            Ok(t.data().to_pyarray(py).reshape(t.shape().to_vec())?.into_any())
        };
        let stages = features.stages.iter().map(to_numpy).collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, stages)
    }

    /// Worker threads.
    #[getter]
    fn threads(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| Ok(self.lock()?.threads())).map_err(exception)
    }

    /// The kernel set that runs (`"avx2"`, ...).
    #[getter]
    fn isa(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| Ok(self.lock()?.isa().to_string())).map_err(exception)
    }

    /// The arithmetic this session runs in: `"f32"` or `"int8"`.
    #[getter]
    fn precision(&self, py: Python<'_>) -> PyResult<&'static str> {
        py.detach(|| Ok(self.lock()?.precision().name())).map_err(exception)
    }

    /// The int8 kernel set of an INT8 session (`"amx"`, `"avx512-vnni"`, `"avx2"`, `"portable"`);
    /// None for an FP32 one.
    #[getter]
    fn int8_kernels(&self, py: Python<'_>) -> PyResult<Option<&'static str>> {
        py.detach(|| Ok(self.lock()?.int8_kernels().map(|k| k.name()))).map_err(exception)
    }

    /// The bf16 kernel set of a BF16 session (`"amx"`, `"avx512-bf16"`); None otherwise.
    #[getter]
    fn bf16_kernels(&self, py: Python<'_>) -> PyResult<Option<&'static str>> {
        py.detach(|| Ok(self.lock()?.bf16_kernels().map(|k| k.name()))).map_err(exception)
    }
}

impl Session {
    /// The logits of a batch, flat, with the batch size and the classes.
    fn logits(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<(Vec<f32>, usize, usize)> {
        let input = self.input(x)?;
        let shape = input.shape().to_vec();
        let values = input.as_slice()?;
        // The lock is taken without the GIL: a thread holding it needs the GIL back to
        // return, so waiting for it with the GIL held could deadlock.
        py.detach(|| {
            let mut session = self.lock()?;
            let network = session.model().network();
            let classes = network.num_classes;
            let [n, ..] = session.model().limits().check_input(network, &shape)?;
            let mut logits = vec![0f32; n * classes];
            session.run_slice(values, &shape, &mut logits)?;
            Ok((logits, n, classes))
        })
        .map_err(exception)
    }

    /// `x` as an aligned, C-contiguous float32 array `[N, 3, H, W]`, refused with the
    /// runtime's error if its shape is one the model cannot take.
    ///
    /// The shape is checked first, from the array's metadata: a broadcast view or a
    /// memory-mapped file can describe far more than memory holds, and converting it
    /// before the check would allocate all of it only to refuse it. An array that already
    /// is aligned, C-contiguous float32 is then read in place; any other (another dtype or
    /// byte order, a strided or misaligned view) is converted with one copy, once the
    /// session has also checked the request's working memory (planning it, as the run
    /// would). Array-likes that are not numpy arrays (lists, torch tensors through
    /// `__array__`) become one with `numpy.asarray` first, a view where they allow it.
    fn input<'py>(&self, x: &Bound<'py, PyAny>) -> PyResult<PyReadonlyArray4<'py, f32>> {
        let py = x.py();
        let array = as_array(x)?;
        check_dtype(&array)?;
        let network = self.model.network();
        let [n, _, h, w] = self.model.limits().check_input(network, array.shape()).map_err(exception)?;
        if let Ok(typed) = array.cast::<PyArray4<f32>>()
            && typed.is_c_contiguous()
            && typed.data().align_offset(align_of::<f32>()) == 0
        {
            return Ok(typed.readonly());
        }
        // The lock is taken without the GIL (see `logits`).
        py.detach(|| self.lock()?.plan(n, h, w).map(|_| ())).map_err(exception)?;
        // `astype` with `copy=True` always allocates a new array, so an aligned one.
        let keywords = PyDict::new(py);
        keywords.set_item("order", "C")?;
        keywords.set_item("copy", true)?;
        let float32 = py.import("numpy")?.getattr("float32")?;
        let converted = array.call_method("astype", (float32,), Some(&keywords))?;
        Ok(converted.cast_into::<PyArray4<f32>>()?.readonly())
    }

    /// The session, for one caller at a time (call without the GIL).
    fn lock(&self) -> repvgg::Result<std::sync::MutexGuard<'_, repvgg::Session>> {
        // A panic inside a run is caught by pyo3 and leaves the session in an unknown
        // state: refuse to use it again rather than guess.
        self.inner.lock().map_err(|_| repvgg::Error::Option("the session failed earlier; make a new one".into()))
    }
}

/// `x` as a numpy array: itself, or `numpy.asarray(x)` (a view where it allows one).
fn as_array<'py>(x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyUntypedArray>> {
    match x.cast::<PyUntypedArray>() {
        Ok(array) => Ok(array.clone()),
        Err(_) => Ok(x.py().import("numpy")?.getattr("asarray")?.call1((x,))?.cast_into::<PyUntypedArray>()?),
    }
}

/// Refuses an input that is not float16, float32 or float64. Integers would run as they
/// are, and a uint8 image unscaled and unnormalized gives confident nonsense; booleans and
/// complex numbers have no meaning as pixels. Converting them silently is the surprise
/// this refuses.
fn check_dtype(array: &Bound<'_, PyUntypedArray>) -> PyResult<()> {
    let dtype = array.dtype();
    if dtype.kind() == b'f' && matches!(dtype.itemsize(), 2 | 4 | 8) {
        return Ok(());
    }
    let name = dtype.str().map_or_else(|_| "?".to_string(), |s| s.to_string());
    Err(InputError::new_err(format!(
        "the input's dtype is {name}; the network takes float32 (float16 and float64 are converted): \
         for an image use repvgg.preprocess (it scales and normalizes pixels), otherwise convert with \
         x.astype(numpy.float32)"
    )))
}

/// The `k` largest softmax probabilities of `logits`, with their indices, largest first
/// (ties by the lower index).
fn top_k_softmax(logits: &[f32], k: usize) -> Vec<(usize, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| exp[b].total_cmp(&exp[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|i| (i, exp[i] / sum)).collect()
}

/// A serializable runtime value (a report) as Python objects, through JSON.
fn to_python<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// `keep_fp32` as Python gives it: `"auto"`, `"none"` or comma-separated layer names, or
/// a list of names.
#[derive(FromPyObject)]
enum KeepArg {
    Text(String),
    Names(Vec<String>),
}

impl KeepArg {
    fn parse(self) -> PyResult<KeepFp32> {
        match self {
            KeepArg::Text(text) => text.parse::<KeepFp32>().map_err(exception),
            KeepArg::Names(names) => Ok(KeepFp32::Layers(names)),
        }
    }
}

/// Quantizes a model to INT8 on calibration images, as `repvgg quantize` does: per-channel
/// s8 weights, u8 activations whose scales are calibrated on `calibration` (float
/// `[N, 3, H, W]`, preprocessed as the network's input; the first `samples` images if
/// given) with `method` (`"minmax"`, `"percentile"`, `"entropy"`), and the layers
/// `keep_fp32` names (`"auto"`: those whose INT8 alone moves the logits most) kept in
/// FP32. Returns the quantized model and the report (a dict: per-layer scales and errors,
/// top-1 agreement, cosine and largest relative error of the logits against FP32).
#[pyfunction]
#[pyo3(signature = (
    model, calibration, method="percentile", keep_fp32=KeepArg::Text("auto".into()), samples=None, per_tensor=false,
    threads=None,
))]
#[allow(clippy::too_many_arguments)]
fn quantize<'py>(
    py: Python<'py>,
    model: &Model,
    calibration: &Bound<'py, PyAny>,
    method: &str,
    keep_fp32: KeepArg,
    samples: Option<i64>,
    per_tensor: bool,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<(Model, Bound<'py, PyAny>)> {
    let calibration_method = method.parse::<Calibration>().map_err(exception)?;
    let keep = keep_fp32.parse()?;
    let threads = threads.map_or(Ok(0), thread_count)?;
    let samples = samples
        .map(|n| {
            usize::try_from(n)
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| UsageError::new_err(format!("samples must be at least 1, not {n}")))
        })
        .transpose()?;
    let array = as_array(calibration)?;
    check_dtype(&array)?;
    let inner = &model.inner;
    let mut shape = inner.limits().check_input(inner.network(), array.shape()).map_err(exception)?.to_vec();
    let keywords = PyDict::new(py);
    keywords.set_item("dtype", py.import("numpy")?.getattr("float32")?)?;
    let contiguous = py.import("numpy")?.getattr("ascontiguousarray")?.call((&array,), Some(&keywords))?;
    let contiguous = contiguous.cast_into::<PyArray4<f32>>()?.readonly();
    let image: usize = shape[1..].iter().product();
    if let Some(n) = samples {
        shape[0] = shape[0].min(n);
    }
    let values = contiguous.as_slice()?[..shape[0] * image].to_vec();
    let options = QuantizeOptions {
        calibration: calibration_method,
        keep_fp32: keep,
        per_tensor_weights: per_tensor,
        threads,
        ..QuantizeOptions::default()
    };
    let (quantized, report) = py
        .detach(|| -> repvgg::Result<_> {
            let tensor = repvgg::Tensor::new(shape, values)?;
            inner.quantize(&tensor, &options)
        })
        .map_err(exception)?;
    let report = serde_json::to_value(&report).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok((Model { inner: quantized }, to_python(py, &report)?))
}

/// Converts training-form weights to the deploy form (official names, F32), as
/// `repvgg convert` does: atomically, never over the input.
#[pyfunction]
#[pyo3(signature = (train, deploy, arch=None))]
fn convert(py: Python<'_>, train: PathBuf, deploy: PathBuf, arch: Option<&str>) -> PyResult<()> {
    let options = options(arch)?;
    py.detach(|| -> repvgg::Result<()> {
        let mut inputs = vec![train.as_path()];
        inputs.extend(arch.map(std::path::Path::new));
        let output = Output::new(&deploy, &inputs)?;
        let model = repvgg::Model::load(&train, &options)?;
        loader::write_tensors(&output, model.weights().named_tensors(model.network()))
    })
    .map_err(exception)
}

/// Writes named float32 arrays as a safetensors file, atomically (what `repvgg.export`
/// uses; names and shapes are kept as given).
#[pyfunction]
fn write_safetensors(path: PathBuf, tensors: &Bound<'_, PyDict>) -> PyResult<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, value) in tensors.iter() {
        let name: String = name.extract()?;
        let numpy = value.py().import("numpy")?;
        let array = numpy.getattr("ascontiguousarray")?.call1((value, numpy.getattr("float32")?))?;
        let shape: Vec<usize> = array.getattr("shape")?.extract()?;
        let flat: Vec<f32> = array.call_method1("reshape", (-1,))?.extract()?;
        owned.push((name, shape, flat));
    }
    let output = Output::new(&path, &[]).map_err(|e| exception(e.into()))?;
    loader::write_tensors(&output, owned.iter().map(|(n, s, d)| (n.clone(), s.clone(), d.as_slice())))
        .map_err(exception)
}

/// Decodes a JPEG or PNG and preprocesses it as `repvgg classify` does (short side to
/// 256, bilinear; center crop 224; ImageNet mean and std): float32 `[3, 224, 224]`.
#[pyfunction]
#[pyo3(signature = (data, name="image"))]
fn preprocess<'py>(py: Python<'py>, data: &[u8], name: &str) -> PyResult<Bound<'py, PyAny>> {
    let values = py.detach(|| repvgg::imagenet::preprocess(data, name)).map_err(exception)?;
    let side = repvgg::imagenet::CROP as usize;
    Ok(PyArray1::from_vec(py, values).reshape([3, side, side])?.into_any())
}

/// Preprocesses decoded RGB pixels (`height x width x 3` bytes, row-major) as
/// `preprocess` does a decoded file (`repvgg.preprocess` passes PIL images and HWC uint8
/// arrays here).
#[pyfunction]
#[pyo3(signature = (pixels, width, height, name="image"))]
fn preprocess_rgb<'py>(
    py: Python<'py>,
    pixels: &[u8],
    width: u32,
    height: u32,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let values = py.detach(|| repvgg::imagenet::preprocess_rgb(pixels, width, height, name)).map_err(exception)?;
    let side = repvgg::imagenet::CROP as usize;
    Ok(PyArray1::from_vec(py, values).reshape([3, side, side])?.into_any())
}

/// Reads an image file (with the CLI's size limit) and preprocesses it.
#[pyfunction]
fn preprocess_file(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyAny>> {
    let batch = py.detach(|| repvgg::imagenet::load_batch(&[&path])).map_err(exception)?;
    let side = repvgg::imagenet::CROP as usize;
    Ok(PyArray1::from_vec(py, batch.data().to_vec()).reshape([3, side, side])?.into_any())
}

/// The 1000 ImageNet-1k class names, in class-index order.
#[pyfunction]
fn imagenet_labels() -> Vec<&'static str> {
    repvgg::imagenet::labels()
}

/// The `repvgg info` table: one dict per layer (and the classifier), with shapes,
/// parameters, MACs and multiplies.
#[pyfunction]
#[pyo3(signature = (arch="A0", size=224))]
fn info<'py>(py: Python<'py>, arch: &str, size: usize) -> PyResult<Bound<'py, PyList>> {
    let network = Network::from_name(arch).map_err(graph)?;
    network.check_input_size(size, size, repvgg::Limits::default().max_side).map_err(graph)?;
    let shapes = network.shapes(size, size).map_err(graph)?;
    let rows = PyList::empty(py);
    for s in &shapes {
        let row = PyDict::new(py);
        row.set_item("name", &s.name)?;
        row.set_item("in_channels", s.in_channels)?;
        row.set_item("out_channels", s.out_channels)?;
        row.set_item("groups", s.groups)?;
        row.set_item("stride", s.stride)?;
        row.set_item("input", (s.in_h, s.in_w))?;
        row.set_item("output", (s.out_h, s.out_w))?;
        row.set_item("se", s.se)?;
        row.set_item("params", s.params)?;
        row.set_item("macs", s.macs)?;
        rows.append(row)?;
    }
    let head = PyDict::new(py);
    head.set_item("name", "linear")?;
    head.set_item("in_channels", network.feature_channels())?;
    head.set_item("out_channels", network.num_classes)?;
    head.set_item("params", network.head_params())?;
    head.set_item("macs", (network.feature_channels() * network.num_classes) as u64)?;
    rows.append(head)?;
    Ok(rows)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Model>()?;
    m.add_class::<Session>()?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(info, m)?)?;
    m.add_function(wrap_pyfunction!(write_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(preprocess, m)?)?;
    m.add_function(wrap_pyfunction!(preprocess_rgb, m)?)?;
    m.add_function(wrap_pyfunction!(preprocess_file, m)?)?;
    m.add_function(wrap_pyfunction!(imagenet_labels, m)?)?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("LimitError", py.get_type::<LimitError>())?;
    m.add("CpuError", py.get_type::<CpuError>())?;
    m.add("UsageError", py.get_type::<UsageError>())?;
    m.add("NonFiniteError", py.get_type::<NonFiniteError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
