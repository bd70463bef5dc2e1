//! Image input for vision towers: decoding to RGB as PIL's `convert("RGB")` does, resizing with
//! Pillow's own resampling algorithm, cropping and normalising as the two preprocessors users
//! run do — Hugging Face's `CLIPImageProcessor` (PIL backend) and open_clip's torchvision
//! transform — so pixel tensors match theirs.
//!
//! Pillow resizes in two separable passes, horizontal then vertical, each rounding back to 8-bit
//! pixels. Each output pixel is a weighted sum over a window of input pixels whose width grows
//! with the downscale factor (the filter is stretched by it: antialiasing); the weights are
//! normalised in f64 and then turned into 22-bit fixed point, and sums are rounded by adding half
//! before the shift. [`resize`] reproduces that arithmetic step for step, so its output is PIL's
//! byte for byte.

use std::io::Cursor;
use std::path::Path;

use image::{ColorType, ImageFormat};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// File extensions (lower case) that [`decode_rgb`] reads.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The most pixels one image may have (PIL's decompression-bomb limit, `2 × MAX_IMAGE_PIXELS`):
/// a larger one is refused before its pixels are allocated.
pub const MAX_PIXELS: u64 = 178_956_970;

/// OpenAI CLIP's normalisation, the default of both preprocessors.
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// An 8-bit RGB image, rows top to bottom, pixels interleaved `r, g, b`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Rgb8 {
    /// The `width × height` window whose top-left corner is `(left, top)`; it must lie inside.
    pub fn crop(&self, left: usize, top: usize, width: usize, height: usize) -> Rgb8 {
        assert!(left + width <= self.width && top + height <= self.height);
        let mut data = Vec::with_capacity(width * height * 3);
        for row in top..top + height {
            let start = (row * self.width + left) * 3;
            data.extend_from_slice(&self.data[start..start + width * 3]);
        }
        Rgb8 {
            width,
            height,
            data,
        }
    }
}

/// Decodes a PNG or JPEG file into 8-bit RGB as PIL's `Image.open(path).convert("RGB")` does:
/// grey replicated into the three channels, alpha dropped. 16-bit images are refused (PIL clips
/// them to 8 bits rather than scaling, which no model was trained on), and so is an image over
/// [`MAX_PIXELS`].
pub fn decode_rgb(path: &Path) -> Result<Rgb8> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |what: String| Error::input(format!("{}: {what}", path.display()));
    let reader = || {
        image::io::Reader::new(Cursor::new(&bytes))
            .with_guessed_format()
            .map_err(|e| Error::io(path, e))
    };
    match reader()?.format() {
        Some(ImageFormat::Png) => {}
        Some(ImageFormat::Jpeg) => {
            if jpeg_components(&bytes) == Some(4) {
                return Err(bad(
                    "CMYK JPEGs are not supported (PIL and the decoder here turn CMYK into RGB \
                     differently); convert it to RGB first"
                        .into(),
                ));
            }
        }
        Some(other) => {
            return Err(bad(format!(
                "{other:?} images are not supported (supported: PNG, JPEG)"
            )))
        }
        None => return Err(bad("not a PNG or JPEG image".into())),
    }
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| bad(format!("cannot read the image header: {e}")))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_PIXELS {
        return Err(bad(format!(
            "{width}×{height} = {pixels} pixels is over the limit of {MAX_PIXELS}"
        )));
    }
    if pixels == 0 {
        return Err(bad("the image has no pixels".into()));
    }
    let decoded = reader()?
        .decode()
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    match decoded.color() {
        ColorType::L8 | ColorType::La8 | ColorType::Rgb8 | ColorType::Rgba8 => {}
        other => {
            return Err(bad(format!(
                "{other:?} pixels are not supported (8-bit grey, grey+alpha, RGB or RGBA only)"
            )))
        }
    }
    let rgb = decoded.into_rgb8();
    Ok(Rgb8 {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    })
}

/// The number of colour components a JPEG's frame header declares (3 for YCbCr, 4 for CMYK or
/// YCCK), or `None` where no frame header is found.
fn jpeg_components(bytes: &[u8]) -> Option<u8> {
    // Segments after the SOI marker: 0xFF, a marker byte, a big-endian length that counts
    // itself; a start-of-frame segment holds precision, height, width, then the component count.
    let mut at = 2;
    while at + 4 <= bytes.len() {
        if bytes[at] != 0xFF {
            return None;
        }
        let marker = bytes[at + 1];
        if marker == 0xFF {
            at += 1; // fill byte
            continue;
        }
        let length = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        let is_frame = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_frame {
            return bytes.get(at + 9).copied();
        }
        if marker == 0xDA {
            return None; // scan data before any frame header
        }
        at += 2 + length;
    }
    None
}

