//! Embeddings from anywhere, for the analysis commands: mscope's own embeddings file
//! (safetensors, [`EmbeddingsFile`]), a NumPy `.npy` matrix `[N, D]`, a `.npz` archive holding
//! the matrix and optionally a label array, or a Parquet table (a float-list column and label
//! columns, [`super::parquet_file`]) — with labels from the file itself or from a separate
//! labels file (`.txt`, `.jsonl`, `.csv`, `.tsv`, `.npy`: one label per row). A `.npy` that
//! `mscope embed --format npy` wrote takes its labels from the texts sidecar beside it.
//!
//! Labels that come as strings or integers from outside are numbered in sorted order (numerically
//! when every label is an integer), as scikit-learn's `classes_` and `np.unique` order them; rows
//! without one (blank line, null, empty cell) get -1 and are left out of per-label analyses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::embeddings::{read_labels_beside, read_texts_beside, EmbeddingsFile};
use super::npy::{read_npz, NpyArray};
use super::parquet_file::{self, ColumnChoice, ParquetTable};
use super::texts::read_label_column;
use crate::error::{Error, Result};

/// Where an analysis command's embeddings and labels come from.
#[derive(Clone, Debug, Default)]
pub struct EmbeddingInput {
    /// `.safetensors` (mscope's format), `.npy`, `.npz` or `.parquet`.
    pub path: PathBuf,
    /// A labels file replacing the input's own labels.
    pub labels: Option<PathBuf>,
    /// The label column of a `.jsonl`/`.csv`/`.tsv` labels file, or the label array of a `.npz`
    /// input or column of a Parquet input (tried before `labels`).
    pub label_field: String,
    /// The `.npz` array holding the embeddings (`None`: `embeddings`, else the archive's only
    /// 2-D float array), or the Parquet column (`None`: the table's only float-list column).
    pub embeddings_key: Option<String>,
}

impl EmbeddingInput {
    /// Reads the embeddings and labels, rejecting non-finite values (naming the row) and a
    /// labels file whose row count differs from the embeddings'.
    pub fn read(&self) -> Result<EmbeddingsFile> {
        Ok(self.read_with_texts(false)?.0)
    }

    /// [`Self::read`], and with `texts` each row's text (or image path): a Parquet input's
    /// `text`/`path` column, else `mscope embed`'s texts sidecar when it is there.
    pub fn read_with_texts(&self, texts: bool) -> Result<(EmbeddingsFile, Option<Vec<String>>)> {
        let path = self.path.as_path();
        let ext = extension(path);
        let mut row_texts = None;
        let mut file = match ext.as_str() {
            "safetensors" => EmbeddingsFile::read(path)?,
            "npy" => {
                let (embeddings, dim) = matrix(&NpyArray::read(path)?, &path.display())?;
                let rows = embeddings.len().checked_div(dim).unwrap_or(0);
                // `mscope embed --format npy` keeps the labels in the texts sidecar.
                let labels = match &self.labels {
                    None => read_labels_beside(path, rows)?,
                    Some(_) => None,
                };
                external(path, embeddings, dim, labels)
            }
            "npz" => self.read_npz()?,
            "parquet" => {
                let (file, texts) = self.read_parquet()?;
                row_texts = texts;
                file
            }
            _ => {
                return Err(Error::input(format!(
                    "{}: unsupported embeddings file (supported: .safetensors written by mscope \
                     embed, .npy, .npz, .parquet)",
                    path.display()
                )))
            }
        };
        if texts && row_texts.is_none() {
            row_texts = read_texts_beside(path, file.rows())?;
        }
        if let Some(labels) = &self.labels {
            let values = read_labels(labels, &self.label_field)?;
            if values.len() != file.rows() {
                return Err(Error::input(format!(
                    "{}: {} labels, but {} has {} rows",
                    labels.display(),
                    values.len(),
                    path.display(),
                    file.rows()
                )));
            }
            (file.labels, file.label_names) = number_labels(values);
        }
        if let Some(i) = file.embeddings.iter().position(|v| !v.is_finite()) {
            return Err(Error::input(format!(
                "{}: embeddings row {}, column {} is {}",
                path.display(),
                i / file.dim,
                i % file.dim,
                file.embeddings[i]
            )));
        }
        Ok((file, row_texts.filter(|_| texts)))
    }

    fn read_parquet(&self) -> Result<(EmbeddingsFile, Option<Vec<String>>)> {
        let path = self.path.as_path();
        let ParquetTable {
            embeddings,
            dim,
            labels,
            texts,
            metadata,
        } = parquet_file::read(
            path,
            &ColumnChoice {
                embedding: self.embeddings_key.as_deref(),
                labels: &[self.label_field.as_str(), "labels"],
            },
        )?;
        let file = match (metadata, labels) {
            // A file mscope wrote: label indices as they were, and the run's description.
            (Some(meta), Some(labels)) if self.label_field == "label" => {
                let index: HashMap<&str, i64> = (0..)
                    .zip(&meta.label_names)
                    .map(|(i, n)| (n.as_str(), i))
                    .collect();
                let codes = (0..)
                    .zip(&labels)
                    .map(|(row, label)| match label {
                        None => Ok(-1),
                        Some(name) => index.get(name.as_str()).copied().ok_or_else(|| {
                            Error::input(format!(
                                "{}: row {row}: label {name:?} is not among the file's label \
                                 names {:?}",
                                path.display(),
                                meta.label_names
                            ))
                        }),
                    })
                    .collect::<Result<Vec<_>>>()?;
                EmbeddingsFile {
                    embeddings,
                    dim,
                    labels: codes,
                    label_names: meta.label_names,
                    model: meta.model,
                    pooling: meta.pooling,
                    normalized: meta.normalized,
                    max_length: meta.max_length,
                }
            }
            (_, labels) => external(path, embeddings, dim, labels),
        };
        Ok((file, texts))
    }

