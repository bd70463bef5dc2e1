//! Dense JL features of a transformer classifier's per-sample gradients, a tile of samples at a
//! time: row `(i, c)` of `[n·r, k]` is `P g_{i,c}`, `g_{i,c}` the gradient of seed `c` of sample
//! `i` flattened tensor by tensor in [`SequenceFactors::materialize`] order and `P` one
//! counter-based `k × P` map ([`JlSpec`]) over that whole vector.
//!
//! The map's entries cost more to generate than to multiply by, so the work is arranged to
//! generate each of its column blocks once per tile, not once per (sample, seed):
//!
//! - **embedding tables**: a sample's table gradient is its `δ` rows summed per id, zero
//!   elsewhere, so only the columns of ids some sample of the tile read are projected
//!   (`column_offset = table_base + id·width`), runs of consecutive ids in one call, each run
//!   with only the samples that hold one of its ids;
//! - **Linear weights**: `Σ_t δ_t a_tᵀ` of every (sample, seed) of the tile for a block of the
//!   weight's rows, projected together, block after block;
//! - **vectors** (biases, LayerNorm γ/β): every (sample, seed) row at once.
//!
//! Memory: at most [`CHUNK_VALUES`] gradient values are formed per call (64 MiB of f32, the
//! same again for the backend's copy) — or one weight row or table row of every (sample, seed)
//! if that is more — plus the `[n·r, k]` features and the backend's map slab.

use std::collections::BTreeMap;
use std::ops::Range;

use rayon::prelude::*;

use crate::backend::cpu::{gemm, Operand};
use crate::backend::{Backend, JlSpec};
use crate::error::{Error, Result};
use crate::models::classifier_grad::{seed_columns, SequenceFactors};

/// Gradient values formed per projection call: bounds a tile's memory whatever the model.
pub const CHUNK_VALUES: usize = 16 << 20;

/// The features `[n·r, jl.dim]` of the factors' samples (row `i·r + c`: sample `i`, seed `c`),
/// the parameter vector starting at `jl.column_offset`; `chunk_values` gradient values formed
/// per call ([`CHUNK_VALUES`] but in tests, where small chunks exercise the cuts).
pub fn dense_features(
    backend: &dyn Backend,
    f: &SequenceFactors,
    jl: &JlSpec,
    chunk_values: usize,
) -> Result<Vec<f32>> {
    let mut out = Projection {
        backend,
        jl,
        chunk_values,
        seeds: f.seeds,
        features: vec![0.0f32; f.num_samples() * f.seeds * jl.dim],
        offset: jl.column_offset,
    };
    out.tables(f)?;
    out.linears(f)?;
    let all: Vec<usize> = (0..f.num_samples()).collect();
    for v in &f.vectors {
        // Rows of `grads` are already the (sample, seed) pairs.
        out.project(&all, &v.grads, v.len, 0)?;
        out.offset += v.len as u64;
    }
    Ok(out.features)
}

/// The features being accumulated and the column offset of the next parameter tensor.
struct Projection<'a> {
    backend: &'a dyn Backend,
    jl: &'a JlSpec,
    chunk_values: usize,
    seeds: usize,
    features: Vec<f32>,
    offset: u64,
}

