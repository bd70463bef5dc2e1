//! Does unsupervised clustering recreate the labels? k-means on the embeddings (greedy
//! k-means++ seeding, Lloyd iterations, several restarts, the lowest inertia kept, as
//! scikit-learn's `KMeans`), scored against the labels by the adjusted Rand index, normalised
//! mutual information (arithmetic mean, scikit-learn's default) and purity.
//!
//! k-means on embeddings is memory-bound: a pass computes only `k` dot products per row (the
//! `[rows, k]` product of the distances is too narrow for a GEMM to pay), so the work is
//! arranged to read the rows as few times as possible. Each Lloyd pass reads every row once,
//! computing its `k` dot products in one sweep ([`row_dots`]) and adding it into its cluster's
//! sums while it is in the cache; seeding reads the rows once per centre for all restarts and
//! candidates together. Results depend on the seed only, not on the number of threads: blocks
//! of rows run in parallel and their partial sums are added in block order.

use std::borrow::Cow;

use rayon::prelude::*;
use serde::Serialize;

use crate::backend::cpu::{add_widened, row_dots};
use crate::error::{Error, Result};
use crate::io::embeddings::EmbeddingsFile;
use crate::random::SplitMix64;

#[derive(Clone, Copy, Debug)]
pub struct ClusterOptions {
    pub k: usize,
    pub restarts: usize,
    pub max_iter: usize,
    /// Convergence: the squared centre shift summed over the centres, relative to the mean
    /// per-dimension variance of the data (scikit-learn's `tol`).
    pub tol: f64,
    pub seed: u64,
}

