//! EXIF orientation: the one metadata field that changes which pixels a model sees. Cameras store
//! photos as the sensor read them and record in tag 0x0112 how to turn them upright; Pillow's
//! `ImageOps.exif_transpose` applies it, and so does [`super::image::decode_rgb`].
//!
//! The tag lives in a TIFF structure (byte-order mark, offset of the first IFD, 12-byte entries):
//! the file itself for a TIFF, the payload after `Exif\0\0` of a JPEG's first APP1 segment, a
//! PNG's `eXIf` chunk, or a WebP's `EXIF` chunk. Every read here is bounds-checked: metadata that
//! is truncated or points outside itself is ignored (the image is used as stored), never a
//! panic, as a photo with a damaged EXIF block still has good pixels.

use super::image::DecodedImage;

/// The EXIF tag holding the orientation.
const ORIENTATION_TAG: u16 = 0x0112;

/// How the stored pixels must be turned to be upright: the EXIF value 1–8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Orientation(u16);

impl Orientation {
    pub const UPRIGHT: Orientation = Orientation(1);

    /// An EXIF orientation value; anything outside 1–8 means upright, as in Pillow.
    pub fn from_exif(value: u32) -> Orientation {
        match value {
            1..=8 => Orientation(value as u16),
            _ => Orientation::UPRIGHT,
        }
    }

    pub fn value(self) -> u16 {
        self.0
    }

    /// `image` turned upright. Values 5–8 swap width and height.
    pub fn apply(self, image: DecodedImage) -> DecodedImage {
        let (w, h, channels) = (image.width, image.height, image.channels);
        if self.0 == 1 {
            return image;
        }
        let swaps = self.0 >= 5;
        let (out_w, out_h) = if swaps { (h, w) } else { (w, h) };
        // The stored pixel each upright pixel (x, y) comes from.
        let source = |x: usize, y: usize| -> (usize, usize) {
            match self.0 {
                2 => (w - 1 - x, y),         // mirrored left-right
                3 => (w - 1 - x, h - 1 - y), // rotated 180°
                4 => (x, h - 1 - y),         // mirrored top-bottom
                5 => (y, x),                 // transposed
                6 => (y, h - 1 - x),         // stored rotated 90° anticlockwise
                7 => (w - 1 - y, h - 1 - x), // transversed
                _ => (w - 1 - y, x),         // 8: stored rotated 90° clockwise
            }
        };
        let mut data = Vec::with_capacity(image.data.len());
        for y in 0..out_h {
            for x in 0..out_w {
                let (sx, sy) = source(x, y);
                let at = (sy * w + sx) * channels;
                data.extend_from_slice(&image.data[at..at + channels]);
            }
        }
        DecodedImage {
            width: out_w,
            height: out_h,
            channels,
            data,
            mode: image.mode,
        }
    }
}

/// The container whose metadata [`orientation`] searches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    Jpeg,
    Png,
    Tiff,
    /// A WebP's `EXIF` chunk, already extracted by the decoder.
    WebpExif,
}

/// The orientation recorded in `bytes` (the whole file, or a WebP's EXIF chunk); upright where
/// none is recorded or the metadata is malformed.
pub fn orientation(bytes: &[u8], container: Container) -> Orientation {
    let value = match container {
        Container::Jpeg => jpeg_exif(bytes).and_then(tiff_orientation),
        Container::Png => png_exif(bytes).and_then(tiff_orientation),
        Container::Tiff => tiff_orientation(bytes),
        // Some writers keep the `Exif\0\0` header inside the chunk, others do not.
        Container::WebpExif => tiff_orientation(bytes.strip_prefix(b"Exif\0\0").unwrap_or(bytes)),
    };
    value.map_or(Orientation::UPRIGHT, Orientation::from_exif)
}

/// The segments of a JPEG from after the SOI marker up to the first scan, as (marker, payload).
/// Each segment is 0xFF, a marker byte and a big-endian length that counts itself.
pub fn jpeg_segments(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut at = 2;
    std::iter::from_fn(move || loop {
        let header = bytes.get(at..at + 4)?;
        if header[0] != 0xFF {
            return None;
        }
        let marker = header[1];
        if marker == 0xFF {
            at += 1; // a fill byte
            continue;
        }
        if marker == 0xDA {
            return None; // entropy-coded data follows
        }
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let payload = bytes.get(at + 4..(at + 2 + length).max(at + 4))?;
        at += 2 + length.max(2);
        return Some((marker, payload));
    })
}

/// The TIFF structure of the first APP1 segment holding EXIF (the one Pillow reads).
fn jpeg_exif(bytes: &[u8]) -> Option<&[u8]> {
    jpeg_segments(bytes)
        .filter(|&(marker, _)| marker == 0xE1)
        .find_map(|(_, payload)| payload.strip_prefix(b"Exif\0\0"))
}

/// The chunks of a PNG before `IEND`, as (type, data), up to the first truncated one. Each chunk
/// is a big-endian data length, a 4-byte type, the data and a CRC.
pub fn png_chunks(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut at = 8; // the signature
    std::iter::from_fn(move || {
        let length = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let kind = bytes.get(at + 4..at + 8)?;
        let data = bytes.get(at + 8..(at + 8).checked_add(length)?)?;
        if kind == b"IEND" {
            return None;
        }
        at += 12 + length;
        Some((kind, data))
    })
}

