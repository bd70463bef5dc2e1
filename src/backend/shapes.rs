//! Argument checks of the op set, shared by every backend so each rejects bad shapes with the
//! same message.

use super::{AttentionSpec, RopeSpec, SeqFactors, SeqLayout, Tensor, TokenPairing};
use crate::error::{Error, Result};

pub(crate) fn ensure(ok: bool, message: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::input(message()))
    }
}

/// `(n, k, m)` of `out[n, m] = x[n, k]·w[m, k]ᵀ` with optional `bias[m]` and `residual[n, m]`.
pub(crate) fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    out: &Tensor,
) -> Result<(usize, usize, usize)> {
    let (n, k) = x.dims2("linear input")?;
    let (m, wk) = w.dims2("linear weight")?;
    ensure(k == wk, || {
        format!("linear: input has {k} features, weight expects {wk}")
    })?;
    ensure(out.shape() == [n, m], || {
        format!(
            "linear: output shape {:?}, expected [{n}, {m}]",
            out.shape()
        )
    })?;
    if let Some(b) = bias {
        ensure(b.shape() == [m], || {
            format!("linear: bias shape {:?}, expected [{m}]", b.shape())
        })?;
    }
    if let Some(r) = residual {
        ensure(r.shape() == [n, m], || {
            format!(
                "linear: residual shape {:?}, expected [{n}, {m}]",
                r.shape()
            )
        })?;
    }
    Ok((n, k, m))
}

/// `(n, k, m)` of a gated `linear` (`w: [2m, k]`, `out: [n, m]`), after checking every shape.
pub(crate) fn linear_gated(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    out: &Tensor,
) -> Result<(usize, usize, usize)> {
    let (n, k) = x.dims2("linear_gated input")?;
    let (rows, wk) = w.dims2("linear_gated weight")?;
    ensure(k == wk, || {
        format!("linear_gated: input has {k} features, weight expects {wk}")
    })?;
    ensure(rows % 2 == 0, || {
        format!("linear_gated: weight has {rows} rows, not gate and up rows stacked (odd)")
    })?;
    let m = rows / 2;
    ensure(out.shape() == [n, m], || {
        format!(
            "linear_gated: output shape {:?}, expected [{n}, {m}]",
            out.shape()
        )
    })?;
    if let Some(b) = bias {
        ensure(b.shape() == [rows], || {
            format!(
                "linear_gated: bias shape {:?}, expected [{rows}]",
                b.shape()
            )
        })?;
    }
    Ok((n, k, m))
}

/// `(n, m)` of `out[n, m] = act(gate_up[n, :m]) ⊙ gate_up[n, m:]`.
pub(crate) fn gated_activation(gate_up: &Tensor, out: &Tensor) -> Result<(usize, usize)> {
    let (n, width) = gate_up.dims2("gated_activation input")?;
    ensure(width % 2 == 0, || {
        format!("gated_activation: input width {width} is not gate and up side by side (odd)")
    })?;
    let m = width / 2;
    ensure(out.shape() == [n, m], || {
        format!(
            "gated_activation: output shape {:?}, expected [{n}, {m}]",
            out.shape()
        )
    })?;
    Ok((n, m))
}

/// `(rows, d)` of a gather table, after checking `out` and that every id is in range.
pub(crate) fn gather(table: &Tensor, ids: &[u32], out: &Tensor) -> Result<(usize, usize)> {
    let (rows, d) = table.dims2("gather table")?;
    ensure(out.shape() == [ids.len(), d], || {
        format!(
            "gather: output shape {:?}, expected [{}, {d}]",
            out.shape(),
            ids.len()
        )
    })?;
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= rows) {
        return Err(Error::input(format!(
            "gather: index {bad} out of range for a table of {rows} rows"
        )));
    }
    Ok((rows, d))
}

/// Checks that `values` host values fill a tensor of `shape`.
pub(crate) fn upload(shape: &[usize], values: usize) -> Result<()> {
    let len: usize = shape.iter().product();
    ensure(len == values, || {
        format!("upload: shape {shape:?} needs {len} values, got {values}")
    })
}

/// `(rows, d)` of an L2-normalisation input.
pub(crate) fn l2_normalize(x: &Tensor) -> Result<(usize, usize)> {
    let (n, d) = x.dims2("l2_normalize input")?;
    ensure(d > 0, || "l2_normalize: rows of width 0".to_string())?;
    Ok((n, d))
}

