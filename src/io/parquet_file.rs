//! Parquet embeddings tables, read and written through the `parquet` crate's column API (no
//! arrow): one row per embedding, the embedding a list of floats, beside scalar columns.
//!
//! Reading takes what pandas (pyarrow) and Hugging Face `datasets` write: the embedding column is
//! a `list<float32|float64>` or `fixed_size_list` (Parquet stores both as a LIST group over one
//! float leaf; the legacy `repeated float` field works too), found by name or as the table's only
//! float-list column; labels come from a string, integer or boolean column (nulls: unlabelled),
//! integers mapped to their names when the file's `huggingface` metadata declares a `ClassLabel`;
//! further label columns (`--factor`) are read the same way.
//! Any null in the embeddings (a null or empty list, a null element) is an error naming the row.
//!
//! Writing (`mscope embed --format parquet`): columns `embedding` (`list<float32>`), `label`
//! (nullable string) and `text` (or `path` for images), plus the key-value metadata `mscope`
//! (a JSON object with sorted keys: label names in index order, model, pooling, normalisation,
//! token limit) that reading restores. Snappy-compressed, no timestamps: identical inputs give
//! identical bytes.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use ::parquet::basic::{Compression, LogicalType, Repetition, Type as PhysicalType};
use ::parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use ::parquet::data_type::{ByteArray, ByteArrayType, DataType, FloatType};
use ::parquet::file::metadata::KeyValue;
use ::parquet::file::properties::WriterProperties;
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::file::writer::SerializedFileWriter;
use ::parquet::schema::parser::parse_message_type;
use ::parquet::schema::types::{ColumnDescriptor, ColumnPath, SchemaDescriptor};
use serde::{Deserialize, Serialize};

use super::embeddings::EmbeddingsFile;
use crate::error::{Error, Result};

/// The key of the key-value metadata holding [`MscopeMetadata`].
const METADATA_KEY: &str = "mscope";

/// What an embeddings file records beyond its rows, kept in a Parquet file written by mscope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MscopeMetadata {
    /// Label names in index order: the `label` column's values are these names.
    pub label_names: Vec<String>,
    pub max_length: usize,
    pub model: String,
    pub normalized: bool,
    pub pooling: String,
}

/// A Parquet embeddings table as read.
#[derive(Clone, Debug)]
pub struct ParquetTable {
    /// Row-major `[rows, dim]`, widened or rounded to f32.
    pub embeddings: Vec<f32>,
    pub dim: usize,
    /// The label column's value per row (`None`: null), when the table has the label column.
    pub labels: Option<Vec<Option<String>>>,
    /// The value per row of each of [`ColumnChoice::factors`], in that order.
    pub factors: Vec<Vec<Option<String>>>,
    /// The `text` (or else `path`) column, when there is one.
    pub texts: Option<Vec<String>>,
    /// Present in files `mscope embed` wrote.
    pub metadata: Option<MscopeMetadata>,
}

/// Which columns to read: the embedding column (`None`: the only float-list column), the
/// label column, tried in order (the first present is read; none present: no labels, or an error
/// when `labels_required`), and further label columns that must all be there.
pub struct ColumnChoice<'a> {
    pub embedding: Option<&'a str>,
    pub labels: &'a [&'a str],
    pub labels_required: bool,
    pub factors: &'a [&'a str],
}

/// How a top-level field of the table is stored, as far as reading embeddings cares.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// A list of f32 or f64: one leaf repeated once.
    FloatList,
    /// One value per row.
    Scalar,
    /// Anything else (nested structs, lists of other types, maps).
    Other,
}

/// One top-level field: its name, shape, description for messages, and its leaf's index when
/// it has a single leaf.
struct Field {
    name: String,
    shape: Shape,
    described: String,
    leaf: usize,
}

fn fields(schema: &SchemaDescriptor) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    for (i, column) in schema.columns().iter().enumerate() {
        let name = column.path().parts()[0].clone();
        if let Some(field) = out.iter_mut().find(|f| f.name == name) {
            // A second leaf under one field: a struct or map, not an embedding or a label.
            field.shape = Shape::Other;
            field.described = format!("{name} (nested)");
            continue;
        }
        let physical = column.physical_type();
        let shape = match (column.max_rep_level(), physical) {
            (1, PhysicalType::FLOAT | PhysicalType::DOUBLE) => Shape::FloatList,
            (0, _) if column.path().parts().len() == 1 => Shape::Scalar,
            _ => Shape::Other,
        };
        let element = match (physical, is_string(column)) {
            (PhysicalType::BYTE_ARRAY, true) => "string".to_string(),
            (PhysicalType::FLOAT, _) => "float32".into(),
            (PhysicalType::DOUBLE, _) => "float64".into(),
            (other, _) => format!("{other:?}").to_ascii_lowercase(),
        };
        let described = match (shape, column.max_rep_level()) {
            (Shape::Scalar, _) => format!("{name} {element}"),
            (_, 0) => format!("{name} (nested)"),
            _ => format!("{name} list<{element}>"),
        };
        out.push(Field {
            name,
            shape,
            described,
            leaf: i,
        });
    }
    out
}

