//! Straightforward f64 references of the encoder ops: the textbook definition of each op, written
//! for clarity rather than speed, against which every backend's kernels are checked (the op cases
//! of [`super`], and the wgpu-specific tests).

use crate::backend::{Activation, AttentionSpec, Pooling, RopeSpec};

/// `act(x)` in f64.
pub fn activation(act: Activation, x: f64) -> f64 {
    let erf = |x: f64| libm::erf(x);
    match act {
        Activation::Identity => x,
        Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        }
        Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Relu => x.max(0.0),
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
    }
}

/// `act'(x)` in f64, by the derivative of each definition in [`activation`].
pub fn activation_derivative(act: Activation, x: f64) -> f64 {
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    match act {
        Activation::Identity => 1.0,
        Activation::Gelu => {
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)) + x * pdf
        }
        Activation::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let t = (c * (x + 0.044715 * x.powi(3))).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x)
        }
        Activation::QuickGelu => {
            let s = sigmoid(1.702 * x);
            s + 1.702 * x * s * (1.0 - s)
        }
        Activation::Silu => sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x))),
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::Tanh => 1.0 - x.tanh().powi(2),
        Activation::Sigmoid => sigmoid(x) * (1.0 - sigmoid(x)),
    }
}

/// `act(gate) ⊙ up` in f64 for `x: [n, 2m]` holding the gate in columns `0..m`.
pub fn gated_activation(x: &[f32], n: usize, m: usize, act: Activation) -> Vec<f64> {
    (0..n * m)
        .map(|idx| {
            let (i, j) = (idx / m, idx % m);
            let row = &x[i * 2 * m..(i + 1) * 2 * m];
            activation(act, row[j] as f64) * row[m + j] as f64
        })
        .collect()
}

/// `act(x·wᵀ + bias) + residual` in f64 for `x: [n, k]`, `w: [m, k]`.
pub fn linear(
    (n, k, m): (usize, usize, usize),
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    residual: Option<&[f32]>,
) -> Vec<f64> {
    (0..n * m)
        .map(|idx| {
            let (i, j) = (idx / m, idx % m);
            let mut acc: f64 = (0..k)
                .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                .sum();
            if let Some(b) = bias {
                acc += b[j] as f64;
            }
            let mut y = activation(act, acc);
            if let Some(r) = residual {
                y += r[idx] as f64;
            }
            y
        })
        .collect()
}

/// `act(x·w_gateᵀ + b_gate) ⊙ (x·w_upᵀ + b_up)` in f64 for `x: [n, k]`, `w: [2m, k]` (gate rows
/// over up rows), `bias: [2m]` alike.
pub fn linear_gated(
    (n, k, m): (usize, usize, usize),
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
) -> Vec<f64> {
    let z = |i: usize, j: usize| -> f64 {
        let dot: f64 = (0..k)
            .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
            .sum();
        dot + bias.map_or(0.0, |b| b[j] as f64)
    };
    (0..n * m)
        .map(|idx| {
            let (i, j) = (idx / m, idx % m);
            activation(act, z(i, j)) * z(i, m + j)
        })
        .collect()
}

/// LayerNorm of each `d`-wide row in f64.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f64> {
    let d = gamma.len();
    x.chunks(d)
        .flat_map(|row| {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + eps).sqrt();
            row.iter()
                .zip(gamma.iter().zip(beta))
                .map(move |(&v, (&g, &b))| (v as f64 - mean) * inv * g as f64 + b as f64)
        })
        .collect()
}

/// RMSNorm of each `d`-wide row in f64.
pub fn rms_norm(x: &[f32], gamma: &[f32], eps: f64) -> Vec<f64> {
    let d = gamma.len();
    x.chunks(d)
        .flat_map(|row| {
            let mean_square = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (mean_square + eps).sqrt();
            row.iter()
                .zip(gamma)
                .map(move |(&v, &g)| v as f64 * inv * g as f64)
        })
        .collect()
}

/// `x / max(‖x‖₂, 1e-12)` of each `d`-wide row in f64.
pub fn l2_normalize(x: &[f64], d: usize) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            row.iter().map(move |v| v / norm)
        })
        .collect()
}

