//! CLIP against the libraries users run (references written by tools/make_clip_fixtures.py):
//! image preprocessing against transformers' CLIPImageProcessor (PIL and torchvision backends)
//! and open_clip's transforms on real photos, and tiny random-init CLIP models in the Hugging
//! Face and open_clip layouts (quick_gelu and gelu, class-token and patch-mean pooling, shortest
//! side + crop and squash preprocessing) — image and text embeddings on every backend; and
//! (references by tools/make_image_fixtures.py) every decoded image format, EXIF orientation and
//! PNG colour key against Pillow, and open_clip's transforms of the palette and transparent ones.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{
    assert_row_cosines, backend_tests, cosine, reference_tensor, rel_error, repo_path, wgpu_with,
};
use mscope::backend::cpu::CpuBackend;
use mscope::backend::wgpu::WgpuOptions;
use mscope::backend::{Backend, SeqLayout};
use mscope::instruments::embed::{EncoderOptions, ImageEmbedder, SentenceEncoder};
use mscope::models::clip::ClipModel;
use mscope::models::image::{
    decode_image, decode_rgb, Alpha, CropRounding, Filter, Preprocess, ResizeMode, RgbConversion,
    OPENAI_MEAN, OPENAI_STD,
};
use mscope::models::{self, Encoder, ImageTower, TokenBatch};
use mscope::weights::WeightsDtype;

backend_tests! {
    image_tower_matches_reference_on_reference_pixels,
    images_from_files_match_reference_end_to_end,
    text_tower_matches_reference,
    embed_instrument_runs_clip_text,
    f16_weights_stay_within_the_f16_tolerance,
    a_non_square_open_clip_model_embeds_as_open_clip_does,
}

const FIXTURES: &str = "tests/fixtures/clip";
const PREPROCESS: &str = "tests/fixtures/clip/preprocess_reference.safetensors";
const REFERENCE: &str = "tests/fixtures/clip/reference.safetensors";
const MODELS: [&str; 3] = ["hf-tiny", "open_clip-tiny", "open_clip-squash"];

/// f32 paths: ‖out − ref‖/‖ref‖ under this, every row's cosine at least [`MIN_COSINE`].
const MAX_REL: f64 = 1e-5;
const MIN_COSINE: f64 = 0.9999;

/// One 8-bit level after normalisation by the smallest std, plus f32 rounding: the most a pixel
/// may differ from a reference whose decoder or resampler rounds differently.
fn one_level() -> f64 {
    let min_std = OPENAI_STD.iter().fold(f32::INFINITY, |a, &b| a.min(b));
    1.0 / 255.0 / f64::from(min_std) + 1e-5
}

fn photos() -> Vec<PathBuf> {
    let list = std::fs::read_to_string(repo_path(&format!("{FIXTURES}/photos.json"))).unwrap();
    let names: Vec<String> = serde_json::from_str(&list).unwrap();
    names
        .iter()
        .map(|n| repo_path(&format!("{FIXTURES}/{n}")))
        .collect()
}

fn is_jpeg(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "jpg")
}

fn texts() -> Vec<String> {
    let list = std::fs::read_to_string(repo_path(&format!("{FIXTURES}/texts.json"))).unwrap();
    serde_json::from_str(&list).unwrap()
}

fn model_dir(name: &str) -> PathBuf {
    repo_path(&format!("{FIXTURES}/{name}"))
}

fn max_abs(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - y).abs())
        .fold(0.0, f64::max)
}

/// Checks `preprocess` on every photo against the reference tensors `prefix/NAME`: PNGs decode
/// identically, so their pixels must be PIL's exactly (f32 rounding only); JPEG decoders may
/// round an 8-bit level differently, so a JPEG may be off by one level.
fn check_preprocessing(preprocess: &Preprocess, prefix: &str, png_tolerance: f64) {
    for photo in photos() {
        let name = photo.file_name().unwrap().to_string_lossy().into_owned();
        let (shape, want) = reference_tensor(PREPROCESS, &format!("{prefix}/{name}"));
        let got = preprocess
            .pixels_of(&decode_image(&photo).unwrap())
            .unwrap();
        assert_eq!(shape, [3, 40, 40], "{prefix}/{name}");
        let diff = max_abs(&got, &want);
        let tolerance = if is_jpeg(&photo) {
            one_level()
        } else {
            png_tolerance
        };
        eprintln!(
            "{prefix}/{name}: max |Δ| {diff:.2e} (normalised; one level is {:.2e})",
            one_level()
        );
        assert!(
            diff <= tolerance,
            "{prefix}/{name}: max |Δ| {diff} > {tolerance}"
        );
    }
}

fn hf_preprocess() -> Preprocess {
    Preprocess {
        conversion: RgbConversion::FirstOverWhite,
        mode: ResizeMode::ShortestThenCrop {
            shortest: 48,
            crop_width: 40,
            crop_height: 40,
        },
        filter: Filter::Bicubic,
        crop_rounding: CropRounding::Floor,
        mean: OPENAI_MEAN,
        std: OPENAI_STD,
    }
}

#[test]
fn preprocessing_matches_transformers_pil_backend() {
    check_preprocessing(&hf_preprocess(), "hf", 1e-5);
}

/// transformers 5's default CLIPImageProcessor resizes with torchvision, which rounds a few
/// pixels differently from PIL: within one level.
#[test]
fn preprocessing_is_within_one_level_of_transformers_torchvision_backend() {
    check_preprocessing(&hf_preprocess(), "hf_torchvision", one_level());
}

#[test]
fn preprocessing_matches_open_clip_shortest_and_squash() {
    for mode in ["shortest", "squash"] {
        let cfg = serde_json::json!({"resize_mode": mode, "interpolation": "bicubic"});
        let preprocess =
            Preprocess::from_open_clip(Path::new("test"), (40, 40), Some(&cfg)).unwrap();
        check_preprocessing(&preprocess, &format!("open_clip_{mode}"), 1e-5);
    }
}

#[test]
fn model_directories_read_their_preprocessing() {
    let hf = models::clip::ClipConfig::read(&model_dir("hf-tiny")).unwrap();
    assert_eq!(
        hf.preprocess.mode,
        ResizeMode::ShortestThenCrop {
            shortest: 36,
            crop_width: 32,
            crop_height: 32
        }
    );
    assert_eq!(hf.preprocess.crop_rounding, CropRounding::Floor);
    let squash = models::clip::ClipConfig::read(&model_dir("open_clip-squash")).unwrap();
    assert_eq!(
        squash.preprocess.mode,
        ResizeMode::Squash {
            width: 30,
            height: 30
        }
    );
    assert_eq!(squash.preprocess.crop_rounding, CropRounding::HalfToEven);
}

