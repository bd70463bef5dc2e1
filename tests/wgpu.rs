//! wgpu-specific behaviour the shared parity tests cannot reach: tables split across storage
//! bindings, both GEMM variants, both row reductions of the norm family (subgroups and shared
//! memory), adapter selection and tensors handed to the wrong backend.
//! Tests that need an adapter report themselves skipped when there is none.

mod common;

use std::sync::Arc;

use common::{
    current_test, fixture_texts, poisoned, rel_error, repo_path, report_skip, upload, wgpu_with,
    Rng,
};
use half::{bf16, f16};
use mscope::backend::cpu::CpuBackend;
use mscope::backend::wgpu::{list_adapters, WgpuBackend, WgpuOptions};
use mscope::backend::{
    self, Activation, AttentionSpec, Backend, BackendKind, GemmVariant, Matrix64, OpFamily,
    RopeSpec, SeqFactors, SeqLayout, TokenPairing, TrimReference, TrimSpec, W2Grid,
};
use mscope::bench::cases::reference;
use mscope::instruments::embed::{EncoderOptions, SentenceEncoder};
use mscope::tensor::DType;

/// The wgpu backend with `options`, or `None` after reporting the running test skipped.
fn open(options: WgpuOptions) -> Option<WgpuBackend> {
    wgpu_with(&options)
}

/// Reports the running test skipped on wgpu for `reason` (an adapter feature it lacks).
fn skip(reason: &str) {
    report_skip(&current_test(), "wgpu", reason);
}

#[test]
fn gather_reads_a_table_split_across_bindings() {
    // Parts of 7 rows; the output (7 rows) just fits in one binding.
    let (rows, d, part_rows) = (41, 19, 7);
    let Some(be) = open(WgpuOptions {
        max_binding_bytes: Some((part_rows * d * 4) as u64),
        ..Default::default()
    }) else {
        return;
    };
    let mut rng = Rng::new(11);
    let table = rng.vec(rows * d);
    // Part edges and every part, out of order; the last part holds 6 rows.
    let ids = [40, 0, 13, 7, 27, 14, 35];
    let n = ids.len();
    let t = be.upload(&[rows, d], &table).unwrap();
    assert_eq!(be.download(&t).unwrap(), table, "split table round trip");

    let base = rng.vec(n * d);
    let mut out = poisoned(&be, &[n, d]);
    be.gather_rows(&t, &ids, false, &mut out).unwrap();
    let copied: Vec<f32> = (0..n * d)
        .map(|i| table[ids[i / d] as usize * d + i % d])
        .collect();
    assert_eq!(be.download(&out).unwrap(), copied, "gather from parts");

    let mut acc = be.upload(&[n, d], &base).unwrap();
    be.gather_rows(&t, &ids, true, &mut acc).unwrap();
    let summed: Vec<f32> = copied.iter().zip(&base).map(|(c, b)| c + b).collect();
    assert_eq!(be.download(&acc).unwrap(), summed, "accumulate from parts");

    // Other ops need one binding and say so instead of reading part of the tensor.
    let ones = be.upload(&[d], &vec![1.0; d]).unwrap();
    let mut split = be.upload(&[rows, d], &table).unwrap();
    let err = be.layer_norm(&mut split, &ones, &ones, 1e-5).unwrap_err();
    assert!(err.to_string().contains("split into 6 buffers"), "{err}");
}

/// Every GEMM variant, on f32 weights and on f16 ones. The f16 reference uses the same rounded
/// weights (widening is exact), so the f32 paths' 1e-5 holds for both.
#[test]
fn every_gemm_variant_matches_f64() {
    for variant in WgpuBackend::GEMM_VARIANTS {
        let f16_weights = variant.f16_weights();
        let Some(be) = open(WgpuOptions {
            gemm: Some(variant),
            ..Default::default()
        }) else {
            return;
        };
        if f16_weights && !be.keeps_f16() {
            skip(&format!(
                "{variant:?} on f16 weights: the adapter has no SHADER_F16"
            ));
            continue;
        }
        let mut rng = Rng::new(12);
        for (n, k, m) in [(1, 1, 1), (64, 16, 64), (130, 70, 97)] {
            let (x, mut w, b, r) = (rng.vec(n * k), rng.vec(m * k), rng.vec(m), rng.vec(n * m));
            let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let wt = if f16_weights {
                w = w16.iter().map(|v| v.to_f32()).collect();
                let wt = be.upload_f16(&[m, k], &w16).unwrap();
                assert_eq!(wt.dtype(), DType::F16);
                wt
            } else {
                be.upload(&[m, k], &w).unwrap()
            };
            let want: Vec<f32> = (0..n * m)
                .map(|idx| {
                    let (i, j) = (idx / m, idx % m);
                    let dot: f64 = (0..k)
                        .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                        .sum();
                    let v = dot + b[j] as f64;
                    let gelu = 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
                    (gelu + r[idx] as f64) as f32
                })
                .collect();
            let mut out = poisoned(&be, &[n, m]);
            be.linear(
                &upload(&be, &[n, k], &x),
                &wt,
                Some(&upload(&be, &[m], &b)),
                Activation::Gelu,
                Some(&upload(&be, &[n, m], &r)),
                &mut out,
            )
            .unwrap();
            let err = rel_error(&be.download(&out).unwrap(), &want);
            assert!(
                err < 1e-5,
                "{variant:?} f16 weights {f16_weights} {n}x{k}x{m}: relative error {err:e}"
            );
        }
    }
}

