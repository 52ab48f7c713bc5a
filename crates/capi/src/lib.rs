//! The C ABI of repvgg-rs (header: `include/repvgg.h`, which a test keeps in step with
//! the functions here).
//!
//! Every function that can fail returns an `int` status: 0 on success, otherwise the
//! error kind's number from the exit-code table in docs/hardening.md ([`ErrorKind::code`]); 1 is an
//! unexpected failure (a panic, caught here: none crosses the boundary). The failing
//! call's one-line message is kept per thread for [`repvgg_last_error`]. NULL pointers,
//! short buffers, bad sizes, misaligned and overlapping buffers are usage errors (2),
//! never crashes.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use repvgg_runtime::{ErrorKind, Int8Set, Model, ModelOptions, Precision, Session, SessionOptions};

/// A loaded model (`RepvggModel` in C).
pub struct RepvggModel {
    model: Model,
}

/// A session: a thread team, plans and buffers (`RepvggSession` in C). It holds its own
/// reference to the model, so the model may be freed first.
pub struct RepvggSession {
    session: Session,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Status of a failure that is the caller's (NULL, short buffer, bad size).
const USAGE: c_int = 2;
/// Status of an unexpected failure.
const UNEXPECTED: c_int = 1;

struct Failure {
    status: c_int,
    message: String,
}

impl From<repvgg_runtime::Error> for Failure {
    fn from(e: repvgg_runtime::Error) -> Failure {
        Failure { status: c_int::from(e.kind().code()), message: e.to_string() }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { status: USAGE, message: message.into() }
}

/// Runs `body`, turning its failure or panic into a status and this thread's message.
fn guard(body: impl FnOnce() -> Result<(), Failure>) -> c_int {
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return 0,
        Ok(Err(failure)) => failure,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            Failure { status: UNEXPECTED, message: format!("internal error (please report): {what}") }
        }
    };
    let message = CString::new(failure.message.replace('\0', " ")).expect("NUL bytes were replaced");
    LAST_ERROR.with(|last| *last.borrow_mut() = message);
    failure.status
}

/// A C string argument as UTF-8.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string.
unsafe fn text<'a>(ptr: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(usage(format!("{name} is NULL")));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string.
    unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| usage(format!("{name} is not UTF-8")))
}

/// Loads a safetensors checkpoint (any naming form, dtype, deploy or training form);
/// `arch` names a built-in variant or an architecture file, or is NULL to infer it.
///
/// # Safety
/// `weights_path` and `arch` are NULL or NUL-terminated strings; `out` is NULL or valid
/// for one pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn repvgg_model_load(
    weights_path: *const c_char,
    arch: *const c_char,
    out: *mut *mut RepvggModel,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(usage("out is NULL"));
        }
        // SAFETY: the caller's contract for both strings.
        let path = unsafe { text(weights_path, "weights_path") }?;
        let arch = if arch.is_null() {
            None
        } else {
            // SAFETY: as above.
            let name = unsafe { text(arch, "arch") }?;
            Some(repvgg_graph::ArchSpec::resolve(name).map_err(repvgg_runtime::Error::from)?)
        };
        let model = Model::load(Path::new(path), &ModelOptions { arch, ..ModelOptions::default() })?;
        // SAFETY: `out` is non-NULL and valid for a write (the caller's contract).
        unsafe { *out = Box::into_raw(Box::new(RepvggModel { model })) };
        Ok(())
    })
}

/// The model's number of classes (the length of one image's logits), or -1 if `model` is
/// NULL.
///
/// # Safety
/// `model` is NULL or a pointer from [`repvgg_model_load`] not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn repvgg_model_num_classes(model: *const RepvggModel) -> c_int {
    let mut classes = -1;
    let status = guard(|| {
        // SAFETY: NULL or a live model (the caller's contract).
        let model = unsafe { model.as_ref() }.ok_or_else(|| usage("model is NULL"))?;
        classes = c_int::try_from(model.model.network().num_classes).map_err(|_| usage("too many classes"))?;
        Ok(())
    });
    if status == 0 { classes } else { -1 }
}

/// A precision's name as a static C string.
fn precision_name(precision: Precision) -> *const c_char {
    match precision {
        Precision::F32 => c"f32".as_ptr(),
        Precision::Int8 => c"int8".as_ptr(),
        Precision::Bf16 => c"bf16".as_ptr(),
    }
}