fn load(name: &str, be: &Arc<dyn Backend>) -> ClipModel {
    ClipModel::load(&model_dir(name), be.clone(), WeightsDtype::F32)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_embeddings(what: &str, got: &[f32], want: &[f64], dim: usize) {
    let want_f32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
    let rel = rel_error(got, &want_f32);
    assert!(
        rel <= MAX_REL,
        "{what}: relative error {rel:.3e} > {MAX_REL}"
    );
    assert_row_cosines(what, got, want, dim, MIN_COSINE);
}

fn image_tower_matches_reference_on_reference_pixels(be: &Arc<dyn Backend>) {
    for name in MODELS {
        let model = load(name, be);
        let (shape, pixels) = reference_tensor(REFERENCE, &format!("{name}/pixels"));
        let pixels: Vec<f32> = pixels.iter().map(|&v| v as f32).collect();
        let tower = model.image_tower().expect("CLIP has an image tower");
        let out = tower.embed_pixels(&pixels, shape[0]).unwrap();
        let got = be.download(&out).unwrap();
        let (_, want) = reference_tensor(REFERENCE, &format!("{name}/image_embeds"));
        assert_embeddings(name, &got, &want, tower.embedding_dim());
    }
}

/// Decoding and preprocessing here, then the tower: PNG photos decode exactly as PIL decodes
/// them, so their embeddings match the reference at f32 precision; the JPEG's pixels may be an
/// 8-bit level off (another decoder), which moves a random-init model's embedding slightly.
fn images_from_files_match_reference_end_to_end(be: &Arc<dyn Backend>) {
    for name in MODELS {
        let model = load(name, be);
        let tower = model.image_tower().unwrap();
        let dim = tower.embedding_dim();
        let (shape, want_pixels) = reference_tensor(REFERENCE, &format!("{name}/pixels"));
        let plane: usize = shape[1..].iter().product();
        let (_, want) = reference_tensor(REFERENCE, &format!("{name}/image_embeds"));
        for (i, photo) in photos().iter().enumerate() {
            let pixels = tower
                .preprocess()
                .pixels_of(&decode_image(photo).unwrap())
                .unwrap();
            let diff = max_abs(&pixels, &want_pixels[i * plane..(i + 1) * plane]);
            let what = format!("{name} {}", photo.display());
            let got = be
                .download(&tower.embed_pixels(&pixels, 1).unwrap())
                .unwrap();
            let want_row = &want[i * dim..(i + 1) * dim];
            if is_jpeg(photo) {
                assert!(diff <= one_level(), "{what}: pixels off by {diff}");
                let want_row: Vec<f32> = want_row.iter().map(|&v| v as f32).collect();
                let cos = cosine(&got, &want_row);
                assert!(cos >= 0.99, "{what}: cosine {cos}");
            } else {
                assert!(diff <= 1e-5, "{what}: pixels off by {diff}");
                assert_embeddings(&what, &got, want_row, dim);
            }
        }
    }
}

/// `--weights-dtype f16`: GEMM weights and the token table in f16 where the backend's kernels
/// read it (wgpu with SHADER_F16), widened elsewhere; f16 paths stay under 1e-2.
fn f16_weights_stay_within_the_f16_tolerance(be: &Arc<dyn Backend>) {
    let ids = reference_ids();
    let batch = TokenBatch {
        ids: ids.iter().flatten().copied().collect(),
        type_ids: vec![0; ids.iter().map(Vec::len).sum()],
        layout: SeqLayout::from_lengths(ids.iter().map(Vec::len)),
    };
    for name in MODELS {
        let model = ClipModel::load(&model_dir(name), be.clone(), WeightsDtype::F16).unwrap();
        let (shape, pixels) = reference_tensor(REFERENCE, &format!("{name}/pixels"));
        let pixels: Vec<f32> = pixels.iter().map(|&v| v as f32).collect();
        let images = be
            .download(&model.embed_pixels(&pixels, shape[0]).unwrap())
            .unwrap();
        let texts = be.download(&model.embed_text(&batch).unwrap()).unwrap();
        for (what, got) in [("image_embeds", images), ("text_embeds", texts)] {
            let (_, want) = reference_tensor(REFERENCE, &format!("{name}/{what}"));
            let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            let rel = rel_error(&got, &want);
            assert!(rel <= 1e-2, "{name} {what}: relative error {rel:.3e}");
        }
    }
}

/// The reference's token ids, unpadded.
fn reference_ids() -> Vec<Vec<u32>> {
    let (shape, ids) = reference_tensor(REFERENCE, "text_ids");
    let (_, lengths) = reference_tensor(REFERENCE, "text_lengths");
    ids.chunks(shape[1])
        .zip(&lengths)
        .map(|(row, &len)| row[..len as usize].iter().map(|&v| v as u32).collect())
        .collect()
}

fn text_tower_matches_reference(be: &Arc<dyn Backend>) {
    let ids = reference_ids();
    assert!(ids.iter().any(|t| t.len() == 77), "a text is truncated");
    for name in MODELS {
        let model = load(name, be);
        let batch = TokenBatch {
            ids: ids.iter().flatten().copied().collect(),
            type_ids: vec![0; ids.iter().map(Vec::len).sum()],
            layout: SeqLayout::from_lengths(ids.iter().map(Vec::len)),
        };
        let got = be.download(&model.embed_text(&batch).unwrap()).unwrap();
        let (_, want) = reference_tensor(REFERENCE, &format!("{name}/text_embeds"));
        assert_embeddings(name, &got, &want, Encoder::embedding_dim(&model));
    }
}

/// The embed instrument tokenises as the reference did (truncation keeps the end of text) and
/// embeds through the text projection, normalised by default.
fn embed_instrument_runs_clip_text(be: &Arc<dyn Backend>) {
    let options = EncoderOptions {
        weights_dtype: WeightsDtype::F32,
        ..EncoderOptions::default()
    };
    let want_ids = reference_ids();
    for name in MODELS {
        let encoder = SentenceEncoder::load(&model_dir(name), be.clone(), &options).unwrap();
        let tokenized = encoder.tokenize(&texts()).unwrap();
        let ids: Vec<Vec<u32>> = tokenized.into_iter().map(|t| t.ids).collect();
        assert_eq!(ids, want_ids, "{name}: token ids");
        assert!(
            encoder.normalize(),
            "{name}: CLIP embeddings are normalised by default"
        );
        assert_eq!(encoder.pooling_name(), "eot");
        let out = encoder.embed(&texts(), 4, &mut |_, _| {}).unwrap();
        let (_, want) = reference_tensor(REFERENCE, &format!("{name}/text_embeds"));
        let mut want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        for row in want.chunks_mut(out.dim) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
        }
        let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
        assert_embeddings(name, &out.embeddings, &want, out.dim);
        let pooled = EncoderOptions {
            pooling: Some(mscope::backend::Pooling::Mean),
            ..options.clone()
        };
        let err = match SentenceEncoder::load(&model_dir(name), be.clone(), &pooled) {
            Ok(_) => panic!("{name}: --pooling accepted for a model that pools itself"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("does not apply"), "{err}");
    }
}

/// Image batches under a lowered storage-binding limit (wgpu): hf-tiny's widest activation per
/// image is its 17 tokens' patch rows, 192 f32 values each (13 056 bytes), so a 32 KiB binding
/// holds 2 images and a batch of the 6 photos runs as three batches of 2. The embeddings equal
/// those of one image a batch without the limit bit for bit (every op works row by row or image
/// by image) and the CPU's within the f32 tolerance. A limit below one image is an error.
#[test]
fn image_batches_are_cut_to_the_storage_binding_limit() {
    let capped_at = |bytes: u64| {
        wgpu_with(&WgpuOptions {
            max_binding_bytes: Some(bytes),
            ..WgpuOptions::from_env()
        })
    };
    let Some(capped) = capped_at(32 << 10) else {
        return;
    };
    let whole = wgpu_with(&WgpuOptions::from_env()).unwrap();
    let load = |be: Arc<dyn Backend>| {
        ImageEmbedder::load(&model_dir("hf-tiny"), be, &EncoderOptions::default()).unwrap()
    };
    let photos = photos();
    assert_eq!(photos.len(), 6);

    let split = load(Arc::new(capped));
    assert_eq!(split.images_per_buffer().unwrap(), 2);
    let mut batches = Vec::new();
    let got = split
        .embed(&photos, photos.len(), false, &mut |rows| batches.push(rows))
        .unwrap();
    assert_eq!(batches, [2, 2, 2], "images per batch under the cap");
    let one_by_one = load(Arc::new(whole))
        .embed(&photos, 1, false, &mut |_| {})
        .unwrap();
    assert_eq!(
        got.embeddings, one_by_one.embeddings,
        "batches cut by the cap vs one image a batch"
    );
    let cpu = load(Arc::new(CpuBackend::new()))
        .embed(&photos, photos.len(), false, &mut |_| {})
        .unwrap();
    let err = rel_error(&got.embeddings, &cpu.embeddings);
    assert!(err <= MAX_REL, "against the CPU: relative error {err:e}");

    let below_one_image = load(Arc::new(capped_at(12 << 10).unwrap()));
    let err = below_one_image
        .embed(&photos, 1, false, &mut |_| {})
        .err()
        .expect("an image over the cap")
        .to_string();
    assert!(err.contains("cannot embed one image"), "{err}");
}

#[test]
fn bad_images_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let not_image = write("notes.png", b"these are notes, not pixels");
    let png = std::fs::read(repo_path(&format!(
        "{FIXTURES}/photos/things/coffee_small.png"
    )))
    .unwrap();
    let truncated = write("truncated.png", &png[..png.len() / 2]);
    let cmyk = repo_path(&format!("{FIXTURES}/bad/cmyk.jpg"));
    let cases = [
        (not_image, "not a PNG, JPEG, WebP, GIF or TIFF image"),
        (truncated, "cannot decode"),
        (cmyk, "CMYK JPEGs are not supported"),
    ];
    for (path, needle) in cases {
        let err = decode_rgb(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(needle), "{err}");
    }
    // 16-bit grey: PIL would clip it to 8 bits, which no model was trained on.
    let sixteen = dir.path().join("sixteen.png");
    image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(2, 2, vec![0, 1000, 40000, 65535])
        .unwrap()
        .save(&sixteen)
        .unwrap();
    let err = decode_rgb(&sixteen).unwrap_err().to_string();
    assert!(
        err.contains("sixteen.png") && err.contains("not supported"),
        "{err}"
    );
}

