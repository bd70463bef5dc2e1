//! Text inputs for `mscope embed`: `.txt`, `.jsonl`, `.csv` and `.tsv`, each optionally labelled
//! as a whole with `PATH=LABEL`. Every error names the file and 1-based line, because the CLI
//! prints it as the whole diagnosis.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

use crate::error::{Error, Result};

/// One `--input` argument: a path, optionally with `=LABEL` that labels every row of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    pub path: PathBuf,
    pub label: Option<String>,
}

impl FromStr for InputSpec {
    type Err = String;

    /// Splits at the last `=` only when both sides are non-empty and the right one has no `/`,
    /// so an `=` inside a directory name stays part of the path.
    fn from_str(arg: &str) -> std::result::Result<Self, String> {
        if arg.is_empty() {
            return Err("empty --input argument".into());
        }
        Ok(match arg.rsplit_once('=') {
            Some((path, label))
                if !path.is_empty() && !label.is_empty() && !label.contains('/') =>
            {
                InputSpec {
                    path: path.into(),
                    label: Some(label.into()),
                }
            }
            _ => InputSpec {
                path: arg.into(),
                label: None,
            },
        })
    }
}

/// Names of the text and label fields in `.jsonl` objects and `.csv`/`.tsv` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldNames {
    pub text: String,
    pub label: String,
}

impl Default for FieldNames {
    fn default() -> Self {
        FieldNames {
            text: "text".into(),
            label: "label".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRow {
    pub text: String,
    pub label: Option<String>,
}

/// All inputs in order, and the label names in order of first appearance; label index per row
/// (-1 where none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Corpus {
    pub texts: Vec<String>,
    pub labels: Vec<i64>,
    pub label_names: Vec<String>,
    pub sources: Vec<RowSource>,
}

/// Where a row came from, so later stages can point the user back at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowSource {
    /// Index into the inputs.
    pub file: usize,
    /// 1-based line; for `.csv`/`.tsv` the line the record starts on.
    pub line: usize,
}

const SUPPORTED: &str = ".txt, .jsonl, .csv, .tsv";

/// Reads one input, choosing the format by extension.
pub fn read_rows(spec: &InputSpec, fields: &FieldNames) -> Result<Vec<TextRow>> {
    Ok(read_numbered(spec, fields)?
        .into_iter()
        .map(|(_, row)| row)
        .collect())
}

/// Reads every input in order and numbers the labels by first appearance.
pub fn read_corpus(specs: &[InputSpec], fields: &FieldNames) -> Result<Corpus> {
    if specs.is_empty() {
        return Err(Error::input("no --input given"));
    }
    let mut corpus = Corpus::default();
    let mut label_index = HashMap::new();
    for (file, spec) in specs.iter().enumerate() {
        for (line, row) in read_numbered(spec, fields)? {
            let label = match row.label {
                None => -1,
                Some(name) => *label_index.entry(name.clone()).or_insert_with(|| {
                    corpus.label_names.push(name);
                    corpus.label_names.len() as i64 - 1
                }),
            };
            corpus.texts.push(row.text);
            corpus.labels.push(label);
            corpus.sources.push(RowSource { file, line });
        }
    }
    Ok(corpus)
}

/// Rows with their 1-based line numbers.
fn read_numbered(spec: &InputSpec, fields: &FieldNames) -> Result<Vec<(usize, TextRow)>> {
    let path = spec.path.as_path();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    // With `PATH=LABEL` the file's own label field is not read at all, so it may be anything.
    let labels = spec.label.is_none();
    let mut rows = match ext.as_str() {
        "txt" => txt_rows(&read_utf8(path)?),
        "jsonl" => jsonl_rows(path, &read_utf8(path)?, fields, labels)?,
        "csv" => delimited_rows(path, &read_utf8(path)?, b',', fields, labels)?,
        "tsv" => delimited_rows(path, &read_utf8(path)?, b'\t', fields, labels)?,
        _ => {
            let message = format!("unsupported input type (supported: {SUPPORTED})");
            return Err(Error::input(format!("{}: {message}", path.display())));
        }
    };
    if rows.is_empty() {
        return Err(Error::input(format!("{}: no texts", path.display())));
    }
    match &spec.label {
        Some(label) => {
            for (_, row) in &mut rows {
                row.label = Some(label.clone());
            }
        }
        None => check_labels(path, &rows)?,
    }
    Ok(rows)
}

/// A file is labelled throughout or not at all: gaps are almost always a broken export, and
/// treating them as unlabelled would silently skew per-label measurements.
fn check_labels(path: &Path, rows: &[(usize, TextRow)]) -> Result<()> {
    let labelled = rows.iter().find(|(_, row)| row.label.is_some());
    let unlabelled = rows.iter().find(|(_, row)| row.label.is_none());
    if let (Some((with, _)), Some((without, _))) = (labelled, unlabelled) {
        let message = format!("no label, but line {with} has one (label every row or none)");
        return Err(at(path, *without, message));
    }
    Ok(())
}

/// Decodes the whole file, reporting the line of the first invalid byte so the user can find it.
fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
        at(path, line, "invalid UTF-8")
    })?;
    // Spreadsheet exports often start with a byte-order mark, which would rename the first column.
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// Every line is a text, except blank (whitespace-only) ones: in a text file they are paragraph
/// breaks or a trailing empty line far more often than intended texts, and as rows they would
/// be embeddings of nothing mixed into the analyses (as in `.jsonl`, which skips them too; an
/// empty text can still be given in `.jsonl` or `.csv`).
fn txt_rows(content: &str) -> Vec<(usize, TextRow)> {
    (1..)
        .zip(content.lines())
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, text)| {
            let row = TextRow {
                text: text.into(),
                label: None,
            };
            (n, row)
        })
        .collect()
}

