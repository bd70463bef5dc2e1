//! scikit-learn's 8×8 handwritten digits (1797 images, 10 classes) from the CSV that
//! `tools/fetch-digits.sh` extracts: no header, 64 pixel columns with values 0..16, then the
//! label 0..9. Pixels are scaled to [0, 1].

use std::path::Path;

use super::Dataset;
use crate::error::{Error, Result};

/// Where `tools/fetch-digits.sh` puts the CSV, relative to the repository root.
pub const DEFAULT_PATH: &str = ".cache/data/digits.csv";

pub const PIXELS: usize = 64;
pub const CLASSES: usize = 10;
const MAX_PIXEL: f64 = 16.0;

/// Reads the digits CSV; every malformed row is reported with the file and its line number.
pub fn read(path: &Path) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::input(format!(
                "{}: no such file; run tools/fetch-digits.sh to fetch scikit-learn's digits",
                path.display()
            ))
        } else {
            Error::io(path, e)
        }
    })?;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at =
            |message: String| Error::input(format!("{}:{}: {message}", path.display(), index + 1));
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != PIXELS + 1 {
            return Err(at(format!(
                "{} values, expected {PIXELS} pixels and a label",
                fields.len()
            )));
        }
        let number = |column: usize| {
            fields[column].parse::<f64>().map_err(|_| {
                at(format!(
                    "column {}: `{}` is not a number",
                    column + 1,
                    fields[column]
                ))
            })
        };
        for column in 0..PIXELS {
            let pixel = number(column)?;
            if !(0.0..=MAX_PIXEL).contains(&pixel) {
                return Err(at(format!(
                    "column {}: pixel {pixel} is outside 0..{MAX_PIXEL}",
                    column + 1
                )));
            }
            x.push((pixel / MAX_PIXEL) as f32);
        }
        let label = number(PIXELS)?;
        if label.fract() != 0.0 || !(0.0..CLASSES as f64).contains(&label) {
            return Err(at(format!(
                "label {label} is not a digit 0..{}",
                CLASSES - 1
            )));
        }
        y.push(label as i64);
    }
    if y.is_empty() {
        return Err(Error::input(format!("{}: no rows", path.display())));
    }
    Dataset::new(x, PIXELS, y)
}
