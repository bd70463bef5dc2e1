//! `mscope bench`: every kernel family of the op set on named model shapes, and the instruments'
//! pipelines end to end, timed on one backend and set against that machine's measured ceilings.
//!
//! Method: probes first measure the machine's ceilings (a large
//! GEMM through the backend for FLOP/s, a copy for bytes/s). Each case counts its work — FLOPs
//! and the compulsory bytes (inputs read once, outputs written once) — so its floor is
//! `max(flops / FLOP ceiling, bytes / byte ceiling)`, and its roofline fraction is that floor over
//! the median time. Kernels that multiply bf16 operands (tensor cores, AMX, AVX512_BF16) are set against the
//! device's bf16 GEMM on the probe shapes (`gemm-bf16`), where it has one, and get no fraction
//! elsewhere; their anchors (PyTorch's bf16 matmuls) are the outside comparison. Pipelines report
//! items per second instead.

pub mod cases;
mod kernels;
mod machine;
mod pipelines;
mod probes;
mod target;
mod timing;

use std::sync::Arc;

use crate::backend::{AttentionVariant, Backend, BackendKind, GemmVariant, OpFamily};
use crate::error::{Error, Result};

pub use machine::Machine;
pub use probes::{Ceilings, Probe};
pub use target::Target;
pub use timing::Timing;

/// `len` values uniform in [-1, 1), seeded: inputs whose values do not matter to the timing but
/// keep clear of denormals and NaN.
fn uniform(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::random::SplitMix64::new(seed);
    (0..len)
        .map(|_| (2.0 * rng.next_f64() - 1.0) as f32)
        .collect()
}

/// Which cases run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// One op of the op set per case, on named model shapes.
    Kernels,
    /// The instruments end to end: embed, lda, ntk, compare.
    Pipelines,
    All,
}

/// Problem sizes: `Full` sizes the cases for a few minutes on a 2-core CPU; `Quick` divides
/// the row counts (and the probes) by 8 for smoke tests and software adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Full,
    Quick,
}

impl Scale {
    /// `rows` at this scale, at least `min`.
    pub fn rows(self, rows: usize, min: usize) -> usize {
        match self {
            Scale::Full => rows,
            Scale::Quick => (rows / 8).max(min),
        }
    }
}

/// The arithmetic precision of a case's FLOPs, which picks its compute ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F64,
    /// bf16 operands with f32 sums (tensor cores, AMX tiles, AVX512_BF16): measured against the `gemm-bf16`
    /// probe, and given no roofline fraction where the device has no bf16 GEMM (the f32 ceiling
    /// would put them far above 100%).
    Bf16,
}

/// What one run of a case does, counted from its shapes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Work {
    pub flops: f64,
    /// Precision of `flops`; `None` when no FLOPs are counted.
    pub precision: Option<Precision>,
    /// Compulsory memory traffic.
    pub bytes: f64,
    /// Items per run with their unit (pipelines: texts, tokens, splits, pairs, models).
    pub items: Vec<(f64, &'static str)>,
}

impl Work {
    pub fn f32(flops: f64, bytes: f64) -> Self {
        Work {
            flops,
            precision: Some(Precision::F32),
            bytes,
            items: Vec::new(),
        }
    }

    pub fn f64(flops: f64, bytes: f64) -> Self {
        Work {
            precision: Some(Precision::F64),
            ..Work::f32(flops, bytes)
        }
    }

    pub fn bytes(bytes: f64) -> Self {
        Work {
            bytes,
            ..Work::default()
        }
    }

    pub fn items(items: Vec<(f64, &'static str)>) -> Self {
        Work {
            items,
            ..Work::default()
        }
    }
}

/// Which ceiling bounds a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Compute,
    Memory,
}

impl Bound {
    pub fn name(self) -> &'static str {
        match self {
            Bound::Compute => "compute",
            Bound::Memory => "memory",
        }
    }
}

/// The op a prepared case times; it owns its inputs.
pub type Op = Box<dyn FnMut() -> Result<()>>;

/// A case with its inputs built on a backend.
pub struct Prepared {
    pub shape: String,
    pub work: Work,
    pub op: Op,
}

type Prepare = Box<dyn Fn(&Target) -> Result<Prepared>>;

/// One benchmark: a name to filter on, the op family it needs, and how to build its inputs on a
/// backend. Inputs are built only when the case runs.
pub struct Case {
    /// `family/model-or-size`, e.g. `linear/bert-base-ffn-up`.
    pub name: String,
    pub family: OpFamily,
    prepare: Prepare,
    /// Values of the weight matrix, for a `linear` case: the default CPU GEMM's choice.
    linear_weights: Option<usize>,
    /// The head_dim of an `attention` case: a variant without a kernel for it is skipped (CUDA's
    /// variant 4 would run the default kernel under its own label).
    attention_head_dim: Option<usize>,
}

impl Case {
    /// A kernel case, whose shapes and work are known before its inputs exist.
    pub fn new(
        name: impl Into<String>,
        family: OpFamily,
        shape: impl Into<String>,
        work: Work,
        prepare: impl Fn(&Arc<dyn Backend>) -> Result<Op> + 'static,
    ) -> Self {
        let shape = shape.into();
        Case::prepared(name, family, move |be| {
            Ok(Prepared {
                shape: shape.clone(),
                work: work.clone(),
                op: prepare(be)?,
            })
        })
    }