/// The arithmetic the model runs in by default, a static string: `"int8"` for a model
/// quantized by `repvgg quantize`, else `"f32"`; NULL if `model` is NULL.
///
/// # Safety
/// `model` is NULL or a pointer from [`repvgg_model_load`] not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn repvgg_model_precision(model: *const RepvggModel) -> *const c_char {
    let mut name = std::ptr::null();
    guard(|| {
        // SAFETY: NULL or a live model (the caller's contract).
        let model = unsafe { model.as_ref() }.ok_or_else(|| usage("model is NULL"))?;
        name = precision_name(model.model.precision());
        Ok(())
    });
    name
}

/// Frees a model; NULL is ignored.
///
/// # Safety
/// `model` is NULL or a pointer from [`repvgg_model_load`] not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn repvgg_model_free(model: *mut RepvggModel) {
    if !model.is_null() {
        // SAFETY: a live pointer from Box::into_raw, freed once (the caller's contract).
        drop(unsafe { Box::from_raw(model) });
    }
}

/// Starts a session on `model` with `threads` workers (0: one per core).
///
/// # Safety
/// `model` is NULL or a live model; `out` is NULL or valid for one pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn repvgg_session_new(
    model: *const RepvggModel,
    threads: c_int,
    out: *mut *mut RepvggSession,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(usage("out is NULL"));
        }
        // SAFETY: NULL or a live model (the caller's contract).
        let model = unsafe { model.as_ref() }.ok_or_else(|| usage("model is NULL"))?;
        let threads = usize::try_from(threads).map_err(|_| usage(format!("threads is {threads}, not >= 0")))?;
        let session = model.model.session(SessionOptions { threads, ..SessionOptions::default() })?;
        let wrapper = RepvggSession { session };
        // SAFETY: `out` is non-NULL and valid for a write.
        unsafe { *out = Box::into_raw(Box::new(wrapper)) };
        Ok(())
    })
}

/// Starts a session on `model` with `threads` workers (0: one per core) in `precision`:
/// `"f32"`, `"int8"` (a quantized model only), `"bf16"` (a CPU with AVX512-BF16 only), or
/// NULL for the model's own ([`repvgg_model_precision`]). An unknown name, and INT8 on a
/// float model, are `REPVGG_USAGE` with a message; BF16 on a CPU without AVX512-BF16 is
/// `REPVGG_CPU`.
///
/// # Safety
/// `model` is NULL or a live model; `precision` is NULL or a NUL-terminated string; `out`
/// is NULL or valid for one pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn repvgg_session_new2(
    model: *const RepvggModel,
    threads: c_int,
    precision: *const c_char,
    out: *mut *mut RepvggSession,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(usage("out is NULL"));
        }
        // SAFETY: NULL or a live model (the caller's contract).
        let model = unsafe { model.as_ref() }.ok_or_else(|| usage("model is NULL"))?;
        let threads = usize::try_from(threads).map_err(|_| usage(format!("threads is {threads}, not >= 0")))?;
        let precision = if precision.is_null() {
            None
        } else {
            // SAFETY: non-NULL, NUL-terminated (the caller's contract).
            Some(unsafe { text(precision, "precision") }?.parse::<Precision>()?)
        };
        let session = model.model.session(SessionOptions { threads, precision, ..SessionOptions::default() })?;
        // SAFETY: `out` is non-NULL and valid for a write.
        unsafe { *out = Box::into_raw(Box::new(RepvggSession { session })) };
        Ok(())
    })
}

/// The arithmetic the session runs in, a static string (`"f32"`, `"int8"` or `"bf16"`); NULL if
/// `s` is NULL.
///
/// # Safety
/// `s` is NULL or a live session.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn repvgg_session_precision(s: *const RepvggSession) -> *const c_char {
    let mut name = std::ptr::null();
    guard(|| {
        // SAFETY: NULL or a live session (the caller's contract).
        let s = unsafe { s.as_ref() }.ok_or_else(|| usage("session is NULL"))?;
        name = precision_name(s.session.precision());
        Ok(())
    });
    name
}