/// PIL's resampling filters (`Image.Resampling`), by the code preprocessor configs store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `BILINEAR` (2): the triangle filter, support 1.
    Bilinear,
    /// `BICUBIC` (3): Keys' cubic with `a = -0.5`, support 2.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }

    /// The filter of a PIL resample code or an open_clip interpolation name.
    fn from_pil_code(code: i64) -> Option<Self> {
        match code {
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            _ => None,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "bilinear" => Some(Filter::Bilinear),
            "bicubic" => Some(Filter::Bicubic),
            _ => None,
        }
    }
}

/// Fractional bits of Pillow's fixed-point weights for 8-bit images (`32 − 8 − 2`).
const PRECISION_BITS: u32 = 22;

/// One axis of a resize: for each output index, the first input index of its window and the
/// window's fixed-point weights.
struct Kernel {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl Kernel {
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Kernel {
        let scale = in_size as f64 / out_size as f64;
        // Downscaling stretches the filter over `scale` input pixels per output pixel.
        let filter_scale = scale.max(1.0);
        let support = filter.support() * filter_scale;
        // Pillow multiplies by the reciprocal rather than dividing: kept, for identical weights.
        let inverse_scale = 1.0 / filter_scale;
        let mut first = Vec::with_capacity(out_size);
        let mut weights = Vec::with_capacity(out_size);
        for out in 0..out_size {
            let center = (out as f64 + 0.5) * scale;
            // C's truncating casts, as Pillow rounds the window's ends.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (lo..hi)
                .map(|x| filter.weight((x as f64 - center + 0.5) * inverse_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    // Round half away from zero, then truncate as C's cast does.
                    (if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            first.push(lo);
            weights.push(fixed);
        }
        Kernel { first, weights }
    }

    /// Output value of one channel from the input values `at(first + i)` of its window.
    #[inline]
    fn apply(&self, out: usize, at: impl Fn(usize) -> u8) -> u8 {
        let start = self.first[out];
        let mut sum: i64 = 1 << (PRECISION_BITS - 1);
        for (i, &w) in self.weights[out].iter().enumerate() {
            sum += i64::from(at(start + i)) * i64::from(w);
        }
        (sum >> PRECISION_BITS).clamp(0, 255) as u8
    }
}

/// Resizes to `width × height` exactly as Pillow's `Image.resize` does for an RGB image (no
/// reducing gap): a horizontal pass, then a vertical pass, each rounded to 8 bits; an axis whose
/// size does not change is not resampled.
pub fn resize(image: &Rgb8, width: usize, height: usize, filter: Filter) -> Rgb8 {
    let mut current = image.clone();
    if width != current.width {
        let kernel = Kernel::new(current.width, width, filter);
        let mut data = vec![0u8; width * current.height * 3];
        for (row, out_row) in data.chunks_exact_mut(width * 3).enumerate() {
            let in_row = &current.data[row * current.width * 3..(row + 1) * current.width * 3];
            for (x, px) in out_row.chunks_exact_mut(3).enumerate() {
                for (c, v) in px.iter_mut().enumerate() {
                    *v = kernel.apply(x, |i| in_row[i * 3 + c]);
                }
            }
        }
        current = Rgb8 {
            width,
            height: current.height,
            data,
        };
    }
    if height != current.height {
        let kernel = Kernel::new(current.height, height, filter);
        let stride = current.width * 3;
        let mut data = vec![0u8; stride * height];
        for (y, out_row) in data.chunks_exact_mut(stride).enumerate() {
            for (col, v) in out_row.iter_mut().enumerate() {
                *v = kernel.apply(y, |i| current.data[i * stride + col]);
            }
        }
        current = Rgb8 {
            width: current.width,
            height,
            data,
        };
    }
    current
}

/// How an image is brought to the model's input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// The shortest side resized to `shortest` (the other in proportion, truncated), then the
    /// centre `crop_width × crop_height` cut out.
    ShortestThenCrop {
        shortest: usize,
        crop_width: usize,
        crop_height: usize,
    },
    /// Both sides resized to `width × height`, the aspect ratio ignored (open_clip's "squash").
    Squash { width: usize, height: usize },
}

/// Where a centre crop starts when the margin is odd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CropRounding {
    /// `margin // 2` (transformers' `center_crop`).
    Floor,
    /// `round(margin / 2)`, halves to even (torchvision's `CenterCrop`, which open_clip uses).
    HalfToEven,
}

impl CropRounding {
    fn offset(self, margin: usize) -> usize {
        match self {
            CropRounding::Floor => margin / 2,
            CropRounding::HalfToEven => {
                let half = margin / 2;
                // An odd margin sits on .5: round to the even neighbour.
                if margin % 2 == 1 && half % 2 == 1 {
                    half + 1
                } else {
                    half
                }
            }
        }
    }
}

/// A model's image preprocessing: resize, crop, scale to [0, 1], normalise per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    pub mode: ResizeMode,
    pub filter: Filter,
    pub crop_rounding: CropRounding,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// Height and width of the pixel tensor [`Preprocess::pixels`] returns.
    pub fn output_size(&self) -> (usize, usize) {
        match self.mode {
            ResizeMode::ShortestThenCrop {
                crop_width,
                crop_height,
                ..
            } => (crop_height, crop_width),
            ResizeMode::Squash { width, height } => (height, width),
        }
    }