    /// A case whose shapes and work are counted from its inputs (a corpus, a model).
    pub fn prepared(
        name: impl Into<String>,
        family: OpFamily,
        prepare: impl Fn(&Arc<dyn Backend>) -> Result<Prepared> + 'static,
    ) -> Self {
        Case::on_target(name, family, move |target| prepare(&target.backend))
    }

    /// A case that builds its inputs for the target's GEMM variant (`linear`'s weights in the
    /// element type the variant reads).
    pub fn on_target(
        name: impl Into<String>,
        family: OpFamily,
        prepare: impl Fn(&Target) -> Result<Prepared> + 'static,
    ) -> Self {
        Case {
            name: name.into(),
            family,
            prepare: Box::new(prepare),
            linear_weights: None,
            attention_head_dim: None,
        }
    }

    /// This `linear` case, whose weight matrix holds `weights` values.
    pub fn with_linear_weights(self, weights: usize) -> Self {
        Case {
            linear_weights: Some(weights),
            ..self
        }
    }

    /// This `attention` case, whose heads have `head_dim` columns.
    pub fn with_attention_head_dim(self, head_dim: usize) -> Self {
        Case {
            attention_head_dim: Some(head_dim),
            ..self
        }
    }

    /// The GEMM variant the case runs on `target`, for cases that run one: `linear`'s as chosen
    /// for its weights' size.
    fn gemm_variant(&self, target: &Target) -> Option<GemmVariant> {
        self.runs_gemm().then(|| {
            self.linear_weights
                .map_or(target.gemm, |weights| target.linear_variant(weights))
        })
    }

    /// Whether the case runs an op with numbered GEMM variants: `linear` (and `linear_gated`),
    /// and `ntk_contract` (two GEMMs), which follows the same kernel choice on wgpu.
    fn runs_gemm(&self) -> bool {
        is_linear_case(&self.name) || self.name.starts_with("ntk_contract/")
    }

    /// Whether the case runs `attention`, whose kernels are numbered too.
    fn runs_attention(&self) -> bool {
        self.name.starts_with("attention/")
    }

    /// Whether the case runs on `variant`: a variant on f16 weights only changes `linear`, so
    /// the contraction would repeat its f32 twin there.
    fn runs_on(&self, variant: &GemmVariant) -> bool {
        !variant.f16_weights() || is_linear_case(&self.name)
    }
}

/// Whether the case named `name` times `linear`, plain or gated (`linear_gated`).
pub fn is_linear_case(name: &str) -> bool {
    name.starts_with("linear/") || name.starts_with("linear_gated/")
}

/// The numbered kernel a case ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelVariant {
    Gemm(GemmVariant),
    Attention(AttentionVariant),
}

impl KernelVariant {
    pub fn number(self) -> u32 {
        match self {
            KernelVariant::Gemm(v) => v.number(),
            KernelVariant::Attention(v) => v.number(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelVariant::Gemm(v) => v.name(),
            KernelVariant::Attention(v) => v.name(),
        }
    }
}

impl std::fmt::Display for KernelVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.number(), self.name())
    }
}

/// A case that ran.
#[derive(Clone, Debug)]
pub struct Measured {
    pub name: String,
    pub backend: String,
    /// The kernel variant: `linear`'s GEMM always; `attention`'s kernel where `--variant` picked
    /// one.
    pub variant: Option<KernelVariant>,
    pub shape: String,
    pub work: Work,
    pub timing: Timing,
    /// `(floor seconds / median seconds, bound)` when the work has a counted floor.
    pub roofline: Option<(f64, Bound)>,
}

impl Measured {
    pub fn gflops(&self) -> Option<f64> {
        (self.work.flops > 0.0).then(|| self.work.flops / self.timing.median() / 1e9)
    }

    pub fn gbps(&self) -> Option<f64> {
        (self.work.bytes > 0.0).then(|| self.work.bytes / self.timing.median() / 1e9)
    }

    /// Items per second with their unit (`texts/s`).
    pub fn throughput(&self) -> Vec<(f64, String)> {
        let median = self.timing.median();
        self.work
            .items
            .iter()
            .map(|&(count, unit)| (count / median, format!("{unit}/s")))
            .collect()
    }
}

/// A case that did not run, and why (never dropped silently).
#[derive(Clone, Debug)]
pub struct Skipped {
    pub name: String,
    pub backend: String,
    pub reason: String,
}

/// What `mscope bench` asked for.
#[derive(Clone, Debug)]
pub struct Options {
    pub backend: BackendKind,
    pub suite: Suite,
    /// Substring of the case names to run; probes always run.
    pub filter: Option<String>,
    /// Kernel variants by number (GEMM and attention); empty runs the backend's defaults.
    pub variants: Vec<u32>,
    pub warmup: usize,
    pub repeat: usize,
    /// Timed runs of each pipeline (they are long; fewer suffice).
    pub pipeline_repeat: usize,
    pub scale: Scale,
}

