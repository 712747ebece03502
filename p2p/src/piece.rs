//! Piece math: how a task's content is cut into pieces.
//!
//! The rule is Dragonfly's with a lower floor: `clamp(next_power_of_two(len / 500), 1 MiB,
//! 64 MiB)`, so a task has at most ~500 pieces. Dragonfly's floor is 4 MiB; in the lab (8 hosts,
//! 256 MiB, 200 Mbit/s links) 1 MiB pieces took the median host from 1.6–1.7× to 1.4× the ideal
//! time, a piece being passed on sooner after it arrives (integration/BENCHMARKS.md). From 2 GiB
//! up the two rules agree.

use std::ops::Range;

use serde::{Deserialize, Serialize};

pub const MIN_PIECE_LENGTH: u64 = 1 << 20;
pub const MAX_PIECE_LENGTH: u64 = 64 << 20;
pub const TARGET_PIECE_COUNT: u64 = 500;
/// The largest task: 16 TiB, 262,144 pieces of 64 MiB. A length from the network (a scheduler's
/// view, a peer's announce, an origin's `Content-Range`) above it is refused, not allocated for.
pub const MAX_CONTENT_LENGTH: u64 = 1 << 44;

/// The piece length for `content_length` bytes.
pub fn piece_length(content_length: u64) -> u64 {
    (content_length / TARGET_PIECE_COUNT)
        .checked_next_power_of_two()
        .unwrap_or(MAX_PIECE_LENGTH)
        .clamp(MIN_PIECE_LENGTH, MAX_PIECE_LENGTH)
}

/// The cut of one task's content into pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub content_length: u64,
    pub piece_length: u64,
}

impl Layout {
    /// The default layout for `content_length` bytes; `None` above [`MAX_CONTENT_LENGTH`].
    pub fn for_length(content_length: u64) -> Option<Self> {
        (content_length <= MAX_CONTENT_LENGTH).then(|| Layout {
            content_length,
            piece_length: piece_length(content_length),
        })
    }

    /// How many pieces there are (saturating: a layout not made by [`Layout::for_length`] may
    /// claim more than a task can have).
    pub fn piece_count(&self) -> u32 {
        let count = self.content_length.div_ceil(self.piece_length.max(1));
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// The byte range of piece `n`. Panics when `n` is out of range: callers index with
    /// numbers below [`Layout::piece_count`].
    pub fn range(&self, n: u32) -> Range<u64> {
        assert!(n < self.piece_count(), "piece {n} out of range");
        let start = u64::from(n) * self.piece_length;
        start..(start + self.piece_length).min(self.content_length)
    }

    /// The pieces that hold bytes of `range` (empty when the range is).
    pub fn pieces_covering(&self, range: Range<u64>) -> Range<u32> {
        let end = range.end.min(self.content_length);
        if range.start >= end {
            return 0..0;
        }
        let first = u32::try_from(range.start / self.piece_length).expect("below piece count");
        let last = u32::try_from((end - 1) / self.piece_length).expect("below piece count");
        first..last + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn piece_length_rule() {
        assert_eq!(piece_length(0), MIB);
        assert_eq!(piece_length(1), MIB);
        assert_eq!(piece_length(256 * MIB), MIB);
        assert_eq!(piece_length(500 * MIB), MIB);
        assert_eq!(piece_length(501 * MIB), 2 * MIB);
        assert_eq!(piece_length(1024 * MIB), 4 * MIB);
        assert_eq!(piece_length(2000 * MIB), 4 * MIB);
        // From here on, Dragonfly's rule.
        assert_eq!(piece_length(2100 * MIB), 8 * MIB);
        assert_eq!(piece_length(4000 * MIB), 8 * MIB);
        assert_eq!(piece_length(8000 * MIB), 16 * MIB);
        assert_eq!(piece_length(100_000 * MIB), 64 * MIB);
        assert_eq!(piece_length(u64::MAX), 64 * MIB);
    }

    #[test]
    fn ranges_and_counts() {
        let l = Layout {
            content_length: 10 * MIB + 1,
            piece_length: 4 * MIB,
        };
        assert_eq!(l.piece_count(), 3);
        assert_eq!(l.range(0), 0..4 * MIB);
        assert_eq!(l.range(2), 8 * MIB..10 * MIB + 1);
        assert_eq!(Layout::for_length(0).unwrap().piece_count(), 0);
        let largest = Layout::for_length(MAX_CONTENT_LENGTH).unwrap();
        assert_eq!(largest.piece_count(), 1 << 18);
        assert_eq!(Layout::for_length(MAX_CONTENT_LENGTH + 1), None);
        assert_eq!(Layout::for_length(1 << 58), None);
        let forged = Layout {
            content_length: u64::MAX,
            piece_length: 0,
        };
        assert_eq!(
            forged.piece_count(),
            u32::MAX,
            "no panic, no division by zero"
        );
        assert_eq!(l.pieces_covering(0..1), 0..1);
        assert_eq!(l.pieces_covering(4 * MIB - 1..4 * MIB + 1), 0..2);
        assert_eq!(l.pieces_covering(5..5), 0..0);
        assert_eq!(l.pieces_covering(10 * MIB..u64::MAX), 2..3);
    }

    proptest! {
        #[test]
        fn pieces_tile_the_content(len in 0u64..(1 << 40)) {
            let l = Layout::for_length(len).unwrap();
            prop_assert!(u64::from(l.piece_count()) <= TARGET_PIECE_COUNT.max(len.div_ceil(MAX_PIECE_LENGTH)));
            if l.piece_count() > 0 {
                prop_assert_eq!(l.range(0).start, 0);
                let last = l.range(l.piece_count() - 1);
                prop_assert_eq!(last.end, len);
                prop_assert!(!last.is_empty());
            }
        }

        #[test]
        fn covering_pieces_contain_the_range(len in 1u64..(1 << 34), a in any::<u64>(), b in any::<u64>()) {
            let l = Layout::for_length(len).unwrap();
            let (s, e) = (a % len, b % (len + 1));
            prop_assume!(s < e);
            let ps = l.pieces_covering(s..e);
            prop_assert!(l.range(ps.start).start <= s);
            prop_assert!(l.range(ps.end - 1).end >= e);
            // Minimal: the first and last pieces really hold bytes of the range.
            prop_assert!(l.range(ps.start).end > s);
            prop_assert!(l.range(ps.end - 1).start < e);
        }
    }
}
