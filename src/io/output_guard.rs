//! What a run holds on disk while it writes, so that nothing is left behind and no two runs
//! write one file:
//!
//! - **Temporary files** ([`TempFile`]): every write goes to `.NAME.tmp-PID-N` beside the
//!   output and is renamed into place ([`crate::io::write_atomic`]). Each one in flight is
//!   recorded here; an error, a panic or SIGINT/SIGTERM ([`crate::io::preemption`]) removes it.
//!   Those a SIGKILL or a crash left behind are swept by the next run that writes the same
//!   output ([`sweep_stale_temps`]): the PID in the name says whose they were, and a PID with no
//!   `/proc` entry is gone.
//! - **Output locks** ([`lock_output`]): the up-front check of a command's outputs takes an
//!   advisory `flock` on `.NAME.lock` beside each one and keeps it until the process ends, so a
//!   second run on the same output fails at once, naming the PID that holds it. The kernel drops
//!   the lock when its holder dies, however it dies, so a lock file left by a killed run never
//!   blocks anyone; [`release`] removes the lock files on the way out.
//!
//! Tests interrupt a write at a known moment with `MSCOPE_TEST_HOLD_WRITE_MS`: each write waits
//! that many milliseconds between filling its temporary file and renaming it.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};

/// An output lock this process holds: the lock file, open with its `flock`.
struct OutputLock {
    /// The output's canonical path: one lock per output, however the flags spelled it.
    output: PathBuf,
    lock_path: PathBuf,
    file: File,
}

/// Temporary files in flight and the output locks held, for [`release`] and [`abandon`].
struct Held {
    temps: Vec<PathBuf>,
    locks: Vec<OutputLock>,
}

static HELD: Mutex<Held> = Mutex::new(Held {
    temps: Vec::new(),
    locks: Vec::new(),
});

/// The record, whatever a panic elsewhere left in the mutex (the lists stay consistent: each
/// change is one push or retain).
fn held() -> MutexGuard<'static, Held> {
    HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A temporary file being written: removed (if it is still there) and forgotten when dropped,
