//! `mscope bench` end to end at `--quick` sizes with one repetition (no timing is asserted):
//! the report's fixed JSON keys, skipped cases reported with their reason, GEMM
//! variants on wgpu (lavapipe in CI; skipped when there is no adapter), and clean failures.

mod common;

use std::path::Path;

use common::{absent, assert_fails_cleanly, current_test, report_skip, run_mscope, wgpu_with};
use mscope::backend::wgpu::{WgpuBackend, WgpuOptions};
use mscope::backend::{Backend, GemmVariant};
use serde_json::Value;

/// Runs `mscope bench --quick --repeat 1` with `args` and returns its JSON report, or `None`
/// when `skip_if` names the reason it failed on this machine (wgpu is absent: reported as
/// skipped, or failed where `MSCOPE_REQUIRE_WGPU=1`).
fn bench(dir: &Path, args: &[&str], skip_if: Option<&str>) -> Option<Value> {
    let json = dir.join("bench.json");
    let mut all = vec!["bench", "--quick", "--repeat", "1", "--json"];
    all.push(json.to_str().unwrap());
    all.extend_from_slice(args);
    let out = run_mscope(&all);
    let err = String::from_utf8_lossy(&out.stderr);
    if let Some(reason) = skip_if.filter(|r| !out.status.success() && err.contains(r)) {
        absent(
            "wgpu",
            &current_test(),
            &format!("{args:?}: {reason}: {err}"),
        );
        return None;
    }
    assert!(out.status.success(), "{all:?} failed: {err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| case |"), "no results table: {stdout}");
    Some(serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap())
}

fn results(report: &Value) -> &Vec<Value> {
    report["results"].as_array().expect("results array")
}

#[test]
fn cpu_kernels_report_the_fixed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("gemm.png");
    let roofline = dir.path().join("roofline.png");
    let report = bench(
        dir.path(),
        &[
            "--suite",
            "kernels",
            "--filter",
            "minilm",
            "--plot",
            plot.to_str().unwrap(),
            "--roofline-plot",
            roofline.to_str().unwrap(),
        ],
        None,
    )
    .unwrap();
    for key in ["date", "machine", "probes", "ceilings", "skipped"] {
        assert!(!report[key].is_null(), "report lacks {key}");
    }
    let probes: Vec<&str> = report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        probes.contains(&"gemm-f32") && probes.contains(&"triad"),
        "{probes:?}"
    );
    // The bf16 ceiling is measured where the CPU has a bf16 GEMM (AMX tiles, AVX512_BF16), and
    // only there.
    let bf16 = mscope::backend::cpu::bf16_gemm().is_some();
    assert_eq!(probes.contains(&"gemm-bf16"), bf16, "{probes:?}");
    assert_eq!(
        report["ceilings"]["bf16_gflops"].is_number(),
        bf16,
        "{}",
        report["ceilings"]
    );

    let results = results(&report);
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| n.contains("minilm")),
        "filter ignored: {names:?}"
    );
    for family in ["linear/", "attention/", "pool/"] {
        assert!(
            names.iter().any(|n| n.starts_with(family)),
            "no {family}: {names:?}"
        );
    }
    for r in results {
        for key in ["name", "backend", "shape", "median_s", "roofline_fraction"] {
            assert!(!r[key].is_null(), "{} lacks {key}", r["name"]);
        }
        assert!(r.get("variant").is_some(), "{} lacks variant", r["name"]);
        assert_eq!(r["backend"], "cpu");
        // The CPU has no device clock: its cases are timed on the host's.
        assert_eq!(r["clock"], "host", "{}", r["name"]);
        assert!(r["median_s"].as_f64().unwrap() > 0.0);
        assert!(r["gflops"].is_number() || r["gbps"].is_number());
        let name = r["name"].as_str().unwrap();
        if name.starts_with("linear/") {
            // The CPU's default GEMM chooses by weight size, and the label says which ran:
            // ours (variant 8) on MiniLM's Linears, all of PACKED_MIN_WEIGHTS values or more.
            assert_eq!(r["variant"], 8, "{name}");
            assert_eq!(r["bound"], "compute", "{name}");
        }
        if name.starts_with("pool/") {
            assert_eq!(r["bound"], "memory", "{name}");
        }
    }
    assert!(plot.is_file(), "--plot wrote no PNG");
    assert!(roofline.is_file(), "--roofline-plot wrote no PNG");
}