/// `(rows, d)` of a LayerNorm input with `gamma, beta: [d]`.
pub(crate) fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<(usize, usize)> {
    let (n, d) = x.dims2("layer_norm input")?;
    ensure(d > 0, || "layer_norm: rows of width 0".to_string())?;
    ensure(gamma.shape() == [d] && beta.shape() == [d], || {
        format!(
            "layer_norm: gamma {:?} / beta {:?}, expected [{d}]",
            gamma.shape(),
            beta.shape()
        )
    })?;
    Ok((n, d))
}

/// `(rows, d)` of an RMSNorm of `x` with `gamma: [d]` into `out` of `x`'s shape.
pub(crate) fn rms_norm(x: &Tensor, gamma: &Tensor, out: &Tensor) -> Result<(usize, usize)> {
    let (n, d) = x.dims2("rms_norm input")?;
    ensure(d > 0, || "rms_norm: rows of width 0".to_string())?;
    ensure(gamma.shape() == [d], || {
        format!("rms_norm: gamma {:?}, expected [{d}]", gamma.shape())
    })?;
    ensure(out.shape() == [n, d], || {
        format!("rms_norm: output {:?}, expected [{n}, {d}]", out.shape())
    })?;
    Ok((n, d))
}

/// `(tokens, width)` of a RoPE call, after checking the head size, that `qkv` holds the
/// layout's tokens at the spec's QKV width, and that `table` is a `(cos, sin)` table of the
/// head's pairs covering the longest sequence.
pub(crate) fn rope(
    qkv: &Tensor,
    layout: &SeqLayout,
    spec: &RopeSpec,
    table: &Tensor,
) -> Result<(usize, usize)> {
    let (tokens, width) = qkv.dims2("rope qkv")?;
    let hd = spec.head_dim;
    ensure(hd > 0 && hd.is_multiple_of(2), || {
        format!("rope: head_dim {hd} must be even and positive (columns are rotated in pairs)")
    })?;
    let (heads, kv_heads) = (spec.heads, spec.kv_heads);
    ensure(
        heads > 0 && kv_heads > 0 && heads.is_multiple_of(kv_heads),
        || format!("rope: {heads} query heads cannot share {kv_heads} key/value heads"),
    )?;
    ensure(width == spec.qkv_width(), || {
        format!(
            "rope: qkv width {width}, expected {} for {heads} query and {kv_heads} key/value \
             heads of {hd}",
            spec.qkv_width()
        )
    })?;
    ensure(tokens == layout.num_tokens(), || {
        format!(
            "rope: {tokens} rows, layout has {} tokens",
            layout.num_tokens()
        )
    })?;
    let longest = layout.max_len();
    ensure(
        matches!(table.shape(), &[positions, pairs, 2] if positions >= longest && pairs == hd / 2),
        || {
            format!(
                "rope: table {:?}, expected [positions ≥ {longest}, {}, 2] (the (cos, sin) of \
                 each pair at each position of the longest sequence)",
                table.shape(),
                hd / 2
            )
        },
    )?;
    Ok((tokens, width))
}

/// Checks an attention call's QKV width, head grouping, token count and output shape.
pub(crate) fn attention(
    qkv: &Tensor,
    layout: &SeqLayout,
    spec: &AttentionSpec,
    out: &Tensor,
) -> Result<()> {
    let (tokens, width) = qkv.dims2("attention qkv")?;
    let (hd, heads, kv_heads) = (spec.head_dim, spec.heads, spec.kv_heads);
    ensure(width == spec.qkv_width(), || {
        format!(
            "attention: qkv width {width}, expected {}",
            spec.qkv_width()
        )
    })?;
    ensure(kv_heads > 0 && heads.is_multiple_of(kv_heads), || {
        format!("attention: {heads} query heads cannot share {kv_heads} key/value heads")
    })?;
    ensure(tokens == layout.num_tokens(), || {
        format!(
            "attention: {tokens} rows, layout has {} tokens",
            layout.num_tokens()
        )
    })?;
    ensure(out.shape() == [tokens, heads * hd], || {
        format!(
            "attention: output shape {:?}, expected [{tokens}, {}]",
            out.shape(),
            heads * hd
        )
    })
}

/// Width `d` of the hidden states being pooled into `out: [sequences, d]`.
pub(crate) fn pool(hidden: &Tensor, layout: &SeqLayout, out: &Tensor) -> Result<usize> {
    let (tokens, d) = hidden.dims2("pool input")?;
    ensure(tokens == layout.num_tokens(), || {
        format!(
            "pool: {tokens} rows, layout has {} tokens",
            layout.num_tokens()
        )
    })?;
    let b = layout.num_sequences();
    ensure(out.shape() == [b, d], || {
        format!("pool: output shape {:?}, expected [{b}, {d}]", out.shape())
    })?;
    Ok(d)
}

