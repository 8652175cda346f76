//! A fixed-size set of associate indexes. Eligibility is the intersection
//! of a few of these (available for the medium, in the team, has each
//! skill at the level), which is a few hundred word operations for ten
//! thousand associates instead of ten thousand lookups.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    pub fn new(len: usize) -> Bitset {
        Bitset {
            words: vec![0; len.div_ceil(64)],
        }
    }

    pub fn full(len: usize) -> Bitset {
        let mut set = Bitset::new(len);
        for i in 0..len {
            set.insert(i);
        }
        set
    }

    pub fn insert(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    pub fn remove(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }

    pub fn set(&mut self, i: usize, on: bool) {
        if on { self.insert(i) } else { self.remove(i) }
    }

    pub fn contains(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub fn intersect(&mut self, other: &Bitset) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
    }

    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(i * 64 + bit)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_intersect_iterate() {
        let mut a = Bitset::new(130);
        let mut b = Bitset::new(130);
        for i in [0, 5, 64, 129] {
            a.insert(i);
        }
        for i in [5, 64, 100] {
            b.insert(i);
        }
        a.intersect(&b);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![5, 64]);
        assert_eq!(a.count(), 2);
        a.remove(5);
        assert!(!a.contains(5) && a.contains(64));
        assert_eq!(Bitset::full(70).count(), 70);
        assert!(!Bitset::new(3).contains(1000));
    }
}
