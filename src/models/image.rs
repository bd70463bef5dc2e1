//! Image input for vision towers: decoding PNG, JPEG, WebP, GIF and TIFF as Pillow does, turning
//! them upright by their EXIF orientation, flattening transparency, resizing with Pillow's own
//! resampling algorithm, cropping and normalising as the two preprocessors users run do —
//! Hugging Face's `CLIPImageProcessor` (PIL backend) and open_clip's torchvision transform — so
//! pixel tensors match theirs.
//!
//! Two differences between the references matter for some images only:
//! - EXIF orientation: the pixels here are those of `ImageOps.exif_transpose(image)`. Neither
//!   transformers' processor nor open_clip's transform turns images themselves, so a comparison
//!   with a plain processor differs for photos whose orientation tag is not 1 (phone photos
//!   taken upright usually are stored sideways with tag 6).
//! - Transparency: transformers composites transparent pixels over white; open_clip's
//!   `convert("RGB")` drops the alpha and keeps the colour under it ([`Alpha`]).
//!
//! Pillow resizes in two separable passes, horizontal then vertical, each rounding back to 8-bit
//! pixels. Each output pixel is a weighted sum over a window of input pixels whose width grows
//! with the downscale factor (the filter is stretched by it: antialiasing); the weights are
//! normalised in f64 and then turned into 22-bit fixed point, and sums are rounded by adding half
//! before the shift. [`resize`] reproduces that arithmetic step for step, so its output is PIL's
//! byte for byte.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat};
use serde::Deserialize;
use serde_json::Value;

use super::exif::{self, Container, Orientation};
use crate::error::{Error, Result};

/// File extensions (lower case) that [`decode_rgb`] reads.
pub const IMAGE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "webp", "gif", "tif", "tiff"];

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

/// Decoded pixels, upright, before their conversion to RGB: interleaved RGB, or RGBA where the
/// file has transparency (an alpha channel, a transparent palette entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedImage {
    pub width: usize,
    pub height: usize,
    /// 3 or 4.
    pub channels: usize,
    pub data: Vec<u8>,
}

/// How transparency becomes RGB; the two preprocessors differ for transparent images only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpha {
    /// Dropped, the colour under it kept: Pillow's `convert("RGB")`, which open_clip uses.
    Drop,
    /// Composited over opaque white with Pillow's `alpha_composite` arithmetic, as transformers'
    /// `convert_to_rgb` does.
    OverWhite,
}

impl DecodedImage {
    pub fn to_rgb(&self, alpha: Alpha) -> Rgb8 {
        let data = if self.channels == 3 {
            self.data.clone()
        } else {
            self.data
                .chunks_exact(4)
                .flat_map(|p| {
                    let rgb = [p[0], p[1], p[2]];
                    match alpha {
                        Alpha::Drop => rgb,
                        Alpha::OverWhite => rgb.map(|c| over_white(c, p[3])),
                    }
                })
                .collect()
        };
        Rgb8 {
            width: self.width,
            height: self.height,
            data,
        }
    }
}

/// One channel `c` of opacity `a` over opaque white, rounded as Pillow's `alpha_composite`:
/// weights in 7 fractional bits, division by 255 as `((x >> 8) + x) >> 8` after adding half.
fn over_white(c: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    const BITS: u32 = 7;
    let (c, a) = (u32::from(c), u32::from(a));
    // Pillow's general weights: `a·255²·2⁷ / out_alpha` and its complement, where the output
    // alpha over an opaque background is 255² exactly.
    let coef1 = a * 255 * 255 * (1 << BITS) / (255 * 255);
    let coef2 = 255 * (1 << BITS) - coef1;
    let x = c * coef1 + 255 * coef2 + (0x80 << BITS);
    ((((x >> 8) + x) >> 8) >> BITS) as u8
}

/// Decodes a PNG, JPEG, WebP, GIF or TIFF file into upright 8-bit RGB as
/// `ImageOps.exif_transpose(Image.open(path)).convert("RGB")` does in Pillow; see
/// [`decode_image`].
pub fn decode_rgb(path: &Path) -> Result<Rgb8> {
    Ok(decode_image(path)?.to_rgb(Alpha::Drop))
}

