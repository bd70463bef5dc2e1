//! `mscope classify`: a saved LDA detector (`mscope lda --save`) scores new embeddings.

use std::path::PathBuf;

use clap::Args;

use crate::data::scores::argmax;
use crate::error::{Error, Result};
use crate::instruments::lda::detector::Detector;
use crate::io::check_outputs;

use super::embeddings_args::EmbeddingsArgs;

#[derive(Args)]
pub struct ClassifyArgs {
    /// Detector written by `mscope lda --save`.
    #[arg(long)]
    detector: PathBuf,
    #[command(flatten)]
    input: EmbeddingsArgs,
    /// Predictions: .csv (row, predicted, one probability column per label) or .json
    /// (`labels`, `predicted`, `probabilities` `[rows][labels]`).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: ClassifyArgs) -> Result<()> {
    let mut inputs = args.input.paths().to_vec();
    inputs.push(("--detector", Some(args.detector.as_path())));
    check_outputs(&inputs, &[("--out", Some(args.out.as_path()))])?;
    let detector = Detector::read(&args.detector)?;
    let (file, _) = args.input.read(false)?;
    detector.check_input(&file, &args.input.input)?;
    let k = detector.labels.len();
    let probabilities = detector.probabilities(&file.embeddings);
    let predicted: Vec<usize> = probabilities.chunks_exact(k).map(argmax).collect();
    let text = match args.out.extension().and_then(|e| e.to_str()) {
        Some("csv") => {
            let mut text = format!("row,predicted,{}\n", detector.labels.join(","));
            for (r, (p, &c)) in probabilities.chunks_exact(k).zip(&predicted).enumerate() {
                let cells: Vec<String> = p.iter().map(|v| format!("{v}")).collect();
                text += &format!("{r},{},{}\n", detector.labels[c], cells.join(","));
            }
            text
        }
        Some("json") => {
            let value = serde_json::json!({
                "labels": detector.labels,
                "predicted": predicted.iter().map(|&c| &detector.labels[c]).collect::<Vec<_>>(),
                "probabilities": probabilities.chunks_exact(k).collect::<Vec<_>>(),
            });
            serde_json::to_string_pretty(&value).expect("JSON") + "\n"
        }
        _ => {
            return Err(Error::input(format!(
                "{}: --out must end in .csv or .json",
                args.out.display()
            )))
        }
    };
    crate::io::write_atomic(&args.out, text.as_bytes())?;
    // Where the rows carry labels the detector knows, how often it names them.
    let known: Vec<(usize, usize)> = file
        .labels
        .iter()
        .zip(&predicted)
        .filter_map(|(&l, &p)| {
            let name = file.label_names.get(usize::try_from(l).ok()?)?;
            detector
                .labels
                .iter()
                .position(|d| d == name)
                .map(|t| (t, p))
        })
        .collect();
    let correct = known.iter().filter(|(t, p)| t == p).count();
    let summary = if known.is_empty() {
        String::new()
    } else {
        format!(
            "; accuracy on {} labelled rows {:.2}%",
            known.len(),
            100.0 * correct as f64 / known.len() as f64
        )
    };
    outln!(
        "classified {} rows into {} labels -> {}{summary}",
        file.rows(),
        k,
        args.out.display()
    )?;
    Ok(())
}