/// Rotates the query and key pairs of each sequence in f64 with `rotate_half` pairs
/// `(i, i + head_dim/2)`, pair `i` by `pos · inv_freq[i]` (`head_dim/2` frequencies); value heads
/// are copied.
pub fn rope(qkv: &[f32], lengths: &[usize], spec: &RopeSpec, inv_freq: &[f32]) -> Vec<f64> {
    let (hd, width) = (spec.head_dim, spec.qkv_width());
    let half = hd / 2;
    let mut out: Vec<f64> = qkv.iter().map(|&v| v as f64).collect();
    let mut row = 0;
    for &len in lengths {
        for pos in 0..len {
            for head in 0..spec.heads + spec.kv_heads {
                for (i, &freq) in inv_freq.iter().enumerate() {
                    let (sin, cos) = (pos as f64 * f64::from(freq)).sin_cos();
                    let at = row * width + head * hd + i;
                    let (a, b) = (qkv[at] as f64, qkv[at + half] as f64);
                    out[at] = a * cos - b * sin;
                    out[at + half] = b * cos + a * sin;
                }
            }
            row += 1;
        }
    }
    out
}

/// Dense-mask attention over each sequence separately.
pub fn attention(qkv: &[f32], lengths: &[usize], spec: &AttentionSpec) -> Vec<f64> {
    let (hd, heads, kvh) = (spec.head_dim, spec.heads, spec.kv_heads);
    let width = spec.qkv_width();
    let tokens: usize = lengths.iter().sum();
    let mut out = vec![0.0f64; tokens * heads * hd];
    let mut start = 0;
    for &len in lengths {
        for h in 0..heads {
            let kv = h / (heads / kvh);
            let q = |i: usize, c: usize| qkv[(start + i) * width + h * hd + c] as f64;
            let k = |j: usize, c: usize| qkv[(start + j) * width + (heads + kv) * hd + c] as f64;
            let v =
                |j: usize, c: usize| qkv[(start + j) * width + (heads + kvh + kv) * hd + c] as f64;
            for i in 0..len {
                let scores: Vec<Option<f64>> = (0..len)
                    .map(|j| {
                        spec.allows(i, j).then(|| {
                            (0..hd).map(|c| q(i, c) * k(j, c)).sum::<f64>() * spec.scale as f64
                        })
                    })
                    .collect();
                let max = scores
                    .iter()
                    .flatten()
                    .cloned()
                    .fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores
                    .iter()
                    .map(|s| s.map_or(0.0, |s| (s - max).exp()))
                    .collect();
                let total: f64 = weights.iter().sum();
                for c in 0..hd {
                    let o: f64 = (0..len).map(|j| weights[j] * v(j, c)).sum();
                    out[(start + i) * heads * hd + h * hd + c] = o / total;
                }
            }
        }
        start += len;
    }
    out
}

/// Pools each sequence's `d`-wide rows of `hidden` to one row; an empty sequence gives zeros.
pub fn pool(hidden: &[f32], lengths: &[usize], d: usize, mode: Pooling) -> Vec<f64> {
    let mut want = Vec::with_capacity(lengths.len() * d);
    let mut start = 0;
    for &len in lengths {
        let col = |c: usize| (start..start + len).map(move |t| hidden[t * d + c] as f64);
        for c in 0..d {
            want.push(match (len, mode) {
                (0, _) => 0.0,
                (_, Pooling::Cls) => hidden[start * d + c] as f64,
                (_, Pooling::Last) => hidden[(start + len - 1) * d + c] as f64,
                (_, Pooling::Max) => col(c).fold(f64::NEG_INFINITY, f64::max),
                (_, Pooling::Mean) => col(c).sum::<f64>() / len as f64,
                (_, Pooling::MeanSqrtLen) => col(c).sum::<f64>() / (len as f64).sqrt(),
            });
        }
        start += len;
    }
    want
}

/// Rows `ids` of the `d`-wide `table`, added to `base` where given.
pub fn gather(table: &[f32], d: usize, ids: &[u32], base: Option<&[f32]>) -> Vec<f64> {
    (0..ids.len() * d)
        .map(|i| {
            let row = table[ids[i / d] as usize * d + i % d] as f64;
            row + base.map_or(0.0, |b| b[i] as f64)
        })
        .collect()
}

