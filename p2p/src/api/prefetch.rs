//! A layer's prefetch list, as the snapshotter publishes it and the mirror checks it.

/// A layer's prefetch list: the compressed spans the first host to run the layer read during
/// its first start, in the order first read. The next hosts' mounts make them present first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefetchList {
    pub ranges: Vec<std::ops::Range<u64>>,
}

impl PrefetchList {
    /// The first bytes of an encoded list.
    pub const MAGIC: &[u8; 8] = b"SHOALPF1";
    /// The most spans a list holds.
    pub const MAX_RANGES: usize = 4096;
    /// The largest list, encoded.
    pub const MAX_BYTES: u64 = 12 + 16 * Self::MAX_RANGES as u64;

    /// Adds `range` unless one already there covers it; `false` once the list is full.
    pub fn record(&mut self, range: std::ops::Range<u64>) -> bool {
        if range.is_empty()
            || self
                .ranges
                .iter()
                .any(|r| r.start <= range.start && range.end <= r.end)
        {
            return true;
        }
        if self.ranges.len() >= Self::MAX_RANGES {
            return false;
        }
        self.ranges.push(range);
        true
    }

    /// Compressed bytes the spans cover (overlaps counted once per span).
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + 16 * self.ranges.len());
        out.extend_from_slice(Self::MAGIC);
        out.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        for r in &self.ranges {
            out.extend_from_slice(&r.start.to_le_bytes());
            out.extend_from_slice(&r.end.to_le_bytes());
        }
        out
    }

    /// A list as [`PrefetchList::to_bytes`] wrote it, every span within a layer of
    /// `layer_len` bytes; anything else is an error saying what is wrong.
    pub fn from_bytes(bytes: &[u8], layer_len: u64) -> Result<PrefetchList, String> {
        let rest = bytes
            .strip_prefix(Self::MAGIC)
            .ok_or("not a prefetch list (no SHOALPF1 magic)")?;
        let (count, rest) = rest
            .split_at_checked(4)
            .ok_or("a prefetch list cut short")?;
        let count = u32::from_le_bytes(count.try_into().expect("4 bytes")) as usize;
        if count > Self::MAX_RANGES {
            return Err(format!(
                "a prefetch list of {count} spans (at most {})",
                Self::MAX_RANGES
            ));
        }
        if rest.len() != 16 * count {
            return Err(format!(
                "a prefetch list of {count} spans in {} bytes",
                rest.len()
            ));
        }
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let ranges = rest
            .chunks_exact(16)
            .map(|c| {
                let (start, end) = (word(&c[..8]), word(&c[8..]));
                if start < end && end <= layer_len {
                    Ok(start..end)
                } else {
                    Err(format!(
                        "span {start}..{end} is not within the layer's {layer_len} bytes"
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(PrefetchList { ranges })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefetch_list_round_trips_and_bad_lists_are_refused() {
        let mut list = PrefetchList::default();
        assert!(list.record(100..200));
        assert!(list.record(120..150), "covered: kept out");
        assert!(list.record(0..10));
        assert!(list.record(5..5), "empty: kept out");
        assert_eq!(list.ranges, vec![100..200, 0..10]);
        assert_eq!(list.bytes(), 110);
        let bytes = list.to_bytes();
        assert_eq!(PrefetchList::from_bytes(&bytes, 200).unwrap(), list);
        // A span past the layer, a reversed span, a wrong count, no magic, too many spans.
        assert!(PrefetchList::from_bytes(&bytes, 199).is_err());
        let mut reversed = PrefetchList::default().to_bytes();
        reversed[8] = 1;
        reversed.extend_from_slice(&9u64.to_le_bytes());
        reversed.extend_from_slice(&3u64.to_le_bytes());
        assert!(PrefetchList::from_bytes(&reversed, 200).is_err());
        assert!(PrefetchList::from_bytes(&bytes[..bytes.len() - 1], 200).is_err());
        assert!(PrefetchList::from_bytes(b"SHOALGZL", 200).is_err());
        let mut many = bytes[..8].to_vec();
        many.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(PrefetchList::from_bytes(&many, 200).is_err());
        let mut full = PrefetchList::default();
        for i in 0..PrefetchList::MAX_RANGES as u64 {
            assert!(full.record(2 * i..2 * i + 1));
        }
        assert!(!full.record(u64::MAX - 1..u64::MAX), "full");
        assert_eq!(full.to_bytes().len() as u64, PrefetchList::MAX_BYTES);
    }
}
