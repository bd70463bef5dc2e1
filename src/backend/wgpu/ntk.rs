//! The tangent-kernel ops on wgpu (shaders/ntk.wgsl): the fused Gram contraction, its sequence
//! forms (the contraction of token chunks into a scratch tile summed per sample pair; per-sample
//! layer gradients) and the JL projection generated in the shader.
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
use crate::backend::{
    shapes, GemmVariant, JlDistribution, JlSpec, SeqFactors, Tensor, TokenChunks, TokenPairing,
};
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
/// numbered like the backend's GEMM: direct (3) beside the GEMMs for software adapters (direct
/// and subgroup), tiled (2) otherwise.
fn contraction_kernel(gemm: GemmVariant) -> Kernel {
    match gemm {
        GemmVariant::Direct | GemmVariant::Subgroup => Kernel::ContractDirect,
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
    let factors = Contraction {
        delta_rows,
        delta_cols,
        acts,
        offset,
    };
    contract_block(backend, "ntk_contract", &factors, 0..n_r, cols, out)
}

/// The operands of one contraction (`ntk_contract`'s, or a chunk of `ntk_contract_seq`'s).
struct Contraction<'a> {
    delta_rows: &'a Tensor,
    delta_cols: &'a Tensor,
    acts: Option<(&'a Tensor, &'a Tensor)>,
    offset: f32,
}

