//! Reports: each instrument returns a typed report (`#[derive(Serialize)]`, snake_case keys);
//! this module writes it as JSON for scripts, as a Markdown summary for stdout (one file per
//! command) and as PNG plots (and image contact sheets).

pub mod align;
pub mod alpha;
pub mod bench;
pub mod cluster;
pub mod compare;
pub mod contact_sheet;
pub mod data;
pub mod kernels;
pub mod kglm;
pub mod lda;
pub mod pca;
pub mod plot;
pub mod train;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Result;

/// `report` as pretty JSON. It goes through `serde_json::Value`, whose objects keep their keys
/// sorted, so every report lists its keys alphabetically whatever the field order of its type.
pub fn json_text(report: &impl Serialize) -> String {
    let value = serde_json::to_value(report).expect("reports serialise to JSON");
    serde_json::to_string_pretty(&value).expect("a JSON value serialises")
}

/// Writes `report` as pretty JSON (see [`json_text`]), atomically.
pub fn write_json(path: &Path, report: &impl Serialize) -> Result<()> {
    let mut text = json_text(report);
    text.push('\n');
    crate::io::write_atomic(path, text.as_bytes())
}

/// The last component of `path`, for plot titles and legends.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// What a plot's title calls an embeddings file: `MODEL embeddings (FILE)`, or the file's name
/// alone when the model is unknown.
pub fn data_name(model: &str, input: &str) -> String {
    let file = file_name(Path::new(input));
    if model.is_empty() {
        file
    } else {
        format!("{model} embeddings ({file})")
    }
}

/// `dir/stem.ext` → `dir/stem.{suffix}.ext`: the further outputs of a command beside its first
/// (a plot's siblings keep its format).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    match path.extension() {
        Some(ext) => path.with_file_name(format!("{stem}.{suffix}.{}", ext.to_string_lossy())),
        None => path.with_file_name(format!("{stem}.{suffix}")),
    }
}
