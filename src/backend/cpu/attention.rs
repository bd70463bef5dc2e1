//! Softmax attention on the CPU as two GEMMs per (query block, head): scores `S = scale·Q·Kᵀ`
//! over just the keys the block can see, the masked row softmax, then `O = P·V`. The work is in
//! faer's GEMM kernels, not in a dot-product loop per (query, key). Blocks of [`QUERY_BLOCK`]
//! queries of every sequence run in parallel, each owning its rows of the output, so a single
//! long sequence (a decoder's prompt) still uses every core.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::activation;
use super::common::{split_sequences, values, values_mut};
use crate::backend::{shapes, AttentionSpec, SeqLayout, Tensor};
use crate::error::Result;

/// Queries per task: enough rows for the GEMMs to reach their kernels' speed, few enough that
/// a 256-token sequence still makes several tasks.
const QUERY_BLOCK: usize = 64;

/// Keys `[first, end)` that query `i` of a sequence of `len` tokens may attend to: the
/// contiguous range [`AttentionSpec::allows`] describes.
fn visible_keys(spec: &AttentionSpec, i: usize, len: usize) -> (usize, usize) {
    let end = if spec.causal { i + 1 } else { len };
    match spec.window {
        Some(w) => {
            let first = (i + 1).saturating_sub(w);
            let end = end.min(i + w);
            (first, end.max(first))
        }
        None => (0, end),
    }
}

/// `out: [tokens, heads·head_dim]` from the packed `qkv: [tokens, spec.qkv_width()]`.
pub(super) fn attention(
    qkv: &Tensor,
    layout: &SeqLayout,
    spec: &AttentionSpec,
    out: &mut Tensor,
) -> Result<()> {
    shapes::attention(qkv, layout, spec, out)?;
    let qkv = values(qkv)?;
    let out_width = spec.heads * spec.head_dim;
    let mut tasks = Vec::new();
    for (s, sequence) in split_sequences(values_mut(out)?, layout, out_width)
        .into_iter()
        .enumerate()
    {
        for (b, rows) in sequence.chunks_mut(QUERY_BLOCK * out_width).enumerate() {
            tasks.push((s, b * QUERY_BLOCK, rows));
        }
    }
    tasks
        .into_par_iter()
        .for_each(|(s, first_query, out_rows)| {
            query_block(qkv, layout, spec, s, first_query, out_rows)
        });
    Ok(())
}

/// Every head of the queries `first_query..` of sequence `s` whose output rows are `out_rows`.
fn query_block(
    qkv: &[f32],
    layout: &SeqLayout,
    spec: &AttentionSpec,
    s: usize,
    first_query: usize,
    out_rows: &mut [f32],
) {
    let (hd, heads, kv_heads) = (spec.head_dim, spec.heads, spec.kv_heads);
    let (width, out_width) = (spec.qkv_width(), heads * hd);
    let rows = layout.range(s);
    let len = rows.len();
    let queries = out_rows.len() / out_width;
    // The union of the block's visible keys: the first query's first to the last query's end.
    let keys_first = visible_keys(spec, first_query, len).0;
    let keys_end = visible_keys(spec, first_query + queries - 1, len).1;
    let keys = keys_end.saturating_sub(keys_first);
    if keys == 0 {
        // Only an empty window sees no key: its queries yield zeros.
        out_rows.fill(0.0);
        return;
    }
    let at = |token: usize, column: usize| (rows.start + token) * width + column;
    let mut scores = vec![0.0f32; queries * keys];
    let mut head_out = vec![0.0f32; queries * hd];
    for h in 0..heads {
        let kv = h / (heads / kv_heads);
        let q_col = h * hd;
        let k_col = heads * hd + kv * hd;
        let v_col = (heads + kv_heads) * hd + kv * hd;
        let q = MatRef::from_row_major_slice_with_stride(
            &qkv[at(first_query, q_col)..],
            queries,
            hd,
            width,
        );
        let k = MatRef::from_row_major_slice_with_stride(
            &qkv[at(keys_first, k_col)..],
            keys,
            hd,
            width,
        );
        let v = MatRef::from_row_major_slice_with_stride(
            &qkv[at(keys_first, v_col)..],
            keys,
            hd,
            width,
        );
        matmul(
            MatMut::from_row_major_slice_mut(&mut scores, queries, keys),
            Accum::Replace,
            q,
            k.transpose(),
            spec.scale,
            Par::Seq,
        );
        for (r, row) in scores.chunks_exact_mut(keys).enumerate() {
            let (first, end) = visible_keys(spec, first_query + r, len);
            let (first, end) = (first - keys_first, end - keys_first);
            row[..first].fill(0.0);
            row[end..].fill(0.0);
            activation::softmax(&mut row[first..end]);
        }
        // Into a contiguous block, then copied: faer 0.24's small-matrix kernels store past the
        // last column of a strided destination (valgrind: 8-byte writes beyond the buffer).
        matmul(
            MatMut::from_row_major_slice_mut(&mut head_out, queries, hd),
            Accum::Replace,
            MatRef::from_row_major_slice(&scores, queries, keys),
            v,
            1.0,
            Par::Seq,
        );
        for (o, h_row) in out_rows
            .chunks_exact_mut(out_width)
            .zip(head_out.chunks_exact(hd))
        {
            o[q_col..q_col + hd].copy_from_slice(h_row);
        }
    }
}
