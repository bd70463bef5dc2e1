//! Input readers and output writers.
pub mod checkpoint;
pub mod datasets;
pub mod embedding_inputs;
pub mod embeddings;
pub mod images;
pub mod kernel_file;
pub mod kernel_inputs;
pub mod npy;
pub mod output_guard;
pub mod parquet_file;
pub mod preemption;
pub mod samples;
pub mod shards;
pub mod tensor_file;
pub mod texts;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Writes `bytes` to a temporary name beside `path` and renames it into place, so a failed or
/// interrupted run never leaves a half-written output behind (the temporary file is removed on
/// error, panic, SIGINT and SIGTERM: [`output_guard::TempFile`]). This is every command's
/// writer of files (the plots draw into a [`output_guard::TempFile`] at [`temp_path`] after
/// [`check_target`] and rename the same way).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    check_target(path)?;
    let tmp = temp_path(path)?;
    let written = output_guard::TempFile::create(&tmp).and_then(|(temp, mut file)| {
        file.write_all(bytes)?;
        temp.hold_for_tests();
        std::fs::rename(temp.path(), path)
    });
    written.map_err(|e| Error::io(path, e))
}

/// An error unless `path` is a place for an output file: absent, or a regular file (a link is
/// judged by what it points to). Renaming over a device such as `/dev/null`, a FIFO or a socket
/// would replace it with a regular file.
pub fn check_target(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(meta) => Err(Error::input(format!(
            "{}: output is not a regular file ({}); give the path of a file to write",
            path.display(),
            if meta.is_dir() {
                "a directory"
            } else {
                "a device, FIFO or socket"
            }
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A temporary name in `path`'s folder (so the final rename stays on one file system), unique
/// to this process and this write: `.NAME.tmp-PID-N`.
pub fn temp_path(path: &Path) -> Result<PathBuf> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::input(format!("{}: not a file name", path.display())))?;
    Ok(path.with_file_name(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    )))
}

/// The up-front check of a command's outputs, before any work: each must be a place for a
/// regular file ([`check_target`]), and none may be one of the command's inputs or another of
/// its outputs (compared as canonical paths, so `./a`, `dir/../a` and links are caught): a run
/// never overwrites what it reads, nor writes two results to one file. `None` entries (files
/// not asked for) are skipped; each path comes with the flag that named it. Each output is then
/// locked for the rest of the process ([`output_guard::lock_output`]): a second run on one of
/// them fails here, before any work.
pub fn check_outputs(
    inputs: &[(&str, Option<&Path>)],
    outputs: &[(&str, Option<&Path>)],
) -> Result<()> {
    guard_outputs(inputs, outputs, check_target)
}

/// [`check_outputs`] for a command whose output is a directory it creates (`train --out`):
/// `dir` must not exist yet, so that a run never mixes its files with another run's, never
/// overwrites them, and can remove all it made when it fails; then it must not be an input and
/// is locked.
pub fn check_output_dir(inputs: &[(&str, Option<&Path>)], flag: &str, dir: &Path) -> Result<()> {
    guard_outputs(inputs, &[(flag, Some(dir))], |path| {
        check_new_dir(flag, path)
    })
}

/// An error unless nothing is at `dir`, saying what is there and what to do.
fn check_new_dir(flag: &str, dir: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let what = if meta.is_dir() {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        let shown = names.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        match names.len() {
            0 => "this directory already exists (empty)".to_string(),
            n => format!(
                "this directory already exists and holds {n} entr{} ({shown}{})",
                if n == 1 { "y" } else { "ies" },
                if n > 3 { ", …" } else { "" }
            ),
        }
    } else {
        "a file already exists at this path".to_string()
    };
    Err(Error::input(format!(
        "{flag} {}: {what}; the output is a new directory, never one that exists (a run would \
         mix its files with another's): give a path that does not exist yet, or remove this one \
         first",
        dir.display()
    )))
}

/// [`check_outputs`] with `check` the test of each output's path.
fn guard_outputs(
    inputs: &[(&str, Option<&Path>)],
    outputs: &[(&str, Option<&Path>)],
    check: impl Fn(&Path) -> Result<()>,
) -> Result<()> {
    let resolve = |path: &Path| -> Option<PathBuf> {
        if let Ok(full) = path.canonicalize() {
            return Some(full);
        }
        // An output that does not exist yet: its folder's canonical path and its name.
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Some(parent.canonicalize().ok()?.join(path.file_name()?))
    };
    let inputs: Vec<(&str, PathBuf)> = inputs
        .iter()
        .filter_map(|&(flag, p)| Some((flag, resolve(p?)?)))
        .collect();
    let mut seen: Vec<(&str, PathBuf, &Path)> = Vec::new();
    for &(flag, path) in outputs {
        let Some(path) = path else { continue };
        let Some(full) = resolve(path) else {
            check(path)?;
            continue;
        };
        // A clash first: an output that is an input is refused as such, whatever it is.
        let clash = inputs
            .iter()
            .find(|(_, p)| *p == full)
            .map(|(f, _)| format!("the command reads it ({f})"))
            .or_else(|| {
                seen.iter()
                    .find(|(_, p, _)| *p == full)
                    .map(|(f, _, _)| format!("{f} writes it too"))
            });
        if let Some(why) = clash {
            return Err(Error::input(format!(
                "{flag} {}: {why}; give another path",
                path.display()
            )));
        }
        check(path)?;
        seen.push((flag, full, path));
    }
    for (flag, full, shown) in &seen {
        output_guard::lock_output(full, flag, shown)?;
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