    fn read_npz(&self) -> Result<EmbeddingsFile> {
        let path = self.path.as_path();
        let arrays = read_npz(path)?;
        let names = || {
            arrays
                .iter()
                .map(|(k, a)| format!("{k} {:?} {:?}", a.dtype, a.shape))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let find = |key: &str| arrays.iter().find(|(k, _)| k == key);
        let (key, array) = match &self.embeddings_key {
            Some(key) => find(key).ok_or_else(|| {
                Error::input(format!(
                    "{}: no array `{key}` (arrays: {})",
                    path.display(),
                    names()
                ))
            })?,
            None => match find("embeddings") {
                Some(found) => found,
                None => {
                    let mut matrices = arrays
                        .iter()
                        .filter(|(_, a)| a.dtype.is_float() && a.shape.len() == 2);
                    match (matrices.next(), matrices.next()) {
                        (Some(only), None) => only,
                        _ => {
                            return Err(Error::input(format!(
                                "{}: no array `embeddings` and not exactly one 2-D float array; \
                                 name one with --embeddings-key (arrays: {})",
                                path.display(),
                                names()
                            )))
                        }
                    }
                }
            },
        };
        let what = format!("{}:{key}", path.display());
        let (embeddings, dim) = matrix(array, &what)?;
        let labels = [self.label_field.as_str(), "labels"]
            .into_iter()
            .find_map(find)
            .filter(|(k, _)| k != key)
            .map(|(k, a)| label_values(a, &format!("{}:{k}", path.display())))
            .transpose()?;
        if let Some(values) = &labels {
            if values.len() * dim != embeddings.len() {
                return Err(Error::input(format!(
                    "{what}: {} rows, but the archive's labels have {}",
                    embeddings.len() / dim.max(1),
                    values.len()
                )));
            }
        }
        Ok(external(path, embeddings, dim, labels))
    }
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The values of a 2-D numeric array and its width.
fn matrix(array: &NpyArray, what: &dyn std::fmt::Display) -> Result<(Vec<f32>, usize)> {
    match (&array.shape[..], array.to_f32()) {
        (&[_, dim], Some(values)) => Ok((values, dim)),
        _ => Err(Error::input(format!(
            "{what}: {:?} {:?}, expected a 2-D numeric array [rows, dim]",
            array.dtype, array.shape
        ))),
    }
}

/// An embeddings file for rows read from outside mscope: named after the file, with the given
/// labels (none: every row unlabelled).
fn external(
    path: &Path,
    embeddings: Vec<f32>,
    dim: usize,
    labels: Option<Vec<Option<String>>>,
) -> EmbeddingsFile {
    let rows = embeddings.len().checked_div(dim).unwrap_or(0);
    let (labels, label_names) = number_labels(labels.unwrap_or_else(|| vec![None; rows]));
    EmbeddingsFile {
        embeddings,
        dim,
        labels,
        label_names,
        model: path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        pooling: String::new(),
        normalized: false,
        max_length: 0,
    }
}

/// One label per row from a labels file.
fn read_labels(path: &Path, field: &str) -> Result<Vec<Option<String>>> {
    match extension(path).as_str() {
        "npy" => label_values(&NpyArray::read(path)?, &path.display()),
        _ => read_label_column(path, field),
    }
}

/// A 1-D array of integer or string labels (empty strings: none).
fn label_values(array: &NpyArray, what: &dyn std::fmt::Display) -> Result<Vec<Option<String>>> {
    if array.shape.len() != 1 {
        return Err(Error::input(format!(
            "{what}: labels of shape {:?}, expected one per row",
            array.shape
        )));
    }
    if let Some(strings) = array.to_strings() {
        return Ok(strings
            .into_iter()
            .map(|s| Some(s).filter(|s| !s.is_empty()))
            .collect());
    }
    let values = array.to_f64().ok_or_else(|| {
        Error::input(format!(
            "{what}: labels of type {:?} are neither integers nor strings",
            array.dtype
        ))
    })?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if v.fract() == 0.0 && v.abs() < 2f64.powi(53) {
                Ok(Some((v as i64).to_string()))
            } else {
                Err(Error::input(format!(
                    "{what}: label {v} at row {i} is not an integer"
                )))
            }
        })
        .collect()
}

/// Label indices per row (-1: none) and the names they index, sorted: numerically when every
/// name is an integer, else as strings.
fn number_labels(values: Vec<Option<String>>) -> (Vec<i64>, Vec<String>) {
    let mut names: Vec<String> = values.iter().flatten().cloned().collect();
    if names.iter().all(|n| n.parse::<i64>().is_ok()) {
        names.sort_by_key(|n| n.parse::<i64>().expect("checked"));
    } else {
        names.sort();
    }
    names.dedup();
    let index: HashMap<&str, i64> = (0..).zip(&names).map(|(i, n)| (n.as_str(), i)).collect();
    let codes = values
        .iter()
        .map(|v| v.as_deref().map_or(-1, |name| index[name]))
        .collect();
    (codes, names)
}
