//! `mscope align`: how alike are several embedders' views of the same rows? Linear CKA,
//! orthogonal Procrustes, SVCCA and mutual k-NN agreement for every pair of inputs.

use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::instruments::align::{self, AlignOptions};
use crate::instruments::neighbours::NeighbourScreen;
use crate::io::check_outputs;
use crate::io::embedding_inputs::EmbeddingInput;
use crate::io::embeddings::{read_texts_beside, EmbeddingsFile};
use crate::report;

#[derive(Args)]
pub struct AlignArgs {
    /// Two or more embeddings of the same rows in the same order (`mscope embed` files, .npy,
    /// .npz); where `mscope embed`'s texts sidecars are beside them, their texts must agree.
    #[arg(required = true, num_args = 2..)]
    inputs: Vec<PathBuf>,
    /// Neighbours per row for the mutual k-NN agreement (cosine).
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Principal components per input for SVCCA.
    #[arg(long, default_value_t = 10)]
    cca_dims: usize,
    /// JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Heat map of linear CKA (.png or .svg); STEM.mutual-knn.EXT beside it.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// With two inputs: the first rotated onto the second by the Procrustes rotation, in the
    /// second's coordinates (its scale, mean and width), as an embeddings file with the first's
    /// labels.
    #[arg(long)]
    aligned: Option<PathBuf>,
    /// How the neighbour search screens similarities before ranking its candidates exactly:
    /// 1 = f32 (any CPU), 2 = bf16 (AVX512_BF16), 3 = int8 (AVX512_VNNI). The neighbours are
    /// the same with every variant [default: 2 where the CPU has it, else 3, else 1].
    #[arg(long)]
    neighbour_variant: Option<u32>,
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: AlignArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    let inputs: Vec<_> = args
        .inputs
        .iter()
        .map(|p| ("INPUTS", Some(p.as_path())))
        .collect();
    report::plot::check_format("--plot", args.plot.as_deref())?;
    check_outputs(
        &inputs,
        &[
            ("--json", args.json.as_deref()),
            ("--plot", args.plot.as_deref()),
            ("--aligned", args.aligned.as_deref()),
        ],
    )?;
    if args.aligned.is_some() && args.inputs.len() != 2 {
        return Err(Error::input("--aligned needs exactly two inputs"));
    }
    let files = args
        .inputs
        .iter()
        .map(|path| {
            let input = EmbeddingInput {
                path: path.clone(),
                ..Default::default()
            };
            Ok((path.display().to_string(), input.read()?))
        })
        .collect::<Result<Vec<(String, EmbeddingsFile)>>>()?;
    check_same_texts(&args.inputs, &files)?;
    let options = AlignOptions {
        k: args.k,
        cca_dims: args.cca_dims,
        screen: match args.neighbour_variant {
            Some(n) => NeighbourScreen::from_number(n)?,
            None => NeighbourScreen::fastest(),
        },
    };
    let report = align::report(&files, &options)?;
    if let Some(path) = &args.aligned {
        let (a, b) = (&files[0].1, &files[1].1);
        let aligned = EmbeddingsFile {
            embeddings: align::aligned(a, b)?,
            dim: b.dim,
            model: format!("{} aligned to {}", a.model, b.model),
            ..a.clone()
        };
        aligned.write(path)?;
    }
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.plot {
        report::align::plots(&report, path)?;
    }
    out!("{}", report::align::markdown(&report))?;
    Ok(())
}

/// Inputs whose texts sidecars are both present must list the same texts row by row.
fn check_same_texts(paths: &[PathBuf], files: &[(String, EmbeddingsFile)]) -> Result<()> {
    let mut first: Option<(usize, Vec<String>)> = None;
    for (i, (path, (_, file))) in paths.iter().zip(files).enumerate() {
        let Some(texts) = read_texts_beside(path, file.rows())? else {
            continue;
        };
        match &first {
            None => first = Some((i, texts)),
            Some((j, reference)) => {
                if let Some(row) = (0..texts.len()).find(|&r| texts[r] != reference[r]) {
                    return Err(Error::input(format!(
                        "{} and {} embed different texts at row {row}: align compares \
                         embeddings of the same rows",
                        paths[*j].display(),
                        path.display()
                    )));
                }
            }
        }
    }
    Ok(())
}