fn jsonl_rows(
    path: &Path,
    content: &str,
    fields: &FieldNames,
    labels: bool,
) -> Result<Vec<(usize, TextRow)>> {
    let (text_field, label_field) = (&fields.text, &fields.label);
    let mut rows = Vec::new();
    for object in jsonl_objects(path, content) {
        let (n, mut object) = object?;
        let text = match object.remove(text_field) {
            Some(Value::String(text)) => text,
            Some(_) => {
                let message = format!("field \"{text_field}\" is not a string");
                return Err(at(path, n, message));
            }
            None => return Err(at(path, n, format!("no field \"{text_field}\""))),
        };
        let label = match object.remove(label_field).filter(|_| labels) {
            Some(value) => json_label(value).map_err(|m| at(path, n, m(label_field)))?,
            None => None,
        };
        rows.push((n, TextRow { text, label }));
    }
    Ok(rows)
}

/// `.csv` and `.tsv`, header required; quoting follows the csv crate (RFC 4180 style).
fn delimited_rows(
    path: &Path,
    content: &str,
    delimiter: u8,
    fields: &FieldNames,
    labels: bool,
) -> Result<Vec<(usize, TextRow)>> {
    let text_field = &fields.text;
    let line_of = |position: Option<&csv::Position>| position.map_or(1, |p| p.line() as usize);
    let csv_error = |e: csv::Error| at(path, line_of(e.position()), e);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_reader(content.as_bytes());
    let header = reader.headers().map_err(csv_error)?.clone();
    let text_column = column(path, &header, text_field)?;
    let label_column = header
        .iter()
        .position(|h| h == fields.label)
        .filter(|_| labels);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let label = label_column.map(|c| &record[c]).filter(|l| !l.is_empty());
        let row = TextRow {
            text: record[text_column].to_owned(),
            label: label.map(str::to_owned),
        };
        rows.push((line_of(record.position()), row));
    }
    Ok(rows)
}

/// A label value of a `.jsonl` field: a non-empty string or an integer, `None` for null or "";
/// else a message for the field's name.
fn json_label(value: Value) -> std::result::Result<Option<String>, fn(&str) -> String> {
    match value {
        Value::Null => Ok(None),
        Value::String(label) => Ok(Some(label).filter(|l| !l.is_empty())),
        Value::Number(x) if x.is_i64() || x.is_u64() => Ok(Some(x.to_string())),
        _ => Err(|field| format!("field \"{field}\" is not a string or an integer")),
    }
}

/// The index of column `name` in a `.csv`/`.tsv` header, or an error listing the columns.
fn column(path: &Path, header: &csv::StringRecord, name: &str) -> Result<usize> {
    header.iter().position(|h| h == name).ok_or_else(|| {
        let columns = header.iter().collect::<Vec<_>>().join(", ");
        at(
            path,
            1,
            format!("no column \"{name}\" in the header (columns: {columns})"),
        )
    })
}

/// One label per row from a labels file: `.txt` (a line per row; a blank line is a row without
/// a label), or field `field` of `.jsonl` objects (null or absent: none) or column `field` of a
/// `.csv`/`.tsv` with a header (empty: none). Numbers are labels too, by their text. A field
/// that no `.jsonl` object has, or a column the header lacks, is an error listing those there.
pub fn read_label_column(path: &Path, field: &str) -> Result<Vec<Option<String>>> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
    {
        let content = read_utf8(path)?;
        return Ok(content
            .lines()
            .map(|l| Some(l.trim().to_owned()).filter(|l| !l.is_empty()))
            .collect());
    }
    Ok(read_label_columns(path, &[field])?.remove(0))
}