/// `linear` on a weight larger than one storage binding, held in uneven parts of whole rows and
/// dispatched once per part: every epilogue (each activation, with and without bias and
/// residual), every kernel, f32 and f16 weights. Each output's reduction is the unsplit one, so
/// the result equals the unsplit weight's bit for bit, and the CPU's on the same (rounded)
/// weights within the f32 paths' 1e-5.
#[test]
fn linear_reads_weights_split_across_bindings() {
    // The weight (f32: 720 000 bytes, f16: 360 000) splits under a 200 KiB binding into parts of
    // 85, 85, 85 and 45 rows (f32) or 170 and 130 (f16): part edges off the 64-column tiles and
    // the 4-column register blocks. x (168 000 bytes) and out (84 000) fit one binding; 70 rows
    // take two row tiles.
    let (n, k, m) = (70, 600, 300);
    let cap = 200 << 10;
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(31);
    let (x, w, b, r) = (rng.vec(n * k), rng.vec(m * k), rng.vec(m), rng.vec(n * m));
    let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    for variant in WgpuBackend::GEMM_VARIANTS {
        let options = WgpuOptions {
            gemm: Some(variant),
            ..Default::default()
        };
        let (Some(split), Some(whole)) = (
            open(WgpuOptions {
                max_binding_bytes: Some(cap),
                ..options.clone()
            }),
            open(options),
        ) else {
            return;
        };
        let f16_weights = variant.f16_weights();
        if f16_weights && !split.keeps_f16() {
            skip(&format!(
                "{variant:?} on f16 weights: the adapter has no SHADER_F16"
            ));
            continue;
        }
        let upload_weight = |be: &dyn Backend| {
            if f16_weights {
                be.upload_f16(&[m, k], &w16).unwrap()
            } else {
                be.upload(&[m, k], &w).unwrap()
            }
        };
        let split_w = upload_weight(&split);
        let parts = if f16_weights {
            vec![170, 130]
        } else {
            vec![85, 85, 85, 45]
        };
        assert_eq!(split.part_rows(&split_w).unwrap(), parts, "{variant:?}");
        let whole_w = upload_weight(&whole);
        assert_eq!(whole.part_rows(&whole_w).unwrap(), [m], "{variant:?}");
        let cpu_w = upload_weight(&cpu);
        for act in Activation::ALL {
            for (with_bias, with_residual) in
                [(false, false), (true, false), (false, true), (true, true)]
            {
                let run = |be: &dyn Backend, weight: &mscope::backend::Tensor| {
                    let bias = with_bias.then(|| upload(be, &[m], &b));
                    let residual = with_residual.then(|| upload(be, &[n, m], &r));
                    let mut out = poisoned(be, &[n, m]);
                    be.linear(
                        &upload(be, &[n, k], &x),
                        weight,
                        bias.as_ref(),
                        act,
                        residual.as_ref(),
                        &mut out,
                    )
                    .unwrap();
                    be.download(&out).unwrap()
                };
                let what = format!("{variant:?} {act:?} bias {with_bias} residual {with_residual}");
                let got = run(&split, &split_w);
                assert_eq!(got, run(&whole, &whole_w), "{what}: split vs unsplit");
                let err = rel_error(&got, &run(&cpu, &cpu_w));
                assert!(err < 1e-5, "{what}: relative error {err:e} against the CPU");
            }
        }
    }
}