impl Projection<'_> {
    /// Adds `P[:, offset + at ..][.. width] · x_row` to the feature row of every (sample, seed)
    /// of `samples`; `x: [samples.len()·seeds, width]`, rows in the same order.
    fn project(&mut self, samples: &[usize], x: &[f32], width: usize, at: u64) -> Result<()> {
        let (r, k) = (self.seeds, self.jl.dim);
        let rows = samples.len() * r;
        let spec = JlSpec {
            column_offset: self.offset + at,
            ..*self.jl
        };
        let input = self.backend.upload(&[rows, width], x)?;
        let mut projected = self.backend.zeros(&[rows, k])?;
        self.backend
            .jl_project(&input, &spec, false, &mut projected)?;
        let projected = self.backend.download(&projected)?;
        for (&i, block) in samples.iter().zip(projected.chunks_exact(r * k)) {
            self.features[i * r * k..(i + 1) * r * k]
                .iter_mut()
                .zip(block)
                .for_each(|(f, p)| *f += p);
        }
        Ok(())
    }

    fn tables(&mut self, f: &SequenceFactors) -> Result<()> {
        let (r, w) = (self.seeds, f.embeddings.width);
        let n = f.num_samples();
        // Ids per call: a run's rows of every (sample, seed) stay under the chunk.
        let max_ids = (self.chunk_values / (n * r * w).max(1)).max(1);
        for table in &f.embeddings.tables {
            if let Some(&bad) = table.ids.iter().find(|&&id| id as usize >= table.rows) {
                return Err(Error::input(format!(
                    "{}: row id {bad} of a table of {} rows",
                    table.name, table.rows
                )));
            }
            // Each sample's δ rows summed per id (every seed side by side): duplicates first.
            let per_sample: Vec<BTreeMap<u32, Vec<f32>>> = (0..n)
                .map(|i| {
                    let mut sums: BTreeMap<u32, Vec<f32>> = BTreeMap::new();
                    for t in f.layout.range(i) {
                        let row = &f.embeddings.deltas[t * r * w..(t + 1) * r * w];
                        let sum = sums.entry(table.ids[t]).or_insert_with(|| vec![0.0; r * w]);
                        sum.iter_mut().zip(row).for_each(|(s, d)| *s += d);
                    }
                    sums
                })
                .collect();
            let mut ids: Vec<u32> = per_sample.iter().flat_map(|s| s.keys().copied()).collect();
            ids.sort_unstable();
            ids.dedup();
            for run in id_runs(&ids, max_ids) {
                let holders: Vec<usize> = (0..n)
                    .filter(|&i| per_sample[i].range(run.clone()).next().is_some())
                    .collect();
                let width = run.len() * w;
                let mut x = vec![0.0f32; holders.len() * r * width];
                for (rows, &i) in x.chunks_exact_mut(r * width).zip(&holders) {
                    for (&id, sum) in per_sample[i].range(run.clone()) {
                        let at = (id - run.start) as usize * w;
                        for (c, s) in sum.chunks_exact(w).enumerate() {
                            rows[c * width + at..][..w].copy_from_slice(s);
                        }
                    }
                }
                self.project(&holders, &x, width, run.start as u64 * w as u64)?;
            }
            self.offset += (table.rows * w) as u64;
        }
        Ok(())
    }

    fn linears(&mut self, f: &SequenceFactors) -> Result<()> {
        let (n, r) = (f.num_samples(), self.seeds);
        let all: Vec<usize> = (0..n).collect();
        for lin in &f.linears {
            let (d_in, d_out) = (lin.d_in, lin.d_out);
            let block = (self.chunk_values / (n * r * d_in).max(1)).clamp(1, d_out.max(1));
            for first in (0..d_out).step_by(block) {
                let out_rows = first..(first + block).min(d_out);
                let width = out_rows.len() * d_in;
                let mut x = vec![0.0f32; n * r * width];
                x.par_chunks_mut(r * width)
                    .enumerate()
                    .for_each(|(i, sample)| {
                        let rows = f.sample_rows(lin.rows, i);
                        let acts = &lin.acts[rows.start * d_in..rows.end * d_in];
                        for (c, grad) in sample.chunks_exact_mut(width).enumerate() {
                            let delta = seed_columns(
                                &lin.deltas,
                                rows.clone(),
                                r,
                                d_out,
                                c,
                                out_rows.clone(),
                            );
                            gemm(
                                grad,
                                Operand::transposed(&delta, rows.len(), out_rows.len()),
                                Operand::plain(acts, rows.len(), d_in),
                                false,
                            );
                        }
                    });
                self.project(&all, &x, width, (first * d_in) as u64)?;
            }
            self.offset += (d_out * d_in) as u64;
        }
        Ok(())
    }
}

/// Sorted distinct `ids` cut into runs of consecutive ids, at most `max` each.
fn id_runs(ids: &[u32], max: usize) -> Vec<Range<u32>> {
    let mut runs: Vec<Range<u32>> = Vec::new();
    for &id in ids {
        match runs.last_mut() {
            Some(run) if run.end == id && run.len() < max => run.end += 1,
            _ => runs.push(id..id + 1),
        }
    }
    runs
}