/// The payload of a PNG's `eXIf` chunk (before or after the image data, as Pillow reads both).
fn png_exif(bytes: &[u8]) -> Option<&[u8]> {
    png_chunks(bytes)
        .find(|&(kind, _)| kind == b"eXIf")
        .map(|(_, data)| data)
}

/// Tag 0x0112 of the first IFD of a TIFF structure, as a SHORT or LONG.
fn tiff_orientation(tiff: &[u8]) -> Option<u32> {
    let big_endian = match tiff.get(0..4)? {
        b"II*\0" => false,
        b"MM\0*" => true,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let ifd = u32_at(4)? as usize;
    let entries = u16_at(ifd)?;
    for i in 0..usize::from(entries) {
        let entry = ifd.checked_add(2 + 12 * i)?;
        if u16_at(entry)? != ORIENTATION_TAG {
            continue;
        }
        // Type 3 is SHORT, 4 LONG; the value sits in the entry's last four bytes.
        return match (u16_at(entry + 2)?, u32_at(entry + 4)?) {
            (3, 1) => u16_at(entry + 8).map(u32::from),
            (4, 1) => u32_at(entry + 8),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::image::PilMode;

    /// A little- or big-endian TIFF structure whose first IFD holds one orientation entry.
    fn tiff(big_endian: bool, kind: u16, value: u16) -> Vec<u8> {
        let u16b = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let u32b = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut out = if big_endian {
            b"MM\0*".to_vec()
        } else {
            b"II*\0".to_vec()
        };
        out.extend(u32b(8));
        out.extend(u16b(1));
        out.extend(u16b(ORIENTATION_TAG));
        out.extend(u16b(kind));
        out.extend(u32b(1));
        out.extend(u16b(value));
        out.extend([0, 0]);
        out.extend(u32b(0)); // no next IFD
        out
    }

    #[test]
    fn reads_the_tag_in_either_byte_order() {
        for big_endian in [false, true] {
            let bytes = tiff(big_endian, 3, 6);
            assert_eq!(orientation(&bytes, Container::Tiff).value(), 6);
            let prefixed = [b"Exif\0\0".as_slice(), &bytes].concat();
            assert_eq!(orientation(&prefixed, Container::WebpExif).value(), 6);
        }
    }

    /// Every truncation of the structure, a wrong type, an out-of-range value and offsets past
    /// the end give "upright", without panicking.
    #[test]
    fn malformed_metadata_is_ignored() {
        let good = tiff(false, 3, 8);
        for end in 0..good.len() - 6 {
            let cut = orientation(&good[..end], Container::Tiff);
            assert_eq!(cut, Orientation::UPRIGHT, "cut at {end}");
        }
        assert_eq!(
            orientation(&good[..good.len() - 4], Container::Tiff).value(),
            8
        );
        assert_eq!(
            orientation(&tiff(false, 2, 8), Container::Tiff),
            Orientation::UPRIGHT
        );
        assert_eq!(
            orientation(&tiff(true, 3, 9), Container::Tiff),
            Orientation::UPRIGHT
        );
        let mut far = good.clone();
        far[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(orientation(&far, Container::Tiff), Orientation::UPRIGHT);
        let mut many = good.clone();
        many[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(orientation(&many, Container::Tiff).value(), 8);

        // A JPEG whose APP1 length runs past the end of the file, and a PNG chunk likewise.
        let jpeg = [
            &[0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xFF][..],
            b"Exif\0\0",
            &good[..10],
        ]
        .concat();
        assert_eq!(orientation(&jpeg, Container::Jpeg), Orientation::UPRIGHT);
        let png = [&[0u8; 8][..], &[0x7F, 0xFF, 0xFF, 0xFF], b"eXIf", &good].concat();
        assert_eq!(orientation(&png, Container::Png), Orientation::UPRIGHT);
        // A zero-length segment must not loop forever.
        let zero = [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x00, 0xFF, 0xE0, 0x00, 0x00];
        assert_eq!(orientation(&zero, Container::Jpeg), Orientation::UPRIGHT);
    }

    #[test]
    fn turning_a_2x3_image_matches_the_named_transforms() {
        // Pixels numbered 0..6 in row order; one channel value per pixel is enough to track them.
        let image = DecodedImage {
            width: 2,
            height: 3,
            channels: 4,
            data: (0..6u8).flat_map(|v| [v, v, v, v]).collect(),
            mode: PilMode::Rgba,
        };
        let turned = |k: u32| {
            let out = Orientation::from_exif(k).apply(image.clone());
            let values: Vec<u8> = out.data.chunks(4).map(|p| p[0]).collect();
            (out.width, out.height, values)
        };
        // 0 1 / 2 3 / 4 5
        assert_eq!(turned(1), (2, 3, vec![0, 1, 2, 3, 4, 5]));
        assert_eq!(turned(2), (2, 3, vec![1, 0, 3, 2, 5, 4]));
        assert_eq!(turned(3), (2, 3, vec![5, 4, 3, 2, 1, 0]));
        assert_eq!(turned(4), (2, 3, vec![4, 5, 2, 3, 0, 1]));
        assert_eq!(turned(5), (3, 2, vec![0, 2, 4, 1, 3, 5]));
        assert_eq!(turned(6), (3, 2, vec![4, 2, 0, 5, 3, 1]));
        assert_eq!(turned(7), (3, 2, vec![5, 3, 1, 4, 2, 0]));
        assert_eq!(turned(8), (3, 2, vec![1, 3, 5, 0, 2, 4]));
    }
}
