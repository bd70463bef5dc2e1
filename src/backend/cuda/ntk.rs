//! The tangent-kernel family on CUDA (kernels/ntk.cu): a layer's Gram contraction in one kernel
//! of the variant the backend was opened with; its sequence forms (that contraction over chunks
//! of tokens into a scratch tile summed per sample pair, and per-sample layer gradients as tile
//! products over tokens); and the JL projection whose random entries are generated in registers
//! from their counter.

use std::ops::Range;

use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};

use super::device::{
    config, device_error, grid_yz, sequence_starts, tile_grid, to_i32, unsupported_variant, NULL,
};
use super::CudaBackend;
use crate::backend::{
    shapes, JlDistribution, JlSpec, NtkVariant, SeqFactors, Tensor, TokenChunks, TokenPairing,
};
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
    let factors = Contraction::new(be, delta_rows, delta_cols, acts, offset)?;
    contract_block(be, &factors, 0..n_r, cols, be.slice_mut(out)?)
}

/// The device operands of one contraction (`ntk_contract`'s, or `ntk_contract_seq`'s chunks).
struct Contraction<'a> {
    delta_rows: &'a CudaSlice<f32>,
    delta_cols: &'a CudaSlice<f32>,
    acts: Option<(&'a CudaSlice<f32>, &'a CudaSlice<f32>)>,
    p: usize,
    q: usize,
    offset: f32,
}

impl<'a> Contraction<'a> {
    fn new(
        be: &CudaBackend,
        delta_rows: &'a Tensor,
        delta_cols: &'a Tensor,
        acts: Option<(&'a Tensor, &'a Tensor)>,
        offset: f32,
    ) -> Result<Self> {
        Ok(Contraction {
            delta_rows: be.slice(delta_rows)?,
            delta_cols: be.slice(delta_cols)?,
            acts: match acts {
                Some((a_r, a_c)) => Some((be.slice(a_r)?, be.slice(a_c)?)),
                None => None,
            },
            p: delta_rows.shape()[1],
            q: acts.map_or(0, |(a, _)| a.shape()[1]),
            offset,
        })
    }
}

/// `out[r − rows.start, c − cols.start] += …` for the factor rows `rows` and `cols`, into the
/// row-major `[rows.len(), cols.len()]` matrix at the start of `out`.
fn contract_block(
    be: &CudaBackend,
    f: &Contraction<'_>,
    rows: Range<usize>,
    cols: Range<usize>,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let (n_r, n_c, p, q) = (rows.len(), cols.len(), f.p, f.q);
    if n_r == 0 || n_c == 0 {
        return Ok(());
    }
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
    let function = be.function("ntk", kernel)?;
    // The samples are row ranges of the factors. (Open-ended views: a start of 0 stays inside
    // the one-element buffer of a zero width.)
    let dr = f.delta_rows.slice(rows.start * p..);
    let dc = f.delta_cols.slice(cols.start * p..);
    let acts = f
        .acts
        .map(|(ar, ac)| (ar.slice(rows.start * q..), ac.slice(cols.start * q..)));
    let mut args = be.stream().launch_builder(&function);
    args.arg(&dr).arg(&dc);
    match &acts {
        Some((ar, ac)) => args.arg(ar).arg(ac),
        None => args.arg(&NULL).arg(&NULL),
    };
    args.arg(out)
        .arg(&nri)
        .arg(&nci)
        .arg(&pi)
        .arg(&qi)
        .arg(&f.offset);
    be.launch(kernel, &mut args, cfg)
}

/// Must match `SegmentShape` in kernels/ntk.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct SegmentShape {
    first_r: i32,
    first_c: i32,
    pairs_r: i32,
    pairs_c: i32,
    r0: i32,
    c0: i32,
    len_r: i32,
    len_c: i32,
    out_col: i32,
    out_stride: i32,
    embedding: i32,
}

// SAFETY: a plain repr(C) struct of 4-byte scalars, laid out as the kernel's struct.
unsafe impl DeviceRepr for SegmentShape {}

/// Must match `GradientShape` in kernels/ntk.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct GradientShape {
    p: i32,
    q: i32,
    bias_input: f32,
}

// SAFETY: a plain repr(C) struct of 4-byte scalars, laid out as the kernel's struct.
unsafe impl DeviceRepr for GradientShape {}

/// Tokens per side of the token-level form's scratch Gram tile (16 MiB): a chunk is 32×32 blocks
/// of the tiled contraction, enough to fill a large GPU.
const SEQ_CHUNK: usize = 2048;
/// Column samples per block of `ntk_seq_segment_sum`: the warps of its (32, 8) block.
const SEGMENT_WARPS: usize = 8;
/// Samples per launch of `ntk_sample_gradients_tiled` (grid z).
const SAMPLES_PER_LAUNCH: usize = 65_535;

