//! The `mscope` command line: one file per subcommand.

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
