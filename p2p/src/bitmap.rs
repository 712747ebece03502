//! Which pieces a host holds, as it travels in the scheduler protocol: bit `n` of the bitmap (byte
//! `n / 8`, bit `n % 8`, least significant first) is piece `n`.

/// A fixed-length set of piece numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bitmap {
    bits: Vec<u8>,
    len: u32,
}

impl Bitmap {
    pub fn new(len: u32) -> Self {
        Bitmap {
            bits: vec![0; len.div_ceil(8) as usize],
            len,
        }
    }

    /// A bitmap of `len` pieces from wire bytes; missing bytes are zeros, bits past `len` ignored.
    pub fn from_bytes(bytes: &[u8], len: u32) -> Self {
        let mut b = Bitmap::new(len);
        let n = b.bits.len().min(bytes.len());
        b.bits[..n].copy_from_slice(&bytes[..n]);
        if !len.is_multiple_of(8)
            && let Some(last) = b.bits.last_mut()
        {
            *last &= (1u8 << (len % 8)) - 1;
        }
        b
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, n: u32) -> bool {
        n < self.len && self.bits[(n / 8) as usize] & (1 << (n % 8)) != 0
    }

    pub fn set(&mut self, n: u32) {
        if n < self.len {
            self.bits[(n / 8) as usize] |= 1 << (n % 8);
        }
    }

    pub fn count(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Sets every piece `other` has.
    pub fn union(&mut self, other: &Bitmap) {
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= b;
        }
    }

    /// Clears every piece `other` has.
    pub fn subtract(&mut self, other: &Bitmap) {
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a &= !b;
        }
    }

    /// Clears every piece `other` lacks.
    pub fn intersect(&mut self, other: &Bitmap) {
        for (i, a) in self.bits.iter_mut().enumerate() {
            *a &= other.bits.get(i).copied().unwrap_or(0);
        }
    }

    /// How many pieces this has that `other` lacks (those past `other`'s end included).
    pub fn count_not_in(&self, other: &Bitmap) -> u32 {
        self.bits
            .iter()
            .enumerate()
            .map(|(i, a)| (a & !other.bits.get(i).copied().unwrap_or(0)).count_ones())
            .sum()
    }

    /// How many pieces this has that `other` lacks, of those `mask` has.
    pub fn count_in_not_in(&self, mask: &Bitmap, other: &Bitmap) -> u32 {
        self.bits
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let m = mask.bits.get(i).copied().unwrap_or(0);
                let o = other.bits.get(i).copied().unwrap_or(0);
                (a & m & !o).count_ones()
            })
            .sum()
    }

    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&n| self.get(n))
    }
}

impl FromIterator<bool> for Bitmap {
    fn from_iter<I: IntoIterator<Item = bool>>(iter: I) -> Self {
        let flags: Vec<bool> = iter.into_iter().collect();
        let mut b = Bitmap::new(u32::try_from(flags.len()).expect("piece counts fit in u32"));
        for (n, _) in (0u32..).zip(&flags).filter(|(_, f)| **f) {
            b.set(n);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn wire_round_trip(flags in proptest::collection::vec(any::<bool>(), 0..600)) {
            let b: Bitmap = flags.iter().copied().collect();
            let back = Bitmap::from_bytes(b.as_bytes(), b.len());
            prop_assert_eq!(&back, &b);
            prop_assert_eq!(back.count() as usize, flags.iter().filter(|f| **f).count());
            for (n, f) in flags.iter().enumerate() {
                prop_assert_eq!(back.get(n as u32), *f);
            }
        }

        #[test]
        fn counts_agree_with_the_pieces(
            a in proptest::collection::vec(any::<bool>(), 0..200),
            b in proptest::collection::vec(any::<bool>(), 0..200),
            m in proptest::collection::vec(any::<bool>(), 0..200),
        ) {
            let (a, b, m): (Bitmap, Bitmap, Bitmap) =
                (a.into_iter().collect(), b.into_iter().collect(), m.into_iter().collect());
            let not_in = a.ones().filter(|p| !b.get(*p)).count() as u32;
            prop_assert_eq!(a.count_not_in(&b), not_in);
            let masked = a.ones().filter(|p| m.get(*p) && !b.get(*p)).count() as u32;
            prop_assert_eq!(a.count_in_not_in(&m, &b), masked);
        }

        #[test]
        fn hostile_bytes_stay_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..100), len in 0u32..300) {
            let b = Bitmap::from_bytes(&bytes, len);
            prop_assert!(b.count() <= len);
            prop_assert!(b.ones().all(|n| n < len));
        }
    }
}