#[test]
fn norm_family_matches_f64_with_and_without_subgroups() {
    for subgroups in [true, false] {
        let Some(be) = open(WgpuOptions {
            subgroups,
            ..Default::default()
        }) else {
            return;
        };
        let variant = if subgroups { "subgroup" } else { "shared" };
        if subgroups && !be.subgroup_norms() {
            skip(&format!(
                "subgroup norms: {} offers no subgroups",
                be.adapter_info().name
            ));
            continue;
        }
        assert_eq!(
            be.subgroup_norms(),
            subgroups,
            "{variant} variant not chosen"
        );
        let mut rng = Rng::new(13);
        // One column, under one workgroup, exactly one, and four strides and a bit.
        for (n, d) in [(3, 1), (13, 67), (5, 256), (4, 1031)] {
            let x: Vec<f32> = rng.vec(n * d).iter().map(|v| v + 2.0).collect();
            let (g, b) = (rng.vec(d), rng.vec(d));
            let (gt, bt) = (be.upload(&[d], &g).unwrap(), be.upload(&[d], &b).unwrap());
            let eps = 1e-5;
            let to_f32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<_>>();

            let mut t = be.upload(&[n, d], &x).unwrap();
            be.layer_norm(&mut t, &gt, &bt, eps as f32).unwrap();
            let want = to_f32(reference::layer_norm(&x, &g, &b, eps));
            let err = rel_error(&be.download(&t).unwrap(), &want);
            assert!(err < 1e-5, "{variant} layer_norm {n}x{d}: {err:e}");

            let t = be.upload(&[n, d], &x).unwrap();
            let mut normed = be.upload(&[n, d], &vec![f32::NAN; n * d]).unwrap();
            be.rms_norm(&t, &gt, eps as f32, &mut normed).unwrap();
            let want = to_f32(reference::rms_norm(&x, &g, eps));
            let err = rel_error(&be.download(&normed).unwrap(), &want);
            assert!(err < 1e-5, "{variant} rms_norm {n}x{d}: {err:e}");

            let mut t = be.upload(&[n, d], &x).unwrap();
            be.l2_normalize(&mut t).unwrap();
            let widened: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let want = to_f32(reference::l2_normalize(&widened, d));
            let err = rel_error(&be.download(&t).unwrap(), &want);
            assert!(err < 1e-5, "{variant} l2_normalize {n}x{d}: {err:e}");
        }
    }
}

#[test]
fn f16_tensors_round_trip_and_other_ops_refuse_them() {
    let Some(be) = open(WgpuOptions::default()) else {
        return;
    };
    if !be.keeps_f16() {
        skip("the adapter has no SHADER_F16, so f16 uploads are widened to f32");
        return;
    }
    let mut rng = Rng::new(13);
    let (n, d) = (5, 7);
    let values: Vec<f16> = rng.vec(n * d).iter().map(|&v| f16::from_f32(v)).collect();
    let wide: Vec<f32> = values.iter().map(|v| v.to_f32()).collect();
    let t = be.upload_f16(&[n, d], &values).unwrap();
    assert_eq!(t.dtype(), DType::F16);
    assert_eq!(be.download(&t).unwrap(), wide, "f16 round trip");

    // bf16 in f16's range becomes f16; a value beyond it keeps the tensor f32.
    let small: Vec<bf16> = wide.iter().map(|&v| bf16::from_f32(v)).collect();
    assert_eq!(be.upload_bf16(&[n, d], &small).unwrap().dtype(), DType::F16);
    let mut large = small.clone();
    large[3] = bf16::from_f32(1e6);
    let t_large = be.upload_bf16(&[n, d], &large).unwrap();
    assert_eq!(t_large.dtype(), DType::F32);
    assert_eq!(be.download(&t_large).unwrap()[3], large[3].to_f32());

    // An odd number of f16s per row, split into parts of 4 rows and 1 (14 bytes, padded to 16),
    // then gathered from both parts into an output that fits one binding.
    let split = open(WgpuOptions {
        max_binding_bytes: Some((2 * d * 4) as u64),
        ..Default::default()
    })
    .unwrap();
    let t_split = split.upload_f16(&[n, d], &values).unwrap();
    assert_eq!(
        split.download(&t_split).unwrap(),
        wide,
        "split f16 round trip"
    );
    let ids = [4, 1];
    let mut rows = split.zeros(&[ids.len(), d]).unwrap();
    split.gather_rows(&t_split, &ids, false, &mut rows).unwrap();
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| wide[i as usize * d..(i as usize + 1) * d].to_vec())
        .collect();
    assert_eq!(
        split.download(&rows).unwrap(),
        want,
        "gather from f16 parts"
    );

    // Only linear's weight and gather_rows' table may be f16; anything else says so.
    let x = be.upload(&[n, d], &wide).unwrap();
    let mut out = be.zeros(&[n, n]).unwrap();
    let err = be
        .linear(&t, &x, None, Activation::Identity, None, &mut out)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("linear input: tensor of shape [5, 7] holds F16 values"),
        "{err}"
    );
    let gamma = be.upload_f16(&[d], &values[..d]).unwrap();
    let mut x = be.upload(&[n, d], &wide).unwrap();
    let err = be.layer_norm(&mut x, &gamma, &gamma, 1e-5).unwrap_err();
    assert!(
        err.to_string().contains("layer_norm gamma") && err.to_string().contains("F16"),
        "{err}"
    );
    let mut normed = be.zeros(&[n, d]).unwrap();
    let err = be.rms_norm(&x, &gamma, 1e-5, &mut normed).unwrap_err();
    assert!(
        err.to_string().contains("rms_norm gamma") && err.to_string().contains("F16"),
        "{err}"
    );
    let spec = RopeSpec {
        heads: 1,
        kv_heads: 1,
        head_dim: 2,
    };
    let table = be.zeros(&[n, 1, 2]).unwrap();
    let mut qkv = be.upload_f16(&[n, 6], &values[..n * 6]).unwrap();
    let err = be
        .rope(&mut qkv, &SeqLayout::from_lengths([n]), &spec, &table)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("rope qkv: tensor of shape [5, 6] holds F16 values"),
        "{err}"
    );
    let mut rows = be.upload_f16(&[2, d], &values[..2 * d]).unwrap();
    let err = be.gather_rows(&x, &[0, 4], false, &mut rows).unwrap_err();
    assert!(
        err.to_string()
            .contains("gather output: tensor of shape [2, 7] holds F16 values"),
        "{err}"
    );
}

