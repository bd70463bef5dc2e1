//! How closely two models' outputs agree, point by point: Kendall's τ-b of their rankings, the
//! coefficient of determination of one by the other, and Pearson's r.

/// Kendall's τ-b (ties in either variable handled as scipy's `kendalltau`) by Knight's
/// O(n log n) algorithm: sort by `(x, y)`, count tied pairs, then count the discordant pairs as
/// the swaps a merge sort of the `y` sequence makes. NaN when either variable is constant.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "kendall_tau_b: lengths differ");
    let n = x.len() as u64;
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]).then(y[a].total_cmp(&y[b])));
    let tied_x = tied_pairs(order.iter().map(|&i| x[i]));
    let tied_xy = tied_pairs(order.iter().map(|&i| (x[i], y[i])));
    let mut ys: Vec<f64> = order.iter().map(|&i| y[i]).collect();
    let discordant = merge_sort_swaps(&mut ys);
    let tied_y = tied_pairs(ys.iter().copied());
    let total = n * n.saturating_sub(1) / 2;
    let score =
        total as f64 - tied_x as f64 - tied_y as f64 + tied_xy as f64 - 2.0 * discordant as f64;
    score / ((total - tied_x) as f64 * (total - tied_y) as f64).sqrt()
}

/// `Σ t(t−1)/2` over the runs of equal values of a sorted sequence.
fn tied_pairs<T: PartialEq>(sorted: impl Iterator<Item = T>) -> u64 {
    let (mut pairs, mut run, mut last) = (0u64, 0u64, None);
    for v in sorted {
        if last.as_ref() == Some(&v) {
            run += 1;
        } else {
            pairs += run * (run.saturating_sub(1)) / 2;
            run = 1;
        }
        last = Some(v);
    }
    pairs + run * run.saturating_sub(1) / 2
}

/// Sorts `v` ascending (stably) and returns how many pairs were out of order (ties are not).
fn merge_sort_swaps(v: &mut [f64]) -> u64 {
    if v.len() < 2 {
        return 0;
    }
    let mid = v.len() / 2;
    let mut swaps = merge_sort_swaps(&mut v[..mid]) + merge_sort_swaps(&mut v[mid..]);
    let mut merged = Vec::with_capacity(v.len());
    let (mut i, mut j) = (0, mid);
    while i < mid && j < v.len() {
        if v[i] <= v[j] {
            merged.push(v[i]);
            i += 1;
        } else {
            // v[j] jumps ahead of every left element still waiting.
            swaps += (mid - i) as u64;
            merged.push(v[j]);
            j += 1;
        }
    }
    merged.extend_from_slice(&v[i..mid]);
    merged.extend_from_slice(&v[j..]);
    v.copy_from_slice(&merged);
    swaps
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Coefficient of determination of `truth` by `prediction`: `1 − SS_res / SS_tot`
/// (scikit-learn's `r2_score`).
pub fn r2_score(truth: &[f64], prediction: &[f64]) -> f64 {
    let m = mean(truth);
    let residual: f64 = truth
        .iter()
        .zip(prediction)
        .map(|(t, p)| (t - p).powi(2))
        .sum();
    let total: f64 = truth.iter().map(|t| (t - m).powi(2)).sum();
    1.0 - residual / total
}

/// Pearson correlation coefficient.
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (mean(a), mean(b));
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        ab += dx * dy;
        aa += dx * dx;
        bb += dy * dy;
    }
    ab / (aa * bb).sqrt()
}