fn is_string(column: &ColumnDescriptor) -> bool {
    matches!(
        column.logical_type_ref(),
        Some(LogicalType::String | LogicalType::Enum | LogicalType::Json)
    ) || column.converted_type() == ::parquet::basic::ConvertedType::UTF8
}

fn parquet_error(path: &Path) -> impl Fn(::parquet::errors::ParquetError) -> Error + '_ {
    move |e| {
        Error::input(format!(
            "{}: not a readable Parquet file: {e}",
            path.display()
        ))
    }
}

/// Reads the embeddings, the label column and the texts of a Parquet table.
pub fn read(path: &Path, columns: &ColumnChoice) -> Result<ParquetTable> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(parquet_error(path))?;
    let meta = reader.metadata().file_metadata();
    let schema = meta.schema_descr();
    let fields = fields(schema);
    let listing = || {
        fields
            .iter()
            .map(|f| f.described.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let embedding = match columns.embedding {
        Some(name) => match fields.iter().find(|f| f.name == name) {
            Some(f) if f.shape == Shape::FloatList => f,
            Some(f) => {
                return Err(Error::input(format!(
                    "{}: column `{}` is not a list of floats (columns: {})",
                    path.display(),
                    f.described,
                    listing()
                )))
            }
            None => {
                return Err(Error::input(format!(
                    "{}: no column `{name}` (columns: {})",
                    path.display(),
                    listing()
                )))
            }
        },
        None => {
            let lists: Vec<&Field> = fields
                .iter()
                .filter(|f| f.shape == Shape::FloatList)
                .collect();
            match lists[..] {
                [only] => only,
                [] => {
                    return Err(Error::input(format!(
                        "{}: no column holds a list of floats, the embeddings (columns: {})",
                        path.display(),
                        listing()
                    )))
                }
                _ => {
                    return Err(Error::input(format!(
                        "{}: {} columns hold lists of floats; name the embeddings with \
                         --embedding-column (columns: {})",
                        path.display(),
                        lists.len(),
                        listing()
                    )))
                }
            }
        }
    };
    let scalar = |name: &str| {
        fields
            .iter()
            .find(|f| f.name == name && f.name != embedding.name)
    };
    let missing = |name: &str| {
        Error::input(format!(
            "{}: no label column `{name}` (columns: {})",
            path.display(),
            listing()
        ))
    };
    let label = columns.labels.iter().find_map(|&name| scalar(name));
    if let (None, true, Some(name)) = (label, columns.labels_required, columns.labels.first()) {
        return Err(missing(name));
    }
    let factors = columns
        .factors
        .iter()
        .map(|&name| scalar(name).ok_or_else(|| missing(name)))
        .collect::<Result<Vec<&Field>>>()?;
    if let Some(f) = label
        .iter()
        .chain(&factors)
        .find(|f| f.shape != Shape::Scalar)
    {
        return Err(Error::input(format!(
            "{}: label column `{}` holds more than one value per row",
            path.display(),
            f.described
        )));
    }
    let text = ["text", "path"]
        .into_iter()
        .filter_map(scalar)
        .find(|f| f.shape == Shape::Scalar && is_string(&schema.column(f.leaf)));

    let key_value = |key: &str| {
        meta.key_value_metadata()?
            .iter()
            .find(|kv| kv.key == key)?
            .value
            .clone()
    };
    let metadata = key_value(METADATA_KEY)
        .map(|json| {
            serde_json::from_str::<MscopeMetadata>(&json).map_err(|e| {
                Error::input(format!(
                    "{}: metadata `{METADATA_KEY}` is malformed: {e}",
                    path.display()
                ))
            })
        })
        .transpose()?;
    // The label column first, then the factors: each read the same way.
    let label_fields: Vec<&Field> = label.into_iter().chain(factors.iter().copied()).collect();
    let class_names: Vec<Option<Vec<String>>> = label_fields
        .iter()
        .map(|f| class_label_names(key_value("huggingface")?, &f.name))
        .collect();
    let mut label_columns = vec![Vec::new(); label_fields.len()];

    let mut table = ParquetTable {
        embeddings: Vec::new(),
        dim: 0,
        labels: None,
        factors: Vec::new(),
        texts: text.map(|_| Vec::new()),
        metadata,
    };
    let mut rows_before = 0usize;
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(parquet_error(path))?;
        let rows = usize::try_from(group.metadata().num_rows()).unwrap_or(0);
        let column = |f: &Field| group.get_column_reader(f.leaf).map_err(parquet_error(path));
        let descr = schema.column(embedding.leaf);
        read_float_lists(
            column(embedding)?,
            &descr,
            rows,
            schema,
            rows_before,
            &mut table,
            &|msg| {
                Error::input(format!(
                    "{}: column `{}`, {msg}",
                    path.display(),
                    embedding.name
                ))
            },
        )?;
        for ((f, names), labels) in label_fields
            .iter()
            .zip(&class_names)
            .zip(&mut label_columns)
        {
            let values = read_scalars(column(f)?, &schema.column(f.leaf), rows)
                .map_err(parquet_error(path))?;
            for (value, row) in values.into_iter().zip(rows_before..) {
                labels.push(match (value, names) {
                    (Some(Scalar::Int(i)), Some(names)) => Some(
                        usize::try_from(i)
                            .ok()
                            .and_then(|i| names.get(i))
                            .cloned()
                            .ok_or_else(|| {
                                Error::input(format!(
                                    "{}: row {row}: label {i} of `{}` is outside its {} \
                                     ClassLabel names",
                                    path.display(),
                                    f.name,
                                    names.len()
                                ))
                            })?,
                    ),
                    (value, _) => value
                        .map(|v| v.into_label(path, &f.name, row))
                        .transpose()?,
                });
            }
        }
        if let (Some(f), Some(texts)) = (text, table.texts.as_mut()) {
            let values = read_scalars(column(f)?, &schema.column(f.leaf), rows)
                .map_err(parquet_error(path))?;
            for (value, row) in values.into_iter().zip(rows_before..) {
                match value {
                    Some(Scalar::Text(t)) => texts.push(t),
                    _ => {
                        return Err(Error::input(format!(
                            "{}: row {row}: column `{}` is null",
                            path.display(),
                            f.name
                        )))
                    }
                }
            }
        }
        rows_before += rows;
    }
    let mut label_columns = label_columns.into_iter();
    if label.is_some() {
        table.labels = label_columns.next();
    }
    table.factors = label_columns.collect();
    Ok(table)
}

