//! The embeddings file `mscope embed` writes and the analysis commands read: safetensors with
//! `embeddings` F32 `[N, D]` and `labels` I64 `[N]`, plus string metadata (`labels` as a JSON
//! array of names, `model`, `pooling`, `normalized`, `max_length`). Beside it, the texts sidecar
//! `<file>.texts.jsonl`: a header line with the embeddings file's row count and digest, then one
//! `{"text", "label"}` object per row, so that analyses can show what the rows say
//! ([`write_texts_beside`], [`read_texts_beside`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::io::checkpoint::file_digest;
use crate::io::tensor_file::{self, TensorOut};

#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingsFile {
    /// Row-major `[rows, dim]`, rows in input order.
    pub embeddings: Vec<f32>,
    pub dim: usize,
    /// Index into `label_names` per row; -1 where a row has none.
    pub labels: Vec<i64>,
    pub label_names: Vec<String>,
    pub model: String,
    pub pooling: String,
    pub normalized: bool,
    pub max_length: usize,
}

impl EmbeddingsFile {
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.embeddings[i * self.dim..(i + 1) * self.dim]
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let n = self.rows();
        assert_eq!(
            self.embeddings.len(),
            n * self.dim,
            "embeddings and labels disagree on the row count"
        );
        super::check_finite_output(path, "embeddings", &self.embeddings, self.dim)?;
        let metadata = BTreeMap::from([
            (
                "labels".to_string(),
                serde_json::to_string(&self.label_names).expect("strings serialise"),
            ),
            ("model".to_string(), self.model.clone()),
            ("pooling".to_string(), self.pooling.clone()),
            ("normalized".to_string(), self.normalized.to_string()),
            ("max_length".to_string(), self.max_length.to_string()),
        ]);
        let tensors = vec![
            TensorOut::f32("embeddings", vec![n, self.dim], &self.embeddings),
            TensorOut::i64("labels", vec![n], &self.labels),
        ];
        tensor_file::write(path, tensors, metadata)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |msg: String| Error::input(format!("{}: {msg}", path.display()));
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let file = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let emb = file
            .tensor("embeddings")
            .map_err(|_| bad("no tensor `embeddings`".into()))?;
        let (n, dim) = match (emb.dtype(), emb.shape()) {
            (Dtype::F32, &[n, d]) => (n, d),
            (dt, shape) => {
                return Err(bad(format!(
                    "`embeddings` is {dt:?} {shape:?}, expected F32 [N, D]"
                )))
            }
        };
        let embeddings: Vec<f32> = emb
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        let labels: Vec<i64> = match file.tensor("labels") {
            Ok(t) if t.dtype() == Dtype::I64 && t.shape() == [n] => t
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
            Ok(t) => {
                return Err(bad(format!(
                    "`labels` is {:?} {:?}, expected I64 [{n}]",
                    t.dtype(),
                    t.shape()
                )))
            }
            Err(_) => vec![-1; n],
        };
        let meta = header.metadata().clone().unwrap_or_default();
        let label_names: Vec<String> = match meta.get("labels") {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| bad(format!("metadata `labels` is not a JSON list: {e}")))?,
            None => Vec::new(),
        };
        if let Some(&bad_label) = labels
            .iter()
            .find(|&&l| l < -1 || l >= label_names.len() as i64)
        {
            return Err(bad(format!(
                "label index {bad_label} has no name (names: {label_names:?})"
            )));
        }
        let text = |key: &str| meta.get(key).cloned().unwrap_or_default();
        Ok(EmbeddingsFile {
            embeddings,
            dim,
            labels,
            label_names,
            model: text("model"),
            pooling: text("pooling"),
            normalized: text("normalized") == "true",
            max_length: text("max_length").parse().unwrap_or(0),
        })
    }
}

/// Where the texts of the embeddings file `embeddings` live: `<embeddings>.texts.jsonl`.
pub fn texts_sidecar_path(embeddings: &Path) -> PathBuf {
    let mut name = embeddings.as_os_str().to_owned();
    name.push(".texts.jsonl");
    PathBuf::from(name)
}

