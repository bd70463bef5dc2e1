//! Helpers shared by the integration tests: the per-backend test macro [`backend_tests!`] and
//! the backends it opens (once per test binary), skips reported on stderr, seeded inputs, error
//! measures and assertions that name the backend, and the paths of the fixtures.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use mscope::backend::cuda::{CudaBackend, CudaOptions};
use mscope::backend::wgpu::{WgpuBackend, WgpuOptions};
use mscope::backend::{self, Backend, BackendKind, Eigen, Matrix64, OpFamily, Tensor};
use mscope::bench::cases::{Fill, Inputs, OpCase, Tolerance};

/// Stamps each test function `fn name(be: &dyn Backend)` (or `&Arc<dyn Backend>`) into one
/// `#[test]` per backend: `mod cpu { fn name() }`, `mod wgpu { … }`, `mod cuda { … }`, so
/// `cargo test --test ops wgpu::` runs one backend and a failure names it
/// (`cuda::linear_with_epilogues`). `name: Family` runs the test only where the backend has the
/// kernels of `OpFamily::Family` (default `Encoder`); elsewhere, and where the backend is absent,
/// the test reports itself skipped ([`backend`]). One invocation per test file.
///
/// ```ignore
/// common::backend_tests! { linear_with_epilogues, scatter_matches_f64_reference: Stats }
/// ```
#[allow(unused_macros)] // test binaries without per-backend tests
macro_rules! backend_tests {
    ($($name:ident $(: $family:ident)?),+ $(,)?) => {
        $crate::common::backend_tests!(@module cpu Cpu $($name $(: $family)?),+);
        $crate::common::backend_tests!(@module wgpu Wgpu $($name $(: $family)?),+);
        $crate::common::backend_tests!(@module cuda Cuda $($name $(: $family)?),+);
    };
    (@module $module:ident $kind:ident $($name:ident $(: $family:ident)?),+) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    let family = $crate::common::backend_tests!(@family $($family)?);
                    let kind = ::mscope::backend::BackendKind::$kind;
                    if let Some(be) = $crate::common::backend(kind, family, stringify!($name)) {
                        super::$name($crate::common::BackendArg::from_opened(&be));
                    }
                }
            )+
        }
    };
    (@family) => { ::mscope::backend::OpFamily::Encoder };
    (@family $family:ident) => { ::mscope::backend::OpFamily::$family };
}
#[allow(unused_imports)]
pub(crate) use backend_tests;

/// What a per-backend test takes: `&dyn Backend`, or `&Arc<dyn Backend>` where it needs to
/// share the backend (an encoder holds one).
pub trait BackendArg<'a> {
    fn from_opened(be: &'a Arc<dyn Backend>) -> Self;
}

impl<'a> BackendArg<'a> for &'a dyn Backend {
    fn from_opened(be: &'a Arc<dyn Backend>) -> Self {
        be.as_ref()
    }
}

impl<'a> BackendArg<'a> for &'a Arc<dyn Backend> {
    fn from_opened(be: &'a Arc<dyn Backend>) -> Self {
        be
    }
}

/// The backends a binary's tests share, opened on first use: CPU, wgpu (a software adapter
/// such as lavapipe will do), CUDA; an absent one holds the reason.
static OPENED: [OnceLock<Result<Arc<dyn Backend>, String>>; 3] = [const { OnceLock::new() }; 3];

/// The backend `kind` for `test`, or `None` after reporting the test skipped: where the backend
/// is absent ([`absent`]), or has no kernels for `family`.
pub fn backend(kind: BackendKind, family: OpFamily, test: &str) -> Option<Arc<dyn Backend>> {
    let slot = match kind {
        BackendKind::Cpu => 0,
        BackendKind::Wgpu => 1,
        BackendKind::Cuda => 2,
        BackendKind::Auto => panic!("tests name their backend"),
    };
    let opened = OPENED[slot]
        .get_or_init(|| backend::open(kind, OpFamily::Encoder).map_err(|e| e.to_string()));
    match opened {
        Err(why) => {
            absent(kind_name(kind), test, why);
            None
        }
        Ok(be) if !be.supports(family) => {
            report_skip(test, be.name(), &format!("no {family:?} kernels"));
            None
        }
        Ok(be) => Some(be.clone()),
    }
}

fn kind_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Cpu => "cpu",
        BackendKind::Wgpu => "wgpu",
        BackendKind::Cuda => "cuda",
        BackendKind::Auto => "auto",
    }
}

/// Reports `test` skipped because `backend` (`wgpu`, `cuda`) cannot be opened, or fails it
/// where `MSCOPE_REQUIRE_WGPU=1` / `MSCOPE_REQUIRE_CUDA=1` says the machine has one.
pub fn absent(backend: &str, test: &str, why: &dyn std::fmt::Display) {
    let var = format!("MSCOPE_REQUIRE_{}", backend.to_uppercase());
    assert!(
        std::env::var(&var).as_deref() != Ok("1"),
        "{test} on {backend}: {var}=1 but the backend is absent: {why}"
    );
    report_skip(test, backend, &why.to_string());
}

