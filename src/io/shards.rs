//! Shards of one long run (`--shard I/N`) and their merge (`mscope merge OUT`).
//!
//! A sharded command cuts its work into *units* that every process lists the same way from the
//! same inputs (`ntk`: row tiles of the kernel; `embed`: batches), each with a cost. Shard `I`
//! of `N` takes a contiguous range of units ([`Shard::units`], balanced by cost) and writes
//! `OUT.shard-I-of-N.safetensors` ([`Shard::path`]): its results as tensors and, under the
//! metadata key [`MANIFEST_KEY`], a JSON [`Manifest`] — the *job* (command, mscope version,
//! the inputs' digests, every argument that changes the result's bits, the backend and CPU
//! thread count) and the shard's index, count and units.
//!
//! The manifest also records a digest of the shard's data (`data_digest`: its tensors and its
//! other metadata), so that a bit flipped inside a tensor — which leaves the file a readable
//! safetensors file — is caught before it reaches the merged output.
//!
//! `mscope merge OUT` reads every shard ([`read_all`]): all `N` must be there, readable, each
//! holding the shard its name says, with the data its digest says, and all of one job;
//! otherwise it lists every missing, corrupt, duplicated or mismatched file and refuses. The command then assembles the shards'
//! units into the bytes one process writes. A shard is resumable like the single-process run:
//! finished units wait in a checkpoint beside the shard file (see [`crate::io::checkpoint`]),
//! and SIGTERM stops it between units ([`crate::io::preemption`]).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::checkpoint::{fnv1a64, FNV_OFFSET};
use crate::io::tensor_file::{self, TensorFile, TensorOut};

/// The metadata key of a shard file's manifest.
pub const MANIFEST_KEY: &str = "mscope_shard";

/// `--shard I/N`: shard `index` (0-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parsed = s
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(Shard { index, count }),
            _ => Err(format!(
                "`{s}`: expected I/N with 0 ≤ I < N, e.g. 0/4 for the first of four shards"
            )),
        }
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The shard file of output `out`: `out` less its extension, plus
    /// `.shard-I-of-N.safetensors` (`k.safetensors` → `k.shard-0-of-4.safetensors`).
    pub fn path(&self, out: &Path) -> PathBuf {
        out.with_file_name(format!(
            "{}.shard-{}-of-{}.safetensors",
            stem(out),
            self.index,
            self.count
        ))
    }

    /// This shard's contiguous range of units, given every unit's cost: unit `u` belongs to the
    /// shard whose equal share of the total cost holds the midpoint of `u`'s cost. Shards may be
    /// empty when there are fewer units than shards (or one unit outweighs a share).
    pub fn units(&self, costs: &[u64]) -> Range<usize> {
        let total: u128 = costs.iter().map(|&c| c as u128).sum();
        // The shard of a unit whose cost interval is [before, before + c): by its midpoint, in
        // integers: 2·before + c against 2·total·s/N.
        let owner = |before: u128, c: u64| -> usize {
            if total == 0 {
                return 0;
            }
            let mid2 = 2 * before + c as u128;
            ((mid2 * self.count as u128) / (2 * total)).min(self.count as u128 - 1) as usize
        };
        let mut before = 0u128;
        let mut start = costs.len();
        let mut end = costs.len();
        for (u, &c) in costs.iter().enumerate() {
            let s = owner(before, c);
            if s >= self.index && start == costs.len() {
                start = u;
            }
            if s > self.index {
                end = u;
                break;
            }
            before += c as u128;
        }
        start.min(end)..end
    }
}

/// `out`'s file name less its extension.
pub(crate) fn stem(out: &Path) -> String {
    out.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What a shard file says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Everything the shards of one run share: the command's own JSON (command, version,
    /// inputs' digests, result-changing arguments, backend, threads).
    pub job: Value,
    pub index: usize,
    pub count: usize,
    /// The units this shard computed, `[start, end)` in the command's own numbering.
    pub units: Vec<[usize; 2]>,
}

/// A manifest as a shard file stores it: with the digest of the shard's data, which the
/// commands building a [`Manifest`] need not know about. `None` when read from a file that has
/// none.
#[derive(Serialize, Deserialize)]
struct StoredManifest {
    #[serde(flatten)]
    manifest: Manifest,
    data_fnv1a64: Option<String>,
}

