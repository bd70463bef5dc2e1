//! Kernel matrices (`mscope ntk` output, `kglm` and `ntk-compare` input): safetensors with
//! `kernel` F32 `[N_rows, N_cols]` and string metadata `kind` (trntk, trntk0, pntk),
//! `normalized` (true/false) and `projection_dim` (0 = exact).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::Result;
use crate::io::tensor_file::{self, TensorFile, TensorOut};

#[derive(Clone, Debug, PartialEq)]
pub struct KernelFile {
    /// Row-major `[rows, cols]`.
    pub values: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    pub kind: String,
    pub normalized: bool,
    /// Dimension of the random projection the kernel was estimated with; 0 when exact.
    pub projection_dim: usize,
}

impl KernelFile {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.cols..(i + 1) * self.cols]
    }

    pub fn read(path: &Path) -> Result<Self> {
        let file = TensorFile::read(path)?;
        let (shape, values) = file.f32("kernel")?;
        let [rows, cols] = shape[..] else {
            return Err(file.error(format!(
                "`kernel` has shape {shape:?}, expected [N_rows, N_cols]"
            )));
        };
        if let Some(at) = values.iter().position(|v| !v.is_finite()) {
            return Err(file.error(format!(
                "kernel entry ({}, {}) is not finite",
                at / cols,
                at % cols
            )));
        }
        let projection_dim = match file.metadata("projection_dim") {
            None => 0,
            Some(text) => text.parse().map_err(|_| {
                file.error(format!("metadata projection_dim `{text}` is not a count"))
            })?,
        };
        Ok(KernelFile {
            values,
            rows,
            cols,
            kind: file.metadata("kind").unwrap_or("unknown").to_string(),
            normalized: file.metadata("normalized") == Some("true"),
            projection_dim,
        })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        assert_eq!(self.values.len(), self.rows * self.cols, "kernel shape");
        super::check_finite_output(path, "kernel", &self.values, self.cols)?;
        let metadata = BTreeMap::from([
            ("kind".to_string(), self.kind.clone()),
            ("normalized".to_string(), self.normalized.to_string()),
            (
                "projection_dim".to_string(),
                self.projection_dim.to_string(),
            ),
        ]);
        tensor_file::write(
            path,
            vec![TensorOut::f32(
                "kernel",
                vec![self.rows, self.cols],
                &self.values,
            )],
            metadata,
        )
    }
}
