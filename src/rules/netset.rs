//! A set of networks answered by binary search: CIDR blocks become sorted,
//! merged ranges over one 128-bit space (IPv4 as IPv4-mapped IPv6), so a
//! list of a million networks costs one lookup of about twenty steps.

use std::net::IpAddr;

use crate::forwarded::Cidr;

/// Sorted, non-overlapping, non-adjacent inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetSet {
    ranges: Vec<(u128, u128)>,
}

fn point(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl NetSet {
    /// The set of addresses in any of `nets`.
    pub fn new(nets: &[Cidr]) -> Self {
        let mut ranges: Vec<(u128, u128)> = nets
            .iter()
            .map(|n| (point(n.network()), point(n.broadcast())))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged.shrink_to_fit();
        NetSet { ranges: merged }
    }

    /// Whether `ip` is in the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let p = point(ip);
        let i = self.ranges.partition_point(|&(start, _)| start <= p);
        i > 0 && p <= self.ranges[i - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> NetSet {
        NetSet::new(
            &nets
                .iter()
                .map(|n| n.parse().unwrap())
                .collect::<Vec<Cidr>>(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn membership_matches_the_cidrs() {
        let s = set(&[
            "10.0.0.0/8",
            "192.0.2.0/24",
            "192.0.3.0/24",
            "2001:db8::/32",
            "198.51.100.7",
        ]);
        for yes in [
            "10.255.255.255",
            "10.0.0.0",
            "192.0.2.1",
            "192.0.3.254",
            "2001:db8:ffff::1",
            "198.51.100.7",
            "::ffff:10.1.2.3",
        ] {
            assert!(s.contains(ip(yes)), "{yes}");
        }
        for no in [
            "11.0.0.0",
            "9.255.255.255",
            "192.0.4.0",
            "2001:db9::1",
            "198.51.100.8",
            "::1",
            "0.0.0.0",
        ] {
            assert!(!s.contains(ip(no)), "{no}");
        }
        assert_eq!(s.ranges.len(), 4, "adjacent /24s merge");
        assert!(!NetSet::default().contains(ip("10.0.0.1")));
        assert!(set(&["0.0.0.0/0"]).contains(ip("203.0.113.1")));
        assert!(
            !set(&["0.0.0.0/0"]).contains(ip("2001:db8::1")),
            "IPv4 everything is not IPv6"
        );
        assert!(set(&["::/0"]).contains(ip("2001:db8::1")));
    }
}
