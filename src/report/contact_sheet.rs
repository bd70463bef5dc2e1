//! Contact sheets: one PNG of image thumbnails in labelled rows, each row a pair of blocks — the
//! images at the low end of something (a principal component) on the left, those at the high
//! end on the right — every thumbnail captioned.
//!
//! A thumbnail is the image fitted inside a [`THUMB`]-pixel square with Pillow's bicubic
//! resampling (the resize the image towers use, so it is Pillow's byte for byte), centred on a
//! light grey square. The geometry is fixed by the constants here ([`size`], [`cell_origin`]):
//! the sheet is the same bytes every time for the same images.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use rayon::prelude::*;

use super::plot::{register_font, FONT};
use crate::error::{Error, Result};
use crate::models::image::{
    decode_image, CropRounding, Filter, Fit, Preprocess, ResizeMode, Rgb8, RgbConversion,
    OPENAI_MEAN, OPENAI_STD,
};

/// Side of a thumbnail's square, in pixels.
pub const THUMB: usize = 128;
/// Grey level around a thumbnail whose image is not square.
pub const FILL: u8 = 235;
/// Height of the caption line under each thumbnail.
pub const CAPTION: usize = 18;
/// Space between thumbnails, and between rows.
pub const SPACING: usize = 6;
/// Width of the column holding each row's name.
pub const NAME_WIDTH: usize = 76;
/// Space between a row's low block and its high block.
pub const GAP: usize = 28;
/// Height of the band above the rows naming the two blocks.
pub const HEADING: usize = 24;
/// Blank border around everything.
pub const MARGIN: usize = 8;

/// One thumbnail: the image and the caption under it.
#[derive(Clone, Debug)]
pub struct Cell {
    pub image: PathBuf,
    pub caption: String,
}

/// One row: its name (a line each, in the name column), the cells of its low block left to
/// right, then those of its high block.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: Vec<String>,
    pub low: Vec<Cell>,
    pub high: Vec<Cell>,
}

/// Which block of a row a cell is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    Low,
    High,
}

/// Horizontal distance from one thumbnail to the next.
const PITCH: usize = THUMB + SPACING;
/// Vertical distance from one row to the next.
const ROW_PITCH: usize = THUMB + CAPTION + SPACING;

/// `(width, height)` in pixels of a sheet of `rows` rows with `per_block` cells in each block.
pub fn size(rows: usize, per_block: usize) -> (usize, usize) {
    (
        2 * MARGIN + NAME_WIDTH + 2 * per_block * PITCH + GAP,
        2 * MARGIN + HEADING + rows * ROW_PITCH,
    )
}

/// Top-left pixel `(x, y)` of the thumbnail `index` of `block` in row `row`, on a sheet with
/// `per_block` cells in each block.
pub fn cell_origin(row: usize, block: Block, index: usize, per_block: usize) -> (usize, usize) {
    let low_x = MARGIN + NAME_WIDTH;
    let x = match block {
        Block::Low => low_x + index * PITCH,
        Block::High => low_x + per_block * PITCH + GAP + index * PITCH,
    };
    (x, MARGIN + HEADING + row * ROW_PITCH)
}

/// The thumbnail of the image at `path`: upright, transparency over white, fitted inside a
/// [`THUMB`] square by Pillow's bicubic resize (sides `round(side / ratio)`), centred on
/// [`FILL`] grey (the margin's odd pixel after the image).
pub fn thumbnail(path: &Path) -> Result<Rgb8> {
    let fit = Preprocess {
        conversion: RgbConversion::FirstOverWhite,
        mode: ResizeMode::KeepRatio {
            width: THUMB,
            height: THUMB,
            fit: Fit::Inside,
            fill: FILL,
        },
        filter: Filter::Bicubic,
        crop_rounding: CropRounding::Floor,
        // Unused: only the 8-bit resize is taken, never the normalised pixels.
        mean: OPENAI_MEAN,
        std: OPENAI_STD,
    };
    fit.resized_decoded(&decode_image(path)?)
        .map_err(|e| Error::input(format!("{}: {e}", path.display())))
}