    /// The resized and cropped 8-bit image, before scaling and normalisation.
    pub fn resized(&self, image: &Rgb8) -> Result<Rgb8> {
        match self.mode {
            ResizeMode::Squash { width, height } => Ok(resize(image, width, height, self.filter)),
            ResizeMode::ShortestThenCrop {
                shortest,
                crop_width,
                crop_height,
            } => {
                let (w, h) = (image.width, image.height);
                let (short, long) = (w.min(h), w.max(h));
                // Python's `int(shortest * long / short)`: exact products, one rounding.
                let other = (shortest as f64 * long as f64 / short as f64) as usize;
                let (new_w, new_h) = if w <= h {
                    (shortest, other)
                } else {
                    (other, shortest)
                };
                if (new_w as u64) * (new_h as u64) > MAX_PIXELS {
                    return Err(Error::input(format!(
                        "a {w}×{h} image would be resized to {new_w}×{new_h}, over the limit of \
                         {MAX_PIXELS} pixels"
                    )));
                }
                if new_w < crop_width || new_h < crop_height {
                    return Err(Error::input(format!(
                        "a {w}×{h} image resized to {new_w}×{new_h} is smaller than the \
                         {crop_width}×{crop_height} crop (padding is not supported)"
                    )));
                }
                let resized = resize(image, new_w, new_h, self.filter);
                let left = self.crop_rounding.offset(new_w - crop_width);
                let top = self.crop_rounding.offset(new_h - crop_height);
                Ok(resized.crop(left, top, crop_width, crop_height))
            }
        }
    }