/// Several labels per row (`mscope pca --factor`): one column per name in `fields`, from the
/// fields of a `.jsonl` labels file or the columns of a `.csv`/`.tsv`, as [`read_label_column`]
/// reads one. A `.txt` file has no named columns and is refused.
pub fn read_label_columns(path: &Path, fields: &[&str]) -> Result<Vec<Vec<Option<String>>>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" => {
            let content = read_utf8(path)?;
            let mut columns = vec![Vec::new(); fields.len()];
            // Every field seen on some line: for the error when a requested one is never there.
            let mut seen: std::collections::BTreeSet<String> = Default::default();
            let mut found = vec![false; fields.len()];
            for object in jsonl_objects(path, content.as_str()) {
                let (n, mut object) = object?;
                for ((field, column), found) in fields.iter().zip(&mut columns).zip(&mut found) {
                    column.push(match object.remove(*field) {
                        Some(value) => {
                            *found = true;
                            json_label(value).map_err(|m| at(path, n, m(field)))?
                        }
                        None => None,
                    });
                }
                seen.extend(object.into_iter().map(|(k, _)| k));
            }
            if let Some(i) = found.iter().position(|f| !f) {
                seen.extend(
                    fields
                        .iter()
                        .zip(&found)
                        .filter(|(_, &f)| f)
                        .map(|(k, _)| k.to_string()),
                );
                return Err(Error::input(format!(
                    "{}: no object has the field \"{}\" (fields: {})",
                    path.display(),
                    fields[i],
                    seen.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
            Ok(columns)
        }
        "csv" | "tsv" => {
            let content = read_utf8(path)?;
            let delimiter = if ext == "csv" { b',' } else { b'\t' };
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(delimiter)
                .from_reader(content.as_bytes());
            let csv_error =
                |e: csv::Error| at(path, e.position().map_or(1, |p| p.line() as usize), e);
            let header = reader.headers().map_err(csv_error)?.clone();
            let at_column = fields
                .iter()
                .map(|f| column(path, &header, f))
                .collect::<Result<Vec<_>>>()?;
            let mut columns = vec![Vec::new(); fields.len()];
            for record in reader.records() {
                let record = record.map_err(csv_error)?;
                for (&c, column) in at_column.iter().zip(&mut columns) {
                    column.push(Some(record[c].to_owned()).filter(|l| !l.is_empty()));
                }
            }
            Ok(columns)
        }
        "txt" => Err(Error::input(format!(
            "{}: a .txt labels file holds one unnamed label per line; several label columns \
             need a .csv, .tsv or .jsonl file",
            path.display()
        ))),
        _ => Err(Error::input(format!(
            "{}: unsupported labels file (supported: .txt, .jsonl, .csv, .tsv, .npy)",
            path.display()
        ))),
    }
}

/// The objects of a `.jsonl` file with their 1-based line numbers, blank lines skipped; a line
/// that is not a JSON object is an error naming it.
fn jsonl_objects<'a>(
    path: &'a Path,
    content: &'a str,
) -> impl Iterator<Item = Result<(usize, serde_json::Map<String, Value>)>> + 'a {
    (1..)
        .zip(content.lines())
        .filter(|(_, line)| !line.trim().is_empty())
        .map(move |(n, line)| match serde_json::from_str(line) {
            Ok(Value::Object(object)) => Ok((n, object)),
            Ok(_) => Err(at(path, n, "not a JSON object")),
            Err(e) => Err(at(path, n, format!("invalid JSON: {e}"))),
        })
}

fn at(path: &Path, line: usize, message: impl Display) -> Error {
    Error::input(format!("{}:{line}: {message}", path.display()))
}

/// Each row's class index among the model's `labels`: its label is a name of `id2label` (first)
/// or a class index below `num_labels`; `None` for a row without a label. An error names the
/// file and row of a label that is neither.
pub fn text_label_indices(
    path: &Path,
    rows: &[TextRow],
    labels: &[String],
) -> Result<Vec<Option<usize>>> {
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let Some(label) = &row.label else {
                return Ok(None);
            };
            let class = labels
                .iter()
                .position(|l| l == label)
                .or_else(|| label.parse::<usize>().ok().filter(|&c| c < labels.len()));
            class.map(Some).ok_or_else(|| {
                Error::input(format!(
                    "{}: row {}: label {label:?} is not one of the model's {} labels ({}) nor a \
                     class index below {}",
                    path.display(),
                    i + 1,
                    labels.len(),
                    labels.join(", "),
                    labels.len()
                ))
            })
        })
        .collect()
}