/// The int8 kernel set an INT8 session runs, a static string (`"amx"`, `"avx512-vnni"`, `"avx2"`
/// or `"portable"`); `""` for an FP32 session; NULL if `s` is NULL.
///
/// # Safety
/// `s` is NULL or a live session.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn repvgg_session_int8_kernels(s: *const RepvggSession) -> *const c_char {
    let mut name = std::ptr::null();
    guard(|| {
        // SAFETY: NULL or a live session (the caller's contract).
        let s = unsafe { s.as_ref() }.ok_or_else(|| usage("session is NULL"))?;
        name = s.session.int8_kernels().map_or(c"".as_ptr(), |k| int8_set_name(k).as_ptr());
        Ok(())
    });
    name
}

/// [`Int8Set::name`] as a static C string.
fn int8_set_name(set: Int8Set) -> &'static CStr {
    match set {
        Int8Set::Amx => c"amx",
        Int8Set::Vnni512 => c"avx512-vnni",
        Int8Set::Avx2 => c"avx2",
        Int8Set::Portable => c"portable",
    }
}

/// The ABI's version, `REPVGG_ABI_VERSION` in the header: 3 added
/// [`repvgg_model_precision`], [`repvgg_session_new2`] (which takes a precision),
/// [`repvgg_session_precision`] and [`repvgg_session_int8_kernels`]; 2 added
/// [`repvgg_session_run2`], whose input length lets the library refuse a short buffer
/// rather than read past it (1: the first release).
pub const ABI_VERSION: c_int = 3;

/// The version of the ABI this library implements ([`ABI_VERSION`]), for a caller to
/// compare with the `REPVGG_ABI_VERSION` of the header it was compiled with.
#[unsafe(no_mangle)]
pub extern "C" fn repvgg_abi_version() -> c_int {
    ABI_VERSION
}

/// Runs `n` images of `3 x h x w` floats (NCHW, contiguous) from `input`, which holds
/// `input_len` floats, and writes `n x classes` logits to `logits`, which holds
/// `logits_len`; the input is read in place. Everything is checked before `input` is
/// read: the shape against the model's limits, `input_len` against the shape (exactly
/// `n * 3 * h * w`, else `REPVGG_USAGE`), `logits_len` against the batch, both pointers'
/// alignment, and that the input and the logits this call writes share no byte (a
/// caller's aliasing would otherwise make the library read what it is writing).
///
/// # Safety
/// `s` is NULL or a live session; `input` is NULL or points to `input_len` readable
/// floats; `logits` is NULL or points to `logits_len` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn repvgg_session_run2(
    s: *mut RepvggSession,
    input: *const f32,
    input_len: usize,
    n: usize,
    h: usize,
    w: usize,
    logits: *mut f32,
    logits_len: usize,
) -> c_int {
    // SAFETY: the caller's contract is this function's.
    guard(|| unsafe { run(s, input, Some(input_len), [n, 3, h, w], logits, logits_len) })
}

/// [`repvgg_session_run2`] without the input's length, which it takes to be what the
/// shape needs: kept for callers compiled against ABI version 1. A buffer shorter than
/// the shape is read past its end, which only the caller can rule out.
///
/// # Safety
/// `s` is NULL or a live session; `input` is NULL or points to `n * 3 * h * w` readable
/// floats; `logits` is NULL or points to `logits_len` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn repvgg_session_run(
    s: *mut RepvggSession,
    input: *const f32,
    n: usize,
    h: usize,
    w: usize,
    logits: *mut f32,
    logits_len: usize,
) -> c_int {
    // SAFETY: the caller's contract is this function's, with the input's length implied.
    guard(|| unsafe { run(s, input, None, [n, 3, h, w], logits, logits_len) })
}