    /// The model input of one image: `[3, height, width]` f32, channel planes, each value
    /// `(v / 255 − mean) / std`.
    pub fn pixels(&self, image: &Rgb8) -> Result<Vec<f32>> {
        let resized = self.resized(image)?;
        let plane = resized.width * resized.height;
        let mut out = vec![0.0f32; 3 * plane];
        for (i, px) in resized.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (f32::from(px[c]) / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        Ok(out)
    }

    /// Hugging Face's `preprocessor_config.json` (CLIPImageProcessor's fields and defaults).
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default = "yes")]
            do_resize: bool,
            #[serde(default = "yes")]
            do_center_crop: bool,
            #[serde(default = "yes")]
            do_rescale: bool,
            #[serde(default = "yes")]
            do_normalize: bool,
            size: Option<Value>,
            crop_size: Option<Value>,
            rescale_factor: Option<f64>,
            resample: Option<i64>,
            image_mean: Option<[f32; 3]>,
            image_std: Option<[f32; 3]>,
        }
        fn yes() -> bool {
            true
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |what: String| Error::input(format!("{}: {what}", path.display()));
        let raw: Raw = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not an image processor config: {e}")))?;
        if !(raw.do_resize && raw.do_center_crop && raw.do_rescale && raw.do_normalize) {
            return Err(bad(
                "do_resize, do_center_crop, do_rescale and do_normalize must all be true".into(),
            ));
        }
        if raw
            .rescale_factor
            .is_some_and(|f| (f - 1.0 / 255.0).abs() > 1e-12)
        {
            return Err(bad(format!(
                "rescale_factor {:?} is not supported (only 1/255)",
                raw.rescale_factor
            )));
        }
        let resample = raw.resample.unwrap_or(3);
        let filter = Filter::from_pil_code(resample).ok_or_else(|| {
            bad(format!(
                "resample {resample} is not supported (2 bilinear, 3 bicubic)"
            ))
        })?;
        let shortest = match &raw.size {
            None => 224,
            Some(v) => match (v.as_u64(), v.get("shortest_edge").and_then(Value::as_u64)) {
                (Some(n), _) | (None, Some(n)) => n as usize,
                _ => {
                    return Err(bad(format!(
                        "size {v} is not supported (an integer or {{\"shortest_edge\": N}})"
                    )))
                }
            },
        };
        let (crop_height, crop_width) = match &raw.crop_size {
            None => (224, 224),
            Some(v) => match (
                v.as_u64(),
                v.get("height").and_then(Value::as_u64),
                v.get("width").and_then(Value::as_u64),
            ) {
                (Some(n), _, _) => (n as usize, n as usize),
                (None, Some(h), Some(w)) => (h as usize, w as usize),
                _ => {
                    return Err(bad(format!(
                        "crop_size {v} is not supported (an integer or {{\"height\", \"width\"}})"
                    )))
                }
            },
        };
        if shortest == 0 || crop_width == 0 || crop_height == 0 {
            return Err(bad("size and crop_size must be positive".into()));
        }
        Ok(Preprocess {
            mode: ResizeMode::ShortestThenCrop {
                shortest,
                crop_width,
                crop_height,
            },
            filter,
            crop_rounding: CropRounding::Floor,
            mean: raw.image_mean.unwrap_or(OPENAI_MEAN),
            std: raw.image_std.unwrap_or(OPENAI_STD),
        })
    }

    /// open_clip's inference transform for a square `image_size` from the `preprocess_cfg` of an
    /// `open_clip_config.json` (`path` names it in errors): `resize_mode` "shortest" (torchvision's
    /// `Resize` then `CenterCrop`) or "squash".
    pub fn from_open_clip(path: &Path, image_size: usize, cfg: Option<&Value>) -> Result<Self> {
        let bad =
            |what: String| Error::input(format!("{}: preprocess_cfg: {what}", path.display()));
        let field = |name: &str| cfg.and_then(|c| c.get(name));
        let triple = |name: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match field(name) {
                None => Ok(default),
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|_| bad(format!("{name} {v} is not three numbers"))),
            }
        };
        let interpolation = field("interpolation")
            .and_then(Value::as_str)
            .unwrap_or("bicubic");
        let filter = Filter::from_name(interpolation).ok_or_else(|| {
            bad(format!(
                "interpolation {interpolation:?} is not supported (bicubic, bilinear)"
            ))
        })?;
        let mode = match field("resize_mode")
            .and_then(Value::as_str)
            .unwrap_or("shortest")
        {
            "shortest" => ResizeMode::ShortestThenCrop {
                shortest: image_size,
                crop_width: image_size,
                crop_height: image_size,
            },
            "squash" => ResizeMode::Squash {
                width: image_size,
                height: image_size,
            },
            other => {
                return Err(bad(format!(
                    "resize_mode {other:?} is not supported (shortest, squash)"
                )))
            }
        };
        Ok(Preprocess {
            mode,
            filter,
            crop_rounding: CropRounding::HalfToEven,
            mean: triple("mean", OPENAI_MEAN)?,
            std: triple("std", OPENAI_STD)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_offsets_follow_each_library() {
        let floor: Vec<usize> = (0..6).map(|m| CropRounding::Floor.offset(m)).collect();
        assert_eq!(floor, [0, 0, 1, 1, 2, 2]);
        // Python: round(0.5) = 0, round(1.5) = 2, round(2.5) = 2.
        let even: Vec<usize> = (0..6).map(|m| CropRounding::HalfToEven.offset(m)).collect();
        assert_eq!(even, [0, 0, 1, 2, 2, 2]);
    }

    #[test]
    fn filter_weights_sum_to_one_in_fixed_point() {
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            for (inp, out) in [(100, 7), (7, 100), (33, 33), (224, 64)] {
                let k = Kernel::new(inp, out, filter);
                for w in &k.weights {
                    let sum: i64 = w.iter().map(|&v| i64::from(v)).sum();
                    assert!((sum - (1 << PRECISION_BITS)).abs() <= w.len() as i64);
                }
            }
        }
    }
}
