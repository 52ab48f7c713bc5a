//! ImageNet preprocessing and labels, as in the RepVGG evaluation code: resize the short
//! side to 256 with bilinear filtering, center-crop 224x224, scale to [0, 1] and
//! normalize with the ImageNet mean and standard deviation.

use std::path::Path;

use image::imageops::FilterType;

use rayon::prelude::*;
use repvgg_runtime::{Error, Result, Tensor};

/// The 1000 ImageNet-1k class names, in class-index order.
pub const LABELS_TEXT: &str = include_str!("../../../models/imagenet_classes.txt");

/// Per-channel mean and standard deviation of ImageNet (RGB).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Short side after resizing, and the crop size.
pub const RESIZE: u32 = 256;
pub const CROP: u32 = 224;

/// Largest accepted image side: decoding is refused beyond it before any large allocation.
pub const MAX_IMAGE_SIDE: u32 = 8192;

/// Longest side after resizing the short side to [`RESIZE`]: an aspect ratio up to 32:1.
/// A tiny file can declare a 3880 x 1 image, whose resize would be 993280 x 256 (760 MB
/// and seconds of filtering) for a 224 x 224 crop.
pub const MAX_RESIZED_SIDE: u32 = 8192;

/// Largest image file read: an uncompressed 8192 x 8192 RGB PNG is 192 MiB.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// Largest allocation the decoder may make (an 8192 x 8192 RGBA image is 256 MiB).
pub const MAX_DECODE_BYTES: u64 = 512 << 20;

/// The class names.
pub fn labels() -> Vec<&'static str> {
    LABELS_TEXT.lines().collect()
}

/// Decodes an encoded JPEG or PNG and preprocesses it into `[3, 224, 224]` values.
///
/// `name` is how messages call the image, whole (`image cat.jpg`, `image #0`, `image`):
/// a caller with nothing better to say than "image" does not get it said twice.
pub fn preprocess(bytes: &[u8], name: &str) -> Result<Vec<f32>> {
    let bad = |reason: String| Error::Input(format!("cannot decode {name}: {reason}"));
    let reader =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    if reader.format().is_none() {
        return Err(bad("not a JPEG or PNG file".into()));
    }
    // The header's dimensions first, so that a refusal can give them.
    let (w, h) = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?
        .into_dimensions()
        .map_err(|e| bad(e.to_string()))?;
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(Error::Limit(format!("{name} is {w}x{h}, over the limit of {MAX_IMAGE_SIDE} pixels per side")));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    let mut reader = reader;
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => Error::Limit(format!(
            "decoding {name} ({w}x{h}) needs more than the limit of {} MiB",
            MAX_DECODE_BYTES >> 20
        )),
        other => bad(other.to_string()),
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err(bad("the image is empty".into()));
    }
    resize_and_crop(&img.to_rgb8(), name)
}

/// Preprocesses decoded pixels (`height x width x 3` RGB bytes, row-major, as an HWC
/// uint8 array holds them) exactly as [`preprocess`] does a decoded file: for images a
/// caller already has in memory (a PIL image, a camera frame).
pub fn preprocess_rgb(pixels: &[u8], width: u32, height: u32, name: &str) -> Result<Vec<f32>> {
    if width == 0 || height == 0 {
        return Err(Error::Input(format!("{name} is empty ({width}x{height})")));
    }
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(Error::Limit(format!(
            "{name} is {width}x{height}, over the limit of {MAX_IMAGE_SIDE} pixels per side"
        )));
    }
    let want = 3 * width as usize * height as usize;
    let img = image::RgbImage::from_raw(width, height, pixels.to_vec()).filter(|_| pixels.len() == want).ok_or_else(
        || Error::Input(format!("{name}: {} bytes for {width}x{height} RGB pixels, which take {want}", pixels.len())),
    )?;
    resize_and_crop(&img, name)
}

/// Short side to [`RESIZE`], center crop [`CROP`], scaled and normalized, channels first.
fn resize_and_crop(img: &image::RgbImage, name: &str) -> Result<Vec<f32>> {
    let (w, h) = (img.width(), img.height());
    // Short side to 256, keeping the aspect ratio (rounded like torchvision's Resize).
    let (rw, rh) = if w <= h {
        (RESIZE, ((h as u64 * RESIZE as u64) as f64 / w as f64).round().max(1.0) as u32)
    } else {
        (((w as u64 * RESIZE as u64) as f64 / h as f64).round().max(1.0) as u32, RESIZE)
    };
    if rw.max(rh) > MAX_RESIZED_SIDE {
        return Err(Error::Limit(format!(
            "{name} is {w}x{h}: resizing its short side to {RESIZE} would make it {}x{} \
             (at most {MAX_RESIZED_SIDE} on a side, an aspect ratio of 32:1)",
            rw, rh
        )));
    }
    let resized = image::imageops::resize(img, rw, rh, FilterType::Triangle);
    let (x0, y0) = ((rw - CROP) / 2, (rh - CROP) / 2);
    let plane = (CROP * CROP) as usize;
    let mut out = vec![0f32; 3 * plane];
    for y in 0..CROP {
        for x in 0..CROP {
            let px = resized.get_pixel(x0 + x, y0 + y);
            for c in 0..3 {
                out[c * plane + (y * CROP + x) as usize] = (px[c] as f32 / 255.0 - MEAN[c]) / STD[c];
            }
        }
    }
    Ok(out)
}

