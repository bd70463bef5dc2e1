//! The tangent-kernel ops on wgpu (shaders/ntk.wgsl): the fused Gram contraction and the JL
//! projection generated in the shader.
//!
//! Operands larger than one storage binding are held in parts of whole rows (memory.rs), and a
//! grid dimension holds at most `max_workgroups_per_dim` tiles, so each op is dispatched once per
//! pair of row and column ranges that stay inside one part of every operand and inside the grid.

use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use super::device::{direct_loop_iterations, slab_loop_iterations, to_u32};
use super::kernels::Kernel;
use super::memory::WgpuStorage;
use super::WgpuBackend;
use crate::backend::{shapes, GemmVariant, JlDistribution, JlSpec, Tensor};
use crate::error::Result;

/// Output rows and columns per workgroup of every ntk.wgsl entry point (ntk.wgsl `TILE`).
const TILE: usize = 64;

/// ntk.wgsl `ContractParams`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ContractParams {
    rows: u32,
    cols: u32,
    p: u32,
    q: u32,
    dr_row: u32,
    dc_row: u32,
    ar_row: u32,
    ac_row: u32,
    out_row: u32,
    out_col: u32,
    out_stride: u32,
    has_acts: u32,
    offset: f32,
    _pad: [u32; 3],
}

/// ntk.wgsl `JlParams`; u64s as (low, high) word pairs.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct JlParams {
    rows: u32,
    d: u32,
    k: u32,
    x_row: u32,
    out_row: u32,
    accumulate: u32,
    gaussian: u32,
    sqrt_k: f32,
    seed: [u32; 2],
    column_offset: [u32; 2],
}

/// The contraction kernel: the contraction is a pair of GEMMs, so it runs the NTK variant
/// numbered like the backend's GEMM, direct (3) beside the direct GEMM and tiled (2) otherwise.
fn contraction_kernel(gemm: GemmVariant) -> Kernel {
    match gemm {
        GemmVariant::Direct => Kernel::ContractDirect,
        _ => Kernel::ContractTiled,
    }
}

/// `range` cut at every part boundary of `operands` and into pieces of at most `max_len` rows.
fn segments(range: Range<usize>, operands: &[&WgpuStorage], max_len: usize) -> Vec<Range<usize>> {
    let mut pieces = Vec::new();
    let mut start = range.start;
    while start < range.end {
        let end = operands
            .iter()
            .map(|s| {
                let per_part = s.rows_per_part.max(1);
                (start / per_part + 1) * per_part
            })
            .fold(range.end.min(start + max_len), usize::min);
        pieces.push(start..end);
        start = end;
    }
    pieces
}

/// The part of `storage` holding `row` and the row's index inside it.
fn locate(storage: &WgpuStorage, row: usize) -> Result<(&wgpu::Buffer, u32)> {
    let per_part = storage.rows_per_part.max(1);
    Ok((
        &storage.parts[row / per_part],
        to_u32(row % per_part, "row inside a buffer part")?,
    ))
}

/// Rows per dispatch along one grid dimension.
fn max_tiled_rows(backend: &WgpuBackend) -> usize {
    backend.max_workgroups_per_dim as usize * TILE
}

