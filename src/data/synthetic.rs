//! Seeded toy classification data, after scikit-learn's `make_moons` and `make_blobs`: small,
//! fast to train on, and with a known answer (what a working trainer must reach).

use std::f64::consts::PI;

use super::Dataset;
use crate::error::{Error, Result};
use crate::random::SplitMix64;

/// Two interleaving half circles in 2-D (`make_moons`): `n / 2` rows on the upper moon (label 0),
/// the rest on the lower one (label 1), Gaussian noise of standard deviation `noise` added to
/// every coordinate, rows in random order.
pub fn moons(n: usize, noise: f64, seed: u64) -> Result<Dataset> {
    if n < 2 {
        return Err(Error::input(format!(
            "moons: --n {n}: need at least 2 rows, one per moon"
        )));
    }
    check_spread("--noise", noise)?;
    check_size(n, 2)?;
    let mut rng = SplitMix64::new(seed);
    let (n_upper, n_lower) = (n / 2, n - n / 2);
    let mut x = Vec::with_capacity(2 * n);
    let mut y = Vec::with_capacity(n);
    for (count, label) in [(n_upper, 0), (n_lower, 1)] {
        for i in 0..count {
            // numpy's linspace(0, π, count): both ends included.
            let t = if count > 1 {
                PI * i as f64 / (count - 1) as f64
            } else {
                0.0
            };
            let (px, py) = if label == 0 {
                (t.cos(), t.sin())
            } else {
                (1.0 - t.cos(), 0.5 - t.sin())
            };
            x.push((px + noise * rng.normal()) as f32);
            x.push((py + noise * rng.normal()) as f32);
            y.push(label);
        }
    }
    Ok(shuffled(Dataset::new(x, 2, y)?, &mut rng))
}

/// `classes` isotropic Gaussian blobs in `dim` dimensions (`make_blobs`): centres uniform in
/// `[-10, 10)^dim`, standard deviation `std`, the rows shared out as evenly as possible (the
/// first `n % classes` classes get one more), rows in random order.
pub fn blobs(n: usize, classes: usize, dim: usize, std: f64, seed: u64) -> Result<Dataset> {
    if classes < 2 {
        return Err(Error::input(format!(
            "blobs: --classes {classes}: a classifier needs at least 2"
        )));
    }
    if n < classes {
        return Err(Error::input(format!(
            "blobs: --n {n} is fewer rows than --classes {classes}"
        )));
    }
    if dim == 0 {
        return Err(Error::input("blobs: --dim must be at least 1"));
    }
    check_spread("--std", std)?;
    check_size(n, dim)?;
    let mut rng = SplitMix64::new(seed);
    let centres: Vec<f64> = (0..classes * dim)
        .map(|_| 20.0 * rng.next_f64() - 10.0)
        .collect();
    let mut x = Vec::with_capacity(n * dim);
    let mut y = Vec::with_capacity(n);
    for (k, centre) in centres.chunks_exact(dim).enumerate() {
        let count = n / classes + usize::from(k < n % classes);
        for _ in 0..count {
            x.extend(centre.iter().map(|&c| (c + std * rng.normal()) as f32));
            y.push(k as i64);
        }
    }
    Ok(shuffled(Dataset::new(x, dim, y)?, &mut rng))
}

fn check_spread(flag: &str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Error::input(format!(
            "{flag} {value}: must be a finite number ≥ 0"
        )))
    }
}

/// The rows of `data` in a random order, so that a prefix is not one class.
fn shuffled(data: Dataset, rng: &mut SplitMix64) -> Dataset {
    let mut order: Vec<usize> = (0..data.len()).collect();
    rng.shuffle(&mut order);
    data.select(&order)
}

/// An error naming `--n` and `--dim` when `n` rows of `dim` f32 features (and their i64 labels)
/// do not fit in memory.
fn check_size(n: usize, dim: usize) -> Result<()> {
    crate::limits::check_memory(
        &format!("--n {n} rows of {dim} features"),
        n as f64 * (4.0 * dim as f64 + 8.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moons_lie_on_their_half_circles_without_noise() {
        let data = moons(101, 0.0, 3).unwrap();
        assert_eq!((data.len(), data.dim), (101, 2));
        assert_eq!(data.y.iter().filter(|&&l| l == 0).count(), 50);
        for i in 0..data.len() {
            let (px, py) = (data.row(i)[0] as f64, data.row(i)[1] as f64);
            // Upper moon: unit circle about (0, 0), y ≥ 0; lower: about (1, 0.5), y ≤ 0.5.
            let (cx, cy, side) = if data.y[i] == 0 {
                (0.0, 0.0, py >= -1e-6)
            } else {
                (1.0, 0.5, py <= 0.5 + 1e-6)
            };
            assert!(((px - cx).hypot(py - cy) - 1.0).abs() < 1e-5, "row {i}");
            assert!(side, "row {i} is on the wrong half");
        }
    }

    #[test]
    fn blobs_share_rows_evenly_around_their_centres() {
        let data = blobs(1001, 4, 3, 0.5, 9).unwrap();
        assert_eq!((data.len(), data.dim), (1001, 3));
        let counts: Vec<usize> = (0..4)
            .map(|k| data.y.iter().filter(|&&l| l == k).count())
            .collect();
        assert_eq!(counts, [251, 250, 250, 250]);
        assert!(data.x.iter().all(|v| v.abs() < 10.0 + 0.5 * 6.0));
    }

    #[test]
    fn generators_are_deterministic_in_the_seed() {
        assert_eq!(moons(50, 0.1, 1).unwrap(), moons(50, 0.1, 1).unwrap());
        assert_ne!(moons(50, 0.1, 1).unwrap(), moons(50, 0.1, 2).unwrap());
        assert_eq!(
            blobs(50, 3, 5, 1.0, 1).unwrap(),
            blobs(50, 3, 5, 1.0, 1).unwrap()
        );
        assert_ne!(
            blobs(50, 3, 5, 1.0, 1).unwrap(),
            blobs(50, 3, 5, 1.0, 2).unwrap()
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let message = |r: Result<Dataset>| r.unwrap_err().to_string();
        assert!(message(moons(1, 0.1, 0)).contains("--n 1"));
        assert!(message(moons(10, -0.1, 0)).contains("--noise"));
        assert!(message(blobs(10, 1, 2, 1.0, 0)).contains("--classes 1"));
        assert!(message(blobs(2, 3, 2, 1.0, 0)).contains("fewer rows"));
        assert!(message(blobs(10, 2, 2, f64::NAN, 0)).contains("--std"));
    }
}
