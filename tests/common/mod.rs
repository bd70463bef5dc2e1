//! Helpers shared by the integration tests: seeded inputs, error measures, the backends to run
//! each parity test on, and the paths of the fixtures.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::sync::Arc;

use mscope::backend::{self, Backend, BackendKind, OpFamily};

/// SplitMix64: a seeded generator so inputs are fresh per seed and reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Standard normal (Box–Muller, f64).
    pub fn normal(&mut self) -> f64 {
        let u = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let v = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// ‖a − b‖ / ‖b‖ in f64; NaN anywhere gives infinity so it never passes.
pub fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    let widen = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    rel_error_f64(&widen(a), &widen(b))
}

/// [`rel_error`] of f64 values (the stats ops' outputs).
pub fn rel_error_f64(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| y.powi(2)).sum();
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// LayerNorm of each `d`-wide row in f64: the reference of every backend's `layer_norm`.
pub fn layer_norm_ref(x: &[f32], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f64> {
    let d = gamma.len();
    x.chunks(d)
        .flat_map(|row| {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + eps).sqrt();
            row.iter()
                .zip(gamma.iter().zip(beta))
                .map(move |(&v, (&g, &b))| (v as f64 - mean) * inv * g as f64 + b as f64)
        })
        .collect()
}

/// RMSNorm of each `d`-wide row in f64: the reference of every backend's `rms_norm`.
pub fn rms_norm_ref(x: &[f32], gamma: &[f32], eps: f64) -> Vec<f64> {
    let d = gamma.len();
    x.chunks(d)
        .flat_map(|row| {
            let mean_square = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (mean_square + eps).sqrt();
            row.iter()
                .zip(gamma)
                .map(move |(&v, &g)| v as f64 * inv * g as f64)
        })
        .collect()
}

/// `x / max(‖x‖₂, 1e-12)` of each `d`-wide row in f64: the reference of `l2_normalize`.
pub fn l2_normalize_ref(x: &[f64], d: usize) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            row.iter().map(move |v| v / norm)
        })
        .collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 && nb == 0.0 {
        return 1.0;
    }
    dot / (na * nb)
}

/// Every backend the op set runs on: present ones are returned, absent ones are reported as
/// skipped (with the reason) on stderr, never silently passed.
pub fn backends() -> Vec<Arc<dyn Backend>> {
    let mut present = Vec::new();
    for kind in [BackendKind::Cpu, BackendKind::Wgpu, BackendKind::Cuda] {
        match backend::open(kind, OpFamily::Encoder) {
            Ok(b) => present.push(b),
            Err(why) => eprintln!("skipped {kind:?}: {why}"),
        }
    }
    present
}

/// The backends present that implement every op of `family`; the others are reported as
/// skipped for it.
pub fn backends_for(family: OpFamily) -> Vec<Arc<dyn Backend>> {
    backends()
        .into_iter()
        .filter(|b| {
            let ok = b.supports(family);
            if !ok {
                eprintln!("skipped {}: no {family:?} kernels", b.name());
            }
            ok
        })
        .collect()
}

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The real all-MiniLM-L6-v2, fetched by `tools/fetch-model.sh` (the test command runs it).
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("MSCOPE_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path(".cache/models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} has no model.safetensors: run tools/fetch-model.sh (tools/test.sh does)",
        dir.display()
    );
    dir
}

/// Texts of tests/fixtures/texts.jsonl in file order.
pub fn fixture_texts() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo_path("tests/fixtures/texts.jsonl")).expect("fixture texts");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("fixture line is JSON");
            v["text"].as_str().expect("text field").to_string()
        })
        .collect()
}

/// An F32, F64 or I64 tensor of a reference safetensors file, as f64 values with its shape.
pub fn reference_tensor(file: &str, name: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(repo_path(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("reference file parses");
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("{file} has no tensor {name}"));
    let values = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        safetensors::Dtype::F64 => t
            .data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I64 => t
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("{file}:{name}: unexpected dtype {other:?}"),
    };
    (t.shape().to_vec(), values)
}

/// A random `d×d` orthogonal matrix, row-major (Gram–Schmidt on uniform entries, in f64).
pub fn random_orthogonal(rng: &mut Rng, d: usize) -> Vec<f64> {
    let mut q: Vec<f64> = rng.vec(d * d).into_iter().map(f64::from).collect();
    for i in 0..d {
        for j in 0..i {
            let dot: f64 = (0..d).map(|k| q[i * d + k] * q[j * d + k]).sum();
            for k in 0..d {
                q[i * d + k] -= dot * q[j * d + k];
            }
        }
        let norm = (0..d).map(|k| q[i * d + k].powi(2)).sum::<f64>().sqrt();
        (0..d).for_each(|k| q[i * d + k] /= norm);
    }
    q
}

/// Runs the `mscope` binary of this build.
/// Runs `mscope` expecting a clean failure: exit status 1 (a panic gives 101) and every needle
/// on stderr.
pub fn assert_fails_cleanly(args: &[&str], needles: &[&str]) {
    let out = run_mscope(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a clean failure for {args:?}: {err}"
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "stderr for {args:?} lacks {needle:?}: {err}"
        );
    }
}

pub fn run_mscope(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mscope"))
        .args(args)
        .output()
        .expect("mscope runs")
}

/// Runs `mscope` expecting success (stderr in the failure message) and returns its output.
pub fn run_mscope_ok(args: &[&str]) -> std::process::Output {
    let out = run_mscope(args);
    assert!(
        out.status.success(),
        "mscope {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `mscope ARGS --backend B --out DIR/B.json` for B = cpu and wgpu and returns both JSON
/// reports, or `None` (reported as skipped) when no wgpu adapter can be opened.
pub fn reports_on_cpu_and_wgpu(args: &[&str]) -> Option<(serde_json::Value, serde_json::Value)> {
    use mscope::backend::wgpu::{WgpuBackend, WgpuOptions};
    if let Err(why) = WgpuBackend::open(&WgpuOptions::from_env()) {
        eprintln!("skipped: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let report = |backend: &str| {
        let json = dir.path().join(format!("{backend}.json"));
        let mut full = args.to_vec();
        full.extend(["--backend", backend, "--out", json.to_str().unwrap()]);
        run_mscope_ok(&full);
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&json).unwrap()).unwrap()
    };
    Some((report("cpu"), report("wgpu")))
}