/// Decodes a PNG, JPEG, WebP, GIF or TIFF file as Pillow reads it: palettes expanded, grey
/// replicated into the three channels, a GIF's first frame, 16-bit colour samples cut to their
/// high byte, then the EXIF orientation applied (JPEG, PNG, WebP, TIFF) as
/// `ImageOps.exif_transpose` does.
///
/// Refused, naming the file: 16-bit grey (Pillow clips it to 8 bits rather than scaling, which
/// no model was trained on), CMYK (decoders turn it into RGB differently), palette and YCbCr
/// TIFFs, and an image over [`MAX_PIXELS`].
pub fn decode_image(path: &Path) -> Result<DecodedImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |what: String| Error::input(format!("{}: {what}", path.display()));
    let format = image::guess_format(&bytes).ok();
    let (image, orientation) = match format {
        Some(ImageFormat::WebP) => decode_webp(&bytes).map_err(bad)?,
        Some(
            format @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::Tiff),
        ) => {
            let container = match format {
                ImageFormat::Png => Some(Container::Png),
                ImageFormat::Jpeg => Some(Container::Jpeg),
                ImageFormat::Tiff => Some(Container::Tiff),
                _ => None, // GIF has no EXIF
            };
            let orientation =
                container.map_or(Orientation::UPRIGHT, |c| exif::orientation(&bytes, c));
            (decode_with_image(&bytes, format).map_err(bad)?, orientation)
        }
        Some(other) => {
            return Err(bad(format!(
                "{other:?} images are not supported (supported: PNG, JPEG, WebP, GIF, TIFF)"
            )))
        }
        None => return Err(bad("not a PNG, JPEG, WebP, GIF or TIFF image".into())),
    };
    Ok(orientation.apply(image))
}

/// Refuses a `width × height` image that has no pixels or more than [`MAX_PIXELS`].
fn check_size(width: u32, height: u32) -> std::result::Result<(), String> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_PIXELS {
        return Err(format!(
            "{width}×{height} = {pixels} pixels is over the limit of {MAX_PIXELS}"
        ));
    }
    if pixels == 0 {
        return Err("the image has no pixels".into());
    }
    Ok(())
}

/// PNG, JPEG, GIF (first frame) and TIFF through the `image` crate.
fn decode_with_image(
    bytes: &[u8],
    format: ImageFormat,
) -> std::result::Result<DecodedImage, String> {
    use image::codecs::{gif::GifDecoder, jpeg::JpegDecoder, png::PngDecoder, tiff::TiffDecoder};
    let cannot = |e: image::ImageError| format!("cannot decode: {e}");
    if format == ImageFormat::Jpeg && jpeg_components(bytes) == Some(4) {
        return Err(
            "CMYK JPEGs are not supported (PIL and the decoder here turn CMYK into RGB \
                    differently); convert it to RGB first"
                .into(),
        );
    }
    fn checked<'a, D: ImageDecoder<'a>>(
        mut decoder: D,
    ) -> std::result::Result<DynamicImage, String> {
        let (width, height) = decoder.dimensions();
        check_size(width, height)?;
        // The header's size bounds the output, not what the decoder allocates on the way: a GIF
        // frame may claim 65 535 × 65 535 pixels inside a 45 × 34 screen. Capping the decoder's
        // own allocations at twice the output (plus room for line and inflate buffers) refuses
        // such a file before the allocation instead of running out of memory.
        let mut limits = image::io::Limits::default();
        limits.max_alloc = Some(decoder.total_bytes().saturating_mul(2) + (16 << 20));
        decoder
            .set_limits(limits)
            .map_err(|e| format!("cannot decode: {e}"))?;
        DynamicImage::from_decoder(decoder).map_err(|e| format!("cannot decode: {e}"))
    }
    let cursor = Cursor::new(bytes);
    let decoded = match format {
        ImageFormat::Png => checked(PngDecoder::new(cursor).map_err(cannot)?)?,
        ImageFormat::Jpeg => checked(JpegDecoder::new(cursor).map_err(cannot)?)?,
        ImageFormat::Gif => checked(GifDecoder::new(cursor).map_err(cannot)?)?,
        _ => {
            let decoder = TiffDecoder::new(cursor).map_err(|e| {
                format!(
                    "cannot decode: {e} (TIFFs are read in grey, RGB and RGBA; convert palette, \
                     CMYK or YCbCr ones to RGB first)"
                )
            })?;
            if decoder.original_color_type() == image::ExtendedColorType::Cmyk8 {
                return Err(
                    "CMYK TIFFs are not supported (PIL and the decoder here turn CMYK \
                            into RGB differently); convert it to RGB first"
                        .into(),
                );
            }
            checked(decoder)?
        }
    };
    let (width, height) = (decoded.width() as usize, decoded.height() as usize);
    // Pillow unpacks 16-bit colour by keeping each sample's high byte.
    let high_bytes = |samples: Vec<u16>| samples.iter().map(|&v| (v >> 8) as u8).collect();
    let (channels, data) = match decoded {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => {
            (3, decoded.into_rgb8().into_raw())
        }
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageRgba8(_) => {
            (4, decoded.into_rgba8().into_raw())
        }
        DynamicImage::ImageRgb16(rgb) => (3, high_bytes(rgb.into_raw())),
        DynamicImage::ImageRgba16(rgba) => (4, high_bytes(rgba.into_raw())),
        other => {
            return Err(format!(
                "{:?} pixels are not supported (8-bit grey, 8- or 16-bit RGB, with or without \
                 alpha; Pillow clips 16-bit grey to 8 bits instead of scaling it)",
                other.color()
            ))
        }
    };
    Ok(DecodedImage {
        width,
        height,
        channels,
        data,
    })
}