/// LayerNorm's backward pass in f64 over the `d`-wide rows of `x` with `gamma: [d]` and the
/// output gradient `dy`: `dx` for every row, then the normalised rows `x̂`.
pub fn layer_norm_backward(x: &[f32], gamma: &[f32], dy: &[f32], eps: f64) -> Vec<f64> {
    let d = gamma.len();
    let mut dx = Vec::with_capacity(x.len());
    let mut normed = Vec::with_capacity(x.len());
    for (row, dy) in x.chunks(d).zip(dy.chunks(d)) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + eps).sqrt();
        let h: Vec<f64> = row.iter().map(|&v| (v as f64 - mean) * inv).collect();
        let g: Vec<f64> = dy
            .iter()
            .zip(gamma)
            .map(|(&a, &b)| a as f64 * b as f64)
            .collect();
        let g_mean = g.iter().sum::<f64>() / d as f64;
        let gh_mean = g.iter().zip(&h).map(|(g, h)| g * h).sum::<f64>() / d as f64;
        dx.extend(
            g.iter()
                .zip(&h)
                .map(|(g, h)| inv * (g - g_mean - h * gh_mean)),
        );
        normed.extend(h);
    }
    dx.extend(normed);
    dx
}

/// Attention's backward pass in f64 (bidirectional, `kv_heads == heads`): `d_qkv` from `qkv`
/// and the output gradient `d_out`, each sequence separately, through the dense `P`.
pub fn attention_backward(
    qkv: &[f32],
    lengths: &[usize],
    spec: &AttentionSpec,
    d_out: &[f32],
) -> Vec<f64> {
    let (hd, heads) = (spec.head_dim, spec.heads);
    let (width, out_width) = (spec.qkv_width(), heads * hd);
    let scale = spec.scale as f64;
    let mut grad = vec![0.0f64; qkv.len()];
    let mut start = 0;
    for &len in lengths {
        for h in 0..heads {
            let at = |t: usize, block: usize| (start + t) * width + block * out_width + h * hd;
            let row = |t: usize, block: usize| -> Vec<f64> {
                qkv[at(t, block)..at(t, block) + hd]
                    .iter()
                    .map(|&v| v as f64)
                    .collect()
            };
            let d_o = |t: usize| -> Vec<f64> {
                let o = (start + t) * out_width + h * hd;
                d_out[o..o + hd].iter().map(|&v| v as f64).collect()
            };
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
            let (q, k, v): (Vec<_>, Vec<_>, Vec<_>) = (
                (0..len).map(|t| row(t, 0)).collect(),
                (0..len).map(|t| row(t, 1)).collect(),
                (0..len).map(|t| row(t, 2)).collect(),
            );
            let d_o: Vec<Vec<f64>> = (0..len).map(d_o).collect();
            for i in 0..len {
                let scores: Vec<f64> = (0..len).map(|j| scale * dot(&q[i], &k[j])).collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|e| e / total).collect();
                let dp: Vec<f64> = (0..len).map(|j| dot(&d_o[i], &v[j])).collect();
                let centre: f64 = p.iter().zip(&dp).map(|(p, d)| p * d).sum();
                for j in 0..len {
                    let ds = p[j] * (dp[j] - centre);
                    for c in 0..hd {
                        grad[at(i, 0) + c] += scale * ds * k[j][c];
                        grad[at(j, 1) + c] += scale * ds * q[i][c];
                        grad[at(j, 2) + c] += p[j] * d_o[i][c];
                    }
                }
            }
        }
        start += len;
    }
    grad
}

/// The `d`-wide rows of each sequence of `lengths` summed, each times its row of `weights` where
/// given.
pub fn sequence_sums(
    values: &[f32],
    weights: Option<&[f32]>,
    lengths: &[usize],
    d: usize,
) -> Vec<f64> {
    let mut out = vec![0.0f64; lengths.len() * d];
    let mut token = 0;
    for (s, &len) in lengths.iter().enumerate() {
        for t in token..token + len {
            for c in 0..d {
                let w = weights.map_or(1.0, |w| w[t * d + c] as f64);
                out[s * d + c] += values[t * d + c] as f64 * w;
            }
        }
        token += len;
    }
    out
}

/// The `d`-wide rows of `delta` added into a `rows × d` table at `ids`, starting from `base`
/// where given (else zeros).
pub fn scatter_rows(
    delta: &[f32],
    d: usize,
    ids: &[u32],
    rows: usize,
    base: Option<&[f32]>,
) -> Vec<f64> {
    let mut table: Vec<f64> = match base {
        Some(b) => b.iter().map(|&v| v as f64).collect(),
        None => vec![0.0; rows * d],
    };
    for (&id, row) in ids.iter().zip(delta.chunks(d.max(1))) {
        let at = id as usize * d;
        table[at..at + d]
            .iter_mut()
            .zip(row)
            .for_each(|(t, &v)| *t += v as f64);
    }
    table
}
