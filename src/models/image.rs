//! Image input for vision towers: decoding PNG, JPEG, WebP, GIF and TIFF as Pillow does, turning
//! them upright by their EXIF orientation, flattening transparency, resizing with Pillow's own
//! resampling algorithm, cropping and normalising as the two preprocessors users run do —
//! Hugging Face's `CLIPImageProcessor` (PIL backend) and open_clip's torchvision transform — so
//! pixel tensors match theirs.
//!
//! Three differences between the references matter for some images only:
//! - EXIF orientation: the pixels here are those of `ImageOps.exif_transpose(image)`. Neither
//!   transformers' processor nor open_clip's transform turns images themselves, so a comparison
//!   with a plain processor differs for photos whose orientation tag is not 1 (phone photos
//!   taken upright usually are stored sideways with tag 6).
//! - Transparency: transformers composites transparent pixels over white; open_clip's
//!   `convert("RGB")` drops the alpha and keeps the colour under it ([`Alpha`]). A colour key (a
//!   grey or RGB PNG's tRNS) counts as transparency for transformers, whose `convert_to_rgb`
//!   composites any image with `info["transparency"]`: the pixels Pillow's `convert("RGBA")`
//!   finds equal to the key turn white. Pillow compares the key's low bytes with its 8-bit
//!   pixels, so in 16-bit RGB and 2- or 4-bit grey these are not the key's own pixels.
//! - When the image becomes RGB ([`RgbConversion`]): transformers converts first; open_clip
//!   resizes and pads the image in the mode Pillow opened it in ([`PilMode`]) and converts last.
//!   Pillow resizes palette ("P") and bilevel ("1") images by nearest neighbour whatever filter
//!   is asked, and images with alpha ("RGBA", "LA") with their colour premultiplied by it; a
//!   palette image is padded with a palette index, so its padding takes that entry's colour.
//!
//! Pillow resizes in two separable passes, horizontal then vertical, each rounding back to 8-bit
//! pixels. Each output pixel is a weighted sum over a window of input pixels whose width grows
//! with the downscale factor (the filter is stretched by it: antialiasing); the weights are
//! normalised in f64 and then turned into 22-bit fixed point, and sums are rounded by adding half
//! before the shift. [`resize`] reproduces that arithmetic step for step, so its output is PIL's
//! byte for byte.

use std::borrow::Cow;
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
/// file has transparency (an alpha channel, a transparent palette entry or colour key; a colour
/// key's alpha is that of Pillow's `convert("RGBA")`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedImage {
    pub width: usize,
    pub height: usize,
    /// 3 or 4.
    pub channels: usize,
    pub data: Vec<u8>,
    /// The mode Pillow opens the file in, which decides how open_clip resizes it.
    pub mode: PilMode,
}

/// The mode Pillow gives an image, as far as resizing and padding in it differ from doing so in
/// RGB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PilMode {
    /// "RGB" or "L", also with a colour key (a PNG's tRNS, a GIF's transparent grey level),
    /// which Pillow keeps beside the pixels rather than as alpha: resampled as RGB.
    Rgb,
    /// "RGBA" or "LA" (grey replicated here): resampled with the colour premultiplied by alpha.
    Rgba,
    /// "P", with its palette's colours: resized by nearest neighbour; padding is a palette index.
    Palette(Vec<[u8; 3]>),
    /// "1" (a 1-bit grey PNG): resized by nearest neighbour; padding with any non-zero value is
    /// white.
    Bilevel,
}

impl PilMode {
    /// The mode of an image with `channels` channels from a format whose Pillow mode has alpha
    /// exactly when the decoded pixels do (JPEG, WebP, TIFF).
    fn with_alpha(channels: usize) -> PilMode {
        if channels == 4 {
            PilMode::Rgba
        } else {
            PilMode::Rgb
        }
    }

    /// The RGB colour of torchvision's padding with `fill` in this mode: `fill` in every band,
    /// which a "P" image (whose palette the padding keeps) reads as an index, black past the
    /// palette's end, and a "1" image as white unless zero.
    fn padding(&self, fill: u8) -> [u8; 3] {
        match self {
            PilMode::Rgb | PilMode::Rgba => [fill; 3],
            PilMode::Palette(colours) => colours.get(usize::from(fill)).copied().unwrap_or([0; 3]),
            PilMode::Bilevel if fill == 0 => [0; 3],
            PilMode::Bilevel => [255; 3],
        }
    }