/// A WebP (lossy or lossless, the first frame of an animation) and the orientation of its EXIF
/// chunk.
fn decode_webp(bytes: &[u8]) -> std::result::Result<(DecodedImage, Orientation), String> {
    let cannot = |e: image_webp::DecodingError| format!("cannot decode: {e}");
    let mut decoder = image_webp::WebPDecoder::new(Cursor::new(bytes)).map_err(cannot)?;
    let (width, height) = decoder.dimensions();
    check_size(width, height)?;
    let size = decoder
        .output_buffer_size()
        .ok_or("the image is too large to decode")?;
    let mut data = vec![0u8; size];
    decoder.read_image(&mut data).map_err(cannot)?;
    let orientation = match decoder.exif_metadata().map_err(cannot)? {
        Some(exif) => exif::orientation(&exif, Container::WebpExif),
        None => Orientation::UPRIGHT,
    };
    let image = DecodedImage {
        width: width as usize,
        height: height as usize,
        channels: if decoder.has_alpha() { 4 } else { 3 },
        data,
    };
    Ok((image, orientation))
}

/// The number of colour components a JPEG's frame header declares (3 for YCbCr, 4 for CMYK or
/// YCCK), or `None` where no frame header is found: a start-of-frame segment holds precision,
/// height, width, then the component count.
fn jpeg_components(bytes: &[u8]) -> Option<u8> {
    exif::jpeg_segments(bytes)
        .find(|&(marker, _)| matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC))
        .and_then(|(_, payload)| payload.get(5).copied())
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
    /// Both sides scaled by one factor so the image fits inside `width × height`
    /// (`fit: Fit::Inside`, open_clip's "longest") or covers it (`Fit::Cover`, open_clip's
    /// "shortest" for a non-square size), each side rounded half to even; then padded with
    /// `fill` (grey level) to at least that size, centred, and the centre cut out.
    KeepRatio {
        width: usize,
        height: usize,
        fit: Fit,
        fill: u8,
    },
}

/// Whether [`ResizeMode::KeepRatio`] scales to fit inside the target or to cover it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    Inside,
    Cover,
}