/// Writes the texts sidecar of the embeddings file `embeddings`, which must be written first:
/// a header line `{"fnv1a64": DIGEST, "rows": N, "sidecar_of": NAME}` with the row count and
/// [`file_digest`] of the embeddings file as written, then one `{"text": ..., "label": name or
/// null}` line per row, rows in embeddings order. The header lets [`read_texts_beside`] refuse
/// a sidecar that does not belong to the file beside it (a run stopped between the two writes,
/// a file replaced by hand). Returns the sidecar's path.
pub fn write_texts_beside(
    embeddings: &Path,
    texts: &[String],
    labels: &[i64],
    label_names: &[String],
) -> Result<PathBuf> {
    assert_eq!(
        texts.len(),
        labels.len(),
        "texts and labels disagree on the row count"
    );
    let of = embeddings
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let header = serde_json::json!({
        "sidecar_of": of,
        "rows": texts.len(),
        "fnv1a64": file_digest(embeddings)?,
    });
    let mut lines = header.to_string();
    lines.push('\n');
    for (text, &label) in texts.iter().zip(labels) {
        let name = usize::try_from(label).ok().map(|l| &label_names[l]);
        lines += &serde_json::json!({"text": text, "label": name}).to_string();
        lines.push('\n');
    }
    let path = texts_sidecar_path(embeddings);
    super::write_atomic(&path, lines.as_bytes())?;
    Ok(path)
}

/// The texts of the sidecar beside the embeddings file `embeddings` (of `expected_rows` rows),
/// or `None` when there is no sidecar. A malformed line, a row count other than
/// `expected_rows`, or a header whose row count or digest is not the embeddings file's is an
/// error naming the file (and the line). A sidecar without the header (written by hand or by
/// an older mscope) is checked by its row count only.
pub fn read_texts_beside(embeddings: &Path, expected_rows: usize) -> Result<Option<Vec<String>>> {
    Ok(read_sidecar_rows(embeddings, expected_rows)?
        .map(|rows| rows.into_iter().map(|(text, _)| text).collect()))
}

/// The labels (names, `None` for unlabelled rows) of the sidecar beside `embeddings`, checked
/// as [`read_texts_beside`] checks it: where `mscope embed --format npy` keeps them.
pub fn read_labels_beside(
    embeddings: &Path,
    expected_rows: usize,
) -> Result<Option<Vec<Option<String>>>> {
    Ok(read_sidecar_rows(embeddings, expected_rows)?
        .map(|rows| rows.into_iter().map(|(_, label)| label).collect()))
}

/// One sidecar row: its text (or image path) and its label's name.
type SidecarRow = (String, Option<String>);

/// Each row of the sidecar beside `embeddings`, checked against it.
fn read_sidecar_rows(embeddings: &Path, expected_rows: usize) -> Result<Option<Vec<SidecarRow>>> {
    let path = texts_sidecar_path(embeddings);
    let content = match std::fs::read_to_string(&path) {
        Ok(content) => content,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    // `path:line:` as the text readers of `mscope embed` name a bad line.
    let at = |line: usize, message: String| {
        Error::input(format!("{}:{line}: {message}", path.display()))
    };
    let mut lines = (1..).zip(content.lines()).peekable();
    let mut header = None;
    if let Some(&(n, first)) = lines.peek() {
        let value: serde_json::Value =
            serde_json::from_str(first).map_err(|e| at(n, format!("invalid JSON: {e}")))?;
        if value.get("sidecar_of").is_some() {
            header = Some(value);
            lines.next();
        }
    }
    let texts = lines
        .map(|(n, line)| {
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| at(n, format!("invalid JSON: {e}")))?;
            let label = match value.get("label") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(label)) => Some(label.clone()),
                Some(_) => return Err(at(n, "the field \"label\" is not a string".into())),
            };
            match value.get("text") {
                Some(serde_json::Value::String(text)) => Ok((text.clone(), label)),
                _ => Err(at(n, "no string field \"text\"".into())),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    if texts.len() != expected_rows {
        return Err(Error::input(format!(
            "{}: {} texts, but the embeddings have {expected_rows} rows",
            path.display(),
            texts.len()
        )));
    }
    if let Some(header) = header {
        let rows = header["rows"].as_u64();
        let digest = header["fnv1a64"].as_str().unwrap_or("");
        let actual = file_digest(embeddings)?;
        if rows != Some(expected_rows as u64) || digest != actual {
            return Err(Error::input(format!(
                "{}: belongs to other contents of {} (its header records {} rows and digest \
                 {digest}; the file has {expected_rows} rows and digest {actual}): a run \
                 stopped between writing the two, or one was replaced; rerun the command that \
                 wrote them, or remove the sidecar",
                path.display(),
                embeddings.display(),
                rows.map_or("no".to_string(), |r| r.to_string()),
            )));
        }
    }
    Ok(Some(texts))
}
