//! The tangent-kernel instrument: kernels and per-sample gradients against torch.func fixtures
//! (`tools/make_ntk_fixtures.py`, float64), the contraction against materialised gradients,
//! projections against explicit matrices and their 1/√k convergence, block-wise and resumed runs,
//! the ops on every backend, and bad input.

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use common::{
    assert_fails_cleanly, backend_tests, reference_tensor, rel_error_f64, repo_path, run_mscope_ok,
    wgpu_with, Rng,
};
use mscope::backend::cpu::CpuBackend;
use mscope::backend::wgpu::WgpuOptions;
use mscope::backend::GemmVariant;
use mscope::backend::{Backend, JlDistribution, JlSpec};
use mscope::data::Dataset;
use mscope::instruments::ntk::KernelJob;
use mscope::instruments::project::{factors, FactorSpec, KernelKind, ProjectionKind};
use mscope::io::checkpoint::{file_digest, Checkpoint};
use mscope::io::kernel_file::KernelFile;
use mscope::models::mlp::Mlp;

backend_tests! { ntk_ops_match_the_reference: Ntk }

const ACTIVATIONS: [&str; 4] = ["relu", "tanh", "gelu", "sigmoid"];
const KINDS: [KernelKind; 3] = [KernelKind::Trntk, KernelKind::Trntk0, KernelKind::Pntk];

fn fixture(name: &str) -> PathBuf {
    repo_path(&format!("tests/fixtures/ntk/{name}"))
}

fn model(act: &str) -> Mlp {
    Mlp::read(&fixture(&format!("mlp_{act}.safetensors"))).unwrap()
}

fn data(name: &str) -> Dataset {
    Dataset::read(&fixture(&format!("{name}.safetensors"))).unwrap()
}

fn reference(act: &str, name: &str) -> Vec<f64> {
    reference_tensor(
        &format!("tests/fixtures/ntk/mlp_{act}_reference.safetensors"),
        name,
    )
    .1
}

fn exact(kind: KernelKind) -> FactorSpec {
    FactorSpec {
        kind,
        projection: ProjectionKind::None,
        projection_dim: 0,
        seed: 0,
    }
}

fn kernel(
    mlp: &Mlp,
    rows: &[f32],
    cols: Option<&[f32]>,
    spec: FactorSpec,
    block_rows: usize,
) -> KernelFile {
    labelled_kernel(mlp, (rows, None), cols.map(|c| (c, None)), spec, block_rows).unwrap()
}

/// Data and, where given, its labels.
type Points<'a> = (&'a [f32], Option<&'a [i64]>);

