//! `mscope bench`'s JSON report, plots and Markdown summary. The report's JSON form is a view
//! of [`Report`] with the derived quantities (medians, rates, roofline fractions) spelled out.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::plot;
use crate::bench::{is_linear_case, Bound, Measured, Report, Suite};
use crate::error::Result;

/// The JSON report of a run.
#[derive(Serialize)]
pub struct BenchJson<'a> {
    date: &'a str,
    machine: MachineJson<'a>,
    backend: &'a str,
    device: &'a str,
    suite: String,
    quick: bool,
    warmup: usize,
    repeat: usize,
    probes: Vec<ProbeJson<'a>>,
    ceilings: CeilingsJson,
    results: Vec<ResultJson<'a>>,
    skipped: Vec<SkippedJson<'a>>,
}

#[derive(Serialize)]
struct MachineJson<'a> {
    cpu: &'a str,
    cores: usize,
    threads: usize,
    load_average: Option<[f64; 3]>,
}

#[derive(Serialize)]
struct ProbeJson<'a> {
    name: &'a str,
    shape: &'a str,
    value: f64,
    unit: &'a str,
    ceiling: bool,
    median_s: f64,
    clock: &'static str,
    min_s: f64,
    max_s: f64,
}

#[derive(Serialize)]
struct CeilingsJson {
    f32_gflops: f64,
    f64_gflops: Option<f64>,
    bf16_gflops: Option<f64>,
    gbps: f64,
}

#[derive(Serialize)]
struct ResultJson<'a> {
    name: &'a str,
    backend: &'a str,
    variant: Option<u32>,
    variant_name: Option<&'static str>,
    shape: &'a str,
    median_s: f64,
    clock: &'static str,
    min_s: f64,
    max_s: f64,
    times_s: &'a [f64],
    gflops: Option<f64>,
    gbps: Option<f64>,
    bound: Option<&'static str>,
    roofline_fraction: Option<f64>,
    throughput: Option<f64>,
    unit: Option<String>,
    /// Rate by unit.
    throughputs: BTreeMap<String, f64>,
}

#[derive(Serialize)]
struct SkippedJson<'a> {
    name: &'a str,
    backend: &'a str,
    reason: &'a str,
}

/// The JSON report of `report`, a run of `suite` with `warmup` and `repeat` runs per case.
pub fn json<'a>(
    report: &'a Report,
    suite: Suite,
    quick: bool,
    (warmup, repeat): (usize, usize),
) -> BenchJson<'a> {
    let m = &report.machine;
    BenchJson {
        date: &m.date,
        machine: MachineJson {
            cpu: &m.cpu,
            cores: m.cores,
            threads: m.threads,
            load_average: m.load_average,
        },
        backend: &report.backend,
        device: &report.device,
        suite: format!("{suite:?}").to_lowercase(),
        quick,
        warmup,
        repeat,
        probes: report
            .probes
            .iter()
            .map(|p| ProbeJson {
                name: p.name,
                shape: &p.shape,
                value: p.value,
                unit: p.unit,
                ceiling: p.ceiling,
                median_s: p.timing.median(),
                clock: p.timing.clock.name(),
                min_s: p.timing.min(),
                max_s: p.timing.max(),
            })
            .collect(),
        ceilings: CeilingsJson {
            f32_gflops: report.ceilings.f32_gflops,
            f64_gflops: report.ceilings.f64_gflops,
            bf16_gflops: report.ceilings.bf16_gflops,
            gbps: report.ceilings.gbps,
        },
        results: report.results.iter().map(result_json).collect(),
        skipped: report
            .skipped
            .iter()
            .map(|s| SkippedJson {
                name: &s.name,
                backend: &s.backend,
                reason: &s.reason,
            })
            .collect(),
    }
}

fn result_json(r: &Measured) -> ResultJson<'_> {
    let throughput = r.throughput();
    ResultJson {
        name: &r.name,
        backend: &r.backend,
        variant: r.variant.map(|v| v.number()),
        variant_name: r.variant.map(|v| v.name()),
        shape: &r.shape,
        median_s: r.timing.median(),
        clock: r.timing.clock.name(),
        min_s: r.timing.min(),
        max_s: r.timing.max(),
        times_s: &r.timing.seconds,
        gflops: r.gflops(),
        gbps: r.gbps(),
        bound: r.roofline.map(|(_, b)| b.name()),
        roofline_fraction: r.roofline.map(|(f, _)| f),
        throughput: throughput.first().map(|t| t.0),
        unit: throughput.first().map(|t| t.1.clone()),
        throughputs: throughput.into_iter().map(|(v, unit)| (unit, v)).collect(),
    }
}