pub(super) fn ntk_contract(
    backend: &WgpuBackend,
    delta_rows: &Tensor,
    delta_cols: &Tensor,
    acts: Option<(&Tensor, &Tensor)>,
    offset: f32,
    cols: Range<usize>,
    out: &mut Tensor,
) -> Result<()> {
    let n_r = shapes::ntk_contract(delta_rows, delta_cols, acts, &cols, out)?;
    let kernel = contraction_kernel(backend.gemm);
    let p = to_u32(delta_rows.shape()[1], "ntk_contract gradient width")?;
    let q = to_u32(
        acts.map_or(0, |(a, _)| a.shape()[1]),
        "ntk_contract activation width",
    )?;
    let depth = (p + q) as usize;
    let iterations = match kernel {
        Kernel::ContractTiled => slab_loop_iterations(depth),
        _ => direct_loop_iterations(depth),
    };
    backend.check_loop_limit(iterations, || {
        format!("ntk_contract over {p} gradient and {q} activation columns")
    })?;
    let (dr, dc, o) = (
        backend.storage(delta_rows)?,
        backend.storage(delta_cols)?,
        backend.storage(out)?,
    );
    let acts = acts
        .map(|(a_r, a_c)| Ok::<_, crate::Error>((backend.storage(a_r)?, backend.storage(a_c)?)))
        .transpose()?;
    let mut row_side = vec![dr, o];
    let mut col_side = vec![dc];
    if let Some((a_r, a_c)) = acts {
        row_side.push(a_r);
        col_side.push(a_c);
    }
    let max_len = max_tiled_rows(backend);
    let out_stride = to_u32(cols.len(), "ntk_contract columns")?;
    for rows in segments(0..n_r, &row_side, max_len) {
        for cs in segments(cols.clone(), &col_side, max_len) {
            let (dr_buf, dr_row) = locate(dr, rows.start)?;
            let (dc_buf, dc_row) = locate(dc, cs.start)?;
            let (out_buf, out_row) = locate(o, rows.start)?;
            let ((ar_buf, ar_row), (ac_buf, ac_row)) = match acts {
                Some((a_r, a_c)) => (locate(a_r, rows.start)?, locate(a_c, cs.start)?),
                None => ((&backend.placeholder, 0), (&backend.placeholder, 0)),
            };
            let params = ContractParams {
                rows: rows.len() as u32,
                cols: cs.len() as u32,
                p,
                q,
                dr_row,
                dc_row,
                ar_row,
                ac_row,
                out_row,
                out_col: (cs.start - cols.start) as u32,
                out_stride,
                has_acts: acts.is_some().into(),
                offset,
                _pad: [0; 3],
            };
            let groups = [
                cs.len().div_ceil(TILE) as u32,
                rows.len().div_ceil(TILE) as u32,
                1,
            ];
            backend.dispatch(
                kernel,
                &params,
                &[dr_buf, dc_buf, ar_buf, ac_buf, out_buf],
                groups,
            );
        }
    }
    Ok(())
}

pub(super) fn jl_project(
    backend: &WgpuBackend,
    x: &Tensor,
    spec: &JlSpec,
    accumulate: bool,
    out: &mut Tensor,
) -> Result<()> {
    let (n, d) = shapes::jl_project(x, spec.dim, out)?;
    let k_tiles = spec.dim.div_ceil(TILE);
    shapes::ensure(k_tiles <= backend.max_workgroups_per_dim as usize, || {
        format!(
            "jl_project: projection dimension {} exceeds the device's workgroup grid",
            spec.dim
        )
    })?;
    backend.check_loop_limit(slab_loop_iterations(d), || {
        format!("jl_project of {d} columns")
    })?;
    let (xs, o) = (backend.storage(x)?, backend.storage(out)?);
    let words = |v: u64| [v as u32, (v >> 32) as u32];
    for rows in segments(0..n, &[xs, o], max_tiled_rows(backend)) {
        let (x_buf, x_row) = locate(xs, rows.start)?;
        let (out_buf, out_row) = locate(o, rows.start)?;
        let params = JlParams {
            rows: rows.len() as u32,
            d: to_u32(d, "jl_project columns")?,
            k: to_u32(spec.dim, "jl_project dimension")?,
            x_row,
            out_row,
            accumulate: accumulate.into(),
            gaussian: (spec.distribution == JlDistribution::Gaussian).into(),
            // The same f32 √k `JlSpec::entry` divides by.
            sqrt_k: (spec.dim as f32).sqrt(),
            seed: words(spec.seed),
            column_offset: words(spec.column_offset),
        };
        let groups = [k_tiles as u32, rows.len().div_ceil(TILE) as u32, 1];
        backend.dispatch(Kernel::JlProject, &params, &[x_buf, out_buf], groups);
    }
    Ok(())
}

pub(super) fn ntk_contract_seq(
    _be: &WgpuBackend,
    _rows: crate::backend::SeqFactors<'_>,
    _cols: crate::backend::SeqFactors<'_>,
    _pairing: crate::backend::TokenPairing<'_>,
    _samples: Range<usize>,
    _out: &mut Tensor,
) -> Result<()> {
    Err(crate::Error::Unsupported {
        backend: "wgpu",
        op: "ntk_contract_seq",
    })
}

pub(super) fn ntk_sample_gradients(
    _be: &WgpuBackend,
    _factors: crate::backend::SeqFactors<'_>,
    _acts: &Tensor,
    _offset: f32,
    _out: &mut Tensor,
) -> Result<()> {
    Err(crate::Error::Unsupported {
        backend: "wgpu",
        op: "ntk_sample_gradients",
    })
}