/// so a write that fails or unwinds leaves nothing; after the rename into place there is
/// nothing left to remove.
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// Creates `path`, which must not exist (`create_new`: a file or a planted link already at
    /// the name is never followed), and records it. Creating under the record's lock means a
    /// signal's clean-up either sees the file or runs before it exists and keeps the lock until
    /// the process is gone: no temporary file can appear after the clean-up.
    pub fn create(path: &Path) -> std::io::Result<(Self, File)> {
        let mut held = held();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        held.temps.push(path.to_path_buf());
        Ok((
            TempFile {
                path: path.to_path_buf(),
            },
            file,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The testing pause of `MSCOPE_TEST_HOLD_WRITE_MS`, between a write and its rename.
    pub fn hold_for_tests(&self) {
        if let Some(ms) = std::env::var("MSCOPE_TEST_HOLD_WRITE_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let mut held = held();
        let _ = std::fs::remove_file(&self.path);
        held.temps.retain(|p| p != &self.path);
    }
}

/// The lock file of `output`: `.NAME.lock` in its folder.
fn lock_path(output: &Path) -> Option<PathBuf> {
    let name = output.file_name()?;
    Some(output.with_file_name(format!(".{}.lock", name.to_string_lossy())))
}

/// Whether the open `file` is still the one named `path` (a holder removes its lock file on
/// the way out; a run that opened the old file just before must not lock a name-less file).
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Locks the output `output` (its canonical path; `flag` and `shown` name it as the user did)
/// for the rest of the process, or fails at once when another run holds it, naming that run's
/// PID. Taking a lock this process already holds does nothing. Once locked, temporary files of
/// the output left by dead processes are swept.
pub fn lock_output(output: &Path, flag: &str, shown: &Path) -> Result<()> {
    let mut held = held();
    if held.locks.iter().any(|l| l.output == output) {
        return Ok(());
    }
    let Some(lock_path) = lock_path(output) else {
        return Ok(());
    };
    // A few tries: each failure of `same_file` means a holder just finished and removed it.
    for _ in 0..8 {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!("another mscope run (PID {pid})"),
                    Err(_) => "another mscope run".to_string(),
                };
                return Err(Error::input(format!(
                    "{flag} {}: {holder} is writing this file; wait for it to finish or stop \
                     it, or give another path (lock {})",
                    shown.display(),
                    lock_path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        if !same_file(&file, &lock_path) {
            continue;
        }
        file.set_len(0)
            .and_then(|()| write!(file, "{}", std::process::id()))
            .map_err(|e| Error::io(&lock_path, e))?;
        held.locks.push(OutputLock {
            output: output.to_path_buf(),
            lock_path,
            file,
        });
        drop(held);
        if let (Some(dir), Some(name)) = (output.parent(), output.file_name()) {
            sweep_stale_temps(dir, Some(&name.to_string_lossy()));
        }
        return Ok(());
    }
    Err(Error::input(format!(
        "{flag} {}: could not lock {}: other runs keep replacing it",
        shown.display(),
        lock_path.display()
    )))
}

/// Removes this process's lock files and lets the locks go: the end of every command, success
/// or error (the CLI calls it once the command returns).
pub fn release() {
    let mut held = held();
    for lock in held.locks.drain(..) {
        // Removed while still locked, and only if the name is still this lock's file.
        if same_file(&lock.file, &lock.lock_path) {
            let _ = std::fs::remove_file(&lock.lock_path);
        }
    }
}

/// The clean-up of a run a signal ends: removes every temporary file in flight and the lock
/// files, then keeps the record locked, so no write can start a new temporary file before the
/// process is gone. Called only by the signal thread, which then ends the process.
pub(crate) fn abandon() {
    let mut held = held();
    for temp in held.temps.drain(..) {
        let _ = std::fs::remove_file(temp);
    }
    for lock in held.locks.drain(..) {
        if same_file(&lock.file, &lock.lock_path) {
            let _ = std::fs::remove_file(&lock.lock_path);
        }
    }
    std::mem::forget(held);
}

/// Whether process `pid` is gone, judged by `/proc`; `false` (keep its files) where there is no
/// `/proc` to ask.
fn process_is_gone(pid: u32) -> bool {
    Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// The PID in the temporary name `.NAME.tmp-PID-N` (`-N.png` for plots), with NAME.
fn parse_temp_name(file_name: &str) -> Option<(&str, u32)> {
    let rest = file_name.strip_prefix('.')?;
    let at = rest.rfind(".tmp-")?;
    let (name, tail) = (&rest[..at], &rest[at + ".tmp-".len()..]);
    let (pid, counter) = tail.split_once('-')?;
    let counter = counter.strip_suffix(".png").unwrap_or(counter);
    if counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((name, pid.parse().ok()?))
}

/// Removes the temporary files in `dir` (of the output `name`, or of any file when `None`) whose
/// process is gone — what a SIGKILL, a power cut or a crash left behind — and says so on stderr.
/// A temporary file of a live process is kept: it may be that process's write in flight.
pub fn sweep_stale_temps(dir: &Path, name: Option<&str>) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some((of, pid)) = file_name.to_str().and_then(parse_temp_name) else {
            continue;
        };
        if name.is_some_and(|n| n != of) || pid == me || !process_is_gone(pid) {
            continue;
        }
        let path = entry.path();
        if std::fs::remove_file(&path).is_ok() {
            eprintln!(
                "note: removed {}, a temporary file left by process {pid}, which is no longer \
                 running",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_give_their_output_and_pid() {
        assert_eq!(
            parse_temp_name(".k.safetensors.tmp-42-0"),
            Some(("k.safetensors", 42))
        );
        assert_eq!(
            parse_temp_name(".a.tmp-b.tmp-7-12.png"),
            Some(("a.tmp-b", 7))
        );
        assert_eq!(parse_temp_name("k.safetensors.tmp-42-0"), None);
        assert_eq!(parse_temp_name(".k.tmp-x-0"), None);
        assert_eq!(parse_temp_name(".k.tmp-42-"), None);
        assert_eq!(parse_temp_name(".k.safetensors.lock"), None);
    }
}