/// GFLOP/s of each `linear` case against its GFLOPs per call, one colour per backend and
/// variant. Points, not lines: the cases differ in aspect ratio and epilogue as well as size.
pub fn draw_gemm(path: &Path, results: &[Measured]) -> Result<()> {
    let series = plot::grouped(results.iter().filter(|r| is_linear_case(&r.name)).map(|r| {
        let label = match r.variant {
            Some(v) => format!("{} {v}", r.backend),
            None => r.backend.clone(),
        };
        (label, (r.work.flops / 1e9, r.gflops().unwrap_or(0.0)))
    }));
    plot::xy(
        path,
        "GEMM (linear) throughput by problem size",
        &plot::Axes::new("GFLOP per call", "GFLOP/s"),
        &plot::series(&series),
        plot::Style::Scatter,
    )
}

/// The roofline fraction of every case with a counted floor against its size, measured as the
/// floor time itself (what the case would take at the machine's ceilings), one colour per
/// kernel family and backend: where each family leaves the roof as problems shrink.
pub fn draw_roofline(path: &Path, results: &[Measured]) -> Result<()> {
    let series = plot::grouped(results.iter().filter_map(|r| {
        let (fraction, _) = r.roofline?;
        let family = r.name.split('/').next().unwrap_or(&r.name);
        let point = (fraction * r.timing.median(), 100.0 * fraction);
        Some((format!("{family} [{}]", r.backend), point))
    }));
    plot::xy(
        path,
        "Fraction of the roofline by problem size",
        &plot::Axes::new(
            "seconds per call at the roofline (problem size)",
            "% of the roofline",
        ),
        &plot::series(&series),
        plot::Style::ScatterLogX,
    )
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

/// The machine, the probes, every case and what was skipped.
pub fn markdown(report: &Report) -> String {
    let m = &report.machine;
    let load = m.load_average.map_or("unknown".into(), |l| {
        format!("{:.2} / {:.2} / {:.2}", l[0], l[1], l[2])
    });
    let mut md = format!(
        "## bench: {} on {}\n\n\
         {}; {} · {} cores, {} threads · load average before the run (1/5/15 min): {load}\n\n\
         | probe | shape | best | median | ceiling |\n|---|---|---|---|---|\n",
        report.backend, report.device, m.date, m.cpu, m.cores, m.threads
    );
    for p in &report.probes {
        md += &format!(
            "| {} | {} | {:.1} {} | {} | {} |\n",
            p.name,
            p.shape,
            p.value,
            p.unit,
            duration(p.timing.median()),
            if p.ceiling { "yes" } else { "reference" }
        );
    }
    md += "\n| case | backend | variant | shape | median | min – max | clock | rate | roofline |\n\
           |---|---|---|---|---|---|---|---|---|\n";
    for r in &report.results {
        let rate = match r.roofline {
            Some((_, Bound::Compute)) => format!("{:.1} GFLOP/s", r.gflops().unwrap_or(0.0)),
            Some((_, Bound::Memory)) => format!("{:.1} GB/s", r.gbps().unwrap_or(0.0)),
            // No ceiling for the work's precision (f64 on a GPU): its FLOP rate still, if any.
            None => r
                .gflops()
                .map(|g| format!("{g:.1} GFLOP/s"))
                .into_iter()
                .chain(
                    r.throughput()
                        .iter()
                        .map(|(v, unit)| format!("{} {unit}", si(*v))),
                )
                .collect::<Vec<_>>()
                .join(", "),
        };
        let roofline = r.roofline.map_or("–".into(), |(f, bound)| {
            format!("{:.1}% ({})", 100.0 * f, bound.name())
        });
        md += &format!(
            "| {} | {} | {} | {} | {} | {} – {} | {} | {rate} | {roofline} |\n",
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
        md += "\nSkipped:\n\n";
        for s in &report.skipped {
            md += &format!("- {} [{}]: {}\n", s.name, s.backend, s.reason);
        }
    }
    md
}