#[test]
fn bad_model_directories_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = model_dir("open_clip-tiny");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("open_clip_config.json")).unwrap())
            .unwrap();
    let write_config = |config: &serde_json::Value| {
        std::fs::write(
            dir.path().join("open_clip_config.json"),
            serde_json::to_string(config).unwrap(),
        )
        .unwrap();
    };
    let be: Arc<dyn Backend> = Arc::new(mscope::backend::cpu::CpuBackend::new());
    let load_err = || match ClipModel::load(dir.path(), be.clone(), WeightsDtype::F32) {
        Ok(_) => panic!("loaded a bad directory"),
        Err(e) => e.to_string(),
    };

    // A legacy (not zip) pickled checkpoint: refused with the command that converts it.
    write_config(&config);
    std::fs::write(dir.path().join("open_clip_pytorch_model.bin"), b"pickle").unwrap();
    let err = load_err();
    assert!(
        err.contains("legacy format")
            && err.contains("st.save_file")
            && err.contains("open_clip_model.safetensors"),
        "{err}"
    );

    // Features this implementation lacks name their field.
    std::fs::copy(
        src.join("open_clip_model.safetensors"),
        dir.path().join("open_clip_model.safetensors"),
    )
    .unwrap();
    for (section, key, value) in [
        ("vision_cfg", "pool_type", serde_json::json!("none")),
        ("vision_cfg", "ls_init_value", serde_json::json!(0.1)),
        ("text_cfg", "pool_type", serde_json::json!("first")),
    ] {
        let mut bad = config.clone();
        bad["model_cfg"][section][key] = value;
        write_config(&bad);
        let err = load_err();
        assert!(
            err.contains("open_clip_config.json") && err.contains(key),
            "{section}.{key}: {err}"
        );
    }

    // A vision size the checkpoint's position table was not made for is a shape error.
    let mut bigger = config.clone();
    bigger["model_cfg"]["vision_cfg"]["image_size"] = serde_json::json!(40);
    write_config(&bigger);
    let err = load_err();
    assert!(err.contains("positional_embedding"), "{err}");

    // Pixels of another size than the tower's.
    write_config(&config);
    let model = ClipModel::load(dir.path(), be.clone(), WeightsDtype::F32).unwrap();
    let err = match model.embed_pixels(&vec![0.0; 3 * 40 * 40], 1) {
        Ok(_) => panic!("pixels of the wrong size were embedded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("3×32×32"), "{err}");
}

/// `mscope embed --images FOLDER`: sorted relative-path order, sub-folder labels, the image
/// paths in the sidecar, normalised projected embeddings.
#[test]
fn cli_embeds_a_folder_of_images_with_folder_labels() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("images.safetensors");
    let photos_dir = repo_path(&format!("{FIXTURES}/photos"));
    common::run_mscope_ok(&[
        "embed",
        "--model",
        model_dir("open_clip-tiny").to_str().unwrap(),
        "--images",
        photos_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "cpu",
        "--batch-size",
        "4",
    ]);
    let file = mscope::io::embeddings::EmbeddingsFile::read(&out).unwrap();
    assert_eq!(file.label_names, ["animals", "people", "things"]);
    let sidecar = mscope::io::embeddings::read_texts_beside(&out, file.rows())
        .unwrap()
        .unwrap();
    let mut sorted = sidecar.clone();
    sorted.sort();
    assert_eq!(sidecar, sorted, "rows in sorted path order");
    let (_, want) = reference_tensor(REFERENCE, "open_clip-tiny/image_embeds");
    let references = photos();
    for (row, path) in sidecar.iter().enumerate() {
        let i = references
            .iter()
            .position(|p| p == Path::new(path))
            .unwrap_or_else(|| panic!("{path} is not a fixture photo"));
        let label = path.split('/').rev().nth(1).unwrap();
        assert_eq!(file.label_names[file.labels[row] as usize], label);
        let want_row: Vec<f32> = want[i * file.dim..(i + 1) * file.dim]
            .iter()
            .map(|&v| v as f32)
            .collect();
        let norm = file.row(row).iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "row {row} is normalised");
        let cos = cosine(file.row(row), &want_row);
        let min = if path.ends_with(".jpg") {
            0.99
        } else {
            MIN_COSINE
        };
        assert!(cos >= min, "{path}: cosine {cos}");
    }
}