fn labelled_kernel(
    mlp: &Mlp,
    rows: Points,
    cols: Option<Points>,
    spec: FactorSpec,
    block_rows: usize,
) -> mscope::error::Result<KernelFile> {
    let job = KernelJob {
        mlp,
        rows: rows.0,
        cols: cols.map(|c| c.0),
        row_labels: rows.1,
        col_labels: cols.and_then(|c| c.1),
        spec,
        block_rows,
        tile_rows: 4,
    };
    Ok(job
        .run(&CpuBackend::new(), None, &mut |_| ControlFlow::Continue(()))?
        .unwrap())
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Per-sample, per-class gradients `[n, C, P]` materialised from the backward pass, parameters in
/// torch's order (fc0.weight row-major, fc0.bias, fc1.weight, …).
fn materialised_gradients(mlp: &Mlp, x: &[f32]) -> Vec<f64> {
    let fwd = mlp.forward(x).unwrap();
    let c = mlp.num_classes();
    let mut top = vec![0.0f32; fwd.n * c * c];
    top.chunks_exact_mut(c)
        .enumerate()
        .for_each(|(r, t)| t[r % c] = 1.0);
    let deltas = mlp.backward(&fwd, top, c);
    let p = mlp.num_params();
    let mut grads = vec![0.0f64; fwd.n * c * p];
    for (row, g) in grads.chunks_exact_mut(p).enumerate() {
        let sample = row / c;
        let mut at = 0;
        for (l, layer) in mlp.layers.iter().enumerate() {
            let delta = &deltas[l][row * layer.d_out..(row + 1) * layer.d_out];
            let input = &fwd.inputs[l][sample * layer.d_in..(sample + 1) * layer.d_in];
            for &d in delta {
                for &a in input {
                    g[at] = d as f64 * a as f64;
                    at += 1;
                }
            }
            for &d in delta {
                g[at] = d as f64;
                at += 1;
            }
        }
    }
    grads
}

#[test]
fn logits_match_torch() {
    for act in ACTIVATIONS {
        let mlp = model(act);
        let logits = mlp.logits(&data("train").x).unwrap();
        let err = rel_error_f64(&widen(&logits), &reference(act, "logits"));
        assert!(err < 1e-6, "{act}: logits rel. error {err:e}");
    }
}

#[test]
fn per_sample_gradients_match_torch_func_jacobians() {
    for act in ACTIVATIONS {
        let mlp = model(act);
        let grads = materialised_gradients(&mlp, &data("train").x);
        let err = rel_error_f64(&grads, &reference(act, "jacobian"));
        assert!(err < 1e-5, "{act}: per-sample gradients rel. error {err:e}");
    }
}

#[test]
fn per_sample_gradients_match_finite_differences() {
    let x = data("train").x;
    for act in ACTIVATIONS {
        let mlp = model(act);
        let grads = materialised_gradients(&mlp, &x);
        let (n, c, p) = (12, mlp.num_classes(), mlp.num_params());
        // Central differences of every logit of every sample, one parameter at a time, in the
        // order of `materialised_gradients` (weight rows then bias, layer by layer). The step keeps
        // every ReLU pre-activation on its side: the fixture's are at least 1e-3 from zero.
        let eps = 2e-4f32;
        let mut numeric = vec![0.0f64; n * c * p];
        let mut t = 0;
        for l in 0..mlp.layers.len() {
            let len = mlp.layers[l].weight.len() + mlp.layers[l].bias.len();
            for k in 0..len {
                let logits_at = |delta: f32| {
                    let mut m = mlp.clone();
                    let layer = &mut m.layers[l];
                    let w = layer.weight.len();
                    if k < w {
                        layer.weight[k] += delta;
                    } else {
                        layer.bias[k - w] += delta;
                    }
                    m.logits(&x).unwrap()
                };
                let (up, down) = (logits_at(eps), logits_at(-eps));
                for i in 0..n * c {
                    numeric[i * p + t] = (up[i] as f64 - down[i] as f64) / (2.0 * eps as f64);
                }
                t += 1;
            }
        }
        let err = rel_error_f64(&grads, &numeric);
        assert!(
            err < 1e-2,
            "{act}: backward vs finite differences rel. error {err:e}"
        );
    }
}

#[test]
fn exact_kernels_match_torch_func() {
    let (train, test) = (data("train"), data("test"));
    for act in ACTIVATIONS {
        let mlp = model(act);
        for kind in KINDS {
            let square = kernel(&mlp, &train.x, None, exact(kind), 64);
            let err = rel_error_f64(&widen(&square.values), &reference(act, kind.name()));
            assert!(err < 1e-5, "{act} {}: rel. error {err:e}", kind.name());
            assert_eq!((square.rows, square.cols), (12, 12));

            let cross = kernel(&mlp, &test.x, Some(&train.x), exact(kind), 64);
            let name = format!("{}_test", kind.name());
            let err = rel_error_f64(&widen(&cross.values), &reference(act, &name));
            assert!(err < 1e-5, "{act} {name}: rel. error {err:e}");
            assert_eq!((cross.rows, cross.cols), (7, 12));
        }
        let f = factors(
            &CpuBackend::new(),
            &mlp,
            &train.x,
            None,
            &exact(KernelKind::Trntk),
        )
        .unwrap();
        let err = rel_error_f64(&f.self_kernel, &reference(act, "grad_sq_norm"));
        assert!(err < 1e-5, "{act}: ‖g‖² rel. error {err:e}");
    }
}

#[test]
fn baseline_kernels_match_torch_func() {
    let (train, test) = (data("train"), data("test"));
    let (train_points, test_points) = (
        (&train.x[..], Some(&train.y[..])),
        (&test.x[..], Some(&test.y[..])),
    );
    for act in ACTIVATIONS {
        let mlp = model(act);
        for kind in [KernelKind::Gradcos, KernelKind::Embedding] {
            let square = labelled_kernel(&mlp, train_points, None, exact(kind), 5).unwrap();
            let err = rel_error_f64(&widen(&square.values), &reference(act, kind.name()));
            assert!(err < 1e-5, "{act} {}: rel. error {err:e}", kind.name());
            assert!(square.normalized, "{}: a cosine", kind.name());

            let cross =
                labelled_kernel(&mlp, test_points, Some(train_points), exact(kind), 5).unwrap();
            let name = format!("{}_test", kind.name());
            let err = rel_error_f64(&widen(&cross.values), &reference(act, &name));
            assert!(err < 1e-5, "{act} {name}: rel. error {err:e}");
        }
    }
}

#[test]
fn baseline_kernels_refuse_what_they_cannot_take() {
    let (train, mlp) = (data("train"), model("relu"));
    let err = labelled_kernel(&mlp, (&train.x, None), None, exact(KernelKind::Gradcos), 5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--kind gradcos needs every point's label"),
        "{err}"
    );
    let short = &train.y[..11];
    let err = labelled_kernel(
        &mlp,
        (&train.x, Some(&train.y)),
        Some((&train.x, Some(short))),
        exact(KernelKind::Gradcos),
        5,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--against data: --kind gradcos needs"),
        "{err}"
    );
    let projected = FactorSpec {
        projection: ProjectionKind::Kronecker,
        projection_dim: 8,
        ..exact(KernelKind::Embedding)
    };
    let err = labelled_kernel(&mlp, (&train.x, None), None, projected, 5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--kind embedding: the kernel of hidden states takes no --projection"),
        "{err}"
    );
}

#[test]
fn contraction_agrees_with_materialised_gradients() {
    let mut rng = Rng::new(7);
    for act in ACTIVATIONS {
        // A wider model than the fixtures, random inputs: the contraction never forms a gradient.
        let mlp = Mlp::init(
            &[9, 16, 11, 4],
            mscope::models::mlp::parse_activation(act).unwrap(),
            3,
        )
        .unwrap();
        let x = rng.vec(10 * 9);
        let grads = materialised_gradients(&mlp, &x);
        let (c, p) = (mlp.num_classes(), mlp.num_params());
        let mut brute = vec![0.0f64; 100];
        for i in 0..10 {
            for j in 0..10 {
                brute[i * 10 + j] = (0..c * p)
                    .map(|t| grads[i * c * p + t] * grads[j * c * p + t])
                    .sum();
            }
        }
        let fast = kernel(&mlp, &x, None, exact(KernelKind::Trntk0), 3);
        let err = rel_error_f64(&widen(&fast.values), &brute);
        assert!(
            err < 1e-5,
            "{act}: contraction vs materialised rel. error {err:e}"
        );
    }
}

#[test]
fn dense_projection_is_the_explicit_matrix_times_the_gradient() {
    let mlp = model("tanh");
    let x = data("train").x;
    let grads = materialised_gradients(&mlp, &x);
    let (n, c, p, k) = (12, mlp.num_classes(), mlp.num_params(), 40);
    for (projection, distribution) in [
        (ProjectionKind::Rademacher, JlDistribution::Rademacher),
        (ProjectionKind::Gaussian, JlDistribution::Gaussian),
    ] {
        let spec = FactorSpec {
            kind: KernelKind::Trntk0,
            projection,
            projection_dim: k,
            seed: 11,
        };
        let f = factors(&CpuBackend::new(), &mlp, &x, None, &spec).unwrap();
        assert_eq!(f.terms.len(), 1);
        let jl = JlSpec {
            seed: 11,
            dim: k,
            distribution,
            column_offset: 0,
        };
        let mut explicit = vec![0.0f64; n * c * k];
        for row in 0..n * c {
            for j in 0..k {
                explicit[row * k + j] = (0..p)
                    .map(|t| jl.entry(j, t) as f64 * grads[row * p + t])
                    .sum();
            }
        }
        let err = rel_error_f64(&widen(&f.terms[0].delta), &explicit);
        assert!(err < 1e-5, "{projection:?}: rel. error {err:e}");
    }
}

/// Mean relative Frobenius error of projected trNTK0 kernels over `seeds` seeds.
fn projection_error(mlp: &Mlp, x: &[f32], projection: ProjectionKind, k: usize, seeds: u64) -> f64 {
    let exact_k = widen(&kernel(mlp, x, None, exact(KernelKind::Trntk0), 64).values);
    (0..seeds)
        .map(|seed| {
            let spec = FactorSpec {
                kind: KernelKind::Trntk0,
                projection,
                projection_dim: k,
                seed: 1000 + seed,
            };
            rel_error_f64(&widen(&kernel(mlp, x, None, spec, 64).values), &exact_k)
        })
        .sum::<f64>()
        / seeds as f64
}

#[test]
fn projected_kernels_converge_like_one_over_sqrt_k() {
    let mlp = model("gelu");
    let x = data("train").x;
    let ks = [16usize, 64, 256, 1024];
    for projection in [
        ProjectionKind::Rademacher,
        ProjectionKind::Gaussian,
        ProjectionKind::Kronecker,
    ] {
        let errors: Vec<f64> = ks
            .iter()
            .map(|&k| projection_error(&mlp, &x, projection, k, 20))
            .collect();
        // Least-squares slope of log(error) against log(k): −½ for an error ∝ 1/√k.
        let (lx, ly): (Vec<f64>, Vec<f64>) = ks
            .iter()
            .zip(&errors)
            .map(|(&k, &e)| ((k as f64).ln(), e.ln()))
            .unzip();
        let (mx, my) = (lx.iter().sum::<f64>() / 4.0, ly.iter().sum::<f64>() / 4.0);
        let slope = lx
            .iter()
            .zip(&ly)
            .map(|(x, y)| (x - mx) * (y - my))
            .sum::<f64>()
            / lx.iter().map(|x| (x - mx).powi(2)).sum::<f64>();
        assert!(
            (-0.62..-0.38).contains(&slope),
            "{projection:?}: errors {errors:?}, slope {slope}"
        );
        assert!(errors[3] < 0.1, "{projection:?}: errors {errors:?}");
    }
}

#[test]
fn projected_cosine_kernels_are_cosines() {
    let (mlp, train) = (model("relu"), data("train"));
    for kind in [KernelKind::Trntk, KernelKind::Gradcos] {
        for projection in [ProjectionKind::Rademacher, ProjectionKind::Kronecker] {
            let spec = FactorSpec {
                kind,
                projection,
                projection_dim: 64,
                seed: 5,
            };
            let k = labelled_kernel(&mlp, (&train.x, Some(&train.y)), None, spec, 5).unwrap();
            assert!(k.normalized && k.projection_dim == 64);
            for i in 0..12 {
                assert!(
                    (k.values[i * 12 + i] - 1.0).abs() < 1e-5,
                    "{kind:?} {projection:?} diagonal"
                );
            }
            assert!(k.values.iter().all(|v| v.abs() <= 1.0 + 1e-5));
        }
    }
}

/// Runs `job` with `checkpoint` and stops it after `blocks` blocks, as an interrupt would.
fn interrupted_after(
    job: &KernelJob,
    checkpoint: &Checkpoint,
    blocks: usize,
) -> Option<KernelFile> {
    let mut done = 0;
    job.run(&CpuBackend::new(), Some(checkpoint), &mut |_| {
        done += 1;
        if done == blocks {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap()
}

#[test]
fn blocks_and_resumed_runs_give_the_one_pass_kernel_exactly() {
    let mlp = Mlp::init(&[6, 20, 20, 5], mscope::backend::Activation::Tanh, 9).unwrap();
    let x = Rng::new(4).vec(37 * 6);
    let against = Rng::new(5).vec(23 * 6);
    for cols in [None, Some(against.as_slice())] {
        for spec in [
            exact(KernelKind::Trntk),
            FactorSpec {
                kind: KernelKind::Pntk,
                projection: ProjectionKind::Kronecker,
                projection_dim: 16,
                seed: 2,
            },
        ] {
            let one_pass = kernel(&mlp, &x, cols, spec, 37);
            if cols.is_none() {
                // Only the upper triangle is computed; the mirror makes it exactly symmetric and
                // equal to the kernel against a copy of the same data.
                for i in 0..37 {
                    for j in 0..37 {
                        assert_eq!(one_pass.values[i * 37 + j], one_pass.values[j * 37 + i]);
                    }
                }
                let against = kernel(&mlp, &x, Some(&x), spec, 37);
                let err = rel_error_f64(&widen(&against.values), &widen(&one_pass.values));
                assert!(err < 1e-6, "square vs against itself: {err:e}");
            }
            for block_rows in [1, 5, 36] {
                let blocked = kernel(&mlp, &x, cols, spec, block_rows);
                assert_eq!(blocked.values, one_pass.values, "block rows {block_rows}");
            }

            let dir = tempfile::tempdir().unwrap();
            let manifest = serde_json::json!({"test": "resume"});
            let job = KernelJob {
                mlp: &mlp,
                rows: &x,
                cols,
                row_labels: None,
                col_labels: None,
                spec,
                block_rows: 8,
                tile_rows: 4,
            };
            let checkpoint = Checkpoint::open(dir.path(), &manifest).unwrap();
            let stopped = interrupted_after(&job, &checkpoint, 3);
            assert!(stopped.is_none(), "an interrupted run returns no kernel");

            let checkpoint = Checkpoint::open(dir.path(), &manifest).unwrap();
            let mut resumed = Vec::new();
            let finished = job
                .run(&CpuBackend::new(), Some(&checkpoint), &mut |b| {
                    resumed.push(b.resumed);
                    ControlFlow::Continue(())
                })
                .unwrap()
                .unwrap();
            assert_eq!(resumed, [true, true, true, false, false]);
            assert_eq!(finished.values, one_pass.values);

            let other = serde_json::json!({"test": "other settings"});
            let err = Checkpoint::open(dir.path(), &other).err().unwrap();
            assert!(err.to_string().contains("different kernel run"), "{err}");
        }
    }
}

/// Naive f64 reference of `ntk_contract`.
fn contract_reference(
    dr: &[f32],
    dc: &[f32],
    p: usize,
    acts: Option<(&[f32], &[f32], usize)>,
    offset: f64,
    nr: usize,
    nc: usize,
) -> Vec<f64> {
    let dot = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| *x as f64 * *y as f64)
            .sum::<f64>()
    };
    let mut out = vec![0.0; nr * nc];
    for i in 0..nr {
        for j in 0..nc {
            let g = dot(&dr[i * p..(i + 1) * p], &dc[j * p..(j + 1) * p]);
            out[i * nc + j] = match acts {
                Some((ar, ac, q)) => {
                    g * (dot(&ar[i * q..(i + 1) * q], &ac[j * q..(j + 1) * q]) + offset)
                }
                None => g,
            };
        }
    }
    out
}

/// wgpu with a storage-binding cap of 8 KiB, so every operand is held in parts of a few rows (one
/// row each for the projection input), with both contraction variants.
#[test]
fn wgpu_ntk_ops_run_on_split_operands() {
    for variant in [GemmVariant::Tiled, GemmVariant::Direct] {
        let options = WgpuOptions {
            max_binding_bytes: Some(8 << 10),
            gemm: Some(variant),
            ..WgpuOptions::from_env()
        };
        let Some(be) = wgpu_with(&options) else {
            return;
        };
        ntk_ops_match_the_reference(&be);
    }
}

/// Both ntk ops against f64 references, at sizes that are not multiples of a 64×64 tile or of a
/// 16-deep slab: contraction with and without activations, over column ranges, with several
/// offsets, into a seeded (not zero) output; projection of both distributions, overwriting a
/// NaN-poisoned output or accumulating, with column offsets that cross 2³² (the shaders emulate
/// u64 arithmetic).
fn ntk_ops_match_the_reference(be: &dyn Backend) {
    let mut rng = Rng::new(21);
    let up = |v: &[f32], r: usize, c: usize| be.upload(&[r, c], v).unwrap();
    for (nr, nc, p, q) in [(13, 29, 37, 19), (70, 131, 21, 45)] {
        let (dr, dc, ar, ac) = (
            rng.vec(nr * p),
            rng.vec(nc * p),
            rng.vec(nr * q),
            rng.vec(nc * q),
        );
        for (with_acts, cols, offset) in [
            (true, 0..nc, 1.0),
            (false, 0..nc, 0.0),
            (true, 5..nc - 3, 0.5),
            (true, nc - 2..nc, -0.25),
        ] {
            let m = cols.len();
            let start = rng.vec(nr * m);
            let mut out = up(&start, nr, m);
            let (tar, tac) = (up(&ar, nr, q), up(&ac, nc, q));
            let acts = with_acts.then_some((&tar, &tac));
            be.ntk_contract(
                &up(&dr, nr, p),
                &up(&dc, nc, p),
                acts,
                offset,
                cols.clone(),
                &mut out,
            )
            .unwrap();
            let full = contract_reference(
                &dr,
                &dc,
                p,
                with_acts.then_some((&ar[..], &ac[..], q)),
                offset as f64,
                nr,
                nc,
            );
            let want: Vec<f64> = (0..nr)
                .flat_map(|i| cols.clone().map(move |j| (i, j)))
                .zip(&start)
                .map(|((i, j), s)| full[i * nc + j] + *s as f64)
                .collect();
            let err = rel_error_f64(&widen(&be.download(&out).unwrap()), &want);
            assert!(
                err < 1e-5,
                "{} ntk_contract {nr}×{nc} (acts {with_acts}, offset {offset}, columns \
                 {cols:?}): {err:e}",
                be.name()
            );
        }
    }

    // d = 1500 spans two of the CPU's generation tiles.
    for (n, d, k, column_offset) in [(7, 1500, 33, 100), (70, 301, 65, (1u64 << 32) - 150)] {
        let x = rng.vec(n * d);
        for distribution in [JlDistribution::Rademacher, JlDistribution::Gaussian] {
            let spec = JlSpec {
                seed: 3 + (1 << 40),
                dim: k,
                distribution,
                column_offset,
            };
            for accumulate in [false, true] {
                let start = if accumulate {
                    rng.vec(n * k)
                } else {
                    vec![f32::NAN; n * k]
                };
                let mut out = up(&start, n, k);
                be.jl_project(&up(&x, n, d), &spec, accumulate, &mut out)
                    .unwrap();
                let mut want = vec![0.0f64; n * k];
                for i in 0..n {
                    for j in 0..k {
                        let base = if accumulate {
                            start[i * k + j] as f64
                        } else {
                            0.0
                        };
                        want[i * k + j] = base
                            + (0..d)
                                .map(|c| x[i * d + c] as f64 * spec.entry(j, c) as f64)
                                .sum::<f64>();
                    }
                }
                let err = rel_error_f64(&widen(&be.download(&out).unwrap()), &want);
                assert!(
                    err < 1e-5,
                    "{} jl_project {distribution:?} {n}×{d}→{k} (accumulate {accumulate}, \
                     column offset {column_offset}): {err:e}",
                    be.name()
                );
            }
        }
    }
}

#[test]
fn jl_entries_have_the_right_moments() {
    for distribution in [JlDistribution::Rademacher, JlDistribution::Gaussian] {
        let spec = JlSpec {
            seed: 1,
            dim: 1,
            distribution,
            column_offset: 0,
        };
        let values: Vec<f64> = (0..200_000)
            .map(|c| spec.entry(c % 400, c / 400) as f64)
            .collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "{distribution:?}: mean {mean}, var {var}"
        );
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn cli_writes_the_kernel_and_resumes_from_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.safetensors");
    let model = fixture("mlp_relu.safetensors");
    let args = |extra: &[&str]| {
        let mut a = vec!["ntk", "--model", path_str(&model), "--data"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let test = fixture("test.safetensors");
    let train = fixture("train.safetensors");
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        String::from_utf8_lossy(&run_mscope_ok(&a).stdout).to_string()
    };
    let stdout = run(args(&[
        path_str(&test),
        "--against",
        path_str(&train),
        "--kind",
        "trntk0",
        "--block-rows",
        "3",
        "--out",
        path_str(&out),
    ]));
    assert!(stdout.contains("trntk0 7×12"), "{stdout}");
    let k = KernelFile::read(&out).unwrap();
    assert_eq!(
        (
            k.rows,
            k.cols,
            k.kind.as_str(),
            k.normalized,
            k.projection_dim
        ),
        (7, 12, "trntk0", false, 0)
    );
    let err = rel_error_f64(&widen(&k.values), &reference("relu", "trntk0_test"));
    assert!(err < 1e-5, "{err:e}");
    assert!(
        !Checkpoint::dir_for(&out).exists(),
        "the block directory is removed when done"
    );

    // A run that left two finished blocks behind resumes from them.
    let job = KernelJob {
        mlp: &model_from(&model),
        rows: &Dataset::read(&test).unwrap().x,
        cols: Some(&Dataset::read(&train).unwrap().x),
        row_labels: None,
        col_labels: None,
        spec: exact(KernelKind::Trntk),
        block_rows: 3,
        tile_rows: mscope::instruments::ntk::DEFAULT_TILE_ROWS,
    };
    // What `mscope ntk` records for this run (`cli::ntk`'s job manifest and the block rows).
    let manifest = serde_json::json!({
        "command": "ntk", "version": env!("CARGO_PKG_VERSION"), "backend": "cpu",
        "threads": rayon::current_num_threads(),
        "inputs": {
            "model": file_digest(&model).unwrap(),
            "data": file_digest(&test).unwrap(),
            "against": file_digest(&train).unwrap(),
        },
        "tile_rows": mscope::instruments::ntk::DEFAULT_TILE_ROWS, "rows": 7, "cols": 12,
        "square": false,
        "file": { "kind": "trntk", "normalized": true, "projection_dim": 0 },
        "kind": "trntk", "projection": "none", "projection_dim": 0, "seed": 0, "block_rows": 3,
    });
    let checkpoint = Checkpoint::open(&Checkpoint::dir_for(&out), &manifest).unwrap();
    interrupted_after(&job, &checkpoint, 2);
    let stdout = run(args(&[
        path_str(&test),
        "--against",
        path_str(&train),
        "--backend",
        "cpu",
        "--block-rows",
        "3",
        "--out",
        path_str(&out),
    ]));
    assert!(stdout.contains("6 rows resumed"), "{stdout}");
    let k = KernelFile::read(&out).unwrap();
    let err = rel_error_f64(&widen(&k.values), &reference("relu", "trntk_test"));
    assert!(err < 1e-5, "{err:e}");
}

fn model_from(path: &Path) -> Mlp {
    Mlp::read(path).unwrap()
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.safetensors");
    let out = path_str(&out);
    let model = fixture("mlp_tanh.safetensors");
    let model = path_str(&model);
    let train = fixture("train.safetensors");
    let train = path_str(&train);

    // Model/data dimension mismatch.
    let wide = dir.path().join("wide.safetensors");
    Dataset::new(vec![0.5; 4 * 6], 6, vec![0, 1, 2, 0])
        .unwrap()
        .write(&wide)
        .unwrap();
    assert_fails_cleanly(
        &[
            "ntk",
            "--model",
            model,
            "--data",
            path_str(&wide),
            "--out",
            out,
        ],
        &["wide.safetensors", "6 features", "takes 5"],
    );
    // Labels out of range of the model's 3 classes.
    let labels = dir.path().join("labels.safetensors");
    Dataset::new(vec![0.5; 2 * 5], 5, vec![0, 3])
        .unwrap()
        .write(&labels)
        .unwrap();
    assert_fails_cleanly(
        &[
            "ntk",
            "--model",
            model,
            "--data",
            path_str(&labels),
            "--out",
            out,
        ],
        &["label 3 of row 1", "3 classes"],
    );
    // Unknown activation: the same file with its metadata value swapped (same length, so the
    // header stays valid).
    let bytes = std::fs::read(model).unwrap();
    let at = bytes.windows(6).position(|w| w == b"\"tanh\"").unwrap();
    let mut swapped = bytes.clone();
    swapped[at..at + 6].copy_from_slice(b"\"swsh\"");
    let swsh = dir.path().join("swsh.safetensors");
    std::fs::write(&swsh, swapped).unwrap();
    assert_fails_cleanly(
        &[
            "ntk",
            "--model",
            path_str(&swsh),
            "--data",
            train,
            "--out",
            out,
        ],
        &["swsh.safetensors", "unknown activation `swsh`"],
    );
    // Projection dimension 0.
    assert_fails_cleanly(
        &[
            "ntk",
            "--model",
            model,
            "--data",
            train,
            "--projection",
            "kronecker",
            "--out",
            out,
        ],
        &["--projection-dim"],
    );
    // Zero block rows.
    assert_fails_cleanly(
        &[
            "ntk",
            "--model",
            model,
            "--data",
            train,
            "--block-rows",
            "0",
            "--out",
            out,
        ],
        &["--block-rows"],
    );
    assert!(!Path::new(out).exists(), "a failed run leaves no output");
    assert!(
        !Checkpoint::dir_for(Path::new(out)).exists(),
        "nor a block directory"
    );
}

/// `mscope ntk --backend wgpu` against `--backend cpu` on the fixtures: exact kernels (test ×
/// train, and a square kernel in blocks, whose tiles contract column ranges) and projected ones
/// (dense Gaussian and Kronecker JL, whose factors are projected on the chosen backend).
#[test]
fn cli_wgpu_kernels_equal_cpu() {
    if wgpu_with(&WgpuOptions::from_env()).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (test, train) = (fixture("test.safetensors"), fixture("train.safetensors"));
    let cases: [(&str, &[&str]); 6] = [
        (
            "tanh",
            &["--data", path_str(&test), "--against", path_str(&train)],
        ),
        ("relu", &["--data", path_str(&train), "--block-rows", "5"]),
        (
            "gelu",
            &[
                "--data",
                path_str(&test),
                "--against",
                path_str(&train),
                "--projection",
                "gaussian",
                "--projection-dim",
                "70",
                "--seed",
                "5",
            ],
        ),
        (
            "sigmoid",
            &[
                "--data",
                path_str(&train),
                "--kind",
                "trntk0",
                "--projection",
                "kronecker",
                "--projection-dim",
                "17",
            ],
        ),
        (
            "tanh",
            &[
                "--data",
                path_str(&test),
                "--against",
                path_str(&train),
                "--kind",
                "gradcos",
            ],
        ),
        ("gelu", &["--data", path_str(&train), "--kind", "embedding"]),
    ];
    for (act, args) in cases {
        let model = fixture(&format!("mlp_{act}.safetensors"));
        let kernel_on = |backend: &str| {
            let out = dir.path().join(format!("{act}-{backend}.safetensors"));
            let mut a = vec!["ntk", "--model", path_str(&model), "--backend", backend];
            a.extend_from_slice(args);
            a.extend_from_slice(&["--out", path_str(&out)]);
            run_mscope_ok(&a);
            KernelFile::read(&out).unwrap()
        };
        let (cpu, gpu) = (kernel_on("cpu"), kernel_on("wgpu"));
        assert_eq!((gpu.rows, gpu.cols), (cpu.rows, cpu.cols));
        // The baselines against torch.func through the command line (labels read from the
        // files: the rows' for the rows, --against's for the columns).
        if let Some(kind) = args
            .iter()
            .position(|&a| a == "--kind")
            .map(|i| args[i + 1])
        {
            if kind == "gradcos" || kind == "embedding" {
                let name = match cpu.rows {
                    7 => format!("{kind}_test"),
                    _ => kind.to_string(),
                };
                let err = rel_error_f64(&widen(&cpu.values), &reference(act, &name));
                assert!(err < 1e-5, "{act} {name} from the CLI: {err:e}");
            }
        }
        let err = rel_error_f64(&widen(&gpu.values), &widen(&cpu.values));
        assert!(err < 1e-5, "{act} {args:?}: wgpu against cpu {err:e}");
    }
}