/// The class names of a `ClassLabel` column from the `huggingface` metadata `datasets` writes
/// (`{"info": {"features": {COLUMN: {"_type": "ClassLabel", "names": [...]}}}}`).
fn class_label_names(json: String, column: &str) -> Option<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(&json).ok()?;
    let feature = value.get("info")?.get("features")?.get(column)?;
    if feature.get("_type")?.as_str()? != "ClassLabel" {
        return None;
    }
    feature
        .get("names")?
        .as_array()?
        .iter()
        .map(|n| n.as_str().map(str::to_owned))
        .collect()
}

/// Appends one row group's float lists to `table`, checking that every row is complete and as
/// wide as the first.
fn read_float_lists(
    column: ColumnReader,
    descr: &ColumnDescriptor,
    rows: usize,
    schema: &SchemaDescriptor,
    rows_before: usize,
    table: &mut ParquetTable,
    bad: &dyn Fn(String) -> Error,
) -> Result<()> {
    let (mut defs, mut reps) = (Vec::new(), Vec::new());
    let values: Vec<f32> = match column {
        ColumnReader::FloatColumnReader(mut r) => {
            let mut v = Vec::new();
            read_all::<FloatType>(&mut r, rows, &mut defs, &mut reps, &mut v)
                .map_err(|e| bad(e.to_string()))?;
            v
        }
        ColumnReader::DoubleColumnReader(mut r) => {
            let mut v = Vec::new();
            read_all(&mut r, rows, &mut defs, &mut reps, &mut v).map_err(|e| bad(e.to_string()))?;
            v.into_iter().map(|x: f64| x as f32).collect()
        }
        _ => unreachable!("float-list columns have a float leaf"),
    };
    let max_def = descr.max_def_level();
    let (null_below, empty_below) = list_levels(schema, descr);
    let mut row = rows_before;
    let mut width = 0usize;
    let mut started = false;
    let finish = |width: usize, row: usize, table: &mut ParquetTable| -> Result<()> {
        if table.dim == 0 && row == 0 {
            table.dim = width;
        } else if width != table.dim {
            return Err(bad(format!(
                "row {row}: {width} values, but row 0 has {}",
                table.dim
            )));
        }
        Ok(())
    };
    for (i, &rep) in reps.iter().enumerate() {
        let def = defs.get(i).copied().unwrap_or(max_def);
        if rep == 0 {
            if started {
                finish(width, row, table)?;
                row += 1;
            }
            started = true;
            width = 0;
        }
        if def < max_def {
            let what = if def < null_below {
                "the embedding is null".to_string()
            } else if def < empty_below {
                "the embedding is an empty list".to_string()
            } else {
                format!("element {width} is null")
            };
            return Err(bad(format!("row {row}: {what}")));
        }
        // Every level so far was a value (a missing one returned above), so level i is value i.
        table.embeddings.push(values[i]);
        width += 1;
    }
    if started {
        finish(width, row, table)?;
        row += 1;
    }
    if row - rows_before != rows {
        return Err(bad(format!(
            "{} lists in a row group of {rows} rows",
            row - rows_before
        )));
    }
    Ok(())
}