/// Reads and preprocesses several image files into one `[N, 3, 224, 224]` batch.
///
/// Files are read and decoded in parallel on the current rayon pool (the global one unless
/// the caller installed another); the first failing file, in the order given, is reported.
pub fn load_batch(paths: &[impl AsRef<Path> + Sync]) -> Result<Tensor> {
    let images: Vec<Vec<f32>> = paths
        .par_iter()
        .map(|path| {
            let path = path.as_ref();
            let bytes = repvgg_files::read(path, "image", MAX_IMAGE_FILE_BYTES)?;
            preprocess(&bytes, &format!("image {}", path.display()))
        })
        .collect::<Result<_>>()?;
    Tensor::new(vec![paths.len(), 3, CROP as usize, CROP as usize], images.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
        bytes
    }

    #[test]
    fn a_uniform_image_normalizes_to_constants() {
        let out = preprocess(&png(300, 500, |_, _| [255, 128, 0]), "flat").unwrap();
        assert_eq!(out.len(), 3 * 224 * 224);
        let expect = [(1.0 - MEAN[0]) / STD[0], (128.0 / 255.0 - MEAN[1]) / STD[1], (0.0 - MEAN[2]) / STD[2]];
        for c in 0..3 {
            for v in &out[c * 224 * 224..(c + 1) * 224 * 224] {
                assert!((v - expect[c]).abs() < 1e-5, "channel {c}: {v} vs {}", expect[c]);
            }
        }
    }

    #[test]
    fn the_crop_is_centered() {
        // Left half black, right half white, 512 wide: resized to 256 high x 256 wide... the
        // short side (height 256) stays, width 512 -> 512; the crop takes columns 144..368.
        let out = preprocess(&png(512, 256, |x, _| if x < 256 { [0; 3] } else { [255; 3] }), "split").unwrap();
        let at = |x: usize| out[100 * 224 + x];
        assert!(at(10) < 0.0 && at(213) > 0.0, "left dark, right bright");
        // The edge sits at column 256 - 144 = 112 of the crop.
        assert!(at(108) < 0.0 && at(116) > 0.0);
    }

    #[test]
    fn undecodable_bytes_are_refused() {
        let err = preprocess(b"definitely not an image", "image junk.jpg").unwrap_err().to_string();
        assert!(err.contains("cannot decode image junk.jpg: "), "{err}");
        let err = preprocess(b"x", "image").unwrap_err().to_string();
        assert!(err.contains("cannot decode image: ") && !err.contains("image image"), "{err}");
        let mut truncated = png(64, 64, |x, y| [x as u8, y as u8, 7]);
        truncated.truncate(truncated.len() / 2);
        assert!(preprocess(&truncated, "half.png").is_err());
    }

    #[test]
    fn extreme_aspect_ratios_are_refused_before_resizing() {
        // 32:1 is the limit; 33:1 would resize to 8448 x 256.
        assert!(preprocess(&png(32 * 8, 8, |_, _| [9; 3]), "wide.png").is_ok());
        let err = preprocess(&png(33 * 8, 8, |_, _| [9; 3]), "wider.png").unwrap_err();
        assert_eq!(err.kind(), repvgg_runtime::ErrorKind::Limit, "{err}");
        assert!(err.to_string().contains("wider.png is 264x8"), "{err}");
        let err = preprocess(&png(1, 3880, |_, _| [9; 3]), "tall.png").unwrap_err();
        assert!(err.to_string().contains("256x993280"), "{err}");
    }

    #[test]
    fn an_oversized_image_is_refused_with_its_dimensions() {
        let err = preprocess(&png(MAX_IMAGE_SIDE + 1, 1, |_, _| [1; 3]), "huge.png").unwrap_err();
        assert_eq!(err.kind(), repvgg_runtime::ErrorKind::Limit, "{err}");
        assert!(err.to_string().contains("huge.png is 8193x1, over the limit of 8192 pixels per side"), "{err}");
    }

    #[test]
    fn pixels_in_memory_preprocess_as_their_file_does() {
        let f = |x: u32, y: u32| [(x * 7) as u8, (y * 3) as u8, ((x + y) * 5) as u8];
        let from_file = preprocess(&png(300, 260, f), "image").unwrap();
        let pixels: Vec<u8> = (0..260).flat_map(|y| (0..300).flat_map(move |x| f(x, y))).collect();
        assert_eq!(preprocess_rgb(&pixels, 300, 260, "array").unwrap(), from_file);
        let err = preprocess_rgb(&pixels[1..], 300, 260, "array").unwrap_err();
        assert!(err.to_string().contains("array: 233999 bytes for 300x260 RGB pixels"), "{err}");
        assert!(preprocess_rgb(&[], 0, 5, "array").is_err());
    }

    #[test]
    fn there_are_a_thousand_labels() {
        let l = labels();
        assert_eq!(l.len(), 1000);
        assert_eq!((l[0], l[281]), ("tench", "tabby"));
    }
}
