//! Checkpoints of long runs: finished blocks on disk, pinned by a manifest of what they belong
//! to, so an interrupted run resumes where it stopped and never mixes blocks of different runs.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Finished blocks of one run on disk: `<dir>/rows-<start>-<end>.f32` (little-endian
/// values, then their checksum) beside a `manifest.json` that pins what the blocks belong to — inputs' contents,
/// settings and block size — so a resumed run never mixes blocks of different runs. The rows
/// are a kernel's rows (blocks or tiles) or, for `embed` shards, positions in the batch order.
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    /// The checkpoint directory beside an output file: `<out>.blocks`.
    pub fn dir_for(out: &Path) -> PathBuf {
        let mut name = out.as_os_str().to_owned();
        name.push(".blocks");
        PathBuf::from(name)
    }

    /// Opens `dir`, creating it with `manifest` when absent; an existing directory whose
    /// manifest differs is an error naming it.
    pub fn open(dir: &Path, manifest: &serde_json::Value) -> Result<Self> {
        let path = dir.join("manifest.json");
        let text = serde_json::to_string_pretty(manifest).expect("JSON values serialise");
        match std::fs::read_to_string(&path) {
            Ok(existing) => {
                let existing: serde_json::Value = serde_json::from_str(&existing)
                    .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
                if &existing != manifest {
                    return Err(Error::input(format!(
                        "{}: holds blocks of a different kernel run (other inputs or settings); \
                         remove the directory to start afresh",
                        dir.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                crate::io::write_atomic(&path, text.as_bytes())?;
            }
            Err(e) => return Err(Error::io(&path, e)),
        }
        // Blocks being saved when a run was killed: their process is gone, they are not blocks.
        crate::io::output_guard::sweep_stale_temps(dir, None);
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
        })
    }

    fn block_path(&self, rows: &Range<usize>) -> PathBuf {
        self.dir
            .join(format!("rows-{}-{}.f32", rows.start, rows.end))
    }

    /// The saved block, or `None` when it was not finished. A block that is not intact — wrong
    /// length, or values whose checksum differs from the one saved with them (a disk error, a
    /// file edited or truncated by hand) — is removed and `None` returned, saying so on stderr:
    /// the block is recomputed rather than reused.
    pub fn load(&self, rows: &Range<usize>, n_cols: usize) -> Result<Option<Vec<f32>>> {
        let path = self.block_path(rows);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let expected = rows.len() * n_cols * 4;
        let damage = if bytes.len() != expected + 8 {
            Some(format!("{} bytes, expected {}", bytes.len(), expected + 8))
        } else {
            let (values, saved) = bytes.split_at(expected);
            let saved = u64::from_le_bytes(saved.try_into().expect("8 bytes"));
            let actual = fnv1a64(FNV_OFFSET, values);
            (saved != actual)
                .then(|| format!("checksum {actual:016x} of its values, saved {saved:016x}"))
        };
        if let Some(damage) = damage {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            eprintln!(
                "note: {}: damaged block ({damage}); removed, its rows are computed again",
                path.display()
            );
            return Ok(None);
        }
        Ok(Some(
            bytes[..expected]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
        ))
    }

    /// Saves a finished block: its values (little-endian f32) followed by their 64-bit FNV-1a
    /// checksum (little-endian), which [`Checkpoint::load`] verifies.
    pub fn save(&self, rows: &Range<usize>, values: &[f32]) -> Result<()> {
        let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let checksum = fnv1a64(FNV_OFFSET, &bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        crate::io::write_atomic(&self.block_path(rows), &bytes)
    }

    /// Removes the directory once the whole kernel is written.
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }
}

/// The 64-bit FNV-1a offset basis: the state before any byte.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// 64-bit FNV-1a state `hash` carried on over `bytes`.
pub(crate) fn fnv1a64(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A 64-bit FNV-1a digest of a file's bytes, hex: identifies the inputs in a manifest and the
/// embeddings file in its texts sidecar. Read in chunks, so a model of many GiB is digested
/// without holding it in memory.
pub fn file_digest(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut hash = FNV_OFFSET;
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hash = fnv1a64(hash, &buffer[..n]);
    }
    Ok(format!("{hash:016x}"))
}

/// Digests of a model: the file's, or for a directory each regular file's (sub-folders such as
/// `1_Pooling/` included), keyed by relative path in sorted order.
pub fn model_digest(path: &Path) -> Result<serde_json::Value> {
    if !path.is_dir() {
        return Ok(serde_json::Value::String(file_digest(path)?));
    }
    let mut files = Vec::new();
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let full = entry.path();
            if full.is_dir() {
                pending.push(full);
            } else if full.is_file() {
                files.push(full);
            }
        }
    }
    files.sort();
    let mut digests = serde_json::Map::new();
    for file in files {
        let name = file
            .strip_prefix(path)
            .unwrap_or(&file)
            .display()
            .to_string();
        digests.insert(name, serde_json::Value::String(file_digest(&file)?));
    }
    Ok(serde_json::Value::Object(digests))
}