/// The body of both run functions; `input_len` is `None` when the caller did not give it
/// (then the shape's length is trusted).
///
/// # Safety
/// As [`repvgg_session_run2`], with `input` valid for `input_len` floats or, if `None`,
/// for the shape's product.
unsafe fn run(
    s: *mut RepvggSession,
    input: *const f32,
    input_len: Option<usize>,
    shape: [usize; 4],
    logits: *mut f32,
    logits_len: usize,
) -> Result<(), Failure> {
    // SAFETY: NULL or a live session, used by one thread at a time (the caller's contract).
    let s = unsafe { s.as_mut() }.ok_or_else(|| usage("session is NULL"))?;
    if input.is_null() || logits.is_null() {
        return Err(usage(if input.is_null() { "input is NULL" } else { "logits is NULL" }));
    }
    let model = s.session.model().clone();
    let shape = model.limits().check_input(model.network(), &shape)?;
    // Bounded by the limits just checked, so neither product overflows.
    let len = shape.iter().product::<usize>();
    let [n, ..] = shape;
    if let Some(input_len) = input_len
        && input_len != len
    {
        return Err(usage(format!("input_len is {input_len}, the shape {shape:?} needs {len} floats")));
    }
    let classes = model.network().num_classes;
    let outputs = n * classes;
    if logits_len < outputs {
        return Err(usage(format!("logits_len is {logits_len}, the batch needs {n} x {classes}")));
    }
    if !input.is_aligned() || !logits.is_aligned() {
        return Err(usage("input and logits must be aligned for float (4 bytes)"));
    }
    // The bytes read and the bytes written, as address ranges (the caller's buffers fit
    // in the address space; saturating only keeps a lie about that from wrapping).
    let (read, written, size) = (input.addr(), logits.addr(), size_of::<f32>());
    if read < written.saturating_add(outputs * size) && written < read.saturating_add(len * size) {
        return Err(usage(format!(
            "input ({len} floats) and logits ({outputs} floats) overlap: the buffers must not share a byte"
        )));
    }
    // SAFETY: the caller promises `len` readable floats at `input` (`input_len`, checked
    // equal to `len`, or the shape's product when not given) and `logits_len >= outputs`
    // writable floats at `logits`; both are non-NULL and aligned, and the two ranges
    // were checked disjoint, so the shared and the mutable slice do not alias.
    let (values, out) =
        unsafe { (std::slice::from_raw_parts(input, len), std::slice::from_raw_parts_mut(logits, outputs)) };
    s.session.run_slice(values, &shape, out)?;
    Ok(())
}

/// Frees a session; NULL is ignored.
///
/// # Safety
/// `s` is NULL or a pointer from [`repvgg_session_new`] not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn repvgg_session_free(s: *mut RepvggSession) {
    if !s.is_null() {
        // SAFETY: a live pointer from Box::into_raw, freed once.
        drop(unsafe { Box::from_raw(s) });
    }
}

/// The message of this thread's last failed call ("" before any), valid until the next
/// failed call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn repvgg_last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// The library version, a static string.
#[unsafe(no_mangle)]
pub extern "C" fn repvgg_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The status numbers of the kinds, as the header names them.
pub const STATUSES: [(ErrorKind, &str); 9] = [
    (ErrorKind::Usage, "REPVGG_USAGE"),
    (ErrorKind::Io, "REPVGG_IO"),
    (ErrorKind::Format, "REPVGG_FORMAT"),
    (ErrorKind::Model, "REPVGG_MODEL"),
    (ErrorKind::Input, "REPVGG_INPUT"),
    (ErrorKind::Limit, "REPVGG_LIMIT"),
    (ErrorKind::Cpu, "REPVGG_CPU"),
    (ErrorKind::Arch, "REPVGG_ARCH"),
    (ErrorKind::Numeric, "REPVGG_NUMERIC"),
];

#[cfg(test)]
mod tests {
    use std::ptr::{null, null_mut};

    use super::*;

    fn last_error() -> String {
        // SAFETY: repvgg_last_error returns a NUL-terminated string owned by this thread.
        unsafe { CStr::from_ptr(repvgg_last_error()) }.to_string_lossy().into_owned()
    }

    fn fixture() -> CString {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fixtures/tiny-groups/train.safetensors");
        CString::new(path.to_str().unwrap()).unwrap()
    }

