//! Writes the fuzzers' seed corpus (`fuzz/seeds/`): valid weight files in every naming
//! form and dtype and one quantized to INT8, valid and broken input tensors, and small JPEG/PNG images, plus
//! truncated and bit-flipped copies. Deterministic; rerun after format changes (it only
//! overwrites its own files, so inputs the fuzzers found, such as
//! `image/found-3880x1.jpg.refused`, stay):
//!
//! ```sh
//! cargo run --release --example fuzz_seeds
//! ```

use std::path::Path;

use repvgg::graph::synthetic::{self, SplitMix64};
use repvgg::graph::{BlockForm, Convention, TensorMap};
use repvgg::{ArchSpec, Network};
use safetensors::tensor::{Dtype, TensorView};

fn encode(map: &TensorMap, dtype: Dtype, prefix: &str) -> Vec<u8> {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = map
        .iter()
        .map(|(name, shape, data)| {
            let bytes = match dtype {
                Dtype::F16 => data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
                Dtype::BF16 => data.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
                _ => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            (format!("{prefix}{name}"), shape.to_vec(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> =
        encoded.iter().map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).expect("view"))).collect();
    safetensors::serialize(views, None).expect("serialize")
}

/// Writes one seed file the way every output of the project is written.
fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(repvgg::files::Output::new(path, &[])?.write(bytes)?)
}

/// Writes `bytes` plus a truncated and a bit-flipped copy.
fn write_variants(dir: &Path, name: &str, bytes: &[u8], rng: &mut SplitMix64) -> anyhow::Result<()> {
    write(&dir.join(name), bytes)?;
    write(&dir.join(format!("{name}.truncated")), &bytes[..bytes.len() * 2 / 3])?;
    let mut flipped = bytes.to_vec();
    for _ in 0..4 {
        let i = (rng.next_u64() % flipped.len() as u64) as usize;
        flipped[i] ^= 1 << (rng.next_u64() % 8);
    }
    write(&dir.join(format!("{name}.flipped")), &flipped)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut rng = SplitMix64::new(2024);

    let weights = root.join("weights");
    std::fs::create_dir_all(&weights)?;
    // Every naming form and dtype on a tiny network; SE and groups on a second one.
    let tiny = Network::new(ArchSpec::from_toml(
        "name='tiny'\nblocks_per_stage=[1,1,1,1]\nwidths=[8,8,8,8,8]\nnum_classes=3\n",
        "seed",
    )?);
    let se = Network::new(ArchSpec::from_toml(
        "name='se'\nblocks_per_stage=[1,2,1,1]\nwidths=[16,16,16,16,16]\ngroups=2\ngrouped_layers=[2]\nse=true\nnum_classes=2\n",
        "seed",
    )?);
    let mut seeds = Vec::new();
    for convention in [Convention::Official, Convention::Timm] {
        for form in [BlockForm::Deploy, BlockForm::Training] {
            for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                seeds.push((&tiny, convention, form, dtype));
            }
        }
    }
    seeds.push((&se, Convention::Official, BlockForm::Training, Dtype::F32));
    seeds.push((&se, Convention::Timm, BlockForm::Deploy, Dtype::F16));
    for (i, (network, convention, form, dtype)) in seeds.into_iter().enumerate() {
        let map = synthetic::checkpoint(network, convention, form, 7);
        let prefix = if i % 3 == 2 { "module." } else { "" };
        let name = format!("{}-{convention:?}-{form:?}-{dtype:?}.safetensors", network.arch.name);
        let bytes = encode(&map, dtype, prefix);
        if dtype == Dtype::F32 {
            write_variants(&weights, &name, &bytes, &mut rng)?;
        } else {
            write(&weights.join(name), &bytes)?;
        }
    }

    // A quantized file (INT8 layers, I8 tensors, scales and metadata), so that the
    // loader's quantized path is fuzzed too: the tiny network, every layer but the stem
    // INT8, calibrated on four synthetic images. Its own random stream, so that adding it
    // left every other seed as it was.
    let model = repvgg::Model::from_parts(
        tiny.clone(),
        repvgg::graph::resolve(
            &synthetic::checkpoint(&tiny, Convention::Official, BlockForm::Deploy, 7),
            Some(&tiny.arch),
        )?
        .weights,
        repvgg::Limits::default(),
        "seed".into(),
    )?;
    let calibration = repvgg::Tensor::new(vec![4, 3, 9, 7], synthetic::input(4 * 3 * 9 * 7, 11))?;
    let options = repvgg::runtime::QuantizeOptions {
        keep_fp32: repvgg::runtime::KeepFp32::None,
        threads: 1,
        ..Default::default()
    };
    let (quantized, _) = model.quantize(&calibration, &options)?;
    let name = "tiny-Official-Deploy-INT8.safetensors";
    quantized.write(&repvgg::files::Output::new(&weights.join(name), &[])?)?;
    let bytes = std::fs::read(weights.join(name))?;
    write_variants(&weights, name, &bytes, &mut SplitMix64::new(8))?;

    let inputs = root.join("input");
    std::fs::create_dir_all(&inputs)?;
    for (i, shape) in [vec![1, 3, 16, 16], vec![2, 3, 9, 13], vec![1, 3, 1, 1], vec![1, 4, 8, 8], vec![3, 8, 8]]
        .into_iter()
        .enumerate()
    {
        let n: usize = shape.iter().product();
        let mut map = TensorMap::new();
        map.insert(if i == 2 { "image" } else { "input" }, shape, synthetic::input(n, i as u64));
        write_variants(&inputs, &format!("input{i}.safetensors"), &encode(&map, Dtype::F32, ""), &mut rng)?;
    }

    let images = root.join("image");
    std::fs::create_dir_all(&images)?;
    let img = image::RgbImage::from_fn(40, 28, |x, y| image::Rgb([(x * 6) as u8, (y * 9) as u8, ((x + y) * 3) as u8]));
    for (name, format) in [("a.png", image::ImageFormat::Png), ("b.jpg", image::ImageFormat::Jpeg)] {
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), format)?;
        write_variants(&images, name, &bytes, &mut rng)?;
    }
    let gray = image::GrayImage::from_fn(17, 33, |x, y| image::Luma([(x * y) as u8]));
    let mut bytes = Vec::new();
    gray.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    write_variants(&images, "gray.png", &bytes, &mut rng)?;
    println!("seeds written to {}", root.display());
    Ok(())
}
