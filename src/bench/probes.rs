//! The machine's ceilings, measured before the cases: what the roofline fractions divide by.
//!
//! - `gemm-f32`, `gemm-f32-panel`: a large square GEMM and a model-shaped one (`k = m = 1024`)
//!   through the backend's `linear` (faer's, variant 7, on the CPU); the faster is the
//!   *achieved* GEMM ceiling (what the best-tuned op of this backend reaches), not the datasheet
//!   peak. The square one alone under-reads it where its 48 MB working set leaves the caches
//!   that model shapes stay in.
//! - `gemm-f64` (CPU): the same with faer in f64, the ceiling of the f64 stats ops.
//! - `gemm-bf16`: the same two shapes through the device's GEMM on bf16 operands (AMX tiles,
//!   AVX512_BF16, tensor cores), where it has one: the ceiling of the cases that run such
//!   kernels, which the f32 one would put far above 100%.
//! - `fma-f32` (CPU, x86-64 with FMA): independent AVX2 FMA chains in registers on every rayon
//!   thread, the nearest to the datasheet peak software gets; reported, not used as a ceiling.
//! - `triad` (CPU): STREAM's `a = b + s·c` on arrays far larger than the caches, on every core;
//!   `copy` (GPUs): `gather_rows` with identity ids, a device-memory copy through a kernel.
//!
//! Each probe reports its best repetition: a ceiling is the fastest the machine was seen to go.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use rayon::prelude::*;

use super::target::Target;
use super::timing::{measure, Timing};
use super::{uniform, Bound, Op, Precision, Scale, Work};
use crate::backend::cpu::CpuBackend;
use crate::backend::{Activation, Backend, GemmVariant};
use crate::error::Result;

/// One probe's figure.
#[derive(Clone, Debug)]
pub struct Probe {
    pub name: &'static str,
    pub shape: String,
    /// Best rate seen, in `unit`.
    pub value: f64,
    pub unit: &'static str,
    /// Whether the roofline fractions use it.
    pub ceiling: bool,
    pub timing: Timing,
}

/// The ceilings the roofline fractions divide by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ceilings {
    pub f32_gflops: f64,
    /// `None` where no f64 ceiling is probed (the GPU backends): their f64 cases then report no
    /// fraction, as a bf16 case without a bf16 ceiling does, rather than one of memory traffic
    /// that their arithmetic, not their bytes, bounds.
    pub f64_gflops: Option<f64>,
    /// `None` where the device has no GEMM on bf16 operands.
    pub bf16_gflops: Option<f64>,
    pub gbps: f64,
}

impl Ceilings {
    /// `(floor / seconds, bound)`: the floor is the larger of the compute time at the FLOP
    /// ceiling of the work's precision and the memory time at the byte ceiling; `None` where
    /// the work's precision has no ceiling here.
    pub fn roofline(&self, work: &Work, seconds: f64) -> Option<(f64, Bound)> {
        let compute = match work.precision {
            Some(Precision::F32) => Some(self.f32_gflops),
            Some(Precision::F64) => Some(self.f64_gflops?),
            Some(Precision::Bf16) => Some(self.bf16_gflops?),
            None => None,
        }
        .map(|gflops| (work.flops / (gflops * 1e9), Bound::Compute));
        let memory = (work.bytes > 0.0).then(|| (work.bytes / (self.gbps * 1e9), Bound::Memory));
        let (floor, bound) = match (compute, memory) {
            (Some(c), Some(m)) => {
                if c.0 >= m.0 {
                    c
                } else {
                    m
                }
            }
            (c, m) => c.or(m)?,
        };
        Some((floor / seconds, bound))
    }
}