/// `n_r` of [`super::Backend::ntk_contract`], after checking that row and column factors agree
/// on their widths, `cols` lies within the column factors and `out` is `[n_r, cols.len()]`.
pub(crate) fn ntk_contract(
    delta_rows: &Tensor,
    delta_cols: &Tensor,
    acts: Option<(&Tensor, &Tensor)>,
    cols: &std::ops::Range<usize>,
    out: &Tensor,
) -> Result<usize> {
    let (n_r, p) = delta_rows.dims2("ntk_contract row gradients")?;
    let (n_c, p_c) = delta_cols.dims2("ntk_contract column gradients")?;
    ensure(p == p_c, || {
        format!("ntk_contract: row gradients have width {p}, column gradients {p_c}")
    })?;
    ensure(cols.start <= cols.end && cols.end <= n_c, || {
        format!("ntk_contract: columns {cols:?} outside the {n_c} column samples")
    })?;
    if let Some((a_r, a_c)) = acts {
        let (ar_n, q) = a_r.dims2("ntk_contract row activations")?;
        let (ac_n, q_c) = a_c.dims2("ntk_contract column activations")?;
        ensure(ar_n == n_r && ac_n == n_c && q == q_c, || {
            format!(
                "ntk_contract: activations {:?} and {:?} do not match gradients of {n_r} and \
                 {n_c} samples",
                a_r.shape(),
                a_c.shape()
            )
        })?;
    }
    ensure(out.shape() == [n_r, cols.len()], || {
        format!(
            "ntk_contract: output shape {:?}, expected [{n_r}, {}]",
            out.shape(),
            cols.len()
        )
    })?;
    Ok(n_r)
}

/// `(tokens, p)` of one side's factors, after checking that the layout covers every row.
fn seq_side(op: &str, side: &str, f: &SeqFactors<'_>) -> Result<(usize, usize)> {
    let (tokens, p) = f.delta.dims2(&format!("{op} {side} gradients"))?;
    ensure(tokens == f.layout.num_tokens(), || {
        format!(
            "{op}: {side} gradients have {tokens} token rows, their layout {} tokens",
            f.layout.num_tokens()
        )
    })?;
    Ok((tokens, p))
}

/// The widths of [`super::Backend::ntk_contract_seq`]: `p` of the gradient factors and `q` of
/// the activations (0 for an embedding), after checking both sides, `samples` and `out`.
pub(crate) fn ntk_contract_seq(
    rows: &SeqFactors<'_>,
    cols: &SeqFactors<'_>,
    pairing: &TokenPairing<'_>,
    samples: &std::ops::Range<usize>,
    out: &Tensor,
) -> Result<(usize, usize)> {
    const OP: &str = "ntk_contract_seq";
    let (t_r, p) = seq_side(OP, "row", rows)?;
    let (t_c, p_c) = seq_side(OP, "column", cols)?;
    ensure(p == p_c, || {
        format!("{OP}: row gradients have width {p}, column gradients {p_c}")
    })?;
    let n_c = cols.layout.num_sequences();
    ensure(samples.start <= samples.end && samples.end <= n_c, || {
        format!("{OP}: columns {samples:?} outside the {n_c} column samples")
    })?;
    let q = match pairing {
        TokenPairing::Linear {
            rows: a_r,
            cols: a_c,
            offset,
        } => {
            let (ar_t, q) = a_r.dims2("ntk_contract_seq row activations")?;
            let (ac_t, q_c) = a_c.dims2("ntk_contract_seq column activations")?;
            ensure(ar_t == t_r && ac_t == t_c && q == q_c, || {
                format!(
                    "{OP}: activations {:?} and {:?} do not match gradients of {t_r} and {t_c} \
                     tokens",
                    a_r.shape(),
                    a_c.shape()
                )
            })?;
            ensure(offset.is_finite(), || format!("{OP}: offset {offset}"))?;
            q
        }
        TokenPairing::Embedding {
            rows: ids_r,
            cols: ids_c,
        } => {
            ensure(ids_r.len() == t_r && ids_c.len() == t_c, || {
                format!(
                    "{OP}: {} and {} token ids for gradients of {t_r} and {t_c} tokens",
                    ids_r.len(),
                    ids_c.len()
                )
            })?;
            0
        }
    };
    let n_r = rows.layout.num_sequences();
    ensure(out.shape() == [n_r, samples.len()], || {
        format!(
            "{OP}: output shape {:?}, expected [{n_r}, {}]",
            out.shape(),
            samples.len()
        )
    })?;
    Ok((p, q))
}