    /// NULL pointers, negative thread counts, short buffers and oversized shapes are
    /// statuses with messages; the oversized shape is refused before the (one-float)
    /// input is read, which AddressSanitizer would otherwise report.
    #[test]
    fn bad_arguments_are_statuses_not_crashes() {
        let path = fixture();
        // SAFETY (all calls below): pointers are NULL, live, or point to enough memory.
        unsafe {
            assert_eq!(repvgg_model_load(path.as_ptr(), null(), null_mut()), USAGE);
            assert_eq!(last_error(), "out is NULL");
            let mut model = null_mut();
            assert_eq!(repvgg_model_load(null(), null(), &mut model), USAGE);
            assert_eq!(last_error(), "weights_path is NULL");
            let q7 = CString::new("Q7").unwrap();
            assert_eq!(repvgg_model_load(path.as_ptr(), q7.as_ptr(), &mut model), 9);
            assert!(last_error().starts_with("unknown architecture `Q7`"));
            assert_eq!(repvgg_model_load(path.as_ptr(), null(), &mut model), 0);
            assert_eq!(repvgg_model_num_classes(model), 10);

            let mut session = null_mut();
            assert_eq!(repvgg_session_new(model, -1, &mut session), USAGE);
            assert_eq!(last_error(), "threads is -1, not >= 0");
            assert_eq!(repvgg_session_new(null(), 1, &mut session), USAGE);
            assert_eq!(repvgg_session_new(model, 1, &mut session), 0);
            repvgg_model_free(model);

            let one = [0f32; 1];
            let mut logits = [0f32; 10];
            let status = repvgg_session_run(session, one.as_ptr(), 1, 100_000, 8, logits.as_mut_ptr(), 10);
            assert_eq!(status, 7, "{}", last_error());
            assert!(last_error().contains("exceeds the limit of 8192 pixels per side"));
            assert_eq!(repvgg_session_run(null_mut(), one.as_ptr(), 1, 8, 8, logits.as_mut_ptr(), 10), USAGE);
            let x = vec![f32::NAN; 3 * 8 * 8];
            assert_eq!(repvgg_session_run(session, x.as_ptr(), 1, 8, 8, logits.as_mut_ptr(), 10), 6);
            assert!(last_error().contains("input[0, 0, 0, 0] is NaN"), "{}", last_error());
            let x = vec![0.5f32; 3 * 8 * 8];
            assert_eq!(repvgg_session_run(session, x.as_ptr(), 1, 8, 8, logits.as_mut_ptr(), 10), 0);
            assert!(logits.iter().all(|v| v.is_finite()));
            repvgg_session_free(session);
            repvgg_session_free(null_mut());
            repvgg_model_free(null_mut());
        }
    }