/// Writes `skipped: <test> on <backend>: <reason>` straight to stderr: libtest captures the
/// output of `eprintln!` in a passing test, but not writes to the stderr handle.
pub fn report_skip(test: &str, backend: &str, reason: &str) {
    let line = format!("skipped: {test} on {backend}: {reason}\n");
    // Nowhere to report a failed write to stderr.
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// The running test's name (libtest names each test's thread after it).
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string()
}

/// A wgpu backend with `options` for a wgpu-specific test, or `None` after reporting the running
/// test skipped ([`absent`]).
pub fn wgpu_with(options: &WgpuOptions) -> Option<WgpuBackend> {
    WgpuBackend::open(options)
        .map_err(|why| absent("wgpu", &current_test(), &why))
        .ok()
}

/// A CUDA backend with `options` for a CUDA-specific test, or `None` after reporting the running
/// test skipped ([`absent`]).
pub fn cuda_with(options: &CudaOptions) -> Option<CudaBackend> {
    CudaBackend::open(options)
        .map_err(|why| absent("cuda", &current_test(), &why))
        .ok()
}

/// A tensor of `shape` filled with NaN: an output an op must overwrite everywhere.
pub fn poisoned(be: &dyn Backend, shape: &[usize]) -> Tensor {
    be.upload(shape, &vec![f32::NAN; shape.iter().product()])
        .unwrap()
}

pub fn upload(be: &dyn Backend, shape: &[usize], data: &[f32]) -> Tensor {
    be.upload(shape, data).unwrap()
}

/// Asserts `got` meets `tolerance` against the f64 reference `want`, naming the backend and
/// `what` ran.
pub fn assert_close(be: &dyn Backend, what: &str, got: &[f32], want: &[f64], tolerance: Tolerance) {
    let want32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
    match tolerance {
        Tolerance::Relative(tol) => {
            let err = rel_error(got, &want32);
            assert!(err < tol, "{} {what}: relative error {err:e}", be.name());
        }
        Tolerance::Exact => assert_eq!(got, want32, "{} {what}", be.name()),
    }
}

/// Runs `case` once on `be` over a NaN-poisoned output and asserts it meets the case's tolerance
/// against its f64 reference; returns its inputs and output for further checks.
pub fn check_case(be: &Arc<dyn Backend>, case: &OpCase) -> (Inputs, Vec<f32>) {
    let inputs = case.inputs();
    let mut instance = case.instance(be, &inputs, Fill::Nan).unwrap();
    instance
        .run()
        .unwrap_or_else(|e| panic!("{} {} ({}): {e}", be.name(), case.name, case.shape()));
    let got = instance.output().unwrap();
    let what = format!("{} ({})", case.name, case.shape());
    assert_close(
        be.as_ref(),
        &what,
        &got,
        &case.reference(&inputs),
        case.tolerance(),
    );
    (inputs, got)
}

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

    /// Samples of `lengths` points for the trim search: coarse values, so ties within and across
    /// samples, and −0 beside +0 (which must compare equal).
    pub fn tied_samples(&mut self, lengths: &[usize]) -> Vec<Vec<f32>> {
        lengths
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                (0..n)
                    .map(|_| {
                        let v = (self.normal() * 4.0 + k as f64 * 0.3).round() as f32 / 2.0;
                        if v == 0.0 && self.below(2) == 0 {
                            -0.0
                        } else {
                            v
                        }
                    })
                    .collect()
            })
            .collect()
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

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 && nb == 0.0 {
        return 1.0;
    }
    dot / (na * nb)
}

/// Checks each `dim`-wide row of `got` against the same row of the f64 reference at cosine ≥
/// `min`, naming `what` and the row on failure; returns the lowest cosine.
pub fn assert_row_cosines(what: &str, got: &[f32], want: &[f64], dim: usize, min: f64) -> f64 {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} values, reference has {}",
        got.len(),
        want.len()
    );
    let mut worst: f64 = 1.0;
    for (row, (g, w)) in got.chunks(dim).zip(want.chunks(dim)).enumerate() {
        let w: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        let cos = cosine(g, &w);
        assert!(cos >= min, "{what}: row {row} cosine {cos} < {min}");
        worst = worst.min(cos);
    }
    worst
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

/// Each row's label name in an embeddings file, `None` for unlabelled rows.
pub fn row_label_names(file: &mscope::io::embeddings::EmbeddingsFile) -> Vec<Option<&str>> {
    file.labels
        .iter()
        .map(|&l| {
            usize::try_from(l)
                .ok()
                .map(|l| file.label_names[l].as_str())
        })
        .collect()
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
        safetensors::Dtype::U8 => t.data().iter().map(|&b| f64::from(b)).collect(),
        other => panic!("{file}:{name}: unexpected dtype {other:?}"),
    };
    (t.shape().to_vec(), values)
}

