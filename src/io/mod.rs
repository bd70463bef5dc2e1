//! Input readers and output writers.
pub mod checkpoint;
pub mod datasets;
pub mod embedding_inputs;
pub mod embeddings;
pub mod kernel_file;
pub mod kernel_inputs;
pub mod npy;
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