#[test]
fn cli_refuses_non_images_and_models_without_an_image_tower() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let folder = dir.path().join("cats");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(
        repo_path(&format!("{FIXTURES}/photos/animals/chelsea.png")),
        folder.join("chelsea.png"),
    )
    .unwrap();
    std::fs::write(folder.join("list.csv"), "a,b\n").unwrap();
    let model = model_dir("hf-tiny");
    let args = |model: &Path| {
        vec![
            "embed".to_string(),
            "--model".into(),
            model.display().to_string(),
            "--images".into(),
            folder.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--backend".into(),
            "cpu".into(),
        ]
    };
    let run = |args: Vec<String>, needles: &[&str]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::assert_fails_cleanly(&args, needles);
    };
    run(args(&model), &["list.csv", "not an image"]);
    std::fs::remove_file(folder.join("list.csv")).unwrap();
    run(
        args(&repo_path("tests/fixtures/tiny-xlmr")),
        &["no image tower"],
    );
    assert!(!out.exists(), "a failed run writes nothing");
}

/// An image whose shortest side would blow up past the pixel limit is refused, not allocated.
#[test]
fn an_extreme_aspect_ratio_is_refused_before_resizing() {
    let strip = mscope::models::image::Rgb8 {
        width: 2_000_000,
        height: 1,
        data: vec![0; 6_000_000],
    };
    let err = hf_preprocess().pixels(&strip).unwrap_err().to_string();
    assert!(err.contains("over the limit"), "{err}");
}

/// A 1×1 image is upscaled as PIL upscales it: every pixel of the crop is its colour.
#[test]
fn a_one_pixel_image_fills_the_crop_with_its_colour() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dot.png");
    image::RgbImage::from_raw(1, 1, vec![200, 100, 7])
        .unwrap()
        .save(&path)
        .unwrap();
    let preprocess = hf_preprocess();
    let pixels = preprocess.pixels(&decode_rgb(&path).unwrap()).unwrap();
    let plane = 40 * 40;
    for (c, value) in [200.0f32, 100.0, 7.0].into_iter().enumerate() {
        let want = (value / 255.0 - OPENAI_MEAN[c]) / OPENAI_STD[c];
        assert!(pixels[c * plane..(c + 1) * plane]
            .iter()
            .all(|&v| v == want));
    }
}

