//! `mscope data`: classification datasets for `mscope train` — seeded two moons and Gaussian
//! blobs, or scikit-learn's 8×8 digits — split into stratified train and test files.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::data::{digits, synthetic};
use crate::error::{Error, Result};
use crate::instruments::splits;
use crate::io::check_outputs;
use crate::report;

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    source: Source,
    #[command(flatten)]
    output: Output,
}

#[derive(Subcommand)]
enum Source {
    /// Two interleaving half circles in 2-D, labels 0/1 (scikit-learn's make_moons).
    Moons {
        #[arg(long, default_value_t = 1000)]
        n: usize,
        /// Standard deviation of the Gaussian noise added to every coordinate.
        #[arg(long, default_value_t = 0.1)]
        noise: f64,
    },
    /// Isotropic Gaussian blobs, centres uniform in [-10, 10)^dim (scikit-learn's make_blobs).
    Blobs {
        #[arg(long, default_value_t = 1000)]
        n: usize,
        #[arg(long, default_value_t = 3)]
        classes: usize,
        #[arg(long, default_value_t = 2)]
        dim: usize,
        /// Standard deviation of every blob.
        #[arg(long, default_value_t = 1.0)]
        std: f64,
    },
    /// scikit-learn's 8×8 handwritten digits (1797 rows, 64 pixels scaled to [0, 1], 10 labels).
    Digits {
        /// The CSV that tools/fetch-digits.sh extracts.
        #[arg(long, default_value = digits::DEFAULT_PATH)]
        source: PathBuf,
    },
}

#[derive(Args)]
struct Output {
    /// Seed of the generator and of the split.
    #[arg(long, global = true, default_value_t = 0)]
    seed: u64,
    /// Share of each label's rows in the test file; 0 keeps every row in --out.
    #[arg(long, global = true, default_value_t = 0.2)]
    test_fraction: f64,
    /// Training rows (safetensors `x` F32 [N, d], `y` I64 [N]).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Test rows, same format.
    #[arg(long, global = true)]
    test_out: Option<PathBuf>,
    /// Scatter plot of every row coloured by label (2-D data only; .png or .svg).
    #[arg(long, global = true)]
    plot: Option<PathBuf>,
}

/// Keeps the split's random stream apart from the generator's, which uses the plain seed.
const SPLIT_STREAM: u64 = 0xBB67_AE85_84CA_A73B;

pub fn run(args: DataArgs) -> Result<()> {
    let output = args.output;
    let out = output
        .out
        .as_ref()
        .ok_or_else(|| Error::input("give --out FILE for the training rows"))?;
    report::plot::check_format("--plot", output.plot.as_deref())?;
    check_outputs(
        &[],
        &[
            ("--out", Some(out)),
            ("--test-out", output.test_out.as_deref()),
            ("--plot", output.plot.as_deref()),
        ],
    )?;
    let splitting = output.test_fraction != 0.0;
    match (&output.test_out, splitting) {
        (None, true) => {
            return Err(Error::input(format!(
                "--test-fraction {} needs --test-out FILE (or --test-fraction 0 to keep every \
                 row in --out)",
                output.test_fraction
            )))
        }
        (Some(_), false) => {
            return Err(Error::input(
                "--test-out with --test-fraction 0 would be empty",
            ))
        }
        _ => {}
    }
    let (name, data) = match &args.source {
        Source::Moons { n, noise } => ("moons", synthetic::moons(*n, *noise, output.seed)?),
        Source::Blobs {
            n,
            classes,
            dim,
            std,
        } => (
            "blobs",
            synthetic::blobs(*n, *classes, *dim, *std, output.seed)?,
        ),
        Source::Digits { source } => ("digits", digits::read(source)?),
    };
    if output.plot.is_some() && data.dim != 2 {
        return Err(Error::input(format!(
            "--plot draws 2-D data; {name} has {} dimensions",
            data.dim
        )));
    }

    let split = if splitting {
        let split = splits::split_dataset(&data, output.test_fraction, output.seed ^ SPLIT_STREAM)
            .map_err(|e| Error::input(format!("--test-fraction: {e}")))?;
        Some(split)
    } else {
        None
    };
    // The plot comes before the datasets, so that a plot that cannot be drawn leaves none behind.
    if let Some(path) = &output.plot {
        report::data::plot(path, name, &data)?;
    }
    let (dim, labels) = (data.dim, data.num_classes());
    let (train, test) = match split {
        Some((train, test)) => (train, Some(test)),
        None => (data, None),
    };
    train.write(out)?;
    let mut summary = format!("{name}: {} training rows -> {}", train.len(), out.display());
    if let (Some(test), Some(path)) = (&test, &output.test_out) {
        test.write(path)?;
        summary += &format!(", {} test rows -> {}", test.len(), path.display());
    }
    if let Some(path) = &output.plot {
        summary += &format!(", plot -> {}", path.display());
    }
    outln!(
        "{summary} ({dim} dims, {labels} labels, seed {})",
        output.seed
    )?;
    Ok(())
}