    /// The input's length is checked before the input is read: a buffer one float short
    /// is refused (AddressSanitizer, which runs this test, would report the read past its
    /// end otherwise), as are buffers that overlap by a byte and misaligned pointers; the
    /// right length gives the old function's logits bit for bit.
    #[test]
    fn run2_checks_the_input_length_alignment_and_overlap() {
        let path = fixture();
        // SAFETY (all calls below): pointers are NULL, live, or point to the number of
        // floats passed with them (the point of the checks being tested).
        unsafe {
            let (mut model, mut session) = (null_mut(), null_mut());
            assert_eq!(repvgg_model_load(path.as_ptr(), null(), &mut model), 0);
            assert_eq!(repvgg_session_new(model, 1, &mut session), 0);
            repvgg_model_free(model);
            let (n, h, w, classes) = (2, 9, 7, 10);
            let len = n * 3 * h * w;
            let x: Vec<f32> = (0..len).map(|i| (i % 13) as f32 / 8.0 - 0.75).collect();
            let mut old = vec![0f32; n * classes];
            assert_eq!(repvgg_session_run(session, x.as_ptr(), n, h, w, old.as_mut_ptr(), n * classes), 0);

            let short = x[..len - 1].to_vec();
            let mut logits = vec![0f32; n * classes];
            let status = repvgg_session_run2(session, short.as_ptr(), len - 1, n, h, w, logits.as_mut_ptr(), 20);
            assert_eq!(status, USAGE);
            assert_eq!(last_error(), format!("input_len is {}, the shape [2, 3, 9, 7] needs {len} floats", len - 1));
            let status = repvgg_session_run2(session, x.as_ptr(), len + 1, n, h, w, logits.as_mut_ptr(), 20);
            assert_eq!(status, USAGE);
            assert!(logits.iter().all(|&v| v == 0.0), "a refused call wrote logits");

            // One buffer holding the input and then the logits: adjacent is fine, one
            // float (or the same pointer) less is an overlap.
            let mut both = x.clone();
            both.resize(len + n * classes, 0.0);
            let base = both.as_mut_ptr();
            for overlap in [base, base.add(len - 1)] {
                let status = repvgg_session_run2(session, base, len, n, h, w, overlap, n * classes);
                assert_eq!(status, USAGE);
                assert!(last_error().contains("overlap: the buffers must not share a byte"), "{}", last_error());
                assert_eq!(repvgg_session_run(session, base, n, h, w, overlap, n * classes), USAGE);
            }
            assert_eq!(both[..len], x[..], "a refused call wrote into the input");
            let status = repvgg_session_run2(session, base, len, n, h, w, base.add(len), n * classes);
            assert_eq!(status, 0, "{}", last_error());
            assert_eq!(both[len..].iter().map(|v| v.to_bits()).collect::<Vec<_>>(), bits(&old));

            let status = repvgg_session_run2(session, x.as_ptr(), len, n, h, w, logits.as_mut_ptr(), n * classes);
            assert_eq!(status, 0, "{}", last_error());
            assert_eq!(bits(&logits), bits(&old), "run2 and run differ");

            let misaligned = x.as_ptr().byte_add(1);
            let status = repvgg_session_run2(session, misaligned, len, n, h, w, logits.as_mut_ptr(), n * classes);
            assert_eq!(status, USAGE);
            assert_eq!(last_error(), "input and logits must be aligned for float (4 bytes)");
            repvgg_session_free(session);
        }
        assert_eq!(repvgg_abi_version(), 3);
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// The precision functions: NULL arguments and bad names are statuses (or NULL) with
    /// messages; a float model runs f32 and refuses int8.
    #[test]
    fn precision_arguments_are_checked() {
        let path = fixture();
        let name = |p: *const c_char| {
            // SAFETY: NULL or one of the library's static NUL-terminated strings.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string())
        };
        // SAFETY (all calls below): pointers are NULL, live, or NUL-terminated strings.
        unsafe {
            assert_eq!(name(repvgg_model_precision(null())), None);
            assert_eq!(last_error(), "model is NULL");
            assert_eq!(name(repvgg_session_precision(null())), None);
            assert_eq!(name(repvgg_session_int8_kernels(null())), None);
            assert_eq!(last_error(), "session is NULL");
            let mut model = null_mut();
            assert_eq!(repvgg_model_load(path.as_ptr(), null(), &mut model), 0);
            assert_eq!(name(repvgg_model_precision(model)).as_deref(), Some("f32"));
            let mut session = null_mut();
            assert_eq!(repvgg_session_new2(model, 1, null(), null_mut()), USAGE);
            assert_eq!(last_error(), "out is NULL");
            assert_eq!(repvgg_session_new2(null(), 1, null(), &mut session), USAGE);
            let bad = CString::new(vec![0xffu8]).unwrap();
            assert_eq!(repvgg_session_new2(model, 1, bad.as_ptr(), &mut session), USAGE);
            assert_eq!(last_error(), "precision is not UTF-8");
            let int8 = CString::new("int8").unwrap();
            assert_eq!(repvgg_session_new2(model, 1, int8.as_ptr(), &mut session), USAGE);
            assert!(last_error().contains("INT8 needs a quantized model"), "{}", last_error());
            assert!(session.is_null());
            let f32 = CString::new(" F32 ").unwrap();
            assert_eq!(repvgg_session_new2(model, 1, f32.as_ptr(), &mut session), 0, "{}", last_error());
            assert_eq!(name(repvgg_session_precision(session)).as_deref(), Some("f32"));
            assert_eq!(name(repvgg_session_int8_kernels(session)).as_deref(), Some(""));
            repvgg_session_free(session);
            repvgg_model_free(model);
        }
    }

    #[test]
    fn int8_set_names_are_the_runtimes() {
        for set in Int8Set::ALL {
            assert_eq!(int8_set_name(set).to_str().unwrap(), set.name());
        }
    }

    #[test]
    fn statuses_are_the_kinds_codes() {
        let codes: Vec<u8> = STATUSES.iter().map(|(kind, _)| kind.code()).collect();
        assert_eq!(codes, (2..=10).collect::<Vec<u8>>());
    }
}
