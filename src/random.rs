//! Seeded randomness, identical on every machine: a sequential generator for shuffles, synthetic
//! data and initialisation, and a counter-based hash for random matrices that are generated where
//! they are used instead of stored (the JL projections).

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable, passes BigCrush.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::STEP);
        mix(self.0)
    }

    /// What the state adds per draw: the generator jumps ahead in O(1).
    const STEP: u64 = 0x9E37_79B9_7F4A_7C15;

    /// This generator as it will be after `draws` calls of [`SplitMix64::next_u64`] (each
    /// [`SplitMix64::normal`] makes two), so that threads can each draw their own stretch of
    /// one sequence.
    pub fn ahead(&self, draws: u64) -> Self {
        SplitMix64(self.0.wrapping_add(Self::STEP.wrapping_mul(draws)))
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (the modulo bias is below 2⁻⁴⁰ for any row count).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Puts `items` in a uniformly random order (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }

    /// Standard normal by Box–Muller.
    pub fn normal(&mut self) -> f64 {
        let u = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let v = self.next_f64();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// SplitMix64's finaliser: a bijection of u64 with full avalanche.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 random bits for entry `(row, col)` of the matrix named by `seed`: a pure function, so any
/// thread or device can generate any tile of the matrix in any order and get the same entries.
#[inline]
pub fn counter_hash(seed: u64, row: u64, col: u64) -> u64 {
    let h = mix(seed ^ 0x243F_6A88_85A3_08D3);
    let h = mix(h ^ row.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    mix(h ^ col.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// ±1 with probability ½ each for entry `(row, col)`.
#[inline]
pub fn rademacher(seed: u64, row: u64, col: u64) -> f32 {
    if counter_hash(seed, row, col) >> 63 == 0 {
        1.0
    } else {
        -1.0
    }
}

/// A standard normal for entry `(row, col)` (Box–Muller on the hash's two 32-bit halves).
/// The pure-Rust `libm` functions are used on purpose: glibc's `logf`/`cosf` ran ~10× slower
/// when called between faer's AVX GEMMs (2.1 s vs 0.29 s for 8M entries, measured), which is
/// exactly where projections generate their tiles.
#[inline]
pub fn gaussian(seed: u64, row: u64, col: u64) -> f32 {
    let h = counter_hash(seed, row, col);
    let u = ((h >> 32) as f32 + 0.5) / 4_294_967_296.0;
    let v = (h & 0xFFFF_FFFF) as f32 / 4_294_967_296.0;
    (-2.0 * libm::logf(u)).sqrt() * libm::cosf(std::f32::consts::TAU * v)
}