#[test]
fn auto_never_opens_a_software_adapter() {
    let hardware = list_adapters()
        .iter()
        .any(|a| a.device_type != "Cpu" && a.backend != "Gl");
    let auto = backend::open(BackendKind::Auto, OpFamily::Encoder).unwrap();
    assert_eq!(auto.name(), if hardware { "wgpu" } else { "cpu" });
}

#[test]
fn unknown_adapter_name_is_reported_unavailable() {
    let err = WgpuBackend::open(&WgpuOptions {
        adapter: Some("no-such-adapter".into()),
        ..Default::default()
    })
    .err()
    .expect("no adapter is called that");
    assert!(
        err.to_string().starts_with("wgpu backend unavailable"),
        "{err}"
    );
}

#[test]
fn tensors_are_refused_by_other_backends() {
    let Some(be) = open(WgpuOptions::default()) else {
        return;
    };
    let cpu = backend::open(BackendKind::Cpu, OpFamily::Encoder).unwrap();
    let on_gpu = be.upload(&[2, 3], &[1.0; 6]).unwrap();
    let on_cpu = cpu.upload(&[2, 3], &[1.0; 6]).unwrap();

    let err = cpu.download(&on_gpu).unwrap_err();
    assert!(
        err.to_string().contains("lives on the wgpu backend"),
        "{err}"
    );
    let err = be.download(&on_cpu).unwrap_err();
    assert!(
        err.to_string().contains("lives on the cpu backend"),
        "{err}"
    );

    let other = open(WgpuOptions::default()).unwrap();
    let err = other.download(&on_gpu).unwrap_err();
    assert!(err.to_string().contains("another wgpu device"), "{err}");
}

#[test]
fn device_timer_spans_the_passes_issued_while_it_runs() {
    let Some(be) = open(WgpuOptions::default()) else {
        return;
    };
    if !be.start_device_timer().unwrap() {
        skip("the adapter has no timestamp queries");
        return;
    }
    let (n, k, m) = (96, 80, 72);
    let mut rng = Rng::new(5);
    let x = be.upload(&[n, k], &rng.vec(n * k)).unwrap();
    let w = be.upload(&[m, k], &rng.vec(m * k)).unwrap();
    let mut out = be.zeros(&[n, m]).unwrap();
    let host = std::time::Instant::now();
    for _ in 0..3 {
        be.linear(&x, &w, None, Activation::Gelu, None, &mut out)
            .unwrap();
    }
    let device = be.stop_device_timer().unwrap().expect("three timed passes");
    let host = host.elapsed().as_secs_f64();
    // The device interval lies inside the host's (recording started after the host clock, the
    // wait ended before it was read); a unit error (ticks, µs) would break either bound.
    assert!(
        device > 0.0 && device <= host,
        "device {device} s, host {host} s"
    );

    // Nothing issued: no device time rather than a zero.
    assert!(be.start_device_timer().unwrap());
    assert_eq!(be.stop_device_timer().unwrap(), None);
    // Without a running timer, stopping only waits.
    assert_eq!(be.stop_device_timer().unwrap(), None);

    // A region whose op ran on the host too (the eigen solve is faer's) has no device time,
    // though its passes have timestamps; the next region has again.
    assert!(be.start_device_timer().unwrap());
    be.linear(&x, &w, None, Activation::Gelu, None, &mut out)
        .unwrap();
    be.symmetric_eigen(&[Matrix64::zeros(3, 3)]).unwrap();
    assert_eq!(be.stop_device_timer().unwrap(), None);
    assert!(be.start_device_timer().unwrap());
    be.linear(&x, &w, None, Activation::Gelu, None, &mut out)
        .unwrap();
    assert!(be.stop_device_timer().unwrap().is_some());
}