/// Runs the probes for `target`'s backend and derives its ceilings.
pub fn run(
    target: &Target,
    scale: Scale,
    warmup: usize,
    repeat: usize,
) -> Result<(Vec<Probe>, Ceilings)> {
    let be = target.backend.as_ref();
    let timed = |op: &mut dyn FnMut() -> Result<()>| measure(be, warmup, repeat, op);
    let mut probes = Vec::new();

    // Quick runs shrink the probes less than the cases: a ceiling needs a working set past the
    // caches and a GEMM large enough to amortise packing (512³ still takes seconds on lavapipe).
    // The CPU's GEMM ceilings are faer's whatever the default variant: the reference GEMM, as
    // in every earlier run, so fractions stay comparable (the packed GEMM is within a few per
    // cent of it on these two shapes).
    let faer = CpuBackend::with_gemm(GemmVariant::Faer);
    let gemm_be: &dyn Backend = if be.name() == "cpu" { &faer } else { be };
    let n = scale.rows(2048, 512);
    let (k, m) = (1024, 1024);
    let bf16_be = target.bf16_gemm_backend();
    let gemms = [
        ("gemm-f32", "gemm-f32-panel", Some(gemm_be)),
        ("gemm-bf16", "gemm-bf16-panel", bf16_be.as_deref()),
    ];
    for (square_name, panel_name, gemm_be) in gemms {
        let Some(gemm_be) = gemm_be else { continue };
        let timed = |op: &mut dyn FnMut() -> Result<()>| measure(gemm_be, warmup, repeat, op);
        let timing = timed(&mut gemm(gemm_be, n, n, n)?)?;
        probes.push(rate(
            square_name,
            format!("{n}³"),
            2.0 * cube(n),
            &timing,
            true,
        ));
        let timing = timed(&mut gemm(gemm_be, n, k, m)?)?;
        probes.push(rate(
            panel_name,
            format!("{n}×{k}·{m}×{k}ᵀ"),
            2.0 * (n * k * m) as f64,
            &timing,
            true,
        ));
    }

    if be.name() == "cpu" {
        let n = scale.rows(1024, 512);
        let timing = timed(&mut gemm_f64(n))?;
        probes.push(rate(
            "gemm-f64",
            format!("{n}³"),
            2.0 * cube(n),
            &timing,
            true,
        ));

        if let Some((flops, mut op)) = fma_f32(scale) {
            let timing = timed(&mut op)?;
            let shape = format!("{} threads", rayon::current_num_threads());
            probes.push(rate("fma-f32", shape, flops, &timing, false));
        }

        let len = scale.rows(1 << 24, 1 << 22);
        let timing = timed(&mut triad(len))?;
        probes.push(bandwidth(
            "triad",
            format!("3×{len} f32"),
            12.0 * len as f64,
            &timing,
        ));
    } else {
        let (rows, width) = (scale.rows(8192, 4096), 1024);
        let timing = timed(&mut device_copy(be, rows, width)?)?;
        let bytes = (2 * rows * width * 4 + rows * 4) as f64;
        probes.push(bandwidth(
            "copy",
            format!("{rows}×{width} f32"),
            bytes,
            &timing,
        ));
    }

    let value = |name: &str| probes.iter().find(|p| p.name == name).map(|p| p.value);
    let faster = |square: &str, panel: &str| {
        value(square)
            .zip(value(panel))
            .map(|(square, panel)| square.max(panel))
    };
    let ceilings = Ceilings {
        f32_gflops: faster("gemm-f32", "gemm-f32-panel").expect("both always probed"),
        f64_gflops: value("gemm-f64"),
        bf16_gflops: faster("gemm-bf16", "gemm-bf16-panel"),
        gbps: value("triad")
            .or_else(|| value("copy"))
            .expect("one bandwidth probe always runs"),
    };
    Ok((probes, ceilings))
}

fn cube(n: usize) -> f64 {
    (n as f64).powi(3)
}

fn rate(name: &'static str, shape: String, flops: f64, timing: &Timing, ceiling: bool) -> Probe {
    Probe {
        name,
        shape,
        value: flops / timing.min() / 1e9,
        unit: "GFLOP/s",
        ceiling,
        timing: timing.clone(),
    }
}

fn bandwidth(name: &'static str, shape: String, bytes: f64, timing: &Timing) -> Probe {
    Probe {
        name,
        shape,
        value: bytes / timing.min() / 1e9,
        unit: "GB/s",
        ceiling: true,
        timing: timing.clone(),
    }
}

/// `out[n, m] = x[n, k]·w[m, k]ᵀ` through `linear`, on f32 operands (which a bf16 kernel
/// rounds as it packs or loads them).
fn gemm(be: &dyn Backend, n: usize, k: usize, m: usize) -> Result<impl FnMut() -> Result<()> + '_> {
    let x = be.upload(&[n, k], &uniform(n * k, 1))?;
    let w = be.upload(&[m, k], &uniform(m * k, 2))?;
    let mut out = be.zeros(&[n, m])?;
    Ok(move || be.linear(&x, &w, None, Activation::Identity, None, &mut out))
}