/// The definition levels below which a list leaf's row is a null list, and below which it is an
/// empty list (at or above it, below the leaf's maximum: a null element), from the repetition
/// of each node on the leaf's path.
fn list_levels(schema: &SchemaDescriptor, descr: &ColumnDescriptor) -> (i16, i16) {
    let (mut level, mut null_below, mut empty_below) = (0i16, 0i16, 0i16);
    let mut nodes = schema.root_schema().get_fields();
    for (depth, part) in descr.path().parts().iter().enumerate() {
        let Some(node) = nodes.iter().find(|n| n.name() == part) else {
            break;
        };
        let info = node.get_basic_info();
        let repetition = info.has_repetition().then(|| info.repetition());
        match repetition {
            Some(Repetition::OPTIONAL) => {
                level += 1;
                if depth == 0 {
                    null_below = level;
                }
            }
            Some(Repetition::REPEATED) => {
                level += 1;
                empty_below = level;
            }
            _ => {}
        }
        if node.is_group() {
            nodes = node.get_fields();
        }
    }
    (null_below, empty_below)
}

/// Reads every record of a column chunk: definition and repetition levels, and the non-null
/// values.
fn read_all<T: DataType>(
    reader: &mut ColumnReaderImpl<T>,
    rows: usize,
    defs: &mut Vec<i16>,
    reps: &mut Vec<i16>,
    values: &mut Vec<T::T>,
) -> ::parquet::errors::Result<()> {
    let mut done = 0;
    while done < rows {
        let (records, _, _) = reader.read_records(rows - done, Some(defs), Some(reps), values)?;
        if records == 0 {
            break;
        }
        done += records;
    }
    Ok(())
}