/// One clustering of the rows.
#[derive(Clone, Debug, PartialEq)]
pub struct KMeans {
    /// Cluster of each row.
    pub assignment: Vec<usize>,
    /// `[k, dim]` centres.
    pub centres: Vec<f64>,
    /// Sum of squared distances of the rows to their centres.
    pub inertia: f64,
    pub iterations: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClusterReport {
    pub input: String,
    pub model: String,
    pub rows: usize,
    pub dim: usize,
    pub k: usize,
    pub restarts: usize,
    pub seed: u64,
    pub inertia: f64,
    /// Inertia of every restart, in order.
    pub restart_inertias: Vec<f64>,
    pub iterations: usize,
    pub sizes: Vec<usize>,
    /// Agreement with the labels over the labelled rows (`None` without labels).
    pub agreement: Option<Agreement>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Agreement {
    pub labels: Vec<String>,
    pub ari: f64,
    pub nmi: f64,
    pub purity: f64,
    /// `[label][cluster]` row counts.
    pub contingency: Vec<Vec<usize>>,
}

pub fn report(
    file: &EmbeddingsFile,
    input: &str,
    options: &ClusterOptions,
) -> Result<ClusterReport> {
    let (best, inertias) = kmeans(&file.embeddings, file.dim, options)?;
    let mut sizes = vec![0; options.k];
    best.assignment.iter().for_each(|&c| sizes[c] += 1);
    let labelled: Vec<usize> = (0..file.rows()).filter(|&r| file.labels[r] >= 0).collect();
    let agreement = (!labelled.is_empty()).then(|| {
        let truth: Vec<usize> = labelled.iter().map(|&r| file.labels[r] as usize).collect();
        let found: Vec<usize> = labelled.iter().map(|&r| best.assignment[r]).collect();
        let contingency = contingency(&truth, file.label_names.len(), &found, options.k);
        Agreement {
            labels: file.label_names.clone(),
            ari: adjusted_rand_index(&contingency),
            nmi: normalized_mutual_information(&contingency),
            purity: purity(&contingency),
            contingency,
        }
    });
    Ok(ClusterReport {
        input: input.into(),
        model: file.model.clone(),
        rows: file.rows(),
        dim: file.dim,
        k: options.k,
        restarts: options.restarts,
        seed: options.seed,
        inertia: best.inertia,
        restart_inertias: inertias,
        iterations: best.iterations,
        sizes,
        agreement,
    })
}

/// The best of `options.restarts` k-means runs (lowest inertia; the first on ties) and every
/// run's inertia.
pub fn kmeans(x: &[f32], dim: usize, options: &ClusterOptions) -> Result<(KMeans, Vec<f64>)> {
    let rows = x.len().checked_div(dim).unwrap_or(0);
    if options.k < 1 || options.k > rows {
        return Err(Error::input(format!(
            "--k {} must be between 1 and the number of rows ({rows})",
            options.k
        )));
    }
    if options.restarts == 0 || options.max_iter == 0 || options.tol.is_nan() || options.tol < 0.0 {
        return Err(Error::input(
            "--restarts and --max-iter must be at least 1 and the tolerance at least 0",
        ));
    }
    let (norms, variance) = norms_and_variance(x, dim);
    let tol = options.tol * variance;
    let mut best: Option<KMeans> = None;
    let mut inertias = Vec::with_capacity(options.restarts);
    for centres in seed_centres(x, dim, &norms, options.k, options.restarts, options.seed) {
        let run = lloyd(x, dim, &norms, centres, options.max_iter, tol);
        inertias.push(run.inertia);
        if best.as_ref().is_none_or(|b| run.inertia < b.inertia) {
            best = Some(run);
        }
    }
    Ok((best.expect("at least one restart"), inertias))
}

/// Each row's squared norm and the data's mean per-dimension variance (what scikit-learn scales
/// `tol` by), in one sweep over the rows: blocks in parallel, their column sums added in block
/// order (the same result on any number of threads).
fn norms_and_variance(x: &[f32], dim: usize) -> (Vec<f64>, f64) {
    let rows = x.len() / dim;
    let mut norms = vec![0.0f64; rows];
    let block_sums: Vec<Vec<f64>> = x
        .par_chunks(ASSIGN_BLOCK * dim)
        .zip(norms.par_chunks_mut(ASSIGN_BLOCK))
        .map(|(block, norms)| {
            let mut sums = vec![0.0f64; dim];
            for (row, norm) in block.chunks_exact(dim).zip(norms) {
                *norm = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                add_widened(&mut sums, row);
            }
            sums
        })
        .collect();
    let mut sums = vec![0.0f64; dim];
    for block in block_sums {
        sums.iter_mut().zip(block).for_each(|(t, s)| *t += s);
    }
    // Σ‖x − μ‖² = Σ‖x‖² − n‖μ‖².
    let mean_norm: f64 = sums.iter().map(|s| (s / rows as f64).powi(2)).sum();
    let total: f64 = norms.iter().sum();
    let variance = ((total - rows as f64 * mean_norm) / (rows * dim) as f64).max(0.0);
    (norms, variance)
}

/// Greedy k-means++ (scikit-learn's seeding), for every restart at once: the first centre
/// uniformly, then for each next centre `2 + ⌊ln k⌋` candidate rows drawn with probability
/// proportional to the squared distance to the nearest centre so far, the candidate leaving the
/// lowest potential (the sum of those distances) kept. Trying several candidates leaves fewer
/// restarts in poor minima than one draw, and poor minima take many Lloyd passes to settle.
/// One sweep over the rows computes the distances to every restart's candidates, so seeding
/// reads the rows `k` times whatever the number of restarts. Each restart draws from its own
/// stream, derived from `seed`, so its centres do not depend on the others'.
fn seed_centres(
    x: &[f32],
    dim: usize,
    norms: &[f64],
    k: usize,
    restarts: usize,
    seed: u64,
) -> Vec<Vec<f64>> {
    let rows = norms.len();
    let trials = 2 + (k as f64).ln().floor() as usize;
    let mut streams = SplitMix64::new(seed);
    let mut rngs: Vec<SplitMix64> = (0..restarts)
        .map(|_| SplitMix64::new(streams.next_u64()))
        .collect();
    let mut chosen: Vec<Vec<usize>> = rngs.iter_mut().map(|r| vec![r.below(rows)]).collect();
    let firsts: Vec<usize> = chosen.iter().map(|c| c[0]).collect();
    let first = distances_to_rows(x, dim, norms, &firsts);
    let mut nearest: Vec<Vec<f64>> = (0..restarts)
        .map(|r| first.iter().skip(r).step_by(restarts).copied().collect())
        .collect();
    drop(first);
    for _ in 1..k {
        let candidates: Vec<usize> = rngs
            .iter_mut()
            .zip(&nearest)
            .flat_map(|(rng, nearest)| draw_candidates(nearest, trials, rng))
            .collect();
        let distances = distances_to_rows(x, dim, norms, &candidates);
        let m = candidates.len();
        for (r, nearest) in nearest.iter_mut().enumerate() {
            let column = |t: usize| distances[r * trials + t..].iter().step_by(m);
            let potential =
                |t: usize| -> f64 { nearest.iter().zip(column(t)).map(|(&n, &d)| n.min(d)).sum() };
            let kept = (0..trials)
                .map(|t| (t, potential(t)))
                .fold(
                    (0, f64::INFINITY),
                    |acc, (t, p)| if p < acc.1 { (t, p) } else { acc },
                )
                .0;
            nearest
                .iter_mut()
                .zip(column(kept))
                .for_each(|(n, &d)| *n = n.min(d));
            chosen[r].push(candidates[r * trials + kept]);
        }
    }
    chosen
        .iter()
        .map(|rows| {
            rows.iter()
                .flat_map(|&r| x[r * dim..(r + 1) * dim].iter().map(|&v| f64::from(v)))
                .collect()
        })
        .collect()
}

/// `trials` rows drawn with probability proportional to `nearest` (any rows where every
/// distance is zero: fewer distinct rows than clusters).
fn draw_candidates(nearest: &[f64], trials: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let rows = nearest.len();
    let cumulative: Vec<f64> = nearest
        .iter()
        .scan(0.0, |total, &d| {
            *total += d;
            Some(*total)
        })
        .collect();
    let total = cumulative[rows - 1];
    (0..trials)
        .map(|_| {
            if total > 0.0 {
                let target = rng.next_f64() * total;
                cumulative.partition_point(|&c| c <= target).min(rows - 1)
            } else {
                rng.below(rows)
            }
        })
        .collect()
}

/// Squared distances of every row to each of the rows `centres`, `[rows, centres.len()]`, as
/// [`assign`] computes them: `‖x‖² − 2x·c + ‖c‖²` with `x·c` in f32 by [`row_dots`].
fn distances_to_rows(x: &[f32], dim: usize, norms: &[f64], centres: &[usize]) -> Vec<f64> {
    let m = centres.len();
    let picked: Vec<f32> = centres
        .iter()
        .flat_map(|&r| x[r * dim..(r + 1) * dim].iter().copied())
        .collect();
    let mut out = vec![0.0f64; norms.len() * m];
    out.par_chunks_mut(ASSIGN_BLOCK * m)
        .zip(x.par_chunks(ASSIGN_BLOCK * dim))
        .zip(norms.par_chunks(ASSIGN_BLOCK))
        .for_each(|((out, block), block_norms)| {
            let mut dots = vec![0.0f32; m];
            for ((out, row), &n) in out
                .chunks_exact_mut(m)
                .zip(block.chunks_exact(dim))
                .zip(block_norms)
            {
                row_dots(&mut dots, row, &picked);
                for ((o, &dot), &c) in out.iter_mut().zip(&dots).zip(centres) {
                    *o = (n - 2.0 * f64::from(dot) + norms[c]).max(0.0);
                }
            }
        });
    out
}

/// Lloyd's iterations from `centres` until the squared centre shift is at most `tol` or
/// `max_iter` passes; the assignment and inertia are those of the final centres (one exact pass).
///
/// Hamerly's bounds spare most of the passes' reading: each row keeps an upper bound on the
/// distance to its centre and a lower bound on the distance to every other centre, and a centre
/// moving by `p` loosens them by `p`. A row whose upper bound stays below both its lower bound
/// and half the distance from its centre to the nearest other centre keeps its centre without
/// being read, and the cluster sums change only by the rows that move. Restarts that fall into
/// poor minima settle over tens of passes, most of which then read a small share of the rows.
/// The bounds are widened by the f32 dot products' rounding, so a row is skipped only where its
/// centre is still the nearest.
fn lloyd(
    x: &[f32],
    dim: usize,
    norms: &[f64],
    mut centres: Vec<f64>,
    max_iter: usize,
    tol: f64,
) -> KMeans {
    let k = centres.len() / dim;
    let mut state = Bounds::exact(x, dim, norms, &centres);
    let mut iterations = 0;
    loop {
        iterations += 1;
        let relocated = state.counts.contains(&0);
        let (sums, counts) = if relocated {
            // An empty cluster takes the row farthest from its centre (exact distances: a
            // plain pass), and the bounds start again from the next centres.
            let Pass {
                distances,
                mut sums,
                mut counts,
                ..
            } = assign(x, dim, norms, &centres);
            for c in 0..k {
                if counts[c] == 0 {
                    let far = (0..distances.len())
                        .max_by(|&a, &b| distances[a].total_cmp(&distances[b]))
                        .expect("rows");
                    sums[c * dim..(c + 1) * dim]
                        .iter_mut()
                        .zip(&x[far * dim..(far + 1) * dim])
                        .for_each(|(s, &v)| *s = f64::from(v));
                    counts[c] = 1;
                }
            }
            (Cow::Owned(sums), Cow::Owned(counts))
        } else {
            (Cow::Borrowed(&state.sums), Cow::Borrowed(&state.counts))
        };
        let new: Vec<f64> = sums
            .iter()
            .enumerate()
            .map(|(i, s)| s / counts[i / dim] as f64)
            .collect();
        let shift: f64 = new.iter().zip(&centres).map(|(a, b)| (a - b).powi(2)).sum();
        if shift <= tol || iterations >= max_iter {
            let pass = assign(x, dim, norms, &new);
            return KMeans {
                assignment: pass.assignment,
                centres: new,
                inertia: pass.distances.iter().sum(),
                iterations,
            };
        }
        if relocated || k > HAMERLY_MAX_K {
            state = Bounds::exact(x, dim, norms, &new);
        } else {
            state.advance(x, dim, norms, &centres, &new);
        }
        centres = new;
    }
}

/// Above this many clusters the bounds are not kept (half the distance to the nearest other
/// centre costs `k²·dim` per pass): every pass is exact.
const HAMERLY_MAX_K: usize = 256;

/// What Hamerly's bounds keep between passes: each row's centre, an upper bound on its distance
/// to it and a lower bound on its distance to any other centre (Euclidean, not squared), and
/// the sums and counts of each cluster's rows.
struct Bounds {
    assignment: Vec<usize>,
    upper: Vec<f64>,
    lower: Vec<f64>,
    sums: Vec<f64>,
    counts: Vec<usize>,
}

/// The f32 centres the row kernel reads, their squared norms, and how much a squared distance
/// is widened to cover the rounding of its f32 dot product.
struct CentreTerms {
    c32: Vec<f32>,
    c2: Vec<f64>,
    /// `|Δ(x·c)| ≤ γ·Σ|x_i c_i| ≤ γ(‖x‖² + ‖c‖²)/2` with `γ ≈ (dim/16 + 16)·u` for sums in 16
    /// lanes; this is twice that `γ`, times `‖x‖² + max ‖c‖²`.
    slack_factor: f64,
    c2_max: f64,
}

impl CentreTerms {
    fn new(centres: &[f64], dim: usize) -> Self {
        let c2: Vec<f64> = centres
            .chunks_exact(dim)
            .map(|c| c.iter().map(|v| v * v).sum())
            .collect();
        Self {
            c32: centres.iter().map(|&v| v as f32).collect(),
            slack_factor: (dim as f64 / 16.0 + 20.0) * f64::from(f32::EPSILON),
            c2_max: c2.iter().copied().fold(0.0, f64::max),
            c2,
        }
    }

    /// The widening of the squared distances of a row of squared norm `norm`.
    fn slack(&self, norm: f64) -> f64 {
        self.slack_factor * (norm + self.c2_max)
    }

    /// `(nearest, upper bound on the distance to it, lower bound on the distance to any other)`
    /// for a row of squared norm `norm` whose dot products with the centres are `dots`.
    fn nearest_two(&self, dots: &[f32], norm: f64) -> (usize, f64, f64) {
        let (mut best, mut first, mut second) = (0, f64::INFINITY, f64::INFINITY);
        for (c, (&dot, c2)) in dots.iter().zip(&self.c2).enumerate() {
            let d = (norm - 2.0 * f64::from(dot) + c2).max(0.0);
            if d < first {
                (best, second, first) = (c, first, d);
            } else if d < second {
                second = d;
            }
        }
        let slack = self.slack(norm);
        (
            best,
            (first + slack).sqrt(),
            (second - slack).max(0.0).sqrt(),
        )
    }
}

impl Bounds {
    /// Every row's distances to every centre: exact assignment, tight bounds, fresh sums.
    fn exact(x: &[f32], dim: usize, norms: &[f64], centres: &[f64]) -> Self {
        let k = centres.len() / dim;
        let terms = CentreTerms::new(centres, dim);
        let rows = norms.len();
        let mut state = Bounds {
            assignment: vec![0; rows],
            upper: vec![0.0; rows],
            lower: vec![0.0; rows],
            sums: vec![0.0; k * dim],
            counts: vec![0; k],
        };
        let partials: Vec<(Vec<f64>, Vec<usize>)> = x
            .par_chunks(ASSIGN_BLOCK * dim)
            .zip(norms.par_chunks(ASSIGN_BLOCK))
            .zip(state.assignment.par_chunks_mut(ASSIGN_BLOCK))
            .zip(state.upper.par_chunks_mut(ASSIGN_BLOCK))
            .zip(state.lower.par_chunks_mut(ASSIGN_BLOCK))
            .map(|((((block, norms), assignment), upper), lower)| {
                let mut sums = vec![0.0f64; k * dim];
                let mut counts = vec![0usize; k];
                let mut dots = vec![0.0f32; k];
                for (r, row) in block.chunks_exact(dim).enumerate() {
                    row_dots(&mut dots, row, &terms.c32);
                    let (best, up, low) = terms.nearest_two(&dots, norms[r]);
                    (assignment[r], upper[r], lower[r]) = (best, up, low);
                    counts[best] += 1;
                    add_widened(&mut sums[best * dim..(best + 1) * dim], row);
                }
                (sums, counts)
            })
            .collect();
        for (sums, counts) in partials {
            state.sums.iter_mut().zip(sums).for_each(|(t, s)| *t += s);
            state
                .counts
                .iter_mut()
                .zip(counts)
                .for_each(|(t, c)| *t += c);
        }
        state
    }

    /// The assignment to `new` from the one to `old`, reading only the rows the bounds do not
    /// settle; the sums move by the rows that change cluster, in row order.
    fn advance(&mut self, x: &[f32], dim: usize, norms: &[f64], old: &[f64], new: &[f64]) {
        let k = new.len() / dim;
        let distance = |a: &[f64], b: &[f64]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(p, q)| (p - q).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let shifts: Vec<f64> = old
            .chunks_exact(dim)
            .zip(new.chunks_exact(dim))
            .map(|(a, b)| distance(a, b))
            .collect();
        // The largest shift, which centre made it, and the largest of the others.
        let (mut top, mut top_centre, mut runner_up) = (0.0f64, 0, 0.0f64);
        for (c, &p) in shifts.iter().enumerate() {
            if p > top {
                (runner_up, top, top_centre) = (top, p, c);
            } else if p > runner_up {
                runner_up = p;
            }
        }
        let half_gap: Vec<f64> = (0..k)
            .map(|c| {
                let centre = &new[c * dim..(c + 1) * dim];
                (0..k)
                    .filter(|&o| o != c)
                    .map(|o| distance(centre, &new[o * dim..(o + 1) * dim]))
                    .fold(f64::INFINITY, f64::min)
                    / 2.0
            })
            .collect();
        let terms = CentreTerms::new(new, dim);
        let moves: Vec<Vec<(usize, usize, usize)>> = x
            .par_chunks(ASSIGN_BLOCK * dim)
            .zip(norms.par_chunks(ASSIGN_BLOCK))
            .zip(self.assignment.par_chunks_mut(ASSIGN_BLOCK))
            .zip(self.upper.par_chunks_mut(ASSIGN_BLOCK))
            .zip(self.lower.par_chunks_mut(ASSIGN_BLOCK))
            .enumerate()
            .map(|(b, ((((block, norms), assignment), upper), lower))| {
                let mut moves = Vec::new();
                let mut dots = vec![0.0f32; k];
                for r in 0..norms.len() {
                    let a = assignment[r];
                    upper[r] += shifts[a];
                    lower[r] -= if a == top_centre { runner_up } else { top };
                    let bound = half_gap[a].max(lower[r]);
                    if upper[r] <= bound {
                        continue;
                    }
                    let row = &block[r * dim..(r + 1) * dim];
                    let slack = terms.slack(norms[r]);
                    row_dots(&mut dots[..1], row, &terms.c32[a * dim..(a + 1) * dim]);
                    let own = (norms[r] - 2.0 * f64::from(dots[0]) + terms.c2[a]).max(0.0);
                    upper[r] = (own + slack).sqrt();
                    if upper[r] <= bound {
                        continue;
                    }
                    row_dots(&mut dots, row, &terms.c32);
                    let (best, up, low) = terms.nearest_two(&dots, norms[r]);
                    (assignment[r], upper[r], lower[r]) = (best, up, low);
                    if best != a {
                        moves.push((b * ASSIGN_BLOCK + r, a, best));
                    }
                }
                moves
            })
            .collect();
        for (r, from, to) in moves.into_iter().flatten() {
            let row = &x[r * dim..(r + 1) * dim];
            self.sums[from * dim..(from + 1) * dim]
                .iter_mut()
                .zip(row)
                .for_each(|(s, &v)| *s -= f64::from(v));
            add_widened(&mut self.sums[to * dim..(to + 1) * dim], row);
            self.counts[from] -= 1;
            self.counts[to] += 1;
        }
    }
}

/// Rows per block of the sweeps over the rows: one rayon task and one partial sum per block.
const ASSIGN_BLOCK: usize = 1024;

/// One assignment pass: each row's nearest centre and squared distance to it, and the sums and
/// counts of the rows of each cluster (the next centres).
struct Pass {
    assignment: Vec<usize>,
    distances: Vec<f64>,
    /// `[k, dim]` sums of each cluster's rows.
    sums: Vec<f64>,
    counts: Vec<usize>,
}

/// The nearest centre of every row and the squared distance to it, `‖x‖² − 2x·c + ‖c‖²` with
/// `x·c` in f32 by [`row_dots`] (in f64 after), and each cluster's row sums, in one sweep over the
/// rows: blocks in parallel, each block's partial sums added in block order (the same result on
/// any number of threads).
fn assign(x: &[f32], dim: usize, norms: &[f64], centres: &[f64]) -> Pass {
    let k = centres.len() / dim;
    let c32: Vec<f32> = centres.iter().map(|&v| v as f32).collect();
    let c2: Vec<f64> = centres
        .chunks_exact(dim)
        .map(|c| c.iter().map(|v| v * v).sum())
        .collect();
    let rows = norms.len();
    let mut pass = Pass {
        assignment: vec![0; rows],
        distances: vec![0.0; rows],
        sums: vec![0.0; k * dim],
        counts: vec![0; k],
    };
    // Blocks run a wave at a time so that only a wave's partial sums are held.
    let wave = ASSIGN_BLOCK * 2 * rayon::current_num_threads();
    for start in (0..rows).step_by(wave) {
        let end = (start + wave).min(rows);
        let partials: Vec<(Vec<f64>, Vec<usize>)> = x[start * dim..end * dim]
            .par_chunks(ASSIGN_BLOCK * dim)
            .zip(norms[start..end].par_chunks(ASSIGN_BLOCK))
            .zip(pass.assignment[start..end].par_chunks_mut(ASSIGN_BLOCK))
            .zip(pass.distances[start..end].par_chunks_mut(ASSIGN_BLOCK))
            .map(|(((block, norms), assignment), distances)| {
                let mut sums = vec![0.0f64; k * dim];
                let mut counts = vec![0usize; k];
                let mut dots = vec![0.0f32; k];
                // Each row is read from memory once: its dot products, then (while it is in
                // the cache) its addition into its cluster's sums.
                for (r, row) in block.chunks_exact(dim).enumerate() {
                    row_dots(&mut dots, row, &c32);
                    let (best, dist) = dots
                        .iter()
                        .zip(&c2)
                        .map(|(&dot, c2)| (norms[r] - 2.0 * f64::from(dot) + c2).max(0.0))
                        .enumerate()
                        .fold(
                            (0, f64::INFINITY),
                            |acc, (c, v)| if v < acc.1 { (c, v) } else { acc },
                        );
                    assignment[r] = best;
                    distances[r] = dist;
                    counts[best] += 1;
                    add_widened(&mut sums[best * dim..(best + 1) * dim], row);
                }
                (sums, counts)
            })
            .collect();
        for (sums, counts) in partials {
            pass.sums.iter_mut().zip(sums).for_each(|(t, s)| *t += s);
            pass.counts
                .iter_mut()
                .zip(counts)
                .for_each(|(t, c)| *t += c);
        }
    }
    pass
}

/// `[label][cluster]` counts.
pub fn contingency(
    truth: &[usize],
    labels: usize,
    found: &[usize],
    clusters: usize,
) -> Vec<Vec<usize>> {
    let mut table = vec![vec![0; clusters]; labels];
    truth
        .iter()
        .zip(found)
        .for_each(|(&t, &f)| table[t][f] += 1);
    table
}

fn choose2(n: usize) -> f64 {
    let n = n as f64;
    n * (n - 1.0) / 2.0
}

/// Hubert and Arabie's adjusted Rand index of a contingency table (1: identical partitions,
/// about 0: chance).
pub fn adjusted_rand_index(table: &[Vec<usize>]) -> f64 {
    let n: usize = table.iter().flatten().sum();
    let index: f64 = table.iter().flatten().map(|&c| choose2(c)).sum();
    let rows: f64 = table.iter().map(|r| choose2(r.iter().sum())).sum();
    let cols: f64 = (0..table.first().map_or(0, Vec::len))
        .map(|j| choose2(table.iter().map(|r| r[j]).sum()))
        .sum();
    let expected = rows * cols / choose2(n);
    let max = 0.5 * (rows + cols);
    if max == expected {
        // Both partitions trivial (one class, or every row alone): identical by convention.
        return 1.0;
    }
    (index - expected) / (max - expected)
}

/// Mutual information over the arithmetic mean of the two entropies (natural logs cancel).
pub fn normalized_mutual_information(table: &[Vec<usize>]) -> f64 {
    let n: usize = table.iter().flatten().sum();
    let n = n as f64;
    let row_sums: Vec<f64> = table
        .iter()
        .map(|r| r.iter().sum::<usize>() as f64)
        .collect();
    let cols = table.first().map_or(0, Vec::len);
    let col_sums: Vec<f64> = (0..cols)
        .map(|j| table.iter().map(|r| r[j]).sum::<usize>() as f64)
        .collect();
    let entropy = |sums: &[f64]| -> f64 {
        sums.iter()
            .filter(|&&s| s > 0.0)
            .map(|&s| -(s / n) * (s / n).ln())
            .sum()
    };
    let (h_rows, h_cols) = (entropy(&row_sums), entropy(&col_sums));
    if h_rows == 0.0 && h_cols == 0.0 {
        return 1.0;
    }
    let mut mi = 0.0;
    for (i, row) in table.iter().enumerate() {
        for (j, &c) in row.iter().enumerate() {
            if c > 0 {
                let c = c as f64;
                mi += (c / n) * (c * n / (row_sums[i] * col_sums[j])).ln();
            }
        }
    }
    mi / (0.5 * (h_rows + h_cols))
}

/// The share of rows in their cluster's most common label.
pub fn purity(table: &[Vec<usize>]) -> f64 {
    let n: usize = table.iter().flatten().sum();
    let cols = table.first().map_or(0, Vec::len);
    let majority: usize = (0..cols)
        .map(|j| table.iter().map(|r| r[j]).max().unwrap_or(0))
        .sum();
    majority as f64 / n as f64
}