/// `(p, q)` of [`super::Backend::ntk_sample_gradients`]: `delta: [tokens, p]`, `acts:
/// [tokens, q]`, `offset ≥ 0`, `out: [samples, p·(q + 1)]`.
pub(crate) fn ntk_sample_gradients(
    factors: &SeqFactors<'_>,
    acts: &Tensor,
    offset: f32,
    out: &Tensor,
) -> Result<(usize, usize)> {
    const OP: &str = "ntk_sample_gradients";
    let (tokens, p) = seq_side(OP, "token", factors)?;
    let (a_t, q) = acts.dims2("ntk_sample_gradients activations")?;
    ensure(a_t == tokens, || {
        format!(
            "{OP}: activations {:?} for gradients of {tokens} tokens",
            acts.shape()
        )
    })?;
    ensure(offset.is_finite() && offset >= 0.0, || {
        format!("{OP}: offset {offset}; the bias input √offset needs a finite offset ≥ 0")
    })?;
    let n = factors.layout.num_sequences();
    ensure(out.shape() == [n, p * (q + 1)], || {
        format!(
            "{OP}: output shape {:?}, expected [{n}, {}] ({p}×{} per sample)",
            out.shape(),
            p * (q + 1),
            q + 1
        )
    })?;
    Ok((p, q))
}

/// `(n, d)` of [`super::Backend::jl_project`]: `x: [n, d]`, `out: [n, dim]`, `dim > 0`.
pub(crate) fn jl_project(x: &Tensor, dim: usize, out: &Tensor) -> Result<(usize, usize)> {
    let (n, d) = x.dims2("jl_project input")?;
    ensure(dim > 0, || "jl_project: projection dimension 0".to_string())?;
    ensure(out.shape() == [n, dim], || {
        format!(
            "jl_project: output shape {:?}, expected [{n}, {dim}]",
            out.shape()
        )
    })?;
    Ok((n, d))
}

/// Checks that matrix `index` of a stats batch is square and finite; `what` names the op.
pub(crate) fn square_finite(what: &str, index: usize, a: &super::Matrix64) -> Result<()> {
    ensure(a.rows == a.cols && a.data.len() == a.rows * a.cols, || {
        format!(
            "{what}: matrix {index} of the batch is {}×{}, expected square",
            a.rows, a.cols
        )
    })?;
    ensure(a.data.iter().all(|v| v.is_finite()), || {
        format!("{what}: matrix {index} of the batch has a non-finite entry")
    })
}

/// `(n, m)` of [`super::Backend::activation_backward`]: `pre`, `dy` and `out` all `[n, m]`.
pub(crate) fn activation_backward(
    pre: &Tensor,
    dy: &Tensor,
    out: &Tensor,
) -> Result<(usize, usize)> {
    let (n, m) = pre.dims2("activation_backward pre-activation")?;
    ensure(dy.shape() == [n, m] && out.shape() == [n, m], || {
        format!(
            "activation_backward: gradient {:?} and output {:?}, expected the pre-activation's \
             [{n}, {m}]",
            dy.shape(),
            out.shape()
        )
    })?;
    Ok((n, m))
}

/// `(n, d)` of [`super::Backend::layer_norm_backward`]: `pre`, `dy`, `dx`, `normed` all
/// `[n, d]`, `gamma: [d]`, `d > 0`.
pub(crate) fn layer_norm_backward(
    pre: &Tensor,
    gamma: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    normed: &Tensor,
) -> Result<(usize, usize)> {
    let (n, d) = pre.dims2("layer_norm_backward input rows")?;
    ensure(d > 0, || "layer_norm_backward: rows of width 0".to_string())?;
    ensure(gamma.shape() == [d], || {
        format!(
            "layer_norm_backward: gamma {:?}, expected [{d}]",
            gamma.shape()
        )
    })?;
    for (what, t) in [("gradient", dy), ("dx", dx), ("normed rows", normed)] {
        ensure(t.shape() == [n, d], || {
            format!(
                "layer_norm_backward: {what} {:?}, expected the input's [{n}, {d}]",
                t.shape()
            )
        })?;
    }
    Ok((n, d))
}