/// One value of a scalar column.
enum Scalar {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl Scalar {
    /// The label this value names (`None`: an empty string, unlabelled); a fractional float is
    /// not a label.
    fn into_label(self, path: &Path, column: &str, row: usize) -> Result<String> {
        Ok(match self {
            Scalar::Int(i) => i.to_string(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Text(t) => t,
            Scalar::Float(v) if v.fract() == 0.0 && v.abs() < 2f64.powi(53) => {
                (v as i64).to_string()
            }
            Scalar::Float(v) => {
                return Err(Error::input(format!(
                    "{}: row {row}: label {v} of `{column}` is not an integer or a string",
                    path.display()
                )))
            }
        })
    }
}

/// A scalar column chunk's values per row (`None`: null).
fn read_scalars(
    column: ColumnReader,
    descr: &ColumnDescriptor,
    rows: usize,
) -> ::parquet::errors::Result<Vec<Option<Scalar>>> {
    let max_def = descr.max_def_level();
    fn spread<T: DataType>(
        mut reader: ColumnReaderImpl<T>,
        rows: usize,
        max_def: i16,
        convert: impl Fn(T::T) -> ::parquet::errors::Result<Scalar>,
    ) -> ::parquet::errors::Result<Vec<Option<Scalar>>> {
        let (mut defs, mut reps, mut values) = (Vec::new(), Vec::new(), Vec::new());
        read_all(&mut reader, rows, &mut defs, &mut reps, &mut values)?;
        let mut values = values.into_iter();
        (0..rows)
            .map(|i| match defs.get(i) {
                // Below the maximum definition level: null.
                Some(&d) if d < max_def => Ok(None),
                _ => values.next().map(&convert).transpose(),
            })
            .collect()
    }
    match column {
        ColumnReader::BoolColumnReader(r) => spread(r, rows, max_def, |v| Ok(Scalar::Bool(v))),
        ColumnReader::Int32ColumnReader(r) => {
            spread(r, rows, max_def, |v| Ok(Scalar::Int(v.into())))
        }
        ColumnReader::Int64ColumnReader(r) => spread(r, rows, max_def, |v| Ok(Scalar::Int(v))),
        ColumnReader::FloatColumnReader(r) => {
            spread(r, rows, max_def, |v| Ok(Scalar::Float(v.into())))
        }
        ColumnReader::DoubleColumnReader(r) => spread(r, rows, max_def, |v| Ok(Scalar::Float(v))),
        ColumnReader::ByteArrayColumnReader(r) => spread(r, rows, max_def, |v: ByteArray| {
            Ok(Scalar::Text(v.as_utf8()?.to_owned()))
        }),
        _ => Err(::parquet::errors::ParquetError::General(
            "label columns must hold strings, integers, floats or booleans".into(),
        )),
    }
}

/// Writes `file`'s rows as a Parquet table (see the module docs), with `texts` in a `text`
/// column, or a `path` column when `texts_are_paths` (image embeddings).
pub fn write(
    path: &Path,
    file: &EmbeddingsFile,
    texts: &[String],
    texts_are_paths: bool,
) -> Result<()> {
    let rows = file.rows();
    assert_eq!(
        texts.len(),
        rows,
        "texts and rows disagree on the row count"
    );
    super::check_finite_output(path, "embeddings", &file.embeddings, file.dim)?;
    let text_column = if texts_are_paths { "path" } else { "text" };
    let schema = parse_message_type(&format!(
        "message mscope_embeddings {{
            required group embedding (LIST) {{ repeated group list {{ required float element; }} }}
            optional binary label (STRING);
            required binary {text_column} (STRING);
        }}"
    ))
    .expect("the schema parses");
    let metadata = MscopeMetadata {
        label_names: file.label_names.clone(),
        max_length: file.max_length,
        model: file.model.clone(),
        normalized: file.normalized,
        pooling: file.pooling.clone(),
    };
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        // Dictionary pages only pay for the labels; embeddings rarely repeat.
        .set_column_dictionary_enabled(
            ColumnPath::new(["embedding", "list", "element"].map(String::from).to_vec()),
            false,
        )
        .set_key_value_metadata(Some(vec![KeyValue::new(
            METADATA_KEY.to_string(),
            serde_json::to_string(&metadata).expect("metadata serialises"),
        )]))
        .build();
    let failed = |e: ::parquet::errors::ParquetError| {
        Error::input(format!("{}: cannot write Parquet: {e}", path.display()))
    };
    let mut bytes = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut bytes, Arc::new(schema), properties.into())
        .map_err(failed)?;
    let mut group = writer.next_row_group().map_err(failed)?;
    let mut column = 0;
    while let Some(mut writer) = group.next_column().map_err(failed)? {
        match column {
            0 => {
                // Repetition level 0 starts a row, 1 continues it; every element is defined.
                let reps: Vec<i16> = (0..file.embeddings.len())
                    .map(|i| i16::from(i % file.dim.max(1) != 0))
                    .collect();
                let defs = vec![1i16; file.embeddings.len()];
                writer
                    .typed::<FloatType>()
                    .write_batch(&file.embeddings, Some(&defs), Some(&reps))
                    .map_err(failed)?;
            }
            1 => {
                let names: Vec<ByteArray> = file
                    .labels
                    .iter()
                    .filter_map(|&l| usize::try_from(l).ok())
                    .map(|l| ByteArray::from(file.label_names[l].as_str()))
                    .collect();
                let defs: Vec<i16> = file.labels.iter().map(|&l| i16::from(l >= 0)).collect();
                writer
                    .typed::<ByteArrayType>()
                    .write_batch(&names, Some(&defs), None)
                    .map_err(failed)?;
            }
            _ => {
                let values: Vec<ByteArray> =
                    texts.iter().map(|t| ByteArray::from(t.as_str())).collect();
                writer
                    .typed::<ByteArrayType>()
                    .write_batch(&values, None, None)
                    .map_err(failed)?;
            }
        }
        writer.close().map_err(failed)?;
        column += 1;
    }
    group.close().map_err(failed)?;
    writer.close().map_err(failed)?;
    super::write_atomic(path, &bytes)
}