/// Everything a bench run measured.
pub struct Report {
    pub machine: Machine,
    pub backend: String,
    /// The adapter or device name on GPUs; the CPU model on the CPU.
    pub device: String,
    pub probes: Vec<Probe>,
    pub ceilings: Ceilings,
    pub results: Vec<Measured>,
    pub skipped: Vec<Skipped>,
}

/// Runs the probes and then every case of the suite that passes the filter, calling `progress`
/// after each case.
pub fn run(options: &Options, progress: &mut dyn FnMut(&str)) -> Result<Report> {
    if options.repeat == 0 || options.pipeline_repeat == 0 {
        return Err(Error::input("--repeat must be at least 1"));
    }
    let machine = Machine::describe();
    // The probes and every case without variants run on the backend's default; `linear` and
    // `attention` run on each requested variant of theirs (on the default where none was asked
    // for), so one table compares them against the same ceiling.
    let main = target::open(options.backend, None)?;
    let variants = options
        .variants
        .iter()
        .map(|&n| target::open(options.backend, Some(n)))
        .collect::<Result<Vec<_>>>()?;
    let picked_or_main = |picked: fn(&Target) -> bool| {
        let on: Vec<&Target> = variants.iter().filter(|t| picked(t)).collect();
        if on.is_empty() {
            vec![&main]
        } else {
            on
        }
    };
    let gemm_targets = picked_or_main(|t| t.picked_gemm.is_some());
    let attention_targets = picked_or_main(|t| t.picked_attention.is_some());
    let (probes, ceilings) = probes::run(&main, options.scale, options.warmup, options.repeat)?;
    for probe in &probes {
        progress(&format!(
            "probe {}: {:.1} {}",
            probe.name, probe.value, probe.unit
        ));
    }

    let mut cases = Vec::new();
    if options.suite != Suite::Pipelines {
        cases.extend(kernels::cases(options.scale));
    }
    if options.suite != Suite::Kernels {
        cases.extend(pipelines::cases(options.scale));
    }
    let wanted = |case: &Case| {
        options
            .filter
            .as_deref()
            .is_none_or(|f| case.name.contains(f))
    };

    let (mut results, mut skipped) = (Vec::new(), Vec::new());
    for case in cases.iter().filter(|c| wanted(c)) {
        let on = if case.runs_gemm() {
            &gemm_targets[..]
        } else if case.runs_attention() {
            &attention_targets[..]
        } else {
            &[&main][..]
        };
        for target in on
            .iter()
            .filter(|t| !case.runs_gemm() || case.runs_on(&t.gemm))
        {
            let be = &target.backend;
            let skip = |reason: String| Skipped {
                name: case.name.clone(),
                backend: be.name().to_string(),
                reason,
            };
            if !be.supports(case.family) {
                skipped.push(skip(format!(
                    "no {:?} kernels on {}",
                    case.family,
                    be.name()
                )));
                continue;
            }
            if let (Some(variant), Some(head_dim)) =
                (target.picked_attention, case.attention_head_dim)
            {
                if !variant.supports_head_dim(head_dim) {
                    skipped.push(skip(format!(
                        "attention variant {variant} has no kernel for head_dim {head_dim}"
                    )));
                    continue;
                }
            }
            let timed = (case.prepare)(target).and_then(|mut prepared| {
                let repeat = if prepared.work.items.is_empty() {
                    options.repeat
                } else {
                    options.pipeline_repeat
                };
                let timing =
                    timing::measure(be.as_ref(), options.warmup, repeat, &mut prepared.op)?;
                Ok((prepared, timing))
            });
            match timed {
                Ok((mut prepared, timing)) => {
                    let gemm = case.gemm_variant(target);
                    let attention = case
                        .runs_attention()
                        .then_some(target.picked_attention)
                        .flatten();
                    let bf16 = gemm.is_some_and(GemmVariant::bf16_operands)
                        || attention.is_some_and(AttentionVariant::bf16_operands);
                    if bf16 && prepared.work.flops > 0.0 {
                        prepared.work.precision = Some(Precision::Bf16);
                    }
                    let measured = Measured {
                        name: case.name.clone(),
                        backend: be.name().to_string(),
                        variant: match gemm {
                            Some(gemm) => Some(KernelVariant::Gemm(gemm)),
                            None => attention.map(KernelVariant::Attention),
                        },
                        shape: prepared.shape,
                        roofline: ceilings.roofline(&prepared.work, timing.median()),
                        work: prepared.work,
                        timing,
                    };
                    progress(&format!(
                        "{} [{}]: {:.3} ms",
                        measured.name,
                        measured.backend,
                        measured.timing.median() * 1e3
                    ));
                    results.push(measured);
                }
                // A case the backend cannot run at this shape (a binding limit, a missing
                // model) is reported with the reason; the rest of the suite goes on.
                Err(why) => skipped.push(skip(why.to_string())),
            }
        }
    }
    Ok(Report {
        machine,
        backend: main.backend.name().to_string(),
        device: main.device.clone(),
        probes,
        ceilings,
        results,
        skipped,
    })
}
