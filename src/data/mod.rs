//! Datasets for classifiers: safetensors with `x` F32 `[N, d]` and `y` I64 `[N]` (class indices
//! `0..C`), the format `mscope data` writes and `train`, `ntk` and `kglm` read.

pub mod digits;
pub mod labels;
pub mod scores;
pub mod synthetic;

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::tensor_file::{self, TensorFile, TensorOut};

#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Row-major `[n, dim]`.
    pub x: Vec<f32>,
    pub dim: usize,
    /// Class index of each row.
    pub y: Vec<i64>,
}

impl Dataset {
    /// Checks that `x` holds `y.len()` rows of `dim` values and that every label is ≥ 0.
    pub fn new(x: Vec<f32>, dim: usize, y: Vec<i64>) -> Result<Self> {
        if x.len() != y.len() * dim {
            return Err(Error::input(format!(
                "dataset: {} values of x do not make {} rows of dimension {dim}",
                x.len(),
                y.len()
            )));
        }
        if let Some(row) = y.iter().position(|&label| label < 0) {
            return Err(Error::input(format!(
                "dataset: label {} of row {row} is negative",
                y[row]
            )));
        }
        Ok(Dataset { x, dim, y })
    }

    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }

    /// Rows `range` as a dataset of their own.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Dataset {
        Dataset {
            x: self.x[range.start * self.dim..range.end * self.dim].to_vec(),
            dim: self.dim,
            y: self.y[range].to_vec(),
        }
    }

    /// The rows `rows`, in that order, as a dataset of their own.
    pub fn select(&self, rows: &[usize]) -> Dataset {
        Dataset {
            x: rows.iter().flat_map(|&i| self.row(i)).copied().collect(),
            dim: self.dim,
            y: rows.iter().map(|&i| self.y[i]).collect(),
        }
    }

    /// One more than the largest label (0 for an empty dataset).
    pub fn num_classes(&self) -> usize {
        self.y.iter().max().map_or(0, |&m| m as usize + 1)
    }

    /// An error unless every label is below `classes` (a model's number of logits).
    pub fn check_labels(&self, classes: usize, what: &Path) -> Result<()> {
        match self.y.iter().position(|&label| label as usize >= classes) {
            Some(row) => Err(Error::input(format!(
                "{}: label {} of row {row} is out of range for a model with {classes} classes",
                what.display(),
                self.y[row]
            ))),
            None => Ok(()),
        }
    }

    pub fn read(path: &Path) -> Result<Self> {
        let file = TensorFile::read(path)?;
        let (x_shape, x) = file.f32("x")?;
        let (y_shape, y) = file.i64("y")?;
        let (n, dim) = match x_shape[..] {
            [n, d] => (n, d),
            _ => return Err(file.error(format!("`x` has shape {x_shape:?}, expected [N, d]"))),
        };
        if y_shape != [n] {
            return Err(file.error(format!("`y` has shape {y_shape:?}, expected [{n}]")));
        }
        if let Some(row) = x.iter().position(|v| !v.is_finite()) {
            return Err(file.error(format!("`x` row {} is not finite", row / dim.max(1))));
        }
        Dataset::new(x, dim, y).map_err(|e| file.error(e))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        tensor_file::write(
            path,
            vec![
                TensorOut::f32("x", vec![self.len(), self.dim], &self.x),
                TensorOut::i64("y", vec![self.len()], &self.y),
            ],
            BTreeMap::new(),
        )
    }
}