/// The 64-bit FNV-1a digest (hex) of a shard's data: every tensor's name, dtype, shape and bytes
/// in name order, then every metadata entry but the manifest in key order. Each field is
/// preceded by its length, so that no two different contents hash the same byte stream.
fn data_digest<'a>(
    tensors: &[TensorOut<'_>],
    metadata: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut tensors: Vec<&TensorOut<'_>> = tensors.iter().collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let metadata: BTreeMap<&str, &str> = metadata
        .into_iter()
        .filter(|(key, _)| *key != MANIFEST_KEY)
        .collect();
    let field = |hash: u64, bytes: &[u8]| {
        fnv1a64(fnv1a64(hash, &(bytes.len() as u64).to_le_bytes()), bytes)
    };
    let mut hash = FNV_OFFSET;
    for tensor in tensors {
        hash = field(hash, tensor.name.as_bytes());
        hash = field(hash, format!("{:?}", tensor.dtype).as_bytes());
        let dims: Vec<u8> = tensor
            .shape
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        hash = field(hash, &dims);
        hash = field(hash, tensor.bytes);
    }
    for (key, value) in metadata {
        hash = field(hash, key.as_bytes());
        hash = field(hash, value.as_bytes());
    }
    format!("{hash:016x}")
}

/// Writes a shard file: `tensors` and `manifest`, atomically.
pub fn write(path: &Path, manifest: &Manifest, tensors: Vec<TensorOut<'_>>) -> Result<()> {
    write_with(path, manifest, tensors, [])
}

