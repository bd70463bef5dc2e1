//! The `mscope` command line: one file per subcommand.
//!
//! Subcommands print to standard output only through `out!` and `outln!`, which return an
//! error instead of panicking when the reader has gone (`mscope … | head -c1`): the command
//! stops there, and [`main`] cleans up and ends the process quietly by SIGPIPE, as coreutils do.

/// `print!` that returns a [`Result`]: [`Error::StdoutClosed`] when the reader of standard
/// output has gone (EPIPE), an I/O error naming standard output otherwise.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` that returns a [`Result`], as [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod align;
mod alpha;
mod bench;
mod classify;
mod cluster;
mod compare;
mod data;
mod devices;
mod embed;
mod embeddings_args;
mod kglm;
mod lda;
mod merge;
mod ntk;
mod ntk_compare;
mod pca;
mod slurm;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};

#[derive(Parser)]
#[command(
    name = "mscope",
    version,
    about = "Pretrained networks as instruments for comparing networks, on hand-written kernels"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed texts with an encoder (BERT / XLM-R) or a decoder (Llama / Mistral / Qwen2, also
    /// from GGUF) into a safetensors file.
    Embed(embed::EmbedArgs),
    /// List the CPU, wgpu adapters and CUDA devices this machine offers.
    Devices,
    /// Trimmed comparison of a candidate sample with a reference: α̂, KS, trimmed W2.
    Alpha(alpha::AlphaArgs),
    /// Every model of an ensemble against the pooled others: α̂, KS, trimmed W2, churn, ECE.
    Compare(compare::CompareArgs),
    /// Principal components of an embeddings file: variance, components, label separation.
    Pca(pca::PcaArgs),
    /// LDA accuracy of the labels over stratified splits, confusion, pairwise table.
    Lda(lda::LdaArgs),
    /// Several embedders' views of the same rows: linear CKA, Procrustes, SVCCA, mutual k-NN.
    Align(align::AlignArgs),
    /// k-means of an embeddings file scored against its labels: ARI, NMI, purity.
    Cluster(cluster::ClusterArgs),
    /// Score embeddings with a detector saved by `mscope lda --save`: probabilities per label.
    Classify(classify::ClassifyArgs),
    /// Classification datasets (two moons, Gaussian blobs, 8×8 digits) split into train/test.
    Data(data::DataArgs),
    /// An ensemble of MLP classifiers, one per seed; test logits ready for `mscope compare`.
    Train(train::TrainArgs),
    /// Tangent kernel (trNTK, trNTK0, pNTK) of an MLP classifier, exact or projected, in blocks.
    Ntk(ntk::NtkArgs),
    /// Kernel GLM surrogate from train/test kernels; with the network, its faithfulness (τ, R²).
    Kglm(kglm::KglmArgs),
    /// Assemble the shards written by `--shard I/N` runs into the file one process writes,
    /// byte for byte, after checking they are complete and of one run.
    Merge(merge::MergeArgs),
    /// Compare two kernels over the same points: CKA, spectra, effective rank, Frobenius gap.
    NtkCompare(ntk_compare::NtkCompareArgs),
    /// Time every kernel family on model shapes and the pipelines end to end, against the
    /// machine's measured FLOP and bandwidth ceilings.
    Bench(bench::BenchArgs),
    /// Run a command in shards on a Slurm cluster: `mscope slurm plan --shards N -- mscope ntk …`.
    #[command(subcommand)]
    Slurm(slurm::SlurmCommand),
}

/// Runs the command line; errors are printed as one line and give exit status 1, a run stopped
/// by SIGTERM after saving its checkpoint gives [`crate::io::preemption::EXIT_PREEMPTED`] (75),
/// and any other run SIGINT or SIGTERM ends leaves no temporary or lock file and dies by that
/// signal (130 and 143 in a shell).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = crate::io::preemption::install() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let outcome = match cli.command {
        Command::Embed(args) => embed::run(args),
        Command::Devices => devices::run(),
        Command::Alpha(args) => alpha::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Pca(args) => pca::run(args),
        Command::Lda(args) => lda::run(args),
        Command::Data(args) => data::run(args),
        Command::Train(args) => train::run(args),
        Command::Ntk(args) => ntk::run(args),
        Command::Kglm(args) => kglm::run(args),
        Command::NtkCompare(args) => ntk_compare::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Align(args) => align::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Classify(args) => classify::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Slurm(command) => slurm::run(command),
    };
    crate::io::output_guard::release();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::StdoutClosed) => end_by_sigpipe(),
        Err(e @ Error::Preempted(_)) => {
            eprintln!("stopped: {e}");
            ExitCode::from(crate::io::preemption::EXIT_PREEMPTED)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `args` to standard output and flushes it (each piece reaches a pipe's reader as it is
/// printed); see [`out!`].
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_fmt(args)
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Error::StdoutClosed,
            _ => Error::io("standard output", e),
        })
}

/// Ends the process as a program that does not ignore SIGPIPE ends when its reader goes: by
/// the signal, silently (status 141 in a shell). Rust ignores SIGPIPE, so this restores its
/// default action and raises it; called once the run's temporary and lock files are removed.
fn end_by_sigpipe() -> ExitCode {
    let _ = signal_hook::low_level::emulate_default_handler(signal_hook::consts::SIGPIPE);
    // Not reached where SIGPIPE's default action ends the process.
    ExitCode::from(128 + signal_hook::consts::SIGPIPE as u8)
}

/// Sizes rayon's global pool (used by every CPU kernel); 0 keeps rayon's default of one thread
/// per core, and more than [`crate::limits::THREADS_PER_CORE`] per core is an error.
fn set_threads(threads: usize) -> Result<()> {
    if threads == 0 {
        return Ok(());
    }
    crate::limits::check_threads(threads)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| Error::input(format!("--threads {threads}: {e}")))
}

/// A progress bar on stderr with `template`'s units, hidden when stderr is not a terminal (logs
/// and pipes get the one-line summary only).
fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("templates are static"));
    bar
}