/// Checks [`super::Backend::attention_backward`]: a spec it covers (bidirectional, no window,
/// no grouped heads), `qkv` and `d_out` as `attention` takes and writes them, `d_qkv` of `qkv`'s
/// shape.
pub(crate) fn attention_backward(
    qkv: &Tensor,
    layout: &SeqLayout,
    spec: &AttentionSpec,
    d_out: &Tensor,
    d_qkv: &Tensor,
) -> Result<()> {
    ensure(
        !spec.causal && spec.window.is_none() && spec.kv_heads == spec.heads,
        || {
            "attention_backward: only bidirectional attention without a window or grouped heads \
             has a backward pass"
                .to_string()
        },
    )?;
    attention(qkv, layout, spec, d_out).map_err(|e| {
        Error::input(format!(
            "attention_backward: {}",
            e.to_string().replace("output shape", "gradient shape")
        ))
    })?;
    ensure(d_qkv.shape() == qkv.shape(), || {
        format!(
            "attention_backward: d_qkv shape {:?}, expected qkv's {:?}",
            d_qkv.shape(),
            qkv.shape()
        )
    })
}

/// `d` of [`super::Backend::sequence_sums`]: `values` (and `weights`) `[layout.num_tokens(), d]`,
/// `out: [layout.num_sequences(), d]`.
pub(crate) fn sequence_sums(
    values: &Tensor,
    weights: Option<&Tensor>,
    layout: &SeqLayout,
    out: &Tensor,
) -> Result<usize> {
    let (tokens, d) = values.dims2("sequence_sums values")?;
    ensure(tokens == layout.num_tokens(), || {
        format!(
            "sequence_sums: values {:?}, expected one row per token of the layout's {}",
            values.shape(),
            layout.num_tokens()
        )
    })?;
    if let Some(w) = weights {
        ensure(w.shape() == values.shape(), || {
            format!(
                "sequence_sums: weights {:?}, expected the values' {:?}",
                w.shape(),
                values.shape()
            )
        })?;
    }
    ensure(out.shape() == [layout.num_sequences(), d], || {
        format!(
            "sequence_sums: output {:?}, expected [{}, {d}] (one row per sequence)",
            out.shape(),
            layout.num_sequences()
        )
    })?;
    Ok(d)
}

/// `(rows, d)` of [`super::Backend::scatter_rows`]: `delta: [ids.len(), d]`, `table: [rows, d]`,
/// every id below `rows`.
pub(crate) fn scatter_rows(delta: &Tensor, ids: &[u32], table: &Tensor) -> Result<(usize, usize)> {
    let (rows, d) = table.dims2("scatter_rows table")?;
    ensure(delta.shape() == [ids.len(), d], || {
        format!(
            "scatter_rows: gradient rows {:?}, expected [{}, {d}] (one row per id)",
            delta.shape(),
            ids.len()
        )
    })?;
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= rows) {
        return Err(Error::input(format!(
            "scatter_rows: index {bad} out of range for a table of {rows} rows"
        )));
    }
    Ok((rows, d))
}

/// `d` of [`super::Backend::dropout`]: `x`, `residual` and `out` all `[n, d]`.
pub(crate) fn dropout(x: &Tensor, residual: Option<&Tensor>, out: &Tensor) -> Result<usize> {
    let (n, d) = x.dims2("dropout input")?;
    ensure(
        out.shape() == [n, d] && residual.is_none_or(|r| r.shape() == [n, d]),
        || {
            format!(
                "dropout: output {:?} and residual {:?}, expected the input's [{n}, {d}]",
                out.shape(),
                residual.map(Tensor::shape)
            )
        },
    )?;
    Ok(d)
}

/// The CSR index of `ids` (checked by [`scatter_rows`]) over a table of `rows` rows, which the
/// GPU `scatter_rows` kernels read: `rows + 1` offsets, and the positions of the ids sorted by id
/// (stable, so each row's ids stay in order and sum as on the CPU).
pub(crate) fn ids_by_row(ids: &[u32], rows: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    ensure(u32::try_from(ids.len()).is_ok(), || {
        format!("scatter_rows: {} ids exceed u32", ids.len())
    })?;
    let mut starts = vec![0u32; rows + 1];
    for &id in ids {
        starts[id as usize + 1] += 1;
    }
    for r in 0..rows {
        starts[r + 1] += starts[r];
    }
    let mut next = starts.clone();
    let mut order = vec![0u32; ids.len()];
    for (i, &id) in ids.iter().enumerate() {
        let slot = &mut next[id as usize];
        order[*slot as usize] = i as u32;
        *slot += 1;
    }
    Ok((starts, order))
}