/// [`write`](fn@write) with further string metadata (results that are not tensors).
pub fn write_with<const N: usize>(
    path: &Path,
    manifest: &Manifest,
    tensors: Vec<TensorOut<'_>>,
    metadata: [(&str, String); N],
) -> Result<()> {
    let mut all: BTreeMap<String, String> = metadata
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let digest = data_digest(&tensors, all.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let stored = StoredManifest {
        manifest: manifest.clone(),
        data_fnv1a64: Some(digest),
    };
    let text = serde_json::to_string(&stored).expect("manifests serialise");
    all.insert(MANIFEST_KEY.to_string(), text);
    tensor_file::write(path, tensors, all)
}

/// A shard file read back, checked to be the shard its name says.
pub struct ShardFile {
    pub manifest: Manifest,
    pub file: TensorFile,
}

/// Every shard of `out`, in index order, once checked: the files `out.shard-I-of-N.safetensors`
/// beside it must all be of one `N`, all present, each a readable safetensors file holding the
/// manifest of shard `I/N`, and all of the same job. Otherwise the error lists every problem,
/// one per line, naming the files.
pub fn read_all(out: &Path) -> Result<Vec<ShardFile>> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = format!("{}.shard-", stem(out));
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut named: Vec<(Shard, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".safetensors"))
        else {
            continue;
        };
        let shard = rest
            .split_once("-of-")
            .and_then(|(i, n)| {
                Some(Shard {
                    index: i.parse().ok()?,
                    count: n.parse().ok()?,
                })
            })
            .filter(|s| s.index < s.count);
        if let Some(shard) = shard {
            named.push((shard, entry.path()));
        }
    }
    if named.is_empty() {
        return Err(Error::input(format!(
            "{}: no shards found (expected {}/{prefix}I-of-N.safetensors, written by --shard I/N)",
            out.display(),
            dir.display()
        )));
    }
    named.sort_by_key(|(s, _)| (s.count, s.index));
    let counts: Vec<usize> = {
        let mut c: Vec<usize> = named.iter().map(|(s, _)| s.count).collect();
        c.dedup();
        c
    };
    if counts.len() > 1 {
        let listed: Vec<String> = named.iter().map(|(_, p)| p.display().to_string()).collect();
        return Err(Error::input(format!(
            "{}: shards of runs cut into different counts ({}) lie side by side: {}; remove the \
             stale ones",
            out.display(),
            counts
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            listed.join(", ")
        )));
    }
    let count = counts[0];

    let mut problems = Vec::new();
    let mut found: Vec<ShardFile> = Vec::new();
    for (shard, path) in &named {
        let file = match TensorFile::read(path) {
            Ok(file) => file,
            Err(e) => {
                problems.push(format!("corrupt or truncated: {e}"));
                continue;
            }
        };
        let stored = file
            .metadata(MANIFEST_KEY)
            .and_then(|text| serde_json::from_str::<StoredManifest>(text).ok());
        let Some(StoredManifest {
            manifest,
            data_fnv1a64,
        }) = stored
        else {
            problems.push(format!(
                "corrupt: {}: no readable shard manifest (`{MANIFEST_KEY}` metadata)",
                path.display()
            ));
            continue;
        };
        if (manifest.index, manifest.count) != (shard.index, shard.count) {
            problems.push(format!(
                "duplicate: {} holds shard {}/{} (a copied or renamed shard file)",
                path.display(),
                manifest.index,
                manifest.count
            ));
            continue;
        }
        let computed = file
            .raw_tensors()
            .map(|tensors| data_digest(&tensors, file.metadata_entries()));
        let damage = match (computed, data_fnv1a64) {
            (Err(e), _) => Some(format!("corrupt or truncated: {e}")),
            (Ok(_), None) => Some(format!(
                "corrupt: {}: its manifest records no digest of its data (written by an older \
                 mscope?); run this shard again",
                path.display()
            )),
            (Ok(computed), Some(recorded)) if computed != recorded => Some(format!(
                "corrupt: {}: its data do not match the digest its manifest records \
                 ({computed}, recorded {recorded}): a damaged file; run this shard again",
                path.display()
            )),
            (Ok(_), Some(_)) => None,
        };
        if let Some(damage) = damage {
            problems.push(damage);
            continue;
        }
        found.push(ShardFile { manifest, file });
    }
    let missing: Vec<String> = (0..count)
        .filter(|&i| !named.iter().any(|(s, _)| s.index == i))
        .map(|i| Shard { index: i, count }.path(out).display().to_string())
        .collect();
    if !missing.is_empty() {
        problems.push(format!("missing: {}", missing.join(", ")));
    }
    if let Some(first) = found.first() {
        let reference = &first.manifest.job;
        for other in &found[1..] {
            let differs = differences(reference, &other.manifest.job);
            if !differs.is_empty() {
                problems.push(format!(
                    "mismatched: {} belongs to another run than {} (differs in {})",
                    other.file.path().display(),
                    first.file.path().display(),
                    differs.join(", ")
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::input(format!(
            "{}: cannot merge its {count} shard(s):\n  {}",
            out.display(),
            problems.join("\n  ")
        )));
    }
    Ok(found)
}

/// The keys (dotted for nested objects) where two jobs differ.
fn differences(a: &Value, b: &Value) -> Vec<String> {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let (x, y) = (
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                    );
                    let inner = differences(x, y);
                    if x == y {
                        Vec::new()
                    } else if inner.is_empty() || !(x.is_object() && y.is_object()) {
                        vec![k.clone()]
                    } else {
                        inner.into_iter().map(|i| format!("{k}.{i}")).collect()
                    }
                })
                .collect()
        }
        _ if a == b => Vec::new(),
        _ => vec!["the job".to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ranges_cover_every_unit_once_and_balance_cost() {
        for costs in [
            vec![5u64; 10],
            (1..=37).rev().map(|c| c * 7).collect::<Vec<_>>(),
            vec![100, 1, 1, 1],
            vec![3],
        ] {
            for count in 1..=12 {
                let ranges: Vec<Range<usize>> = (0..count)
                    .map(|index| Shard { index, count }.units(&costs))
                    .collect();
                let mut next = 0;
                for r in &ranges {
                    assert_eq!(r.start, next, "{costs:?} into {count}: {ranges:?}");
                    next = r.end;
                }
                assert_eq!(next, costs.len(), "{costs:?} into {count}: {ranges:?}");
                // No shard exceeds its share by more than one unit's cost.
                let total: u64 = costs.iter().sum();
                let max = *costs.iter().max().unwrap();
                for r in &ranges {
                    let cost: u64 = costs[r.clone()].iter().sum();
                    assert!(cost <= total / count as u64 + max, "{costs:?} into {count}");
                }
            }
        }
    }

    #[test]
    fn shard_names_and_parsing() {
        let s: Shard = "1/4".parse().unwrap();
        assert_eq!(s, Shard { index: 1, count: 4 });
        assert_eq!(
            s.path(Path::new("runs/k.safetensors")),
            Path::new("runs/k.shard-1-of-4.safetensors")
        );
        for bad in ["4/4", "1", "a/b", "-1/3", "0/0"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn differences_name_the_keys() {
        let a = serde_json::json!({"inputs": {"data": "1", "model": "2"}, "seed": 0});
        let b = serde_json::json!({"inputs": {"data": "3", "model": "2"}, "seed": 1});
        assert_eq!(differences(&a, &b), ["inputs.data", "seed"]);
        assert!(differences(&a, &a).is_empty());
    }
}