/// `out[r − rows.start, c − cols.start] += …` for the factor rows `rows` and `cols`, into
/// `out: [rows.len(), cols.len()]`; `op` names the caller in a refusal.
fn contract_block(
    backend: &WgpuBackend,
    op: &str,
    f: &Contraction<'_>,
    rows: Range<usize>,
    cols: Range<usize>,
    out: &Tensor,
) -> Result<()> {
    let kernel = contraction_kernel(backend.gemm);
    let p = to_u32(f.delta_rows.shape()[1], "ntk_contract gradient width")?;
    let q = to_u32(
        f.acts.map_or(0, |(a, _)| a.shape()[1]),
        "ntk_contract activation width",
    )?;
    let depth = (p + q) as usize;
    let iterations = match kernel {
        Kernel::ContractTiled => slab_loop_iterations(depth),
        _ => direct_loop_iterations(depth),
    };
    backend.check_loop_limit(iterations, || {
        format!("{op} over {p} gradient and {q} activation columns")
    })?;
    let (dr, dc, o) = (
        backend.storage(f.delta_rows)?,
        backend.storage(f.delta_cols)?,
        backend.storage(out)?,
    );
    let acts = f
        .acts
        .map(|(a_r, a_c)| Ok::<_, crate::Error>((backend.storage(a_r)?, backend.storage(a_c)?)))
        .transpose()?;
    let mut row_side = vec![dr];
    let mut col_side = vec![dc];
    if let Some((a_r, a_c)) = acts {
        row_side.push(a_r);
        col_side.push(a_c);
    }
    let max_len = max_tiled_rows(backend);
    let out_stride = to_u32(cols.len(), "ntk_contract columns")?;
    for factor_rows in segments(rows.clone(), &row_side, max_len) {
        // Output rows count from `rows.start`: cut again where out's parts end.
        let out_rows = factor_rows.start - rows.start..factor_rows.end - rows.start;
        for out_piece in segments(out_rows, &[o], max_len) {
            let piece = out_piece.start + rows.start..out_piece.end + rows.start;
            for cs in segments(cols.clone(), &col_side, max_len) {
                let (dr_buf, dr_row) = locate(dr, piece.start)?;
                let (dc_buf, dc_row) = locate(dc, cs.start)?;
                let (out_buf, out_row) = locate(o, out_piece.start)?;
                let ((ar_buf, ar_row), (ac_buf, ac_row)) = match acts {
                    Some((a_r, a_c)) => (locate(a_r, piece.start)?, locate(a_c, cs.start)?),
                    None => ((&backend.placeholder, 0), (&backend.placeholder, 0)),
                };
                let params = ContractParams {
                    rows: piece.len() as u32,
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
                    offset: f.offset,
                    _pad: [0; 3],
                };
                let groups = [
                    cs.len().div_ceil(TILE) as u32,
                    piece.len().div_ceil(TILE) as u32,
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
    }
    Ok(())
}

/// ntk.wgsl `SegmentParams`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SegmentParams {
    first_r: u32,
    first_c: u32,
    r0: u32,
    c0: u32,
    len_r: u32,
    len_c: u32,
    out_col: u32,
    out_stride: u32,
    embedding: u32,
    _pad: [u32; 3],
}

/// ntk.wgsl `GradientParams`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GradientParams {
    p: u32,
    q: u32,
    first: u32,
    samples: u32,
    groups_x: u32,
    bias_input: f32,
    _pad: [u32; 2],
}

/// Threads of a `seq_segment_sum` workgroup (ntk.wgsl `SEGMENT_THREADS`).
const SEGMENT_THREADS: usize = 64;
/// Threads of a `sample_gradients` workgroup.
const GRADIENT_THREADS: usize = 64;

/// Tokens per side of the token-level form's scratch Gram tile (1 MiB): large enough that the
/// contraction fills a GPU, small enough that a pair's share stays far inside llvmpipe's loop
/// limit (`(512·512)/64` strided steps at most).
const SEQ_CHUNK: usize = 512;

/// The token-level form: per chunk of row × column tokens, `contract_*` writes the chunk's
/// weighted Gram into a scratch tile (one storage binding) and `seq_segment_sum` adds each
/// sample pair's share to `out`, clearing the tile as it reads it.
pub(super) fn ntk_contract_seq(
    backend: &WgpuBackend,
    rows: SeqFactors<'_>,
    cols: SeqFactors<'_>,
    pairing: TokenPairing<'_>,
    samples: Range<usize>,
    out: &mut Tensor,
) -> Result<()> {
    shapes::ntk_contract_seq(&rows, &cols, &pairing, &samples, out)?;
    if rows.layout.num_sequences() == 0 || samples.is_empty() {
        return Ok(());
    }
    let (acts, offset, ids) = pairing.parts();
    let factors = Contraction {
        delta_rows: rows.delta,
        delta_cols: cols.delta,
        acts,
        offset,
    };
    // Both sides of the tile within one storage binding.
    let part_values = (backend.max_part_bytes / 4) as usize;
    let side = SEQ_CHUNK.min(part_values.isqrt()).max(1);
    let plan = TokenChunks::new(rows.layout, cols.layout, &samples, side);
    let (chunk_r, chunk_c) = (plan.chunk_r, plan.chunk_c);
    backend.check_loop_limit(
        direct_loop_iterations((chunk_r * chunk_c).div_ceil(SEGMENT_THREADS) + 6),
        || format!("ntk_contract_seq's sums over {chunk_r}×{chunk_c}-token tiles"),
    )?;
    let scratch = super::memory::zeros(backend, &[chunk_r, chunk_c])?;
    let tile = backend.buffer(&scratch, "ntk_contract_seq Gram tile")?;
    let out_buf = backend.buffer(out, "ntk_contract_seq output")?;
    let row_starts = backend.upload_sequence_starts(rows.layout)?;
    let col_starts = backend.upload_sequence_starts(cols.layout)?;
    let (row_ids, col_ids) = match ids {
        Some((r, c)) => (
            backend.upload_u32("row token ids", r),
            backend.upload_u32("column token ids", c),
        ),
        None => (
            backend.upload_u32("no ids", &[]),
            backend.upload_u32("no ids", &[]),
        ),
    };
    for chunk in plan.chunks {
        let (rt, ct) = (chunk.rows, chunk.cols);
        let (row_samples, col_samples) = (chunk.row_samples, chunk.col_samples);
        contract_block(
            backend,
            "ntk_contract_seq",
            &factors,
            rt.clone(),
            ct.clone(),
            &scratch,
        )?;
        let params = SegmentParams {
            first_r: row_samples.start as u32,
            first_c: col_samples.start as u32,
            r0: rt.start as u32,
            c0: ct.start as u32,
            len_r: rt.len() as u32,
            len_c: ct.len() as u32,
            out_col: samples.start as u32,
            out_stride: samples.len() as u32,
            embedding: ids.is_some().into(),
            _pad: [0; 3],
        };
        backend.dispatch(
            Kernel::SeqSegmentSum,
            &params,
            &[tile, &row_starts, &col_starts, &row_ids, &col_ids, out_buf],
            [col_samples.len() as u32, row_samples.len() as u32, 1],
        );
    }
    Ok(())
}

/// The materialised form's per-sample gradients, one dispatch per part of `out`.
pub(super) fn ntk_sample_gradients(
    backend: &WgpuBackend,
    factors: SeqFactors<'_>,
    acts: &Tensor,
    offset: f32,
    out: &mut Tensor,
) -> Result<()> {
    let (p, q) = shapes::ntk_sample_gradients(&factors, acts, offset, out)?;
    let longest = factors.layout.max_len();
    backend.check_loop_limit(direct_loop_iterations(longest), || {
        format!("ntk_sample_gradients of a {longest}-token sample")
    })?;
    let delta = backend.buffer(factors.delta, "ntk_sample_gradients gradients")?;
    let acts = backend.buffer(acts, "ntk_sample_gradients activations")?;
    let starts = backend.upload_sequence_starts(factors.layout)?;
    let o = backend.storage(out)?;
    let n = factors.layout.num_sequences();
    let width = p * (q + 1);
    for (part, buffer) in o.parts.iter().enumerate() {
        let part_samples = o.part_rows(part, n);
        let grid = backend.grid((part_samples.len() * width).div_ceil(GRADIENT_THREADS))?;
        let params = GradientParams {
            p: to_u32(p, "ntk_sample_gradients gradient width")?,
            q: to_u32(q, "ntk_sample_gradients activation width")?,
            first: part_samples.start as u32,
            samples: part_samples.len() as u32,
            groups_x: grid[0],
            bias_input: offset.sqrt(),
            _pad: [0; 2],
        };
        backend.dispatch(
            Kernel::SampleGradients,
            &params,
            &[delta, acts, &starts, buffer],
            grid,
        );
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