    /// A palette's colours from its packed `r, g, b` bytes.
    fn palette(packed: &[u8]) -> PilMode {
        PilMode::Palette(packed.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect())
    }
}

/// How transparency becomes RGB where an image is converted.
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

    /// Resized to `width × height` as Pillow's `Image.resize` resizes it in its own mode, then
    /// converted to RGB with the alpha dropped: open_clip's order.
    fn resized_in_own_mode(&self, width: usize, height: usize, filter: Filter) -> Rgb8 {
        if (width, height) == (self.width, self.height) {
            // Pillow returns a copy, without the round trip through premultiplied alpha.
            return self.to_rgb(Alpha::Drop);
        }
        match (&self.mode, self.channels) {
            (PilMode::Palette(_) | PilMode::Bilevel, _) => {
                nearest(&self.to_rgb(Alpha::Drop), width, height)
            }
            (PilMode::Rgba, 4) => {
                let premultiplied: Vec<u8> = self
                    .data
                    .chunks_exact(4)
                    .flat_map(|p| p[..3].iter().map(|&c| premultiply(c, p[3])).chain([p[3]]))
                    .collect();
                let size = (self.width, self.height);
                let resized =
                    resize_interleaved::<4>(&premultiplied, size, (width, height), filter);
                let data = resized
                    .chunks_exact(4)
                    .flat_map(|p| p[..3].iter().map(|&c| unpremultiply(c, p[3])))
                    .collect();
                Rgb8 {
                    width,
                    height,
                    data,
                }
            }
            _ => resize(&self.to_rgb(Alpha::Drop), width, height, filter),
        }
    }
}

/// `x / 255` rounded, for an `x` to which the caller added half of the divisor: Pillow's
/// `((x >> 8) + x) >> 8`.
fn div255(x: u32) -> u32 {
    ((x >> 8) + x) >> 8
}

/// Colour `c` premultiplied by alpha `a`, rounded as Pillow's `MULDIV255` ("RGBA" → "RGBa").
fn premultiply(c: u8, a: u8) -> u8 {
    div255(u32::from(c) * u32::from(a) + 128) as u8
}

