//! The embeddings input and label selection the analysis commands (`pca`, `lda`) share.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::data::labels::{LabelGroup, LabelSelection};
use crate::error::Result;
use crate::io::embedding_inputs::EmbeddingInput;
use crate::io::embeddings::EmbeddingsFile;

#[derive(Args)]
pub struct EmbeddingsArgs {
    /// Embeddings: the file `mscope embed` writes (.safetensors, .npy with its texts sidecar,
    /// .parquet), a NumPy .npy matrix [rows, dim], a .npz archive (array `embeddings` or its
    /// only 2-D float array, labels from array --label-field or `labels`), or a Parquet table
    /// (its only list-of-floats column, labels from column --label-field or `labels`).
    #[arg(long)]
    pub input: PathBuf,
    /// One label per row, replacing the input's own: .txt (a line per row), .jsonl / .csv / .tsv
    /// (field --label-field), .npy (integers or strings). Blank labels leave a row unlabelled.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Label field of a .jsonl / .csv / .tsv labels file, label array of a .npz input, or label
    /// column of a Parquet input.
    #[arg(long, visible_alias = "label-column", default_value = "label")]
    label_field: String,
    /// Array of a .npz input, or column of a Parquet input, holding the embeddings.
    #[arg(long, visible_alias = "embedding-column")]
    embeddings_key: Option<String>,
    /// Keep only rows with these labels (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "LABEL,…")]
    only: Vec<String>,
    /// Merge labels into one class, e.g. `--group real=lsun,ddpm` (repeatable).
    #[arg(long, value_name = "NAME=LABEL,…")]
    group: Vec<LabelGroup>,
}

impl EmbeddingsArgs {
    /// The files read, with their flags (for the check that no output overwrites them).
    pub fn paths(&self) -> [(&'static str, Option<&Path>); 2] {
        [
            ("--input", Some(&self.input)),
            ("--labels", self.labels.as_deref()),
        ]
    }

    /// The embeddings with the selected labels, and their texts when `with_texts` and
    /// `mscope embed`'s sidecar is there.
    pub fn read(&self, with_texts: bool) -> Result<(EmbeddingsFile, Option<Vec<String>>)> {
        let input = EmbeddingInput {
            path: self.input.clone(),
            labels: self.labels.clone(),
            label_field: self.label_field.clone(),
            embeddings_key: self.embeddings_key.clone(),
        };
        let (file, texts) = input.read_with_texts(with_texts)?;
        let selection = LabelSelection {
            only: self.only.clone(),
            groups: self.group.clone(),
        };
        let (file, kept) = selection.apply(file)?;
        let texts = texts.map(|t| kept.iter().map(|&r| t[r].clone()).collect());
        Ok((file, texts))
    }
}