/// The names of a reference file's tensors that start with `prefix`, without it, sorted.
pub fn reference_names(file: &str, prefix: &str) -> Vec<String> {
    let bytes = std::fs::read(repo_path(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("reference file parses");
    let mut names: Vec<String> = st
        .names()
        .into_iter()
        .filter_map(|n| n.strip_prefix(prefix).map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Checks parameters after AdamW steps against a PyTorch reference's `after.NAME` tensors: the
/// same names, every value within f32 rounding (1e-5 relative).
pub fn assert_matches_adamw_reference(params: &mscope::models::finetune::Parameters, file: &str) {
    assert_eq!(
        params.keys().cloned().collect::<Vec<_>>(),
        reference_names(file, "after."),
        "parameters"
    );
    for (name, (_, values)) in params {
        if name.ends_with("attention.self.key.bias") {
            // Its gradient is rounding on both sides (softmax ignores q·b), which Adam's
            // normalisation turns into steps of up to lr: not comparable, and unused by the model.
            continue;
        }
        let (_, want) = reference_tensor(file, &format!("after.{name}"));
        let got: Vec<f64> = values.iter().map(|&v| v as f64).collect();
        let err = rel_error_f64(&got, &want);
        assert!(err < 1e-5, "{name} after the steps: rel err {err:.2e}");
    }
}

/// An eigendecomposition's residuals, `(‖AV − VΛ‖/‖VΛ‖, ‖VᵀV − I‖)`, in f64.
pub fn eigen_residuals(a: &Matrix64, e: &Eigen) -> (f64, f64) {
    let d = a.rows;
    let (mut av, mut vl, mut vtv, mut identity) = (
        vec![0.0; d * d],
        vec![0.0; d * d],
        vec![0.0; d * d],
        vec![0.0; d * d],
    );
    for i in 0..d {
        identity[i * d + i] = 1.0;
        for j in 0..d {
            av[i * d + j] = (0..d).map(|k| a.at(i, k) * e.vectors.at(k, j)).sum();
            vl[i * d + j] = e.vectors.at(i, j) * e.values[j];
            vtv[i * d + j] = (0..d)
                .map(|k| e.vectors.at(k, i) * e.vectors.at(k, j))
                .sum();
        }
    }
    (rel_error_f64(&av, &vl), rel_error_f64(&vtv, &identity))
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
    wgpu_with(&WgpuOptions::from_env())?;
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

/// Overwrites the bytes of tensor `name` in the safetensors file `path` at byte `offset` of its
/// data: how tests craft files the writers refuse to produce (NaN embeddings, poisoned weights).
pub fn poke_tensor(path: &Path, name: &str, offset: usize, bytes: &[u8]) {
    let mut file = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&file[8..8 + header_len]).unwrap();
    let start = header[name]["data_offsets"][0]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: no tensor {name}", path.display())) as usize
        + 8
        + header_len
        + offset;
    file[start..start + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, file).unwrap();
}

/// The elements and texts of an SVG plot, parsed as XML (a malformed file fails the test).
#[allow(dead_code)]
pub struct SvgSummary {
    /// Element names in document order.
    pub elements: Vec<String>,
    pub texts: Vec<String>,
}

#[allow(dead_code)]
impl SvgSummary {
    pub fn count(&self, element: &str) -> usize {
        self.elements.iter().filter(|e| *e == element).count()
    }

    pub fn has_text(&self, needle: &str) -> bool {
        self.texts.iter().any(|t| t.contains(needle))
    }
}

/// Parses the SVG at `path`: well-formed XML whose root is an `<svg>` of mscope's canvas size.
#[allow(dead_code)]
pub fn svg_summary(path: &Path) -> SvgSummary {
    use xml::reader::{EventReader, XmlEvent};
    let file = std::fs::File::open(path).unwrap();
    let mut summary = SvgSummary {
        elements: Vec::new(),
        texts: Vec::new(),
    };
    for event in EventReader::new(std::io::BufReader::new(file)) {
        match event.unwrap_or_else(|e| panic!("{} is not well-formed XML: {e}", path.display())) {
            XmlEvent::StartElement {
                name, attributes, ..
            } => {
                if summary.elements.is_empty() {
                    assert_eq!(name.local_name, "svg", "{}: root element", path.display());
                    let attribute = |key: &str| {
                        attributes
                            .iter()
                            .find(|a| a.name.local_name == key)
                            .map(|a| a.value.clone())
                    };
                    assert_eq!(attribute("width").as_deref(), Some("960"));
                    assert_eq!(attribute("height").as_deref(), Some("680"));
                }
                summary.elements.push(name.local_name);
            }
            XmlEvent::Characters(text) => summary.texts.push(text),
            _ => {}
        }
    }
    assert!(!summary.elements.is_empty(), "{}: empty", path.display());
    summary
}
