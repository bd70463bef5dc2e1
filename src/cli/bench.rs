//! `mscope bench`: the kernel and pipeline suites on one backend, against the machine's measured
//! ceilings (src/bench/). Markdown on stdout, a JSON report, GEMM and roofline plots.

use std::path::PathBuf;

use clap::Args;

use crate::backend::BackendKind;
use crate::bench::{self, Options, Scale, Suite};
use crate::error::Result;
use crate::report;

#[derive(Args)]
pub struct BenchArgs {
    /// `auto` benches the backend `mscope embed --backend auto` would use.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    #[arg(long, value_enum, default_value_t = Suite::All)]
    suite: Suite,
    /// Run only the cases whose name contains this (e.g. `linear`, `attention/bert`); the
    /// probes always run.
    #[arg(long, value_name = "NAME")]
    filter: Option<String>,
    /// Kernel variant(s) by number, side by side: `linear`'s GEMMs and `attention`'s kernels
    /// where the backend has a variant of that number (the others run its choice), e.g.
    /// `--variant 2,3,12` for wgpu's tiled, direct and subgroup GEMMs, `2,3,5,6,12,13` adding
    /// each on f16 weights;
    /// on the CPU `--variant 7,8,9 --filter attention/` sets its faer, packed and panels
    /// attention side by side, on CUDA `--variant 1,2,3,4` its naive, flash, warp-per-query and
    /// tensor-core attention (cases a variant has no kernel for are skipped) [default: the
    /// backend's choice].
    #[arg(long, value_name = "N", value_delimiter = ',')]
    variant: Vec<u32>,
    /// Timed runs per case (pipelines: at most 3).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Untimed runs before the timed ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Row counts and probes divided by 8: a smoke test, or a software adapter.
    #[arg(long)]
    quick: bool,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Plot GEMM throughput against problem size (GFLOP per call) to this PNG or SVG (by
    /// extension).
    #[arg(long, value_name = "PNG/SVG")]
    plot: Option<PathBuf>,
    /// Plot every case's fraction of the roofline against its problem size, by kernel family,
    /// to this PNG or SVG (by extension).
    #[arg(long, value_name = "PNG/SVG")]
    roofline_plot: Option<PathBuf>,
    /// CPU threads, at most 4 per core [default: one per core].
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Timed runs of a pipeline at most: each takes seconds, and three give a median.
const MAX_PIPELINE_REPEAT: usize = 3;

pub fn run(args: BenchArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    let options = Options {
        backend: args.backend,
        suite: args.suite,
        filter: args.filter.clone(),
        variants: args.variant.clone(),
        warmup: args.warmup,
        repeat: args.repeat,
        pipeline_repeat: args.repeat.min(MAX_PIPELINE_REPEAT),
        scale: if args.quick {
            Scale::Quick
        } else {
            Scale::Full
        },
    };
    report::plot::check_format("--plot", args.plot.as_deref())?;
    report::plot::check_format("--roofline-plot", args.roofline_plot.as_deref())?;
    let report = bench::run(&options, &mut |line| eprintln!("bench: {line}"))?;
    if let Some(path) = &args.json {
        let json = report::bench::json(&report, args.suite, args.quick, (args.warmup, args.repeat));
        report::write_json(path, &json)?;
    }
    if let Some(path) = &args.plot {
        report::bench::draw_gemm(path, &report.results)?;
    }
    if let Some(path) = &args.roofline_plot {
        report::bench::draw_roofline(path, &report.results)?;
    }
    out!("{}", report::bench::markdown(&report))?;
    Ok(())
}
