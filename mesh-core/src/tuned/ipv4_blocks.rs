//! [`Ipv4Blocks`]: the /16 blocks of the IPv4 space that a few address ranges touch, as a
//! bitmap, so that each of thousands of networks is ruled out by one bit instead of a search.

/// IPv4 /16 blocks (the top 16 bits of an address), as a set of 65,536 bits.
///
/// A network that touches no block of the set shares no address with the ranges inserted; one
/// that does may, and needs the exact check. Stands for "is there an inserted range overlapping
/// this one?" over a sorted list of ranges, which costs a binary search per question.
pub(crate) struct Ipv4Blocks {
    words: Box<[u64]>,
}

impl Ipv4Blocks {
    const WORDS: usize = (1 << 16) / 64;

    /// The empty set.
    pub(crate) fn new() -> Self {
        Ipv4Blocks { words: vec![0; Self::WORDS].into_boxed_slice() }
    }

    /// Adds the blocks of the addresses `first..=last`.
    pub(crate) fn insert(&mut self, first: u32, last: u32) {
        for block in (first >> 16)..=(last >> 16) {
            self.words[block as usize / 64] |= 1 << (block % 64);
        }
    }

    /// Whether a block of the addresses `first..=last` is in the set.
    pub(crate) fn touches(&self, first: u32, last: u32) -> bool {
        ((first >> 16)..=(last >> 16)).any(|block| self.words[block as usize / 64] & (1 << (block % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(network: &str) -> (u32, u32) {
        let network: ipnet::Ipv4Net = network.parse().unwrap();
        (u32::from(network.network()), u32::from(network.broadcast()))
    }

    /// The plain question: does any inserted range share an address with the network?
    fn overlaps(inserted: &[(u32, u32)], (first, last): (u32, u32)) -> bool {
        inserted.iter().any(|(from, to)| *from <= last && first <= *to)
    }

    #[test]
    fn never_rules_out_an_overlapping_network() {
        let inserted: Vec<(u32, u32)> =
            ["10.5.0.1/32", "172.16.3.0/24", "192.0.0.0/8", "255.255.255.255/32"].iter().map(|n| range(n)).collect();
        let mut blocks = Ipv4Blocks::new();
        for (first, last) in &inserted {
            blocks.insert(*first, *last);
        }
        for network in [
            "10.5.0.0/16",
            "10.5.0.1/32",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "172.16.3.7/32",
            "192.168.1.0/24",
            "255.255.255.0/24",
            "10.42.0.0/24",
            "11.0.0.1/32",
            "172.17.0.0/16",
            "193.0.0.0/8",
            "0.0.0.0/32",
        ] {
            let network = range(network);
            assert!(!overlaps(&inserted, network) || blocks.touches(network.0, network.1), "{network:?}");
        }
        // Networks in untouched blocks are ruled out.
        for network in ["10.42.0.0/24", "11.0.0.1/32", "172.17.0.0/16", "193.0.0.0/8", "0.0.0.0/32"] {
            let network = range(network);
            assert!(!blocks.touches(network.0, network.1), "{network:?}");
        }
    }

    #[test]
    fn empty_set_touches_nothing_and_everything_touches_all() {
        let (first, last) = range("0.0.0.0/0");
        assert!(!Ipv4Blocks::new().touches(first, last));
        let mut all = Ipv4Blocks::new();
        all.insert(first, last);
        assert!(all.touches(range("203.0.113.9/32").0, range("203.0.113.9/32").1));
    }
}
