//! [`Claims`]: which WireGuard peer owns each allowed IP, found by sorting all claims by address
//! at once (as integers, by a radix sort) instead of looking each one up in a map of owners.

use ipnet::IpNet;

use super::sort::{order_key, radix_sort};

/// Allowed IPs claimed by peers, resolved first come, first served: the first claim of an
/// address owns it, a later claim by another peer is refused, a repeat by the owner ignored.
#[derive(Debug)]
pub(crate) struct Claims {
    /// The owned addresses, peer after peer, each peer's sorted by address (the order its set is
    /// built fastest from).
    owned: Vec<IpNet>,
    /// Where each peer's addresses start in `owned`, and how many it has.
    starts: Vec<usize>,
    counts: Vec<usize>,
    /// Refused claims as (claim, the first claim of its address), by claim.
    pub(crate) refused: Vec<(usize, usize)>,
}

impl Claims {
    /// Claim `i` is `ips[i]` by peer `claimants[i]` (of `peers`); earlier claims come first.
    pub(crate) fn resolve(ips: &[IpNet], claimants: &[usize], peers: usize) -> Claims {
        // The claims sorted by address, earlier claims first. IPv4 addresses over claim numbers
        // below 2^24 fit in a `u64`, which a radix sort orders in linear time.
        let ipv4_keys = (ips.len() < 1 << 24).then(|| {
            let ipv4_key = |(claim, ip): (usize, &IpNet)| match ip {
                IpNet::V4(net) => {
                    Some(u64::from(u32::from(net.addr())) << 32 | u64::from(net.prefix_len()) << 24 | claim as u64)
                }
                IpNet::V6(_) => None,
            };
            ips.iter().enumerate().map(ipv4_key).collect::<Option<Vec<u64>>>()
        });
        let mut owned: Vec<usize> = Vec::with_capacity(ips.len());
        let mut refused: Vec<(usize, usize)> = Vec::new();
        let mut counts = vec![0; peers];
        let mut first: Option<usize> = None;
        let mut claim_in_order = |claim: usize| match first {
            Some(first) if ips[first] == ips[claim] => {
                if claimants[first] != claimants[claim] {
                    refused.push((claim, first));
                }
            }
            _ => {
                first = Some(claim);
                owned.push(claim);
                counts[claimants[claim]] += 1;
            }
        };
        if let Some(Some(mut keys)) = ipv4_keys {
            radix_sort(&mut keys, 3..8);
            keys.into_iter().for_each(|key| claim_in_order((key & 0xff_ffff) as usize));
        } else {
            let mut keys: Vec<((u16, u128), usize)> = ips.iter().map(order_key).zip(0..).collect();
            keys.sort_unstable();
            keys.into_iter().for_each(|(_, claim)| claim_in_order(claim));
        }
        refused.sort_unstable();
        // Each peer's addresses, still sorted by address, side by side (a counting sort by peer).
        let starts: Vec<usize> = counts
            .iter()
            .scan(0, |next, count| {
                let start = *next;
                *next += count;
                Some(start)
            })
            .collect();
        let mut next = starts.clone();
        let mut sorted_ips = vec![IpNet::default(); owned.len()];
        for claim in owned {
            let slot = &mut next[claimants[claim]];
            sorted_ips[*slot] = ips[claim];
            *slot += 1;
        }
        Claims { owned: sorted_ips, starts, counts, refused }
    }

    /// The addresses peer `peer` owns, sorted.
    pub(crate) fn owned_by(&self, peer: usize) -> &[IpNet] {
        &self.owned[self.starts[peer]..self.starts[peer] + self.counts[peer]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_claim_of_an_address_owns_it() {
        let net = |text: &str| -> IpNet { text.parse().unwrap() };
        let ips = [net("10.0.0.2/32"), net("10.0.0.1/32"), net("fd00::1/128"), net("10.0.0.1/32"), net("10.0.0.2/32")];
        let claims = Claims::resolve(&ips, &[0, 0, 1, 1, 0], 3);
        assert_eq!(claims.owned_by(0), [net("10.0.0.1/32"), net("10.0.0.2/32")]);
        assert_eq!(claims.owned_by(1), [net("fd00::1/128")]);
        assert_eq!(claims.owned_by(2), []);
        assert_eq!(claims.refused, [(3, 1)]);
    }
}
