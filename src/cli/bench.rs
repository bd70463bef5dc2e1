//! `mscope bench`: the kernel and pipeline suites on one backend, against the machine's measured
//! ceilings (src/bench/). Markdown on stdout, JSON with DESIGN.md's keys, a GEMM plot.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Value};

use crate::backend::BackendKind;
use crate::bench::{self, Measured, Options, Report, Scale, Suite};
use crate::error::Result;
use crate::report::{self, plot};

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
    /// GEMM variant(s) by number, e.g. `--variant 2,3` for wgpu's tiled and direct kernels side
    /// by side, `2,3,5,6` adding both on f16 weights [default: the backend's choice].
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
    /// Plot GEMM throughput against problem size (GFLOP per call) to this PNG.
    #[arg(long, value_name = "PNG")]
    plot: Option<PathBuf>,
    /// Plot every case's fraction of the roofline against its problem size, by kernel family,
    /// to this PNG.
    #[arg(long, value_name = "PNG")]
    roofline_plot: Option<PathBuf>,
    /// CPU threads [default: one per core].
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
    let report = bench::run(&options, &mut |line| eprintln!("bench: {line}"))?;
    if let Some(path) = &args.json {
        report::write_json(path, &to_json(&args, &report))?;
    }
    if let Some(path) = &args.plot {
        draw_gemm(path, &report.results)?;
    }
    if let Some(path) = &args.roofline_plot {
        draw_roofline(path, &report.results)?;
    }
    print_tables(&report);
    Ok(())
}

fn to_json(args: &BenchArgs, report: &Report) -> Value {
    let m = &report.machine;
    let probes: Vec<Value> = report
        .probes
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "shape": p.shape,
                "value": p.value,
                "unit": p.unit,
                "ceiling": p.ceiling,
                "median_s": p.timing.median(),
                "clock": p.timing.clock.name(),
                "min_s": p.timing.min(),
                "max_s": p.timing.max(),
            })
        })
        .collect();
    let results: Vec<Value> = report.results.iter().map(result_json).collect();
    let skipped: Vec<Value> = report
        .skipped
        .iter()
        .map(|s| json!({"name": s.name, "backend": s.backend, "reason": s.reason}))
        .collect();
    json!({
        "date": m.date,
        "machine": {
            "cpu": m.cpu,
            "cores": m.cores,
            "threads": m.threads,
            "load_average": m.load_average,
        },
        "backend": report.backend,
        "device": report.device,
        "suite": format!("{:?}", args.suite).to_lowercase(),
        "quick": args.quick,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "probes": probes,
        "ceilings": {
            "f32_gflops": report.ceilings.f32_gflops,
            "f64_gflops": report.ceilings.f64_gflops,
            "gbps": report.ceilings.gbps,
        },
        "results": results,
        "skipped": skipped,
    })
}

fn result_json(r: &Measured) -> Value {
    let throughput = r.throughput();
    json!({
        "name": r.name,
        "backend": r.backend,
        "variant": r.variant.map(|v| v.number()),
        "variant_name": r.variant.map(|v| v.name()),
        "shape": r.shape,
        "median_s": r.timing.median(),
        "clock": r.timing.clock.name(),
        "min_s": r.timing.min(),
        "max_s": r.timing.max(),
        "times_s": r.timing.seconds,
        "gflops": r.gflops(),
        "gbps": r.gbps(),
        "bound": r.roofline.map(|(_, b)| b.name()),
        "roofline_fraction": r.roofline.map(|(f, _)| f),
        "throughput": throughput.first().map(|t| t.0),
        "unit": throughput.first().map(|t| t.1.clone()),
        "throughputs": throughput
            .iter()
            .map(|(v, unit)| (unit.clone(), json!(v)))
            .collect::<serde_json::Map<_, _>>(),
    })
}

/// GFLOP/s of each `linear` case against its GFLOPs per call, one colour per backend and
/// variant. Points, not lines: the cases differ in aspect ratio and epilogue as well as size.
fn draw_gemm(path: &Path, results: &[Measured]) -> Result<()> {
    let series = grouped(
        results
            .iter()
            .filter(|r| r.name.starts_with("linear/"))
            .map(|r| {
                let label = match r.variant {
                    Some(v) => format!("{} {v}", r.backend),
                    None => r.backend.clone(),
                };
                (label, (r.work.flops / 1e9, r.gflops().unwrap_or(0.0)))
            }),
    );
    let lines: Vec<plot::Series> = series
        .iter()
        .map(|(label, points)| plot::Series { label, points })
        .collect();
    plot::scatter(
        path,
        "GEMM (linear) throughput by problem size",
        "GFLOP per call",
        "GFLOP/s",
        &lines,
    )
}