#[test]
fn trim_search_sorts_long_rows_in_batches_and_equals_the_cpu() {
    // A 256 KiB binding holds the (lt, le) counts of 4 rows of 8 192 (5 000 points padded): the
    // 9 candidates run in 3 batches. The rows and the 10 010-point pool (16 384 padded) are longer
    // than the 2 048-key tile, so their sorts take the global strides too.
    let Some(be) = open(WgpuOptions {
        max_binding_bytes: Some(256 << 10),
        ..Default::default()
    }) else {
        return;
    };
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(23);
    let lengths = [1, 2, 3, 700, 2048, 2049, 5000, 17, 190];
    // Coarse values give ties within and across rows; ±0 must compare equal.
    let rows = rng.tied_samples(&lengths);
    let views: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
    let reference: Vec<f32> = (0..3001).map(|_| rng.normal() as f32).collect();
    for (reference, grid) in [
        (TrimReference::Sample(&reference), W2Grid::Merged),
        (TrimReference::LeaveOneOut, W2Grid::Merged),
        (TrimReference::LeaveOneOut, W2Grid::Candidate),
    ] {
        for w2_alpha in [None, Some(0.1)] {
            let spec = TrimSpec {
                level: 0.05,
                w2_alpha,
                w2_grid: grid,
            };
            let want = cpu.trim_search(&views, reference, &spec).unwrap();
            let got = be.trim_search(&views, reference, &spec).unwrap();
            // Integer counts and the same sorted values: the results are the CPU's, bit for bit.
            assert_eq!(got, want, "{reference:?} {spec:?}");
        }
    }

    // A pool that cannot fit one binding is refused with the sizes.
    let long = vec![1.0f32; 40_000];
    let err = be
        .trim_search(&[&long, &long], TrimReference::LeaveOneOut, &SPEC_05)
        .unwrap_err();
    assert!(
        err.to_string().contains("exceed one storage binding"),
        "{err}"
    );
}

const SPEC_05: TrimSpec = TrimSpec {
    level: 0.05,
    w2_alpha: None,
    w2_grid: W2Grid::Auto,
};

#[test]
fn attention_runs_to_llvmpipes_loop_limit_and_refuses_past_it() {
    let Some(be) = open(WgpuOptions::default()) else {
        return;
    };
    if be.adapter_info().driver != "llvmpipe" {
        return skip("the loop limit is llvmpipe's");
    }
    // At head_dim 64 the host's bound admits 4 832 causal tokens and refuses 4 848; the longest
    // admitted sequence must still be computed in full (a limiter that cut the key loop short
    // would leave the last queries' outputs wrong).
    let spec = AttentionSpec {
        causal: true,
        ..AttentionSpec::bidirectional(1, 64)
    };
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(31);
    for (len, admitted) in [(4832, true), (4848, false)] {
        let layout = SeqLayout::from_lengths([len]);
        let qkv = rng.vec(len * spec.qkv_width());
        let mut out = poisoned(&be, &[len, 64]);
        let result = be.attention(&upload(&be, &[len, 192], &qkv), &layout, &spec, &mut out);
        if !admitted {
            let err = result.unwrap_err().to_string();
            assert!(
                err.contains("4848 tokens") && err.contains("65535"),
                "{err}"
            );
            continue;
        }
        result.unwrap();
        let mut want = cpu.zeros(&[len, 64]).unwrap();
        cpu.attention(&upload(&cpu, &[len, 192], &qkv), &layout, &spec, &mut want)
            .unwrap();
        let err = rel_error(&be.download(&out).unwrap(), &cpu.download(&want).unwrap());
        assert!(err < 1e-5, "{len} tokens: relative error {err}");
    }
}