fn gemm_f64(n: usize) -> impl FnMut() -> Result<()> {
    let a = Mat::<f64>::from_fn(n, n, |i, j| ((i * 7 + j * 13) % 17) as f64 - 8.0);
    let b = a.transpose().to_owned();
    let mut c = Mat::<f64>::zeros(n, n);
    move || {
        matmul(
            c.as_mut(),
            Accum::Replace,
            a.as_ref(),
            b.as_ref(),
            1.0,
            Par::rayon(0),
        );
        Ok(())
    }
}

fn triad(len: usize) -> impl FnMut() -> Result<()> {
    let (b, c) = (uniform(len, 3), uniform(len, 4));
    let mut a = vec![0.0f32; len];
    const CHUNK: usize = 1 << 16;
    move || {
        a.par_chunks_mut(CHUNK)
            .zip(b.par_chunks(CHUNK).zip(c.par_chunks(CHUNK)))
            .for_each(|(a, (b, c))| {
                for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
                    *a = b + 3.0 * c;
                }
            });
        Ok(())
    }
}

fn device_copy(
    be: &dyn Backend,
    rows: usize,
    width: usize,
) -> Result<impl FnMut() -> Result<()> + '_> {
    let table = be.upload(&[rows, width], &uniform(rows * width, 5))?;
    let ids: Vec<u32> = (0..rows as u32).collect();
    let mut out = be.zeros(&[rows, width])?;
    Ok(move || be.gather_rows(&table, &ids, false, &mut out))
}

/// FLOPs per run and the op of the FMA probe, where the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
fn fma_f32(scale: Scale) -> Option<(f64, Op)> {
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        return None;
    }
    let iterations = scale.rows(1 << 24, 1 << 21);
    let threads = rayon::current_num_threads();
    let flops = (threads * iterations * fma::FLOPS_PER_ITERATION) as f64;
    let op = move || {
        // SAFETY: AVX2 and FMA were detected above.
        let sums = rayon::broadcast(|_| unsafe { fma::chains(iterations) });
        std::hint::black_box(sums);
        Ok(())
    };
    Some((flops, Box::new(op)))
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_f32(_scale: Scale) -> Option<(f64, Op)> {
    None
}

#[cfg(target_arch = "x86_64")]
mod fma {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_set1_ps, _mm256_storeu_ps,
    };

    /// Independent accumulators: enough to cover two FMA pipes × 4–5 cycles of latency, few
    /// enough to stay in the 16 YMM registers beside the two constants.
    const CHAINS: usize = 12;
    pub const FLOPS_PER_ITERATION: usize = CHAINS * 8 * 2;

    /// `iterations` rounds of one FMA on each of [`CHAINS`] 8-lane accumulators.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn chains(iterations: usize) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc: [__m256; CHAINS] = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iterations {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let total = acc
            .iter()
            .fold(_mm256_set1_ps(0.0), |s, &x| _mm256_add_ps(s, x));
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 f32s; storeu has no alignment requirement.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
        lanes.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roofline_takes_the_ceiling_of_the_works_precision() {
        let mut ceilings = Ceilings {
            f32_gflops: 100.0,
            f64_gflops: Some(50.0),
            bf16_gflops: None,
            gbps: 10.0,
        };
        // 1e9 FLOPs at 100 GFLOP/s: 10 ms floor, against 1e7 bytes at 10 GB/s (1 ms).
        let gemm = Work::f32(1e9, 1e7);
        assert_eq!(ceilings.roofline(&gemm, 0.02), Some((0.5, Bound::Compute)));
        let copy = Work::bytes(1e9);
        assert_eq!(ceilings.roofline(&copy, 0.2), Some((0.5, Bound::Memory)));
        let f64_gemm = Work::f64(1e9, 0.0);
        assert_eq!(
            ceilings.roofline(&f64_gemm, 0.04),
            Some((0.5, Bound::Compute))
        );
        let bf16_gemm = Work {
            precision: Some(Precision::Bf16),
            ..Work::f32(1e9, 1e7)
        };
        assert_eq!(ceilings.roofline(&bf16_gemm, 0.02), None);
        let f64_scatter = Work::f64(1e9, 1e6);
        ceilings.f64_gflops = None;
        assert_eq!(ceilings.roofline(&f64_scatter, 0.04), None);
        ceilings.bf16_gflops = Some(400.0);
        assert_eq!(
            ceilings.roofline(&bf16_gemm, 0.005),
            Some((0.5, Bound::Compute))
        );
    }
}
