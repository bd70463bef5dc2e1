//! Inverted dropout masks that are a pure function of their coordinates: entry `(row, col)` of
//! the mask named by `key` is kept, and scaled by `1/(1 − p)`, when the top 53 bits of
//! [`counter_hash`]`(key, row, col)`, read as a fraction of 2⁵³, are at least `p`; otherwise it
//! is zeroed. Any thread, tile or device draws the same mask, so a training run is reproducible
//! whatever the thread count, and the backward pass multiplies by the very mask of the forward.

use crate::error::{Error, Result};
use crate::random::counter_hash;

/// One dropout mask: its key and drop probability (see the module docs for the draw).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutMask {
    key: u64,
    p: f64,
    /// Entries whose 53-bit draw is below this are dropped: `⌈p·2⁵³⌉`.
    threshold: u64,
    /// `1/(1 − p)`, what kept entries are multiplied by.
    scale: f32,
}

impl DropoutMask {
    /// The mask named by `key` dropping with probability `p`; an error unless `0 ≤ p < 1`.
    pub fn new(key: u64, p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::input(format!(
                "dropout probability {p} is outside [0, 1)"
            )));
        }
        // p·2⁵³ is exact (a power-of-two scaling), so the comparison is the fraction's.
        let threshold = (p * (1u64 << 53) as f64).ceil() as u64;
        Ok(DropoutMask {
            key,
            p,
            threshold,
            scale: (1.0 / (1.0 - p)) as f32,
        })
    }

    pub fn key(&self) -> u64 {
        self.key
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// Whether entry `(row, col)` is kept.
    #[inline]
    pub fn keeps(&self, row: u64, col: u64) -> bool {
        counter_hash(self.key, row, col) >> 11 >= self.threshold
    }

    /// What entry `(row, col)` is multiplied by: `1/(1 − p)` where kept, else 0.
    #[inline]
    pub fn factor(&self, row: u64, col: u64) -> f32 {
        if self.keeps(row, col) {
            self.scale
        } else {
            0.0
        }
    }
}
