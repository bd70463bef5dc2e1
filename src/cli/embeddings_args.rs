//! The embeddings input and label selection the analysis commands (`pca`, `lda`) share.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::data::labels::{LabelGroup, LabelSelection};
use crate::error::Result;
use crate::io::embedding_inputs::{EmbeddingInput, LabelFactor};
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
    /// column of a Parquet input: an error when it is not there [default: label, in a .npz or
    /// Parquet input `label` or `labels` if there].
    #[arg(long, visible_alias = "label-column")]
    label_field: Option<String>,
    /// Array of a .npz input, or column of a Parquet input, holding the embeddings.
    #[arg(long, visible_alias = "embedding-column")]
    embeddings_key: Option<String>,
    /// Keep only rows with these labels (comma-separated); with --factor, levels of the first
    /// factor.
    #[arg(long, value_delimiter = ',', value_name = "LABEL,…")]
    only: Vec<String>,
    /// Merge labels into one class, e.g. `--group real=lsun,ddpm` (repeatable); with --factor,
    /// levels of the first factor.
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
        let (file, texts, _) = self.read_factored(with_texts, &[])?;
        Ok((file, texts))
    }

    /// [`Self::read`] with label columns `factors` (`--factor`, see [`EmbeddingInput`]): the
    /// selection applies to the first factor, which is also the file's labels, and keeps the
    /// same rows of the others.
    pub fn read_factored(
        &self,
        with_texts: bool,
        factors: &[String],
    ) -> Result<(EmbeddingsFile, Option<Vec<String>>, Vec<LabelFactor>)> {
        let input = EmbeddingInput {
            path: self.input.clone(),
            labels: self.labels.clone(),
            label_field: self.label_field.clone(),
            factors: factors.to_vec(),
            embeddings_key: self.embeddings_key.clone(),
        };
        let (file, texts, factors) = input.read_factored(with_texts)?;
        let selection = LabelSelection {
            only: self.only.clone(),
            groups: self.group.clone(),
        };
        let (file, kept) = selection.apply(file)?;
        let texts = texts.map(|t| kept.iter().map(|&r| t[r].clone()).collect());
        let mut factors: Vec<LabelFactor> = factors.iter().map(|f| f.select(&kept)).collect();
        if let Some(first) = factors.first_mut() {
            // Grouped or subset by the selection.
            first.levels.clone_from(&file.labels);
            first.level_names.clone_from(&file.label_names);
        }
        Ok((file, texts, factors))
    }
}
