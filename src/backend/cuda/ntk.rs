//! The tangent-kernel family on CUDA (kernels/ntk.cu): a layer's Gram contraction in one kernel
//! of the variant the backend was opened with, and the JL projection whose random entries are
//! generated in registers from their counter.

use std::ops::Range;

use cudarc::driver::{DeviceRepr, PushKernelArg};

use super::device::{config, tile_grid, to_i32, unsupported_variant, NULL};
use super::CudaBackend;
use crate::backend::{shapes, JlDistribution, JlSpec, NtkVariant, Tensor};
use crate::error::Result;

/// Must match `JlShape` in kernels/ntk.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct JlShape {
    seed: u64,
    column_offset: u64,
    n: i32,
    d: i32,
    dim: i32,
    /// `JlDistribution` code of ntk.cu.
    distribution: i32,
    accumulate: i32,
    sqrt_dim: f32,
}

// SAFETY: a plain repr(C) struct of scalars, laid out as the kernel's struct.
unsafe impl DeviceRepr for JlShape {}

pub(super) fn ntk_contract(
    be: &CudaBackend,
    delta_rows: &Tensor,
    delta_cols: &Tensor,
    acts: Option<(&Tensor, &Tensor)>,
    offset: f32,
    cols: Range<usize>,
    out: &mut Tensor,
) -> Result<()> {
    let n_r = shapes::ntk_contract(delta_rows, delta_cols, acts, &cols, out)?;
    let n_c = cols.len();
    if n_r == 0 || n_c == 0 {
        return Ok(());
    }
    let p = delta_rows.shape()[1];
    let q = acts.map_or(0, |(a, _)| a.shape()[1]);
    let (nri, nci, pi, qi) = (
        to_i32(n_r, "ntk_contract rows")?,
        to_i32(n_c, "ntk_contract columns")?,
        to_i32(p, "ntk_contract gradient width")?,
        to_i32(q, "ntk_contract activation width")?,
    );
    let (kernel, cfg) = match be.ntk {
        NtkVariant::Naive => (
            "ntk_contract_v1_naive",
            config(tile_grid(n_r, n_c, 16, "ntk_contract")?, (16, 16, 1)),
        ),
        NtkVariant::Tiled => (
            "ntk_contract_v2_tiled",
            config(tile_grid(n_r, n_c, 64, "ntk_contract")?, (256, 1, 1)),
        ),
        other => return Err(unsupported_variant(format!("ntk {}", other.name()))),
    };
    let f = be.function("ntk", kernel)?;
    // The column samples `cols` are a row range of the column factors.
    let dr = be.slice(delta_rows)?;
    // (Open-ended views: a start of 0 stays inside the one-element buffer of a zero width.)
    let dc = be.slice(delta_cols)?.slice(cols.start * p..);
    let acts = match acts {
        Some((ar, ac)) => Some((be.slice(ar)?, be.slice(ac)?.slice(cols.start * q..))),
        None => None,
    };
    let out = be.slice_mut(out)?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(dr).arg(&dc);
    match &acts {
        Some((ar, ac)) => args.arg(*ar).arg(ac),
        None => args.arg(&NULL).arg(&NULL),
    };
    args.arg(out)
        .arg(&nri)
        .arg(&nci)
        .arg(&pi)
        .arg(&qi)
        .arg(&offset);
    be.launch(kernel, &mut args, cfg)
}

pub(super) fn jl_project(
    be: &CudaBackend,
    x: &Tensor,
    spec: &JlSpec,
    accumulate: bool,
    out: &mut Tensor,
) -> Result<()> {
    let (n, d) = shapes::jl_project(x, spec.dim, out)?;
    let shape = JlShape {
        seed: spec.seed,
        column_offset: spec.column_offset,
        n: to_i32(n, "jl_project rows")?,
        d: to_i32(d, "jl_project columns")?,
        dim: to_i32(spec.dim, "jl_project dimension")?,
        // ntk.cu's JL_* codes.
        distribution: match spec.distribution {
            JlDistribution::Rademacher => 0,
            JlDistribution::Gaussian => 1,
        },
        accumulate: accumulate.into(),
        // JlSpec::entry divides by this very f32.
        sqrt_dim: (spec.dim as f32).sqrt(),
    };
    let cfg = config(tile_grid(n, spec.dim, 64, "jl_project")?, (256, 1, 1));
    let f = be.function("ntk", "jl_project_v1")?;
    let x = be.slice(x)?;
    let out = be.slice_mut(out)?;
    let mut args = be.stream().launch_builder(&f);
    args.arg(x).arg(out).arg(&shape);
    be.launch("jl_project_v1", &mut args, cfg)
}

pub(super) fn ntk_contract_seq(
    _be: &CudaBackend,
    _rows: crate::backend::SeqFactors<'_>,
    _cols: crate::backend::SeqFactors<'_>,
    _pairing: crate::backend::TokenPairing<'_>,
    _samples: Range<usize>,
    _out: &mut Tensor,
) -> Result<()> {
    Err(crate::Error::Unsupported {
        backend: "cuda",
        op: "ntk_contract_seq",
    })
}

pub(super) fn ntk_sample_gradients(
    _be: &CudaBackend,
    _factors: crate::backend::SeqFactors<'_>,
    _acts: &Tensor,
    _offset: f32,
    _out: &mut Tensor,
) -> Result<()> {
    Err(crate::Error::Unsupported {
        backend: "cuda",
        op: "ntk_sample_gradients",
    })
}
