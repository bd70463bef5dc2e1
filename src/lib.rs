//! mscope: pretrained networks as measuring instruments for comparing other networks, run on
//! hand-written kernels (a CPU reference, WGSL through wgpu, CUDA through cudarc/NVRTC).
//!
//! Three instruments share one engine: the **embedding microscope** (a pretrained encoder embeds
//! the outputs of the models compared; PCA and LDA show whether and why sources separate), the
//! **tangent-kernel surrogate** (the trace NTK of a classifier, exact or randomly projected, and
//! a kernel GLM fitted on it), and the **trimmed comparison test** (α̂: the smallest trimming at
//! which two models' soft decisions are indistinguishable).
//!
//! # Layers
//!
//! Each layer imports only from the layers below it.
//!
//! ```text
//! cli/          one file per subcommand: parses arguments, calls an instrument, hands its report on
//! slurm         `mscope slurm plan`: sbatch submissions of a sharded command (array + merge)
//! bench/        `mscope bench`: op cases and instrument pipelines timed against the machine's ceilings
//! report/       writes typed reports: JSON (sorted keys), Markdown on stdout, PNG plots
//! instruments/  embed, pca, lda, kglm, ntk, project, kernel_compare, metrics, splits: models and
//!               data in, a typed report out; no file I/O of their own
//! models/       architectures behind one `Encoder` interface (CLIP's image tower behind
//!               `ImageTower`), the weight loader, tokenisers, image decoding and preprocessing,
//!               MLP classifiers and their training
//! data/         classifier datasets (moons, blobs, digits) and ensemble scores
//! io/           readers (texts, image folders, embeddings, samples, tensor files), the atomic
//!               output writer, checkpoints of long runs
//! backend/      the op set (`Backend`, its families in `OpFamily`: encoder, stats, trim, ntk,
//!               backward) on cpu/, wgpu/ and cuda/, one file per kernel family on each, mirroring
//!               kernels/ (CUDA) and shaders/ (WGSL); parameter and result types
//! weights/      checkpoints on the host: memory-mapped safetensors and GGUF (dequantisation)
//! tensor, random, error, limits: host tensors, counter-based hashes, the error type, thread and
//!               memory bounds checked before work starts
//! phases        `MSCOPE_PHASES=1`: wall-clock time of each phase of a command on stderr
//! ```
//!
//! # Data flow
//!
//! ```text
//! texts ─tokenize─▶ ids ─Encoder::forward (backend)─▶ hidden ─pool, normalise─▶ embeddings
//! images ─decode, resize (Pillow's algorithm), crop, normalise─▶ pixels ─im2col─▶
//!     ImageTower::embed_pixels (backend) ─normalise─▶ embeddings
//! embeddings ─scatter (backend)─▶ covariance ─eigen─▶ PCA; per-class scatters over S splits ─▶ LDA
//! MLP + data ─forward, batched backward─▶ per-layer factors (A, Δ) ─ntk_contract or jl_project─▶
//!     kernel tiles ─▶ kernel file ─▶ kGLM ─▶ Kendall τ
//! BERT/XLM-R classifier + texts ─recorded forward, backward per class (backend ops, tape and
//!     transposed weights on the device; per-sample bias/LayerNorm sums by sequence_sums)─▶
//!     per-token factors (A, Δ; embedding δ and ids; bias/LayerNorm gradients)
//!     ─ntk_contract_seq (token Grams summed per sample pair; embeddings
//!     by id), or ntk_sample_gradients then ntk_contract, as SeqForm::choose says─▶ kernel tiles
//!     ─▶ kernel file
//! scores [models × points] ─trim_search (sort, merged ECDFs, trimmed-CDF search)─▶ α̂, KS, W2
//! ```
//!
//! Weights are uploaded once; activations stay on the device between ops; only pooled
//! embeddings, kernel blocks and reports come back to the host.
//!
//! # Numerics
//!
//! Activations and accumulation are f32 on every backend; GEMM weights and embedding tables may
//! be f16 or bf16 (the CPU and CUDA read both as stored — CUDA's tensor-core variant as bf16 —,
//! wgpu f16) with f32 accumulation; reductions (norm
//! statistics, softmax, covariance, Gram matrices) accumulate in f32 or better, and the stats
//! results are f64. Tests compare with the relative error ‖out − ref‖ / ‖ref‖ against an f64
//! reference or the CPU: f32 paths under 1e-5, f16/bf16 paths under 1e-2, NaN never passes;
//! embeddings against sentence-transformers at cosine ≥ 0.9999 per row on f32 paths.
//!
//! # Beyond one process
//!
//! `ntk`, `embed` and `compare` take `--shard I/N`: each shard computes a contiguous,
//! cost-balanced range of the run's units (kernel row tiles, the single run's batches, models)
//! into `OUT.shard-I-of-N.safetensors` with a manifest of the job, and `mscope merge OUT`
//! writes byte for byte the file one process writes ([`io::shards`]). Units are computed the
//! same way whichever process runs them, which is what makes the bytes equal. Shards resume
//! from their checkpoints; SIGTERM stops a run between units with exit status 75
//! ([`io::preemption`]), so Slurm's preemption and requeue lose at most one unit.
//! `mscope slurm plan` ([`slurm`]) writes the `sbatch` submissions that run the shards as an
//! array job, each task requeueing itself on that status, and the merge as a dependent job.
//!
//! # Contracts
//!
//! The file formats (model directories, embeddings, datasets, MLPs, kernels, samples, shards)
//! and the JSON keys of every report are documented with each subcommand in the README; the
//! modules that read and write them (`io`, `data`, `models`) repeat them in their docs.

pub mod backend;
pub mod bench;
pub mod cli;
pub mod data;
pub mod error;
pub mod instruments;
pub mod io;
pub mod limits;
pub mod models;
pub mod phases;
pub mod random;
pub mod report;
pub mod slurm;
pub mod tensor;
pub mod weights;

pub use error::{Error, Result};
