//! Embeddings from anywhere, for the analysis commands: mscope's own embeddings file
//! (safetensors, [`EmbeddingsFile`]), a NumPy `.npy` matrix `[N, D]`, a `.npz` archive holding
//! the matrix and optionally a label array, or a Parquet table (a float-list column and label
//! columns, [`super::parquet_file`]) — with labels from the file itself or from a separate
//! labels file (`.txt`, `.jsonl`, `.csv`, `.tsv`, `.npy`: one label per row). A `.npy` that
//! `mscope embed --format npy` wrote takes its labels from the texts sidecar beside it.
//!
//! Several labels per row (`--factor`, e.g. language × subject × translated) come from the
//! columns of a `.csv`/`.tsv`/`.jsonl` labels file, or else from the input's own label columns
//! (Parquet) or arrays (`.npz`); each is a [`LabelFactor`], and the first also becomes the rows'
//! labels. An explicit label field or factor that is not there is an error listing what is.
//!
//! Labels that come as strings or integers from outside are numbered in sorted order (numerically
//! when every label is an integer), as scikit-learn's `classes_` and `np.unique` order them; rows
//! without one (blank line, null, empty cell) get -1 and are left out of per-label analyses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::embeddings::{read_labels_beside, read_texts_beside, EmbeddingsFile};
use super::npy::{read_npz, NpyArray};
use super::parquet_file::{self, ColumnChoice, ParquetTable};
use super::texts::{read_label_column, read_label_columns};
use crate::error::{Error, Result};

/// Where an analysis command's embeddings and labels come from.
#[derive(Clone, Debug, Default)]
pub struct EmbeddingInput {
    /// `.safetensors` (mscope's format), `.npy`, `.npz` or `.parquet`.
    pub path: PathBuf,
    /// A labels file replacing the input's own labels.
    pub labels: Option<PathBuf>,
    /// The label column of a `.jsonl`/`.csv`/`.tsv` labels file, or the label array of a `.npz`
    /// input or column of a Parquet input, which must then be there. `None`: `label` (in a `.npz`
    /// or Parquet input `label`, else `labels`, else none: rows unlabelled).
    pub label_field: Option<String>,
    /// Label columns read as factors (see the module docs); the first replaces `label_field`.
    pub factors: Vec<String>,
    /// The `.npz` array holding the embeddings (`None`: `embeddings`, else the archive's only
    /// 2-D float array), or the Parquet column (`None`: the table's only float-list column).
    pub embeddings_key: Option<String>,
}

/// Label columns as read: per column, each row's value (`None`: no label).
type LabelColumns = Vec<Vec<Option<String>>>;

/// One of several labels per row: the column's name, each row's level (an index into
/// `level_names`, -1: none) and the level names, numbered as labels are (module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelFactor {
    pub name: String,
    pub levels: Vec<i64>,
    pub level_names: Vec<String>,
}

impl LabelFactor {
    /// Numbers `values`; a factor needs two levels to separate anything.
    fn new(name: &str, values: Vec<Option<String>>, source: &Path) -> Result<LabelFactor> {
        let (levels, level_names) = number_labels(values);
        if level_names.len() < 2 {
            return Err(Error::input(format!(
                "{}: factor `{name}` has {} level{} ({}): a factor needs at least two",
                source.display(),
                level_names.len(),
                if level_names.len() == 1 { "" } else { "s" },
                level_names.join(", ")
            )));
        }
        Ok(LabelFactor {
            name: name.to_string(),
            levels,
            level_names,
        })
    }

