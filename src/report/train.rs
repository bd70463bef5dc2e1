//! `mscope train`'s test scores file and Markdown summary.

use std::collections::BTreeMap;
use std::path::Path;

use crate::data::Dataset;
use crate::error::Result;
use crate::instruments::ensemble::TrainReport;
use crate::io::tensor_file::{self, TensorOut};

/// Every model's logits on the `test` rows, `scores` F32 `[models, rows, classes]`, with the
/// rows' `labels`: the input of `mscope compare`.
pub fn write_scores(report: &TrainReport, test: &Dataset, path: &Path) -> Result<()> {
    tensor_file::write(
        path,
        vec![
            TensorOut::f32(
                "scores",
                vec![report.models.len(), test.len(), report.classes],
                &report.test_logits,
            ),
            TensorOut::i64("labels", vec![test.len()], &test.y),
        ],
        BTreeMap::new(),
    )
}

/// The run in one paragraph and one table row per seed; `out` is the output directory.
pub fn markdown(report: &TrainReport, out: &Path) -> String {
    let mut md = format!(
        "# Trained {} MLP(s) on {} -> {}\n\n{} rows × {} dims, {} classes; hidden {:?}, {}, \
         {} epochs of batches of {}, {} lr {}.\n\n| seed | train loss | train accuracy | test accuracy |\n|---|---|---|---|\n",
        report.models.len(),
        report.data,
        out.display(),
        report.n_train,
        report.dim,
        report.classes,
        report.hidden,
        report.activation,
        report.epochs,
        report.batch_size,
        report.optimizer,
        report.lr,
    );
    for m in &report.models {
        let test_accuracy = m
            .test_accuracy
            .map_or("–".to_string(), |a| format!("{:.2}%", 100.0 * a));
        md += &format!(
            "| {} | {:.4} | {:.2}% | {test_accuracy} |\n",
            m.seed,
            m.train_loss,
            100.0 * m.train_accuracy
        );
    }
    md
}