#[test]
fn gemm_variants_run_to_llvmpipes_loop_limit_and_refuse_past_it() {
    // The host's bounds admit k = 36 448 on the tiled kernel, 52 427 on the direct one and
    // 419 416 (52 427 steps of 8) on the subgroup one, and refuse one slab (or one step) more;
    // the longest admitted reductions must be summed in full.
    let cases = [
        (GemmVariant::Tiled, 36_448, 36_464),
        (GemmVariant::Direct, 52_427, 52_428),
        (GemmVariant::Subgroup, 419_416, 419_417),
    ];
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(37);
    for (variant, admitted, refused) in cases {
        let Some(be) = open(WgpuOptions {
            gemm: Some(variant),
            ..Default::default()
        }) else {
            return;
        };
        if be.adapter_info().driver != "llvmpipe" {
            return skip("the loop limit is llvmpipe's");
        }
        let (n, m) = (3, 5);
        for k in [admitted, refused] {
            let x = rng.vec(n * k);
            let w = rng.vec(m * k);
            let mut out = poisoned(&be, &[n, m]);
            let (xg, wg) = (upload(&be, &[n, k], &x), upload(&be, &[m, k], &w));
            let result = be.linear(&xg, &wg, None, Activation::Identity, None, &mut out);
            if k == refused {
                let err = result.unwrap_err().to_string();
                assert!(err.contains(&format!("over {k} input features")), "{err}");
                continue;
            }
            result.unwrap();
            let mut want = cpu.zeros(&[n, m]).unwrap();
            let (xc, wc) = (upload(&cpu, &[n, k], &x), upload(&cpu, &[m, k], &w));
            cpu.linear(&xc, &wc, None, Activation::Identity, None, &mut want)
                .unwrap();
            let err = rel_error(&be.download(&out).unwrap(), &cpu.download(&want).unwrap());
            assert!(err < 1e-5, "{variant} k = {k}: relative error {err}");
        }
    }
}

#[test]
fn ntk_seq_ops_run_to_llvmpipes_loop_limit_and_refuse_past_it() {
    // The token-level form's bound is its contraction's: p + q = 36 448 on the tiled kernel and
    // 52 427 on the direct one are admitted, a slab (or a step) more refused. The materialised
    // form loops over a sample's tokens: 52 427 admitted, 52 428 refused. The longest admitted
    // cases must be summed in full.
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(41);
    let q = 448;
    for (variant, admitted, refused) in [
        (GemmVariant::Tiled, 36_448, 36_464),
        (GemmVariant::Direct, 52_427, 52_428),
    ] {
        let Some(be) = open(WgpuOptions {
            gemm: Some(variant),
            ..Default::default()
        }) else {
            return;
        };
        if be.adapter_info().driver != "llvmpipe" {
            return skip("the loop limit is llvmpipe's");
        }
        let layout = SeqLayout::from_lengths([2, 1, 3]);
        let t = layout.num_tokens();
        for depth in [admitted, refused] {
            let p = depth - q;
            let (d, a) = (rng.vec(t * p), rng.vec(t * q));
            let run = |be: &dyn Backend| {
                let (d, a) = (upload(be, &[t, p], &d), upload(be, &[t, q], &a));
                let side = SeqFactors {
                    delta: &d,
                    layout: &layout,
                };
                let pairing = TokenPairing::Linear {
                    rows: &a,
                    cols: &a,
                    offset: 1.0,
                };
                let mut out = be.zeros(&[3, 3]).unwrap();
                be.ntk_contract_seq(side, side, pairing, 0..3, &mut out)
                    .map(|()| be.download(&out).unwrap())
            };
            let result = run(&be);
            if depth == refused {
                let err = result.unwrap_err().to_string();
                assert!(
                    err.contains(&format!(
                        "ntk_contract_seq over {p} gradient and {q} activation"
                    )),
                    "{err}"
                );
                continue;
            }
            let err = rel_error(&result.unwrap(), &run(&cpu).unwrap());
            assert!(
                err < 1e-5,
                "{variant} p + q = {depth}: relative error {err}"
            );
        }
    }

    let Some(be) = open(WgpuOptions::default()) else {
        return;
    };
    if be.adapter_info().driver != "llvmpipe" {
        return skip("the loop limit is llvmpipe's");
    }
    let (p, q) = (2, 1);
    for (tokens, admitted) in [(52_427, true), (52_428, false)] {
        let layout = SeqLayout::from_lengths([1, tokens]);
        let t = layout.num_tokens();
        let (d, a) = (rng.vec(t * p), rng.vec(t * q));
        let run = |be: &dyn Backend| {
            let (d, a) = (upload(be, &[t, p], &d), upload(be, &[t, q], &a));
            let side = SeqFactors {
                delta: &d,
                layout: &layout,
            };
            let mut out = poisoned(be, &[2, p * (q + 1)]);
            be.ntk_sample_gradients(side, &a, 1.0, &mut out)
                .map(|()| be.download(&out).unwrap())
        };
        let result = run(&be);
        if !admitted {
            let err = result.unwrap_err().to_string();
            assert!(err.contains(&format!("a {tokens}-token sample")), "{err}");
            continue;
        }
        let err = rel_error(&result.unwrap(), &run(&cpu).unwrap());
        assert!(err < 1e-5, "{tokens} tokens: relative error {err}");
    }
}