/// Writes the contact sheet of `rows` to `path` (PNG) with `low_heading` and `high_heading`
/// above the two blocks. Every image is decoded and resized in parallel first, so an unreadable
/// one fails the sheet before anything is written.
pub fn write(path: &Path, low_heading: &str, high_heading: &str, rows: &[Row]) -> Result<()> {
    let per_block = rows
        .iter()
        .map(|r| r.low.len().max(r.high.len()))
        .max()
        .unwrap_or(0);
    if rows.is_empty() || per_block == 0 {
        return Err(Error::input(format!(
            "{}: a contact sheet needs at least one image",
            path.display()
        )));
    }
    let (width, height) = size(rows.len(), per_block);
    let mut placed = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        for (block, cells) in [(Block::Low, &row.low), (Block::High, &row.high)] {
            for (i, cell) in cells.iter().enumerate() {
                placed.push((cell_origin(r, block, i, per_block), cell));
            }
        }
    }
    let thumbs = placed
        .par_iter()
        .map(|(_, cell)| thumbnail(&cell.image))
        .collect::<Result<Vec<_>>>()?;

    let mut pixels = vec![255u8; width * height * 3];
    for (((x, y), _), thumb) in placed.iter().zip(&thumbs) {
        for (dy, line) in thumb.data.chunks_exact(thumb.width * 3).enumerate() {
            let at = ((y + dy) * width + x) * 3;
            pixels[at..at + line.len()].copy_from_slice(line);
        }
    }
    let fail = |message: String| Error::Plot {
        path: path.to_path_buf(),
        message,
    };
    draw_text(
        &mut pixels,
        (width, height),
        (low_heading, high_heading),
        rows,
        &placed,
        per_block,
    )
    .map_err(|e| fail(e.to_string()))?;

    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &pixels,
        width as u32,
        height as u32,
        image::ColorType::Rgb8,
    )
    .map_err(|e| fail(e.to_string()))?;
    crate::io::write_atomic(path, &png)
}

/// Captions longer than this many characters are cut (with "…") so they stay under their
/// thumbnail.
const CAPTION_CHARS: usize = 19;

fn draw_text(
    pixels: &mut [u8],
    (width, height): (usize, usize),
    (low_heading, high_heading): (&str, &str),
    rows: &[Row],
    placed: &[((usize, usize), &Cell)],
    per_block: usize,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    register_font();
    let root =
        BitMapBackend::with_buffer(pixels, (width as u32, height as u32)).into_drawing_area();
    let at = |(x, y): (usize, usize)| (x as i32, y as i32);
    let style = |size: u32, h: HPos, v: VPos| {
        TextStyle::from((FONT, size).into_font())
            .color(&BLACK)
            .pos(Pos::new(h, v))
    };
    let heading = style(15, HPos::Left, VPos::Center);
    let heading_y = MARGIN + HEADING / 2;
    let (low_x, _) = cell_origin(0, Block::Low, 0, per_block);
    let (high_x, _) = cell_origin(0, Block::High, 0, per_block);
    for (text, x) in [(low_heading, low_x), (high_heading, high_x)] {
        root.draw(&Text::new(
            text.to_string(),
            at((x, heading_y)),
            heading.clone(),
        ))?;
    }
    let name = style(15, HPos::Left, VPos::Top);
    for (r, row) in rows.iter().enumerate() {
        let (_, y) = cell_origin(r, Block::Low, 0, per_block);
        for (line, text) in row.name.iter().enumerate() {
            let position = at((MARGIN, y + line * 20));
            root.draw(&Text::new(text.clone(), position, name.clone()))?;
        }
    }
    let caption = style(12, HPos::Center, VPos::Center);
    for &((x, y), cell) in placed {
        let text: String = if cell.caption.chars().count() > CAPTION_CHARS {
            let kept: String = cell.caption.chars().take(CAPTION_CHARS - 1).collect();
            kept + "…"
        } else {
            cell.caption.clone()
        };
        let position = at((x + THUMB / 2, y + THUMB + CAPTION / 2));
        root.draw(&Text::new(text, position, caption.clone()))?;
    }
    root.present()?;
    Ok(())
}
