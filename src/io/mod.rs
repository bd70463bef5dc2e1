//! Input readers and output writers.
pub mod checkpoint;
pub mod datasets;
pub mod embeddings;
pub mod kernel_file;
pub mod kernel_inputs;
pub mod samples;
pub mod tensor_file;
pub mod texts;

use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to a temporary name beside `path` and renames it into place, so a failed run
/// never leaves a half-written output behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::input(format!("{}: not a file name", path.display())))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// An error unless every value of the row-major `[rows, cols]` matrix `values` (tensor `name`
/// of the output `path`) is finite, naming the rows that are not: the last check before a
/// command writes embeddings or a kernel, so that no file downstream analyses trust holds NaN.
pub fn check_finite_output(path: &Path, name: &str, values: &[f32], cols: usize) -> Result<()> {
    if crate::tensor::first_non_finite(values).is_none() {
        return Ok(());
    }
    let bad: Vec<usize> = values
        .chunks(cols.max(1))
        .enumerate()
        .filter(|(_, row)| row.iter().any(|v| !v.is_finite()))
        .map(|(i, _)| i)
        .collect();
    let shown: Vec<String> = bad.iter().take(10).map(usize::to_string).collect();
    let more = if bad.len() > shown.len() { ", …" } else { "" };
    Err(Error::input(format!(
        "{}: not written: `{name}` has NaN or infinite values in {} row(s) ({}{more})",
        path.display(),
        bad.len(),
        shown.join(", ")
    )))
}