#[test]
fn backward_ops_run_to_llvmpipes_loop_limit_and_refuse_past_it() {
    let Some(be) = open(WgpuOptions::default()) else {
        return;
    };
    if be.adapter_info().driver != "llvmpipe" {
        return skip("the loop limit is llvmpipe's");
    }
    // The host's bounds admit rows of 13 105 for layer_norm_backward, 989 tokens at head_dim 16
    // for attention_backward, 52 427 ids of one row for scatter_rows and sequences of 52 427
    // tokens for sequence_sums, and refuse one more; the longest admitted of each must be
    // computed in full.
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(41);
    let check = |what: &str, got: &mscope::backend::Tensor, want: &mscope::backend::Tensor| {
        let err = rel_error(&be.download(got).unwrap(), &cpu.download(want).unwrap());
        assert!(err < 1e-5, "{what}: relative error {err}");
    };

    let n = 3;
    for (d, admitted) in [(13_105, true), (13_106, false)] {
        let (x, gamma, dy) = (rng.vec(n * d), rng.vec(d), rng.vec(n * d));
        let (mut dx, mut normed) = (poisoned(&be, &[n, d]), poisoned(&be, &[n, d]));
        let result = be.layer_norm_backward(
            &upload(&be, &[n, d], &x),
            &upload(&be, &[d], &gamma),
            1e-5,
            &upload(&be, &[n, d], &dy),
            &mut dx,
            &mut normed,
        );
        if !admitted {
            let err = result.unwrap_err().to_string();
            assert!(err.contains(&format!("rows of {d}")), "{err}");
            continue;
        }
        result.unwrap();
        let (mut want_dx, mut want_normed) =
            (cpu.zeros(&[n, d]).unwrap(), cpu.zeros(&[n, d]).unwrap());
        cpu.layer_norm_backward(
            &upload(&cpu, &[n, d], &x),
            &upload(&cpu, &[d], &gamma),
            1e-5,
            &upload(&cpu, &[n, d], &dy),
            &mut want_dx,
            &mut want_normed,
        )
        .unwrap();
        check("layer_norm_backward dx", &dx, &want_dx);
        check("layer_norm_backward normed", &normed, &want_normed);
    }

    let spec = AttentionSpec::bidirectional(1, 16);
    for (len, admitted) in [(989, true), (990, false)] {
        let layout = SeqLayout::from_lengths([len]);
        let (qkv, d_out) = (rng.vec(len * 48), rng.vec(len * 16));
        let mut d_qkv = poisoned(&be, &[len, 48]);
        let result = be.attention_backward(
            &upload(&be, &[len, 48], &qkv),
            &layout,
            &spec,
            &upload(&be, &[len, 16], &d_out),
            &mut d_qkv,
        );
        if !admitted {
            let err = result.unwrap_err().to_string();
            assert!(err.contains(&format!("over {len} tokens")), "{err}");
            continue;
        }
        result.unwrap();
        let mut want = cpu.zeros(&[len, 48]).unwrap();
        cpu.attention_backward(
            &upload(&cpu, &[len, 48], &qkv),
            &layout,
            &spec,
            &upload(&cpu, &[len, 16], &d_out),
            &mut want,
        )
        .unwrap();
        check("attention_backward", &d_qkv, &want);
    }

    for (count, admitted) in [(52_427, true), (52_428, false)] {
        // Every id names row 1 of a 3-row table; rows 0 and 2 must come out zero.
        let ids = vec![1u32; count];
        let delta = rng.vec(count * 2);
        let mut table = poisoned(&be, &[3, 2]);
        let result = be.scatter_rows(&upload(&be, &[count, 2], &delta), &ids, false, &mut table);
        if !admitted {
            let err = result.unwrap_err().to_string();
            assert!(
                err.contains(&format!("{count} ids naming one row")),
                "{err}"
            );
            continue;
        }
        result.unwrap();
        let mut want = cpu.zeros(&[3, 2]).unwrap();
        cpu.scatter_rows(&upload(&cpu, &[count, 2], &delta), &ids, false, &mut want)
            .unwrap();
        check("scatter_rows", &table, &want);
    }

    for (len, admitted) in [(52_427, true), (52_428, false)] {
        // One long sequence beside a short one, weighted by a second set of rows.
        let layout = SeqLayout::from_lengths([3, len]);
        let tokens = layout.num_tokens();
        let (values, weights) = (rng.vec(tokens * 2), rng.vec(tokens * 2));
        let mut sums = poisoned(&be, &[2, 2]);
        let result = be.sequence_sums(
            &upload(&be, &[tokens, 2], &values),
            Some(&upload(&be, &[tokens, 2], &weights)),
            &layout,
            &mut sums,
        );
        if !admitted {
            let err = result.unwrap_err().to_string();
            assert!(err.contains(&format!("sequences of {len} tokens")), "{err}");
            continue;
        }
        result.unwrap();
        let mut want = cpu.zeros(&[2, 2]).unwrap();
        cpu.sequence_sums(
            &upload(&cpu, &[tokens, 2], &values),
            Some(&upload(&cpu, &[tokens, 2], &weights)),
            &layout,
            &mut want,
        )
        .unwrap();
        check("sequence_sums", &sums, &want);
    }
}