/// Premultiplied colour `c` of alpha `a` back to plain colour as Pillow does ("RGBa" → "RGBA"):
/// `255·c / a` truncated and clipped to 255 (resampling may leave `c` above `a`), and the value
/// kept as it is where `a` is 0 or 255.
fn unpremultiply(c: u8, a: u8) -> u8 {
    match a {
        0 | 255 => c,
        _ => (255 * u32::from(c) / u32::from(a)).min(255) as u8,
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
    (div255(x) >> BITS) as u8
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
/// `ImageOps.exif_transpose` does. The image keeps the mode Pillow opens the file in
/// ([`PilMode`]): a palette PNG or GIF is "P" (a GIF whose colour table is the grey ramp is
/// "L"), a 1-bit grey PNG "1", and files with an alpha channel "RGBA" or "LA". A grey or RGB
/// PNG's colour key becomes alpha as Pillow's `convert("RGBA")` makes it.
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
    let (mut channels, mut data) = match decoded {
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
    let colour_key = match format {
        ImageFormat::Png => png_colour_key(bytes),
        // Elsewhere transparency is an alpha channel or a palette entry, expanded as Pillow does.
        _ => None,
    };
    if let Some(key) = colour_key {
        data = with_colour_key(&data, channels, key);
        channels = 4;
    }
    let mode = match format {
        ImageFormat::Png => png_mode(bytes),
        ImageFormat::Gif => gif_mode(bytes)?,
        _ => PilMode::with_alpha(channels),
    };
    Ok(DecodedImage {
        width,
        height,
        channels,
        data,
        mode,
    })
}

/// The bit depth and colour type of a PNG's header, the first of its `chunks`.
fn png_header<'a>(chunks: &mut impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Option<(u8, u8)> {
    match chunks.next() {
        Some((kind, header)) if kind == b"IHDR" && header.len() >= 10 => {
            Some((header[8], header[9]))
        }
        _ => None,
    }
}

/// Pillow's mode of a PNG, from its header's bit depth and colour type, and its palette.
fn png_mode(bytes: &[u8]) -> PilMode {
    let mut chunks = exif::png_chunks(bytes);
    let Some((bit_depth, colour_type)) = png_header(&mut chunks) else {
        return PilMode::Rgb;
    };
    match (bit_depth, colour_type) {
        (_, 3) => PilMode::palette(
            chunks
                .find(|&(kind, _)| kind == b"PLTE")
                .map_or(&[], |(_, palette)| palette),
        ),
        (1, 0) => PilMode::Bilevel,
        // Grey or RGB with alpha; 16-bit grey with alpha is refused by the decoder.
        (_, 4 | 6) => PilMode::Rgba,
        _ => PilMode::Rgb,
    }
}

/// The 8-bit colour that a grey or RGB PNG's colour key (its tRNS chunk, read before the image
/// data as Pillow reads it) makes transparent in Pillow's `convert("RGBA")`. Pillow compares
/// each sample's low byte with the pixels it unpacked to 8 bits: a 16-bit key matches the pixels
/// whose high bytes equal its low bytes, and a 2- or 4-bit grey key the 8-bit level equal to the
/// raw key, not the pixels of the key's own value (which the decoder's alpha marks). A 1-bit key
/// is white unless zero, as in the 1-bit pixels.
fn png_colour_key(bytes: &[u8]) -> Option<[u8; 3]> {
    let mut chunks = exif::png_chunks(bytes);
    let (bit_depth, colour_type) = png_header(&mut chunks)?;
    let (_, key) = chunks
        .take_while(|&(kind, _)| kind != b"IDAT")
        .find(|&(kind, _)| kind == b"tRNS")?;
    let sample = |i: usize| Some(u16::from_be_bytes([*key.get(2 * i)?, *key.get(2 * i + 1)?]));
    let low_byte = |i: usize| sample(i).map(|v| v.to_be_bytes()[1]);
    match (bit_depth, colour_type) {
        (1, 0) => Some([if sample(0)? == 0 { 0 } else { 255 }; 3]),
        (_, 0) => Some([low_byte(0)?; 3]),
        (_, 2) => Some([low_byte(0)?, low_byte(1)?, low_byte(2)?]),
        _ => None,
    }
}

/// RGBA pixels, transparent exactly where the colour is `key`, from pixels of `channels`
/// channels (any alpha among them replaced).
fn with_colour_key(data: &[u8], channels: usize, key: [u8; 3]) -> Vec<u8> {
    data.chunks_exact(channels)
        .flat_map(|p| {
            let alpha = if p[..3] == key { 0 } else { 255 };
            [p[0], p[1], p[2], alpha]
        })
        .collect()
}

/// Pillow's mode of a GIF's first frame: "P" with the frame's own colour table or else the
/// global one, but "L" where there is neither or it is the grey ramp `i → (i, i, i)`.
fn gif_mode(bytes: &[u8]) -> std::result::Result<PilMode, String> {
    let cannot = |e: gif::DecodingError| format!("cannot decode: {e}");
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    let mut decoder = options.read_info(bytes).map_err(cannot)?;
    let global = decoder.global_palette().map(<[u8]>::to_vec);
    let frame = decoder
        .next_frame_info()
        .map_err(cannot)?
        .ok_or("cannot decode: the GIF has no frame")?;
    let is_grey_ramp = |table: &[u8]| {
        table
            .chunks_exact(3)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&v| usize::from(v) == i))
    };
    Ok(match frame.palette.as_deref().or(global.as_deref()) {
        Some(table) if !is_grey_ramp(table) => PilMode::palette(table),
        _ => PilMode::Rgb,
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
    let channels = if decoder.has_alpha() { 4 } else { 3 };
    let image = DecodedImage {
        width: width as usize,
        height: height as usize,
        channels,
        data,
        mode: PilMode::with_alpha(channels),
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
    let size = (image.width, image.height);
    Rgb8 {
        width,
        height,
        data: resize_interleaved::<3>(&image.data, size, (width, height), filter),
    }
}

/// [`resize`] of `CHANNELS` interleaved channels, each resampled alike (alpha too, as Pillow
/// does).
fn resize_interleaved<const CHANNELS: usize>(
    data: &[u8],
    (in_width, in_height): (usize, usize),
    (width, height): (usize, usize),
    filter: Filter,
) -> Vec<u8> {
    let mut current = Cow::Borrowed(data);
    if width != in_width {
        let kernel = Kernel::new(in_width, width, filter);
        let mut next = vec![0u8; width * in_height * CHANNELS];
        for (row, out_row) in next.chunks_exact_mut(width * CHANNELS).enumerate() {
            let in_row = &data[row * in_width * CHANNELS..(row + 1) * in_width * CHANNELS];
            for (x, px) in out_row.chunks_exact_mut(CHANNELS).enumerate() {
                for (c, v) in px.iter_mut().enumerate() {
                    *v = kernel.apply(x, |i| in_row[i * CHANNELS + c]);
                }
            }
        }
        current = Cow::Owned(next);
    }
    if height != in_height {
        let kernel = Kernel::new(in_height, height, filter);
        let stride = width * CHANNELS;
        let mut next = vec![0u8; stride * height];
        for (y, out_row) in next.chunks_exact_mut(stride).enumerate() {
            for (col, v) in out_row.iter_mut().enumerate() {
                *v = kernel.apply(y, |i| current[i * stride + col]);
            }
        }
        current = Cow::Owned(next);
    }
    current.into_owned()
}

/// Resizes by nearest neighbour as Pillow does for "P" and "1" images (`ImagingScaleAffine`).
fn nearest(image: &Rgb8, width: usize, height: usize) -> Rgb8 {
    let columns = nearest_sources(image.width, width);
    let mut data = Vec::with_capacity(width * height * 3);
    for y in nearest_sources(image.height, height) {
        let row = &image.data[y * image.width * 3..(y + 1) * image.width * 3];
        for &x in &columns {
            data.extend_from_slice(&row[x * 3..x * 3 + 3]);
        }
    }
    Rgb8 {
        width,
        height,
        data,
    }
}

/// The input index each of `out_size` nearest-neighbour outputs takes: the integer part of a
/// position that starts at half the scale and grows by the scale per output, summed in f64 as
/// Pillow sums it (not multiplied, which can round to another pixel).
fn nearest_sources(in_size: usize, out_size: usize) -> Vec<usize> {
    let scale = in_size as f64 / out_size as f64;
    let mut position = scale * 0.5;
    (0..out_size)
        .map(|_| {
            // The last position is `in_size − scale / 2`; `min` only guards f64 rounding.
            let source = (position as usize).min(in_size - 1);
            position += scale;
            source
        })
        .collect()
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
    /// `fill` (a grey level; a palette index for a palette image resized in its own mode) to at
    /// least that size, centred, and the centre cut out.
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

/// `image` centred on a canvas of colour `fill` of at least `width × height`, as torchvision's
/// `pad` before a centre crop: a margin of `m` puts `m / 2` (floor) before the image, the rest
/// after.
fn pad_to(image: &Rgb8, width: usize, height: usize, fill: [u8; 3]) -> Rgb8 {
    if image.width >= width && image.height >= height {
        return image.clone();
    }
    let (out_w, out_h) = (image.width.max(width), image.height.max(height));
    let (left, top) = ((out_w - image.width) / 2, (out_h - image.height) / 2);
    let mut data = fill.repeat(out_w * out_h);
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

/// When a decoded image becomes RGB: the two preprocessors differ for palette, bilevel and
/// transparent images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RgbConversion {
    /// First, transparency composited over white (transformers' `convert_to_rgb`); then the RGB
    /// image is resized and cropped.
    FirstOverWhite,
    /// Last, as open_clip's transform does: the image is resized and padded in its
    /// [`PilMode`], cropped, then `convert("RGB")` drops its alpha.
    LastAlphaDropped,
}

/// A model's image preprocessing: conversion to RGB, resize, crop, scale to [0, 1], normalise
/// per channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    pub conversion: RgbConversion,
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

    /// The model input of a decoded image, converted to RGB where [`Preprocess::conversion`]
    /// says: `[3, height, width]` f32 as [`Preprocess::pixels`] gives.
    pub fn pixels_of(&self, image: &DecodedImage) -> Result<Vec<f32>> {
        Ok(self.normalised(&self.resized_decoded(image)?))
    }

    /// The resized and cropped 8-bit RGB image of a decoded image, before scaling and
    /// normalisation.
    pub fn resized_decoded(&self, image: &DecodedImage) -> Result<Rgb8> {
        match self.conversion {
            RgbConversion::FirstOverWhite => self.resized(&image.to_rgb(Alpha::OverWhite)),
            RgbConversion::LastAlphaDropped => self.resized_with(
                (image.width, image.height),
                |width, height| image.resized_in_own_mode(width, height, self.filter),
                |fill| image.mode.padding(fill),
            ),
        }
    }

    /// The resized and cropped 8-bit image, before scaling and normalisation.
    pub fn resized(&self, image: &Rgb8) -> Result<Rgb8> {
        self.resized_with(
            (image.width, image.height),
            |width, height| resize(image, width, height, self.filter),
            |fill| [fill; 3],
        )
    }

    /// [`Preprocess::mode`] applied to an image of `(w, h)`: `resize_to` resizes it, and its
    /// padding with `fill` has the colour `padding(fill)`.
    fn resized_with(
        &self,
        (w, h): (usize, usize),
        resize_to: impl FnOnce(usize, usize) -> Rgb8,
        padding: impl FnOnce(u8) -> [u8; 3],
    ) -> Result<Rgb8> {
        match self.mode {
            ResizeMode::Squash { width, height } => Ok(resize_to(width, height)),
            ResizeMode::KeepRatio {
                width,
                height,
                fit,
                fill,
            } => {
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
                let resized = resize_to(new_w, new_h);
                let padded = pad_to(&resized, width, height, padding(fill));
                let left = self.crop_rounding.offset(padded.width - width);
                let top = self.crop_rounding.offset(padded.height - height);
                Ok(padded.crop(left, top, width, height))
            }
            ResizeMode::ShortestThenCrop {
                shortest,
                crop_width,
                crop_height,
            } => {
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
                let resized = resize_to(new_w, new_h);
                let left = self.crop_rounding.offset(new_w - crop_width);
                let top = self.crop_rounding.offset(new_h - crop_height);
                Ok(resized.crop(left, top, crop_width, crop_height))
            }
        }
    }

    /// The model input of one image: `[3, height, width]` f32, channel planes, each value
    /// `(v / 255 − mean) / std`.
    pub fn pixels(&self, image: &Rgb8) -> Result<Vec<f32>> {
        Ok(self.normalised(&self.resized(image)?))
    }

    /// `[3, height, width]` f32 of an 8-bit image, each value `(v / 255 − mean) / std`.
    fn normalised(&self, image: &Rgb8) -> Vec<f32> {
        let plane = image.width * image.height;
        let mut out = vec![0.0f32; 3 * plane];
        for (i, px) in image.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (f32::from(px[c]) / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        out
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
            conversion: RgbConversion::FirstOverWhite,
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
    /// As open_clip does, the image is resized and padded in the mode Pillow opened it in and
    /// converted to RGB last ([`RgbConversion::LastAlphaDropped`]): palette and bilevel images
    /// are resized by nearest neighbour (whatever the interpolation) and a palette image's
    /// padding is the colour of palette entry `fill_color`; images with alpha are resized with
    /// premultiplied colour.
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
            conversion: RgbConversion::LastAlphaDropped,
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
    fn nearest_neighbour_takes_the_pixels_pillow_takes() {
        // Pillow's `resize(..., NEAREST)` of a "P" row whose indices are 0..in_size. For 2 → 7
        // the middle position sums to just under 1, where `3.5 · 2/7` is exactly 1.
        let cases: [(usize, &[usize]); 6] = [
            (45, &[2, 6, 11, 15, 20, 24, 29, 33, 38, 42]),
            (34, &[2, 6, 10, 14, 19, 23, 27, 31]),
            (7, &[1, 3, 5]),
            (5, &[0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4]),
            (3, &[0, 0, 1, 1, 1, 2, 2]),
            (2, &[0, 0, 0, 0, 1, 1, 1]),
        ];
        for (in_size, want) in cases {
            assert_eq!(nearest_sources(in_size, want.len()), want, "{in_size}");
        }
    }

    #[test]
    fn premultiplied_alpha_rounds_as_pillow() {
        // MULDIV255 is `c·a / 255` rounded half up, for every pair.
        for (c, a) in (0..=255u8).flat_map(|c| (0..=255u8).map(move |a| (c, a))) {
            let exact = (u32::from(c) * u32::from(a) * 2 + 255) / 510;
            assert_eq!(u32::from(premultiply(c, a)), exact, "{c}·{a}");
        }
        // Pillow's "RGBA" → "RGBa" and "RGBa" → "RGBA" of the same four pixels.
        let pixels = [
            [200, 100, 3, 128],
            [255, 0, 77, 1],
            [9, 250, 255, 254],
            [13, 13, 13, 0],
        ];
        let premultiplied = [[100, 50, 2], [1, 0, 0], [9, 249, 254], [0, 0, 0]];
        let back = [[255, 199, 5], [255, 0, 255], [9, 250, 255], [13, 13, 13]];
        for ((p, pre), back) in pixels.iter().zip(premultiplied).zip(back) {
            assert_eq!(
                p[..3]
                    .iter()
                    .map(|&c| premultiply(c, p[3]))
                    .collect::<Vec<_>>(),
                pre
            );
            assert_eq!(
                p[..3]
                    .iter()
                    .map(|&c| unpremultiply(c, p[3]))
                    .collect::<Vec<_>>(),
                back
            );
        }
    }

    #[test]
    fn padding_takes_the_colour_each_mode_gives_fill() {
        let palette = PilMode::palette(&[10, 20, 30, 40, 50, 60]);
        assert_eq!(palette.padding(1), [40, 50, 60]);
        assert_eq!(palette.padding(2), [0, 0, 0]); // past the palette's end
        assert_eq!(PilMode::Bilevel.padding(0), [0, 0, 0]);
        assert_eq!(PilMode::Bilevel.padding(128), [255, 255, 255]);
        assert_eq!(PilMode::Rgba.padding(128), [128, 128, 128]);
    }

    /// A 2×2 GIF whose global colour table is `table`.
    fn gif_with_table(table: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut encoder = gif::Encoder::new(&mut bytes, 2, 2, table).unwrap();
        let frame = gif::Frame {
            width: 2,
            height: 2,
            buffer: Cow::Borrowed(&[0, 1, 2, 3]),
            ..gif::Frame::default()
        };
        encoder.write_frame(&frame).unwrap();
        drop(encoder);
        bytes
    }

    #[test]
    fn a_gif_is_grey_where_its_colour_table_is_the_grey_ramp() {
        let ramp: Vec<u8> = (0..4u8).flat_map(|i| [i, i, i]).collect();
        assert_eq!(gif_mode(&gif_with_table(&ramp)).unwrap(), PilMode::Rgb);
        let mut colour = ramp.clone();
        colour[11] = 4;
        assert_eq!(
            gif_mode(&gif_with_table(&colour)).unwrap(),
            PilMode::palette(&colour)
        );
    }

    /// A PNG of a 2×1 image's header of `bit_depth` and `colour_type` followed by `chunks`
    /// (type, data), with zero CRCs: enough for reading its chunks.
    fn png_with_chunks(bit_depth: u8, colour_type: u8, chunks: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
        let header = [0, 0, 0, 2, 0, 0, 0, 1, bit_depth, colour_type, 0, 0, 0];
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [(b"IHDR", &header[..])].iter().chain(chunks) {
            bytes.extend((data.len() as u32).to_be_bytes());
            bytes.extend(*kind);
            bytes.extend(*data);
            bytes.extend([0; 4]);
        }
        bytes
    }

    #[test]
    fn a_png_colour_key_is_the_colour_pillow_compares_with_the_pixels() {
        let key = |bit_depth, colour_type, trns: &[u8]| {
            png_colour_key(&png_with_chunks(
                bit_depth,
                colour_type,
                &[(b"tRNS", trns), (b"IDAT", &[])],
            ))
        };
        let rgb16 = [0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC];
        assert_eq!(key(16, 2, &rgb16), Some([0x34, 0x78, 0xBC]));
        assert_eq!(key(4, 0, &[0, 5]), Some([5; 3]));
        // Any non-zero 1-bit key is white.
        assert_eq!(key(1, 0, &[1, 0]), Some([255; 3]));
        assert_eq!(key(1, 0, &[0, 0]), Some([0; 3]));
        // Truncated.
        assert_eq!(key(8, 2, &[0, 1]), None);
        // A palette's alpha is per entry, not a key.
        assert_eq!(key(8, 3, &[0]), None);
        // After the image data, Pillow no longer reads it.
        let late = png_with_chunks(8, 0, &[(b"IDAT", &[]), (b"tRNS", &[0, 5])]);
        assert_eq!(png_colour_key(&late), None);
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
