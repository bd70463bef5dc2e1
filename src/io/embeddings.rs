//! The embeddings file `mscope embed` writes and the analysis commands read: safetensors with
//! `embeddings` F32 `[N, D]` and `labels` I64 `[N]`, plus string metadata (`labels` as a JSON
//! array of names, `model`, `pooling`, `normalized`, `max_length`).

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

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
        let metadata = HashMap::from([
            (
                "labels".to_string(),
                serde_json::to_string(&self.label_names).expect("strings serialise"),
            ),
            ("model".to_string(), self.model.clone()),
            ("pooling".to_string(), self.pooling.clone()),
            ("normalized".to_string(), self.normalized.to_string()),
            ("max_length".to_string(), self.max_length.to_string()),
        ]);
        let fail =
            |e: safetensors::SafeTensorError| Error::input(format!("{}: {e}", path.display()));
        let emb = safetensors::tensor::TensorView::new(
            Dtype::F32,
            vec![n, self.dim],
            bytemuck::cast_slice(&self.embeddings),
        )
        .map_err(fail)?;
        let lab = safetensors::tensor::TensorView::new(
            Dtype::I64,
            vec![n],
            bytemuck::cast_slice(&self.labels),
        )
        .map_err(fail)?;
        let bytes = safetensors::serialize([("embeddings", emb), ("labels", lab)], Some(metadata))
            .map_err(fail)?;
        super::write_atomic(path, &bytes)
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