/// `embed` under a lowered storage-binding limit: tiny XLM-R's widest activation is its fused
/// Q/K/V output, 96 f32 values (384 bytes) per token, so a 24 KiB binding holds 64 tokens, and
/// the plan cuts batches of 8 texts of up to 24 tokens where the next text would pass that. The
/// embeddings equal those of the run without the limit (batches of 8) bit for bit: every op
/// works row by row or sequence by sequence, so a row's reductions do not depend on its batch.
/// A text longer than 64 tokens alone is an error that names the --max-length that fits.
#[test]
fn embed_cuts_batches_to_the_storage_binding_limit() {
    const CAP: u64 = 24 << 10;
    let cap_tokens = (CAP / (4 * 96)) as usize;
    let Some(capped) = open(WgpuOptions {
        max_binding_bytes: Some(CAP),
        ..WgpuOptions::from_env()
    }) else {
        return;
    };
    let capped: Arc<dyn Backend> = Arc::new(capped);
    let whole: Arc<dyn Backend> = Arc::new(open(WgpuOptions::from_env()).unwrap());
    let dir = repo_path("tests/fixtures/tiny-xlmr");
    let texts = fixture_texts();
    let options = EncoderOptions {
        max_length: Some(24),
        ..Default::default()
    };
    let split = SentenceEncoder::load(&dir, capped.clone(), &options).unwrap();
    let unsplit = SentenceEncoder::load(&dir, whole, &options).unwrap();

    let plan = split.plan(&texts, 8).unwrap();
    let unsplit_plan = unsplit.plan(&texts, 8).unwrap();
    assert!(
        unsplit_plan.batch_tokens(0) > cap_tokens,
        "the first batch of 8 ({} tokens) must exceed the {cap_tokens} tokens the cap holds",
        unsplit_plan.batch_tokens(0)
    );
    assert!(plan.batches() > unsplit_plan.batches());
    let mut rows: Vec<usize> = (0..plan.batches())
        .flat_map(|b| {
            let tokens = plan.batch_tokens(b);
            assert!(
                tokens <= cap_tokens && plan.batch(b).len() <= 8,
                "batch {b}: {tokens} tokens"
            );
            plan.batch(b).to_vec()
        })
        .collect();
    rows.sort_unstable();
    assert_eq!(
        rows,
        (0..texts.len()).collect::<Vec<_>>(),
        "every text once"
    );

    let got = split.embed(&texts, 8, &mut |_, _| {}).unwrap();
    let want = unsplit.embed(&texts, 8, &mut |_, _| {}).unwrap();
    assert_eq!(got.embeddings, want.embeddings, "split vs unsplit batches");
    assert_eq!(got.tokens, want.tokens);

    // Without --max-length the fixtures' longest text (over 64 tokens) fits no batch.
    let long = SentenceEncoder::load(&dir, capped, &EncoderOptions::default()).unwrap();
    let err = long
        .embed(&texts, 8, &mut |_, _| {})
        .err()
        .expect("a text over the cap")
        .to_string();
    assert!(
        err.contains(&format!("--max-length {cap_tokens} or less")),
        "{err}"
    );
}