/// `image` centred on a `fill`-grey canvas of at least `width × height`, as torchvision's `pad`
/// before a centre crop: a margin of `m` puts `m / 2` (floor) before the image, the rest after.
fn pad_to(image: &Rgb8, width: usize, height: usize, fill: u8) -> Rgb8 {
    if image.width >= width && image.height >= height {
        return image.clone();
    }
    let (out_w, out_h) = (image.width.max(width), image.height.max(height));
    let (left, top) = ((out_w - image.width) / 2, (out_h - image.height) / 2);
    let mut data = vec![fill; out_w * out_h * 3];
    for (y, row) in image.data.chunks_exact(image.width * 3).enumerate() {
        let at = ((top + y) * out_w + left) * 3;
        data[at..at + row.len()].copy_from_slice(row);
    }
    Rgb8 {
        width: out_w,
        height: out_h,
        data,
    }
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

/// A model's image preprocessing: transparency flattened, resize, crop, scale to [0, 1],
/// normalise per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    pub alpha: Alpha,
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
            ResizeMode::Squash { width, height } | ResizeMode::KeepRatio { width, height, .. } => {
                (height, width)
            }
        }
    }

    /// The model input of a decoded image: [`Preprocess::pixels`] of its RGB.
    pub fn pixels_of(&self, image: &DecodedImage) -> Result<Vec<f32>> {
        self.pixels(&image.to_rgb(self.alpha))
    }

    /// The resized and cropped 8-bit image, before scaling and normalisation.
    pub fn resized(&self, image: &Rgb8) -> Result<Rgb8> {
        match self.mode {
            ResizeMode::Squash { width, height } => Ok(resize(image, width, height, self.filter)),
            ResizeMode::KeepRatio {
                width,
                height,
                fit,
                fill,
            } => {
                let (w, h) = (image.width, image.height);
                let (ratio_w, ratio_h) = (w as f64 / width as f64, h as f64 / height as f64);
                let ratio = match fit {
                    Fit::Inside => ratio_w.max(ratio_h),
                    Fit::Cover => ratio_w.min(ratio_h),
                };
                // Python's `round(side / ratio)`: halves to even; at least one pixel, as
                // resizing to nothing is an error in PIL too.
                let side = |s: usize| ((s as f64 / ratio).round_ties_even() as usize).max(1);
                let (new_w, new_h) = (side(w), side(h));
                if (new_w as u64) * (new_h as u64) > MAX_PIXELS {
                    return Err(Error::input(format!(
                        "a {w}×{h} image would be resized to {new_w}×{new_h}, over the limit of \
                         {MAX_PIXELS} pixels"
                    )));
                }
                let resized = resize(image, new_w, new_h, self.filter);
                let padded = pad_to(&resized, width, height, fill);
                let left = self.crop_rounding.offset(padded.width - width);
                let top = self.crop_rounding.offset(padded.height - height);
                Ok(padded.crop(left, top, width, height))
            }
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
            alpha: Alpha::OverWhite,
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

    /// open_clip's inference transform for an image of `(height, width)` from the
    /// `preprocess_cfg` of an `open_clip_config.json` (`path` names it in errors), as
    /// `open_clip.transform.image_transform` builds it:
    /// - `resize_mode` "shortest" (the default): for a square size torchvision's `Resize` of the
    ///   shortest side then `CenterCrop`; for a non-square one `ResizeKeepRatio` covering the
    ///   target then `CenterCrop`. open_clip builds that `ResizeKeepRatio` without passing the
    ///   configured interpolation, so it is bicubic whatever the config says.
    /// - "longest": `ResizeKeepRatio` fitting inside the target, then `CenterCropOrPad` with
    ///   `fill_color`.
    /// - "squash": `Resize` of both sides.
    ///
    /// open_clip converts to RGB after resizing, so for palette images (which PIL resizes by
    /// nearest neighbour) and partly transparent ones (resized premultiplied) its pixels differ
    /// from those here, which are resized as RGB.
    pub fn from_open_clip(
        path: &Path,
        (height, width): (usize, usize),
        cfg: Option<&Value>,
    ) -> Result<Self> {
        let bad =
            |what: String| Error::input(format!("{}: preprocess_cfg: {what}", path.display()));
        let field = |name: &str| cfg.and_then(|c| c.get(name)).filter(|v| !v.is_null());
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
        let mut filter = Filter::from_name(interpolation).ok_or_else(|| {
            bad(format!(
                "interpolation {interpolation:?} is not supported (bicubic, bilinear)"
            ))
        })?;
        let fill = match field("fill_color") {
            None => 0,
            Some(v) => v
                .as_u64()
                .filter(|&f| f <= 255)
                .ok_or_else(|| bad(format!("fill_color {v} is not a grey level 0–255")))?
                as u8,
        };
        let mode = match field("resize_mode")
            .and_then(Value::as_str)
            .unwrap_or("shortest")
        {
            "shortest" if width == height => ResizeMode::ShortestThenCrop {
                shortest: width,
                crop_width: width,
                crop_height: height,
            },
            "shortest" => {
                filter = Filter::Bicubic;
                ResizeMode::KeepRatio {
                    width,
                    height,
                    fit: Fit::Cover,
                    // torchvision's CenterCrop pads with 0 (reached only through rounding).
                    fill: 0,
                }
            }
            "longest" => ResizeMode::KeepRatio {
                width,
                height,
                fit: Fit::Inside,
                fill,
            },
            "squash" => ResizeMode::Squash { width, height },
            other => {
                return Err(bad(format!(
                    "resize_mode {other:?} is not supported (shortest, longest, squash)"
                )))
            }
        };
        Ok(Preprocess {
            alpha: Alpha::Drop,
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