/// The roofline fraction of every case with a counted floor against its size, measured as the
/// floor time itself (what the case would take at the machine's ceilings), one colour per
/// kernel family and backend: where each family leaves the roof as problems shrink.
fn draw_roofline(path: &Path, results: &[Measured]) -> Result<()> {
    let series = grouped(results.iter().filter_map(|r| {
        let (fraction, _) = r.roofline?;
        let family = r.name.split('/').next().unwrap_or(&r.name);
        let point = (fraction * r.timing.median(), 100.0 * fraction);
        Some((format!("{family} [{}]", r.backend), point))
    }));
    let groups: Vec<plot::Series> = series
        .iter()
        .map(|(label, points)| plot::Series { label, points })
        .collect();
    plot::scatter_log_x(
        path,
        "Fraction of the roofline by problem size",
        "seconds per call at the roofline (problem size)",
        "% of the roofline",
        &groups,
    )
}

/// Labelled points gathered into one series per label, in order of first appearance.
fn grouped(points: impl Iterator<Item = (String, (f64, f64))>) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (label, point) in points {
        match series.iter_mut().find(|(l, _)| *l == label) {
            Some((_, points)) => points.push(point),
            None => series.push((label, vec![point])),
        }
    }
    series
}

/// `803`, `15.7 k`, `15.7 M`: rates that span six orders of magnitude, readable in a table.
fn si(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.1} G", v / 1e9),
        v if v >= 1e6 => format!("{:.1} M", v / 1e6),
        v if v >= 1e4 => format!("{:.1} k", v / 1e3),
        v => format!("{v:.1}"),
    }
}

/// `1.23 s`, `45.6 ms`, `789 µs`.
fn duration(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2} s")
    } else if seconds >= 1e-3 {
        format!("{:.3} ms", seconds * 1e3)
    } else {
        format!("{:.1} µs", seconds * 1e6)
    }
}

fn print_tables(report: &Report) {
    let m = &report.machine;
    println!("## bench: {} on {}\n", report.backend, report.device);
    let load = m.load_average.map_or("unknown".into(), |l| {
        format!("{:.2} / {:.2} / {:.2}", l[0], l[1], l[2])
    });
    println!(
        "{}; {} · {} cores, {} threads · load average before the run (1/5/15 min): {load}\n",
        m.date, m.cpu, m.cores, m.threads
    );
    println!("| probe | shape | best | median | ceiling |");
    println!("|---|---|---|---|---|");
    for p in &report.probes {
        println!(
            "| {} | {} | {:.1} {} | {} | {} |",
            p.name,
            p.shape,
            p.value,
            p.unit,
            duration(p.timing.median()),
            if p.ceiling { "yes" } else { "reference" }
        );
    }
    println!();
    println!("| case | backend | variant | shape | median | min – max | clock | rate | roofline |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &report.results {
        let rate = match r.roofline {
            Some((_, bench::Bound::Compute)) => format!("{:.1} GFLOP/s", r.gflops().unwrap_or(0.0)),
            Some((_, bench::Bound::Memory)) => format!("{:.1} GB/s", r.gbps().unwrap_or(0.0)),
            None => r
                .throughput()
                .iter()
                .map(|(v, unit)| format!("{} {unit}", si(*v)))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let roofline = r.roofline.map_or("–".into(), |(f, bound)| {
            format!("{:.1}% ({})", 100.0 * f, bound.name())
        });
        println!(
            "| {} | {} | {} | {} | {} | {} – {} | {} | {rate} | {roofline} |",
            r.name,
            r.backend,
            r.variant.map_or("–".into(), |v| v.to_string()),
            r.shape,
            duration(r.timing.median()),
            duration(r.timing.min()),
            duration(r.timing.max()),
            r.timing.clock.name(),
        );
    }
    if !report.skipped.is_empty() {
        println!("\nSkipped:\n");
        for s in &report.skipped {
            println!("- {} [{}]: {}", s.name, s.backend, s.reason);
        }
    }
}