    /// The factor on the rows `kept` (indices into its rows), as a label selection keeps them.
    pub fn select(&self, kept: &[usize]) -> LabelFactor {
        LabelFactor {
            name: self.name.clone(),
            levels: kept.iter().map(|&r| self.levels[r]).collect(),
            level_names: self.level_names.clone(),
        }
    }
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
        let (file, texts, _) = self.read_factored(texts)?;
        Ok((file, texts))
    }

    /// [`Self::read_with_texts`], and the [`LabelFactor`] of each of `self.factors`; the first
    /// factor is also the file's labels.
    pub fn read_factored(
        &self,
        texts: bool,
    ) -> Result<(EmbeddingsFile, Option<Vec<String>>, Vec<LabelFactor>)> {
        let path = self.path.as_path();
        let ext = extension(path);
        let mut row_texts = None;
        let mut factor_values = None;
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
            "npz" => {
                let (file, factors) = self.read_npz()?;
                factor_values = factors;
                file
            }
            "parquet" => {
                let (file, texts, factors) = self.read_parquet()?;
                row_texts = texts;
                factor_values = factors;
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
        let rows_differ = |labels: &Path, count: usize| {
            Error::input(format!(
                "{}: {count} labels, but {} has {} rows",
                labels.display(),
                path.display(),
                file.rows()
            ))
        };
        let mut factors = Vec::new();
        if !self.factors.is_empty() {
            let names: Vec<&str> = self.factors.iter().map(String::as_str).collect();
            if let Some(dup) = (1..names.len()).find(|&i| names[..i].contains(&names[i])) {
                return Err(Error::input(format!(
                    "--factor {}: given twice",
                    names[dup]
                )));
            }
            let (source, columns) = match (&self.labels, factor_values) {
                (Some(labels), _) => (labels.as_path(), read_label_columns(labels, &names)?),
                (None, Some(columns)) => (path, columns),
                (None, None) => {
                    return Err(Error::input(format!(
                        "{}: --factor reads label columns, which this input has none of; give \
                         them with --labels FILE (.csv, .tsv or .jsonl, one column per factor)",
                        path.display()
                    )))
                }
            };
            if let Some(column) = columns.iter().find(|c| c.len() != file.rows()) {
                return Err(rows_differ(source, column.len()));
            }
            factors = names
                .iter()
                .zip(columns)
                .map(|(name, values)| LabelFactor::new(name, values, source))
                .collect::<Result<Vec<_>>>()?;
            file.labels = factors[0].levels.clone();
            file.label_names = factors[0].level_names.clone();
        } else if let Some(labels) = &self.labels {
            let values = read_labels(labels, self.label_field.as_deref().unwrap_or("label"))?;
            if values.len() != file.rows() {
                return Err(rows_differ(labels, values.len()));
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
        Ok((file, row_texts.filter(|_| texts), factors))
    }

    /// Where the input's own labels are looked for: the given field, which must be there unless
    /// a labels file or factors replace them, or `label` then `labels`, either optional.
    fn own_label_fields(&self) -> (Vec<&str>, bool) {
        match &self.label_field {
            Some(field) => (
                vec![field.as_str()],
                self.labels.is_none() && self.factors.is_empty(),
            ),
            None => (vec!["label", "labels"], false),
        }
    }

    /// The factor columns to read from the input itself (none when a labels file gives them).
    fn own_factors(&self) -> Vec<&str> {
        match self.labels {
            Some(_) => Vec::new(),
            None => self.factors.iter().map(String::as_str).collect(),
        }
    }

    fn read_parquet(&self) -> Result<(EmbeddingsFile, Option<Vec<String>>, Option<LabelColumns>)> {
        let path = self.path.as_path();
        let (own_labels, labels_required) = self.own_label_fields();
        let own_factors = self.own_factors();
        let ParquetTable {
            embeddings,
            dim,
            labels,
            factors,
            texts,
            metadata,
        } = parquet_file::read(
            path,
            &ColumnChoice {
                embedding: self.embeddings_key.as_deref(),
                labels: &own_labels,
                labels_required,
                factors: &own_factors,
            },
        )?;
        let mscope_labels = matches!(self.label_field.as_deref(), None | Some("label"));
        let file = match (metadata, labels) {
            // A file mscope wrote: label indices as they were, and the run's description.
            (Some(meta), Some(labels)) if mscope_labels => {
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
        let factors = Some(factors).filter(|_| !own_factors.is_empty());
        Ok((file, texts, factors))
    }

    fn read_npz(&self) -> Result<(EmbeddingsFile, Option<LabelColumns>)> {
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
        let (own_labels, labels_required) = self.own_label_fields();
        let missing = |name: &str| {
            Error::input(format!(
                "{}: no label array `{name}` (arrays: {})",
                path.display(),
                names()
            ))
        };
        let column = |(k, a): &(String, NpyArray)| -> Result<Vec<Option<String>>> {
            let values = label_values(a, &format!("{}:{k}", path.display()))?;
            if values.len() * dim != embeddings.len() {
                return Err(Error::input(format!(
                    "{what}: {} rows, but the archive's `{k}` has {}",
                    embeddings.len() / dim.max(1),
                    values.len()
                )));
            }
            Ok(values)
        };
        let labels = own_labels
            .iter()
            .find_map(|name| find(name))
            .filter(|(k, _)| k != key);
        if let (None, true) = (labels, labels_required) {
            return Err(missing(own_labels[0]));
        }
        let labels = labels.map(column).transpose()?;
        let own_factors = self.own_factors();
        let factors = own_factors
            .iter()
            .map(|name| find(name).ok_or_else(|| missing(name)).and_then(column))
            .collect::<Result<Vec<_>>>()?;
        let factors = Some(factors).filter(|_| !own_factors.is_empty());
        Ok((external(path, embeddings, dim, labels), factors))
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