/// `--variant` numbers pick the attention kernels too: the CPU's three side by side, each row
/// labelled with its variant; without `--variant` the default (chosen by the mask) is unlabelled.
#[test]
fn cpu_attention_variants_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--suite", "kernels", "--filter", "attention/minilm"];
    let report = bench(
        dir.path(),
        &[&args[..], &["--variant", "7,8,9"]].concat(),
        None,
    )
    .unwrap();
    let variants: Vec<(&str, u64, &str)> = results(&report)
        .iter()
        .map(|r| {
            assert!(r["median_s"].as_f64().unwrap() > 0.0);
            (
                r["name"].as_str().unwrap(),
                r["variant"].as_u64().unwrap(),
                r["variant_name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        variants,
        [
            ("attention/minilm", 7, "faer"),
            ("attention/minilm", 8, "packed"),
            ("attention/minilm", 9, "panels"),
        ]
    );
    let report = bench(dir.path(), &args, None).unwrap();
    let results = results(&report);
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(results[0]["variant"].is_null(), "{results:?}");
}

/// The CPU's bf16 GEMM (variant 11 on AMX, else 14 on AVX512_BF16) beside the packed one: each
/// divided by the ceiling of its own precision, so both get a roofline fraction.
#[test]
fn cpu_bf16_gemm_has_its_own_ceiling() {
    let Some(bf16_gemm) = mscope::backend::cpu::bf16_gemm() else {
        let why = "this CPU has neither an AMX-BF16 tile unit nor AVX512_BF16";
        report_skip(&current_test(), "cpu", why);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A compute-bound case at both precisions.
    let variants = format!("8,{}", bf16_gemm.number());
    let args = [
        "--suite",
        "kernels",
        "--filter",
        "bert-base-ffn-up",
        "--variant",
        &variants,
    ];
    let report = bench(dir.path(), &args, None).unwrap();
    let bf16 = report["ceilings"]["bf16_gflops"].as_f64().unwrap();
    let f32 = report["ceilings"]["f32_gflops"].as_f64().unwrap();
    let variants: Vec<u64> = results(&report)
        .iter()
        .map(|r| {
            let (gflops, fraction) = (
                r["gflops"].as_f64().unwrap(),
                r["roofline_fraction"].as_f64(),
            );
            assert_eq!(r["bound"], "compute", "{}", r["variant_name"]);
            let ceiling = if r["variant"] == 8 { f32 } else { bf16 };
            let want = gflops / ceiling;
            let got = fraction
                .unwrap_or_else(|| panic!("{} has no roofline fraction", r["variant_name"]));
            assert!(
                (got - want).abs() < 1e-9 * want,
                "{}: {got} against {want}",
                r["variant_name"]
            );
            r["variant"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(variants, [8, u64::from(bf16_gemm.number())]);
}

#[test]
fn cpu_pipeline_reports_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let report = bench(
        dir.path(),
        &["--suite", "pipelines", "--filter", "compare"],
        None,
    )
    .unwrap();
    let results = results(&report);
    assert_eq!(results.len(), 1, "{results:?}");
    let r = &results[0];
    assert_eq!(r["name"], "pipeline/compare");
    assert_eq!(r["unit"], "models/s");
    assert!(r["throughput"].as_f64().unwrap() > 0.0);
    assert!(r["roofline_fraction"].is_null());
}

#[test]
fn wgpu_runs_its_families_and_every_gemm_variant() {
    let dir = tempfile::tempdir().unwrap();
    // Variants 5, 6 and 13 (f16 weights) need SHADER_F16, 12 and 13 subgroups of 8 or more;
    // without them they are refused by name.
    let f16 = WgpuBackend::open(&WgpuOptions::default()).is_ok_and(|be| be.keeps_f16());
    let subgroups = WgpuBackend::open(&WgpuOptions {
        gemm: Some(GemmVariant::Subgroup),
        ..Default::default()
    })
    .is_ok();
    let mut asked = vec![2, 3];
    if f16 {
        asked.extend([5, 6]);
    }
    if subgroups {
        asked.push(12);
        if f16 {
            asked.push(13);
        }
    }
    let listed: Vec<String> = asked.iter().map(u64::to_string).collect();
    let listed = listed.join(",");
    let Some(report) = bench(
        dir.path(),
        &[
            "--backend",
            "wgpu",
            "--suite",
            "kernels",
            "--filter",
            "minilm-qkv",
            "--variant",
            &listed,
        ],
        Some("wgpu backend unavailable"),
    ) else {
        return;
    };
    // The same adapter, opened here, says whether the cases could be timed by the device.
    let be = WgpuBackend::open(&WgpuOptions::default()).unwrap();
    let clock = if be.start_device_timer().unwrap() {
        be.stop_device_timer().unwrap();
        "device"
    } else {
        "host"
    };
    let all = results(&report);
    let variants: Vec<u64> = all
        .iter()
        .map(|r| {
            assert_eq!(r["backend"], "wgpu");
            assert_eq!(r["clock"], clock, "{}", r["name"]);
            r["variant"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(variants, asked);
    if f16 {
        // Bytes counted: the f16-weight variants read the 1152×384 weight at 2 bytes a value.
        let bytes = |r: &Value| r["gbps"].as_f64().unwrap() * 1e9 * r["median_s"].as_f64().unwrap();
        let run = |number: u64| &all[asked.iter().position(|&v| v == number).unwrap()];
        let mut pairs = vec![(2, 5), (3, 6)];
        if subgroups {
            pairs.push((12, 13));
        }
        for (f32_variant, f16_variant) in pairs {
            let (f32_run, f16_run) = (run(f32_variant), run(f16_variant));
            let saved = bytes(f32_run) - bytes(f16_run);
            assert!(
                (saved - 2.0 * 1152.0 * 384.0).abs() < 1.0,
                "{} vs {}: {saved} bytes fewer",
                f32_run["variant_name"],
                f16_run["variant_name"]
            );
        }
    } else {
        assert_fails_cleanly(
            &["bench", "--backend", "wgpu", "--variant", "5"],
            &["--variant 5 (tiled-f16)", "SHADER_F16"],
        );
    }
    if !subgroups {
        assert_fails_cleanly(
            &["bench", "--backend", "wgpu", "--variant", "12"],
            &["12 (subgroup)", "subgroups"],
        );
    }
    assert!(report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "copy"));

    // Every family runs on wgpu, the trim search included (its smaller case).
    let report = bench(
        dir.path(),
        &[
            "--backend",
            "wgpu",
            "--suite",
            "kernels",
            "--filter",
            "trim_search/100x",
        ],
        None,
    )
    .unwrap();
    let trims = results(&report);
    assert_eq!(trims.len(), 1);
    assert!(trims[0]["name"]
        .as_str()
        .unwrap()
        .starts_with("trim_search/"));
    assert!(report["skipped"].as_array().is_none_or(|s| s.is_empty()));
}

#[test]
fn bad_input_fails_cleanly() {
    let out = run_mscope(&["bench", "--suite", "nope"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects an unknown suite");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    assert_fails_cleanly(
        &["bench", "--repeat", "0"],
        &["--repeat must be at least 1"],
    );
    assert_fails_cleanly(
        &["bench", "--variant", "3", "--filter", "nothing"],
        &[
            "--variant 3",
            "7 (faer)",
            "attention variants 7 (faer), 8 (packed), 9 (panels)",
        ],
    );
    if wgpu_with(&WgpuOptions::default()).is_some() {
        assert_fails_cleanly(
            &["bench", "--backend", "wgpu", "--variant", "4"],
            &["--variant 4", "5 (tiled-f16), 6 (direct-f16)"],
        );
    }
    assert_fails_cleanly(
        &["bench", "--backend", "cuda"],
        &["cuda backend unavailable"],
    );
}