/// Weights the towers rearrange on the host before upload (patch embedding, positions, class
/// token, open_clip's projection) are checked finite like every other weight.
#[test]
fn non_finite_host_rearranged_weights_are_refused() {
    let be: Arc<dyn Backend> = Arc::new(mscope::backend::cpu::CpuBackend::new());
    for (name, file, tensor) in [
        (
            "hf-tiny",
            "model.safetensors",
            "vision_model.embeddings.patch_embedding.weight",
        ),
        (
            "hf-tiny",
            "model.safetensors",
            "vision_model.embeddings.class_embedding",
        ),
        (
            "open_clip-tiny",
            "open_clip_model.safetensors",
            "visual.positional_embedding",
        ),
        (
            "open_clip-tiny",
            "open_clip_model.safetensors",
            "text_projection",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(model_dir(name)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        common::poke_tensor(&dir.path().join(file), tensor, 4, &f32::NAN.to_le_bytes());
        let err = match ClipModel::load(dir.path(), be.clone(), WeightsDtype::F32) {
            Ok(_) => panic!("{name}: a NaN in {tensor} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(tensor) && err.contains("not finite"),
            "{name} {tensor}: {err}"
        );
    }
}

// ---- Image formats and EXIF orientation (tools/make_image_fixtures.py) ----

const IMAGES: &str = "tests/fixtures/images";
const IMAGES_REFERENCE: &str = "tests/fixtures/images/reference.safetensors";
const COLOUR_KEY_REFERENCE: &str = "tests/fixtures/images/colour_key.safetensors";

/// The fixture files under `IMAGES/folder`, by path relative to `IMAGES`.
fn image_fixtures(folder: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_path(&format!("{IMAGES}/{folder}")))
        .unwrap()
        .map(|e| format!("{folder}/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    names.sort();
    names
}

/// Lossy formats: another decoder may round a sample differently from Pillow's.
fn is_lossy(name: &str) -> bool {
    name.ends_with(".jpg") || name.ends_with("lossy.webp")
}

/// Decodes `name` and compares it with Pillow's upright `convert("RGB")` and with
/// CLIPImageProcessorPil's pixels (transparency over white), both read from `reference`.
/// Lossless formats must match exactly (f32 rounding only after normalisation); the lossy WebP
/// decoder rounds as libwebp does, within one level. JPEG decoders differ in their IDCT and
/// chroma-upsampling rounding: libjpeg-turbo's and this one's samples are up to two levels apart.
/// A JPEG's preprocessed pixels are not compared: the preprocessing is shown exact on the
/// lossless files, and on these small images the bicubic kernel's negative lobes would only
/// amplify the decoders' difference.
fn check_against_pillow(reference: &str, name: &str) {
    let image = decode_image(&repo_path(&format!("{IMAGES}/{name}")))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let decoded = image.to_rgb(Alpha::Drop);
    let (shape, want) = reference_tensor(reference, &format!("rgb/{name}"));
    assert_eq!(
        [decoded.height, decoded.width, 3],
        shape[..],
        "{name}: size"
    );
    let worst = decoded
        .data
        .iter()
        .zip(&want)
        .map(|(&a, &b)| (f64::from(a) - b).abs())
        .fold(0.0, f64::max);
    let allowed = if name.ends_with(".jpg") {
        2.0
    } else if is_lossy(name) {
        1.0
    } else {
        0.0
    };
    eprintln!("{name}: max |Δ| {worst} levels");
    assert!(
        worst <= allowed,
        "{name}: max |Δ| {worst} levels > {allowed}"
    );

    if name.ends_with(".jpg") {
        return;
    }
    let preprocess = Preprocess {
        mode: ResizeMode::ShortestThenCrop {
            shortest: 24,
            crop_width: 20,
            crop_height: 20,
        },
        ..hf_preprocess()
    };
    let pixels = preprocess.pixels_of(&image).unwrap();
    let (_, want) = reference_tensor(reference, &format!("pixels/{name}"));
    let diff = max_abs(&pixels, &want);
    let tolerance = if is_lossy(name) { one_level() } else { 1e-5 };
    assert!(
        diff <= tolerance,
        "{name}: pixels max |Δ| {diff} > {tolerance}"
    );
}

/// WebP (lossless, lossy, alpha), GIF (palette, transparency, an animation's first frame), TIFF
/// (raw, LZW, grey, RGBA, 16-bit RGB), PNG (palette with and without tRNS, grey+alpha, 1-bit,
/// 16-bit RGB): the pixels Pillow's `convert("RGB")` gives.
#[test]
fn every_format_decodes_to_pillows_rgb() {
    let names = image_fixtures("formats");
    assert_eq!(names.len(), 16);
    for name in names {
        check_against_pillow(IMAGES_REFERENCE, &name);
    }
}

/// Orientations 1–8 in JPEG, and 2–8 in lossless WebP, PNG and TIFF (exact): the pixels of
/// Pillow's `ImageOps.exif_transpose`.
#[test]
fn exif_orientation_is_applied_as_pillow_applies_it() {
    let names = image_fixtures("orientation");
    assert_eq!(names.len(), 8 + 3 + 3 + 2);
    for name in names {
        check_against_pillow(IMAGES_REFERENCE, &name);
    }
}

/// PNGs whose transparency is a colour key (tRNS), which Pillow keeps beside the RGB or grey
/// pixels and transformers' `convert_to_rgb` turns into alpha to composite over white: 8-bit RGB
/// and grey, where the key's pixels turn white; 16-bit RGB, where Pillow compares the key's low
/// bytes with the pixels' high bytes, and 4-bit grey, where it compares the raw key with levels
/// scaled to 8 bits, so other pixels than the key's (or none) turn white.
#[test]
fn colour_keyed_pngs_turn_white_where_pillow_makes_them_transparent() {
    let names = image_fixtures("colour_key");
    assert_eq!(names.len(), 4);
    for name in names {
        check_against_pillow(COLOUR_KEY_REFERENCE, &name);
    }
}

/// A damaged EXIF block (its first-IFD offset pointing past the end) leaves the image as stored.
#[test]
fn a_damaged_exif_block_is_ignored() {
    let mut bytes = std::fs::read(repo_path(&format!("{IMAGES}/orientation/o6.jpg"))).unwrap();
    let exif = bytes.windows(6).position(|w| w == b"Exif\0\0").unwrap() + 6;
    // The TIFF header: byte order, 42, then the first IFD's offset.
    bytes[exif + 4..exif + 8].copy_from_slice(&[0xFF; 4]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.jpg");
    std::fs::write(&path, &bytes).unwrap();
    let damaged = decode_rgb(&path).unwrap();
    let upright = decode_rgb(&repo_path(&format!("{IMAGES}/orientation/o1.jpg"))).unwrap();
    assert_eq!(damaged, upright);
}

#[test]
fn unsupported_and_broken_files_of_the_new_formats_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = vec![
        (
            repo_path(&format!("{IMAGES}/bad/grey16.tif")),
            "clips 16-bit grey".to_string(),
        ),
        (
            repo_path(&format!("{IMAGES}/bad/palette.tif")),
            "convert palette".to_string(),
        ),
    ];
    for name in ["lossy.webp", "animated.gif", "lzw.tif"] {
        let bytes = std::fs::read(repo_path(&format!("{IMAGES}/formats/{name}"))).unwrap();
        let path = dir.path().join(format!("truncated-{name}"));
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        cases.push((path, "cannot decode".to_string()));
    }
    for (path, needle) in cases {
        let err = match decode_rgb(&path) {
            Ok(_) => panic!("{}: decoded", path.display()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(&needle), "{err}");
    }
}

// ---- open_clip's resize modes and non-square inputs (tools/make_image_fixtures.py) ----

/// A JSON file of the image fixtures, `tests/fixtures/images/NAME`.
fn images_json(name: &str) -> serde_json::Value {
    let path = repo_path(&format!("{IMAGES}/{name}"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const OPEN_CLIP_MODES: &str = "tests/fixtures/images/open_clip_modes.safetensors";

/// "longest" (fit inside, pad with `fill_color`), "shortest" and "squash" for square and
/// non-square sizes, against open_clip's transforms on PNG photos: f32 rounding only.
#[test]
fn open_clip_resize_modes_match_open_clip() {
    let list = images_json("open_clip_modes.json");
    let photos: Vec<String> = serde_json::from_value(list["photos"].clone()).unwrap();
    let modes = list["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 4);
    for mode in modes {
        let (name, (height, width), preprocess) = open_clip_mode(mode, "bicubic");
        for photo in &photos {
            let file = Path::new(photo).file_name().unwrap().to_string_lossy();
            let (shape, want) = reference_tensor(OPEN_CLIP_MODES, &format!("{name}/{file}"));
            assert_eq!(shape, [3, height, width], "{name}/{file}");
            let image = decode_image(&repo_path(&format!("{FIXTURES}/photos/{photo}"))).unwrap();
            let got = preprocess.pixels_of(&image).unwrap();
            let diff = max_abs(&got, &want);
            assert!(diff <= 1e-5, "{name}/{file}: max |Δ| {diff}");
        }
    }
}

/// One of the modes a fixture's JSON lists (name, resize mode, size, fill colour): its name,
/// `(height, width)` and open_clip's preprocessing in it with `interpolation`.
fn open_clip_mode(
    mode: &serde_json::Value,
    interpolation: &str,
) -> (String, (usize, usize), Preprocess) {
    let (height, width) = match &mode["size"] {
        serde_json::Value::Array(hw) => (
            hw[0].as_u64().unwrap() as usize,
            hw[1].as_u64().unwrap() as usize,
        ),
        side => (
            side.as_u64().unwrap() as usize,
            side.as_u64().unwrap() as usize,
        ),
    };
    let cfg = serde_json::json!({
        "resize_mode": mode["resize_mode"],
        "fill_color": mode["fill_color"],
        "interpolation": interpolation,
    });
    let preprocess =
        Preprocess::from_open_clip(Path::new("test"), (height, width), Some(&cfg)).unwrap();
    assert_eq!(preprocess.output_size(), (height, width));
    let name = mode["name"].as_str().unwrap().to_string();
    (name, (height, width), preprocess)
}

const OPEN_CLIP_PIL_MODES: &str = "tests/fixtures/images/open_clip_pil_modes.safetensors";

/// Files Pillow opens as "P", "1", "LA" or "RGBA", which open_clip resizes and pads in that mode
/// (nearest neighbour and palette-index padding; premultiplied alpha) before converting to RGB:
/// every resize mode, bicubic and bilinear, equal to open_clip's transform bit for bit.
#[test]
fn palette_and_transparent_files_match_open_clip() {
    let list = images_json("open_clip_pil_modes.json");
    let modes = list["modes"].as_array().unwrap();
    let files: BTreeMap<String, Vec<String>> =
        serde_json::from_value(list["files"].clone()).unwrap();
    assert_eq!(modes.len(), 4);
    let (mut checked, mut failures) = (0, Vec::new());
    for (interpolation, names) in &files {
        for mode in modes {
            let (name, (height, width), preprocess) = open_clip_mode(mode, interpolation);
            for file in names {
                let key = format!("{name}/{interpolation}/{file}");
                let (shape, want) = reference_tensor(OPEN_CLIP_PIL_MODES, &key);
                assert_eq!(shape, [3, height, width], "{key}");
                let image = decode_image(&repo_path(&format!("{IMAGES}/{file}"))).unwrap();
                let got = preprocess.pixels_of(&image).unwrap();
                let unequal = got
                    .iter()
                    .zip(&want)
                    .filter(|&(&g, &w)| f64::from(g) != w)
                    .count();
                if unequal > 0 {
                    failures.push(format!(
                        "{key}: {unequal} of {} values differ, max |Δ| {:.3}",
                        want.len(),
                        max_abs(&got, &want)
                    ));
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4 * (9 + 6));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A random-init open_clip model with a 24×32 input and resize_mode "longest": its own
/// preprocessing of the photos, then the tower, end to end.
fn a_non_square_open_clip_model_embeds_as_open_clip_does(be: &Arc<dyn Backend>) {
    let model = load("open_clip-longest", be);
    let tower = model.image_tower().unwrap();
    assert_eq!(tower.preprocess().output_size(), (24, 32));
    let list = images_json("open_clip_modes.json");
    let photos: Vec<String> = serde_json::from_value(list["photos"].clone()).unwrap();
    let (_, want_pixels) = reference_tensor(OPEN_CLIP_MODES, "open_clip-longest/pixels");
    let mut pixels = Vec::new();
    for photo in &photos {
        let image = decode_image(&repo_path(&format!("{FIXTURES}/photos/{photo}"))).unwrap();
        pixels.extend(tower.preprocess().pixels_of(&image).unwrap());
    }
    let diff = max_abs(&pixels, &want_pixels);
    assert!(diff <= 1e-5, "pixels max |Δ| {diff}");
    let got = be
        .download(&tower.embed_pixels(&pixels, photos.len()).unwrap())
        .unwrap();
    let (_, want) = reference_tensor(OPEN_CLIP_MODES, "open_clip-longest/image_embeds");
    assert_embeddings("open_clip-longest", &got, &want, tower.embedding_dim());
}

// ---- torch.save checkpoints through the restricted unpickler (tools/make_image_fixtures.py) ----

const PICKLES: &str = "tests/fixtures/images/pickle";

/// f32, f16 and bf16 tensors, a 0-d one, a transposed view and an offset slice sharing one
/// storage: the bytes torch.save stored, made contiguous, equal safetensors' exactly.
#[test]
fn pickled_tensors_load_as_torch_saved_them() {
    use mscope::weights::torch_pickle::read_torch_checkpoint;
    let tensors = read_torch_checkpoint(&repo_path(&format!("{PICKLES}/tensors.bin"))).unwrap();
    let reference = std::fs::read(repo_path(&format!("{PICKLES}/tensors.safetensors"))).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&reference).unwrap();
    assert_eq!(tensors.len(), reference.len());
    for (name, tensor) in &tensors {
        let want = reference.tensor(name).unwrap();
        assert_eq!(tensor.dtype, want.dtype(), "{name}");
        assert_eq!(tensor.shape, want.shape(), "{name}");
        assert_eq!(tensor.bytes, want.data(), "{name}");
    }
}

/// A pickle whose value is made by calling `os.system` is refused, naming the global, before
/// anything is built.
#[test]
fn a_pickle_calling_os_system_is_refused() {
    let path = repo_path(&format!("{PICKLES}/os_system.bin"));
    let err = mscope::weights::torch_pickle::read_torch_checkpoint(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("os_system.bin") && err.contains("`posix.system`") && err.contains("refused"),
        "{err}"
    );
}

/// open_clip's older upload format: the same model as open_clip-tiny, saved by torch.save as
/// a state dict (an OrderedDict with `_metadata`), embeds images and texts identically.
#[test]
fn an_open_clip_pytorch_model_bin_loads_like_its_safetensors() {
    let be: Arc<dyn Backend> = Arc::new(mscope::backend::cpu::CpuBackend::new());
    let model = load("open_clip-pickle", &be);
    let (shape, pixels) = reference_tensor(REFERENCE, "open_clip-tiny/pixels");
    let pixels: Vec<f32> = pixels.iter().map(|&v| v as f32).collect();
    let got = be
        .download(&model.embed_pixels(&pixels, shape[0]).unwrap())
        .unwrap();
    let (_, want) = reference_tensor(REFERENCE, "open_clip-tiny/image_embeds");
    assert_embeddings(
        "open_clip-pickle",
        &got,
        &want,
        Encoder::embedding_dim(&model),
    );
}

/// `--images LIST.csv`: rows in the list's order, paths relative to it, labels from the column
/// named by `--label-field`, the image column named by `--image-field`.
#[test]
fn cli_embeds_an_image_list_with_its_labels() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("imgs")).unwrap();
    for photo in ["people/astronaut.png", "animals/chelsea.png"] {
        let name = Path::new(photo).file_name().unwrap();
        std::fs::copy(
            repo_path(&format!("{FIXTURES}/photos/{photo}")),
            dir.path().join("imgs").join(name),
        )
        .unwrap();
    }
    let list = dir.path().join("list.csv");
    std::fs::write(
        &list,
        "path,kind\nimgs/astronaut.png,person\nimgs/chelsea.png,cat\n",
    )
    .unwrap();
    let out = dir.path().join("list.safetensors");
    common::run_mscope_ok(&[
        "embed",
        "--model",
        model_dir("open_clip-tiny").to_str().unwrap(),
        "--images",
        list.to_str().unwrap(),
        "--image-field",
        "path",
        "--label-field",
        "kind",
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    let file = mscope::io::embeddings::EmbeddingsFile::read(&out).unwrap();
    assert_eq!(file.label_names, ["cat", "person"]);
    assert_eq!(file.labels, [1, 0]);
    let (_, want) = reference_tensor(REFERENCE, "open_clip-tiny/image_embeds");
    let references = photos();
    for (row, name) in ["astronaut.png", "chelsea.png"].iter().enumerate() {
        let i = references.iter().position(|p| p.ends_with(name)).unwrap();
        let want_row: Vec<f32> = want[i * file.dim..(i + 1) * file.dim]
            .iter()
            .map(|&v| v as f32)
            .collect();
        let cos = cosine(file.row(row), &want_row);
        assert!(cos >= MIN_COSINE, "{name}: cosine {cos}");
    }
}

// ---- bad inputs, --skip-bad, and the PCA contact sheet of image embeddings ----

/// `mscope embed --images` on the fixture photos with the tiny open_clip model into `out`, from
/// `args` besides.
fn embed_images(images: &[&Path], out: &Path, args: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = vec![
        "embed".into(),
        "--model".into(),
        model_dir("open_clip-tiny").display().to_string(),
        "--images".into(),
    ];
    all.extend(images.iter().map(|p| p.display().to_string()));
    all.extend(["--out".into(), out.display().to_string()]);
    all.extend(["--backend".into(), "cpu".into()]);
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    common::run_mscope(&all)
}

/// A PNG whose compressed pixels are damaged (the chunk's CRC no longer matches) and a JPEG whose
/// header claims more pixels than the limit (refused before anything is allocated), and a GIF
/// whose frame is far larger than its screen, are errors naming the file.
#[test]
fn corrupt_and_oversized_images_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut png =
        std::fs::read(repo_path(&format!("{FIXTURES}/photos/animals/chelsea.png"))).unwrap();
    let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
    for byte in &mut png[idat + 20..idat + 40] {
        *byte ^= 0x5A;
    }
    let corrupt = dir.path().join("corrupt.png");
    std::fs::write(&corrupt, &png).unwrap();

    let small = dir.path().join("small.jpg");
    image::RgbImage::from_pixel(16, 16, image::Rgb([90, 140, 200]))
        .save(&small)
        .unwrap();
    let mut jpeg = std::fs::read(&small).unwrap();
    // The baseline frame header: FF C0, length, precision, then height and width (big-endian).
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]); // 65000 × 65000
    let huge = dir.path().join("huge.jpg");
    std::fs::write(&huge, &jpeg).unwrap();

    // Found by fuzzing: a 45 × 34 GIF whose first frame claims 65 491 × 65 501 pixels (17 GB
    // of frame buffer) is refused by the decoder's allocation limit.
    let gif = repo_path("fuzz/artifacts/image/gif-frame-larger-than-screen.gif");

    for (path, needle) in [
        (&corrupt, "cannot decode"),
        (&gif, "cannot decode: Memory limit exceeded"),
        (
            &huge,
            "65000×65000 = 4225000000 pixels is over the limit of 178956970",
        ),
    ] {
        let err = decode_rgb(path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(needle), "{err}");
    }
}

/// A 1×1 image is valid for transformers and open_clip (upscaled to the input size): it embeds,
/// exactly as a solid image of its colour at the model's input size does.
#[test]
fn a_one_pixel_image_embeds_as_a_solid_image_of_its_colour() {
    let dir = tempfile::tempdir().unwrap();
    let colour = image::Rgb([200, 100, 7]);
    let dot = dir.path().join("dot.png");
    image::RgbImage::from_pixel(1, 1, colour)
        .save(&dot)
        .unwrap();
    let solid = dir.path().join("solid.png");
    image::RgbImage::from_pixel(32, 32, colour)
        .save(&solid)
        .unwrap();
    let out = dir.path().join("dot.safetensors");
    let run = embed_images(&[&dot, &solid], &out, &["--batch-size", "1"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let file = mscope::io::embeddings::EmbeddingsFile::read(&out).unwrap();
    assert_eq!(file.rows(), 2);
    assert!(file.row(0).iter().all(|v| v.is_finite()));
    assert_eq!(file.row(0), file.row(1));
}

/// Without `--skip-bad` the first bad file is an error naming it; with it every bad file (a
/// non-image, a corrupt image, a refused CMYK JPEG) is listed on stderr and counted, the rest
/// embedded exactly as on their own, labels left without images dropped; all bad is an error,
/// and so is an empty folder.
#[test]
fn skip_bad_lists_every_skipped_file_and_embeds_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("photos");
    for folder in ["cats", "cmyk", "people"] {
        std::fs::create_dir_all(root.join(folder)).unwrap();
    }
    let fixture = |name: &str| repo_path(&format!("{FIXTURES}/{name}"));
    std::fs::copy(
        fixture("photos/animals/chelsea.png"),
        root.join("cats/chelsea.png"),
    )
    .unwrap();
    std::fs::write(
        root.join("cats/corrupt.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    std::fs::write(root.join("cats/notes.txt"), b"notes").unwrap();
    std::fs::copy(fixture("bad/cmyk.jpg"), root.join("cmyk/cmyk.jpg")).unwrap();
    std::fs::copy(
        fixture("photos/people/astronaut.png"),
        root.join("people/astronaut.png"),
    )
    .unwrap();
    let out = dir.path().join("out.safetensors");

    let refused = embed_images(&[&root], &out, &[]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.contains("notes.txt") && err.contains("not an image file"),
        "{err}"
    );
    std::fs::rename(root.join("cats/notes.txt"), dir.path().join("notes.txt")).unwrap();
    let refused = embed_images(&[&root], &out, &[]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("corrupt.png") && err.contains("cannot decode"),
        "{err}"
    );
    assert!(!out.exists(), "a failed run writes nothing");
    std::fs::rename(dir.path().join("notes.txt"), root.join("cats/notes.txt")).unwrap();

    // Batches of one: the batches of skipped images have nothing to run.
    let skipping = embed_images(&[&root], &out, &["--skip-bad", "--batch-size", "1"]);
    let err = String::from_utf8_lossy(&skipping.stderr);
    assert!(skipping.status.success(), "{err}");
    assert!(err.contains("skipped 3 of 5 files (--skip-bad)"), "{err}");
    for needle in [
        "cats/notes.txt: not an image file",
        "cats/corrupt.png: cannot decode",
        "cmyk/cmyk.jpg: CMYK JPEGs are not supported",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let file = mscope::io::embeddings::EmbeddingsFile::read(&out).unwrap();
    assert_eq!(file.label_names, ["cats", "people"]);
    assert_eq!(file.labels, [0, 1]);
    let paths = mscope::io::embeddings::read_texts_beside(&out, 2)
        .unwrap()
        .unwrap();
    let good = [
        root.join("cats/chelsea.png"),
        root.join("people/astronaut.png"),
    ];
    assert_eq!(paths, good.each_ref().map(|p| p.display().to_string()));

    let clean = dir.path().join("clean.safetensors");
    let run = embed_images(&[&good[0], &good[1]], &clean, &["--batch-size", "1"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let clean = mscope::io::embeddings::EmbeddingsFile::read(&clean).unwrap();
    assert_eq!(file.embeddings, clean.embeddings);

    let bad_only = root.join("cmyk");
    let out2 = dir.path().join("none.safetensors");
    let none = embed_images(&[&bad_only], &out2, &["--skip-bad"]);
    let err = String::from_utf8_lossy(&none.stderr);
    assert_eq!(none.status.code(), Some(1), "{err}");
    assert!(
        err.contains("skipped 1 of 1 files") && err.contains("cmyk.jpg"),
        "{err}"
    );
    assert!(
        err.contains("every one of the 1 files was skipped"),
        "{err}"
    );
    assert!(!out2.exists());

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let none = embed_images(&[&empty], &out2, &["--skip-bad"]);
    let err = String::from_utf8_lossy(&none.stderr);
    assert_eq!(none.status.code(), Some(1), "{err}");
    assert!(err.contains("empty: the folder holds no images"), "{err}");
}

/// What the contact sheet should show in a cell: the image over white, fitted inside the
/// thumbnail square by Pillow's bicubic resize (sides `round(side / ratio)`, halves to even),
/// centred (margin's odd pixel after) on the fill grey.
fn expected_thumbnail(path: &Path) -> Vec<u8> {
    use mscope::report::contact_sheet::{FILL, THUMB};
    let image = decode_image(path).unwrap().to_rgb(Alpha::OverWhite);
    let ratio = (image.width as f64 / THUMB as f64).max(image.height as f64 / THUMB as f64);
    let side = |s: usize| ((s as f64 / ratio).round_ties_even() as usize).max(1);
    let (w, h) = (side(image.width), side(image.height));
    let small = mscope::models::image::resize(&image, w, h, Filter::Bicubic);
    let (left, top) = ((THUMB - w) / 2, (THUMB - h) / 2);
    let mut cell = vec![FILL; THUMB * THUMB * 3];
    for y in 0..h {
        let at = ((top + y) * THUMB + left) * 3;
        cell[at..at + w * 3].copy_from_slice(&small.data[y * w * 3..(y + 1) * w * 3]);
    }
    cell
}

/// `pca --explain N --contact-sheet` on image embeddings: a PNG of the sheet's documented size
/// whose every cell is the thumbnail of the image the report lists at that place, with a
/// caption under it; the same bytes on a second run; clear errors without `--explain` or
/// without image paths.
#[test]
fn pca_contact_sheet_shows_the_images_at_either_end_of_each_component() {
    use mscope::report::contact_sheet::{cell_origin, size, Block, CAPTION, THUMB};
    let dir = tempfile::tempdir().unwrap();
    let emb = dir.path().join("photos.safetensors");
    let run = embed_images(&[&repo_path(&format!("{FIXTURES}/photos"))], &emb, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (k, n) = (2, 2);
    let sheet = |name: &str| {
        let sheet = dir.path().join(name);
        let report = dir.path().join(format!("{name}.json"));
        let stdout = common::run_mscope_ok(&[
            "pca",
            "--input",
            emb.to_str().unwrap(),
            "--components",
            &k.to_string(),
            "--explain",
            &n.to_string(),
            "--out",
            report.to_str().unwrap(),
            "--contact-sheet",
            sheet.to_str().unwrap(),
            "--backend",
            "cpu",
        ])
        .stdout;
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
        // The images at either end are listed by path.
        let lowest = report["explain"][0]["lowest"][0]["text"].as_str().unwrap();
        assert!(String::from_utf8_lossy(&stdout).contains(lowest));
        (sheet, report)
    };
    let (first, report) = sheet("sheet.png");
    let png = image::open(&first).unwrap().to_rgb8();
    let (width, height) = size(k, n);
    assert_eq!(
        (png.width() as usize, png.height() as usize),
        (width, height)
    );
    let png = &png;
    let cell_at = |(x, y): (usize, usize), rows: usize| -> Vec<u8> {
        let mut pixels = Vec::with_capacity(rows * THUMB * 3);
        for row in y..y + rows {
            for col in x..x + THUMB {
                pixels.extend(png.get_pixel(col as u32, row as u32).0);
            }
        }
        pixels
    };
    for (c, ends) in report["explain"].as_array().unwrap().iter().enumerate() {
        let lowest = ends["lowest"].as_array().unwrap();
        let highest = ends["highest"].as_array().unwrap();
        // Lowest first on the left; highest last on the right.
        let placed = lowest
            .iter()
            .enumerate()
            .map(|(i, r)| (Block::Low, i, r))
            .chain(
                highest
                    .iter()
                    .rev()
                    .enumerate()
                    .map(|(i, r)| (Block::High, i, r)),
            );
        for (block, i, row) in placed {
            let path = Path::new(row["text"].as_str().unwrap());
            let origin = cell_origin(c, block, i, n);
            assert!(
                cell_at(origin, THUMB) == expected_thumbnail(path),
                "PC{} {block:?} {i}: the cell is not the thumbnail of {}",
                c + 1,
                path.display()
            );
            let caption = cell_at((origin.0, origin.1 + THUMB), CAPTION);
            assert!(
                caption.iter().any(|&v| v < 128),
                "no caption under {}",
                path.display()
            );
        }
    }
    let (second, _) = sheet("again.png");
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(second).unwrap()
    );

    let no_explain = dir.path().join("x.png");
    common::assert_fails_cleanly(
        &[
            "pca",
            "--input",
            emb.to_str().unwrap(),
            "--contact-sheet",
            no_explain.to_str().unwrap(),
        ],
        &["--contact-sheet", "--explain N"],
    );
    // Embeddings whose sidecar holds texts, not image paths.
    let text_embeddings = dir.path().join("texts.safetensors");
    let texts_list = dir.path().join("texts.txt");
    std::fs::write(&texts_list, texts().join("\n")).unwrap();
    common::run_mscope_ok(&[
        "embed",
        "--model",
        model_dir("open_clip-tiny").to_str().unwrap(),
        "--input",
        texts_list.to_str().unwrap(),
        "--out",
        text_embeddings.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    let sheet_of_texts = [
        "pca",
        "--input",
        text_embeddings.to_str().unwrap(),
        "--components",
        "2",
        "--explain",
        "1",
        "--contact-sheet",
        no_explain.to_str().unwrap(),
    ];
    common::assert_fails_cleanly(
        &sheet_of_texts,
        &["image not found", "relative to the folder"],
    );
    std::fs::remove_file(mscope::io::embeddings::texts_sidecar_path(&text_embeddings)).unwrap();
    common::assert_fails_cleanly(
        &sheet_of_texts,
        &[
            "needs the image path of every row",
            "texts.safetensors.texts.jsonl",
        ],
    );
    assert!(!no_explain.exists());
}