/// The token-level form: per chunk of row × column tokens, the contraction variant writes the
/// chunk's weighted Gram into a scratch tile and `ntk_seq_segment_sum` adds each sample pair's
/// share to `out`, clearing the tile as it reads it.
pub(super) fn ntk_contract_seq(
    be: &CudaBackend,
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
    let factors = Contraction::new(be, rows.delta, cols.delta, acts, offset)?;
    let plan = TokenChunks::new(rows.layout, cols.layout, &samples, SEQ_CHUNK);
    let (chunk_r, chunk_c) = (plan.chunk_r, plan.chunk_c);
    let mut tile = be
        .stream()
        .alloc_zeros::<f32>(chunk_r * chunk_c)
        .map_err(device_error)?;
    let row_starts = be.upload_small(&sequence_starts(rows.layout)?)?;
    let col_starts = be.upload_small(&sequence_starts(cols.layout)?)?;
    let (row_ids, col_ids) = match ids {
        Some((r, c)) => (be.upload_small(r)?, be.upload_small(c)?),
        None => (be.upload_small::<u32>(&[])?, be.upload_small::<u32>(&[])?),
    };
    let function = be.function("ntk", "ntk_seq_segment_sum")?;
    let out = be.slice_mut(out)?;
    let to_int = |v: usize| to_i32(v, "ntk_contract_seq tokens");
    for chunk in plan.chunks {
        let (rt, ct) = (chunk.rows, chunk.cols);
        let (row_samples, col_samples) = (chunk.row_samples, chunk.col_samples);
        contract_block(be, &factors, rt.clone(), ct.clone(), &mut tile)?;
        let shape = SegmentShape {
            first_r: to_int(row_samples.start)?,
            first_c: to_int(col_samples.start)?,
            pairs_r: to_int(row_samples.len())?,
            pairs_c: to_int(col_samples.len())?,
            r0: to_int(rt.start)?,
            c0: to_int(ct.start)?,
            len_r: to_int(rt.len())?,
            len_c: to_int(ct.len())?,
            out_col: to_int(samples.start)?,
            out_stride: to_int(samples.len())?,
            embedding: ids.is_some().into(),
        };
        let cfg = config(
            (
                col_samples.len().div_ceil(SEGMENT_WARPS) as u32,
                grid_yz(row_samples.len(), "ntk_contract_seq row samples")?,
                1,
            ),
            (32, SEGMENT_WARPS as u32, 1),
        );
        let mut args = be.stream().launch_builder(&function);
        args.arg(&mut tile)
            .arg(&row_starts)
            .arg(&col_starts)
            .arg(&row_ids)
            .arg(&col_ids)
            .arg(&mut *out)
            .arg(&shape);
        be.launch("ntk_seq_segment_sum", &mut args, cfg)?;
    }
    Ok(())
}

/// The materialised form's per-sample gradients: one block per 64×64 tile of a sample's
/// `[p, q + 1]` gradient, samples along grid z.
pub(super) fn ntk_sample_gradients(
    be: &CudaBackend,
    factors: SeqFactors<'_>,
    acts: &Tensor,
    offset: f32,
    out: &mut Tensor,
) -> Result<()> {
    let (p, q) = shapes::ntk_sample_gradients(&factors, acts, offset, out)?;
    let n = factors.layout.num_sequences();
    if n == 0 || p == 0 {
        return Ok(());
    }
    let shape = GradientShape {
        p: to_i32(p, "ntk_sample_gradients gradient width")?,
        q: to_i32(q, "ntk_sample_gradients activation width")?,
        bias_input: offset.sqrt(),
    };
    let tiles_x = u32::try_from((q + 1).div_ceil(64)).map_err(|_| {
        crate::Error::input("ntk_sample_gradients: activation width exceeds the grid")
    })?;
    let tiles_y = grid_yz(p.div_ceil(64), "ntk_sample_gradients gradient tiles")?;
    let starts = sequence_starts(factors.layout)?;
    let function = be.function("ntk", "ntk_sample_gradients_tiled")?;
    let (delta, acts) = (be.slice(factors.delta)?, be.slice(acts)?);
    let out = be.slice_mut(out)?;
    let width = p * (q + 1);
    for first in (0..n).step_by(SAMPLES_PER_LAUNCH) {
        let batch = first..(first + SAMPLES_PER_LAUNCH).min(n);
        let batch_starts = be.upload_small(&starts[batch.start..=batch.end])?;
        let mut batch_out = out.slice_mut(batch.start * width..batch.end * width);
        let cfg = config((tiles_x, tiles_y, batch.len() as u32), (256, 1, 1));
        let mut args = be.stream().launch_builder(&function);
        args.arg(delta)
            .arg(acts)
            .arg(&batch_starts)
            .arg(&mut batch_out)
            .arg(&shape);
        be.launch("ntk_sample_gradients_tiled", &mut args, cfg)?;
    }
    Ok(())
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
