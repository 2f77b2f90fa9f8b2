//! The mock server's dice: a SplitMix64 generator, seeded by the test that
//! wants reproducible draws, or from the OS's randomness otherwise. The
//! behaviours that happen "with a probability" (revocations at a rate, slow
//! answers) draw from this one generator, under the state's lock.

use std::{
    collections::hash_map::RandomState,
    fmt,
    hash::{BuildHasher, Hasher},
};

/// SplitMix64 (Steele, Lea and Flood, 2014): one add and a few mixes per
/// draw, every seed good, and the sequence of a seed is fixed forever, so a
/// seeded test replays the same draws on any machine. Not for secrets: the
/// tokens come from [`books`](super::books), not from here.
pub(super) struct Dice {
    state: u64,
}

impl Dice {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    pub(super) fn seeded(seed: u64) -> Self {
        Self { state: seed }
    }

    /// Seeded from the OS; should it have no randomness to give, from the
    /// keys of a `RandomState`, which std seeds on its own.
    pub(super) fn unseeded() -> Self {
        let seed = getrandom::u64().unwrap_or_else(|_| {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u8(0);
            hasher.finish()
        });
        Self::seeded(seed)
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`. Zero and one are certain and draw nothing,
    /// so that a behaviour that is off (or always on) leaves the sequence of
    /// the others as it would be without it.
    pub(super) fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        // The top 53 bits: a uniform double in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }
}

// The state would let a reader predict the next draws; it is nobody's
// business in a log.
impl fmt::Debug for Dice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dice").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_reference_splitmix64_sequence() {
        // The first outputs for seed 1234567 of the reference implementation
        // (Vigna's splitmix64.c).
        let mut dice = Dice::seeded(1_234_567);
        let first: Vec<u64> = (0..3).map(|_| dice.next_u64()).collect();
        assert_eq!(
            first,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
            ]
        );
    }

    #[test]
    fn certain_chances_draw_nothing() {
        let mut drawn = Dice::seeded(7);
        let mut spared = Dice::seeded(7);
        assert!(!spared.chance(0.0));
        assert!(spared.chance(1.0));
        assert!(!spared.chance(-3.0));
        assert_eq!(drawn.next_u64(), spared.next_u64());
    }

    #[test]
    fn chances_come_true_at_their_rate() {
        let mut dice = Dice::seeded(42);
        let hits = (0..100_000).filter(|_| dice.chance(0.25)).count();
        // Four standard deviations (about 550) either side of 25,000.
        assert!((24_450..=25_550).contains(&hits), "{hits}");
    }

    #[test]
    fn unseeded_dice_differ() {
        assert_ne!(Dice::unseeded().next_u64(), Dice::unseeded().next_u64());
    }
}
