//! Verified crawlers: a request whose user agent claims a crawler that a
//! rule file defines is checked against the crawler's published address
//! ranges and, where the crawler names reverse-DNS suffixes, by
//! forward-confirmed reverse DNS. A claim that fails is a spoofer's.

pub mod dns;

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::CrawlersConfig;
use crate::memo_set::MemoSet;
use crate::rules::netset::NetSet;
use dns::ReverseDns;

/// One crawler, as a rule file defines it.
#[derive(Debug)]
pub struct Crawler {
    /// The crawler's name (unique across rule files).
    pub name: Arc<str>,
    /// Its published address ranges.
    pub ranges: NetSet,
    /// Host name suffixes its addresses reverse-resolve to.
    pub rdns: Arc<[dns::Suffix]>,
}

/// The crawlers of all rule files, with one user-agent matcher for all.
#[derive(Debug, Default)]
pub struct Definitions {
    /// Every crawler's user-agent patterns, in definition order.
    pub agents: Option<MemoSet>,
    /// The crawler (index into `list`) each pattern belongs to.
    pub owner: Vec<u16>,
    /// The crawlers.
    pub list: Vec<Crawler>,
}

/// What became of a request's crawler claim.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Claim {
    /// The user agent claims no defined crawler.
    #[default]
    None,
    /// The claim held: the address is the crawler's.
    Verified(u16),
    /// The claim failed: the address is not the crawler's.
    Spoofed(u16),
    /// Not known yet (a DNS check is pending or failed): neither trusted
    /// nor blamed.
    Unknown(u16),
}

/// The status of a claim, as rules name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// No crawler claimed.
    None,
    /// See [`Claim::Verified`].
    Verified,
    /// See [`Claim::Spoofed`].
    Spoofed,
    /// See [`Claim::Unknown`].
    Unknown,
}

impl Status {
    /// Every status that a claim can have, for metrics.
    pub const CLAIMED: [Status; 3] = [Status::Verified, Status::Spoofed, Status::Unknown];

    /// The name rules and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Verified => "verified",
            Status::Spoofed => "spoofed",
            Status::Unknown => "unknown",
        }
    }

    /// The status a rule names.
    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::None,
            Status::Verified,
            Status::Spoofed,
            Status::Unknown,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

impl Claim {
    /// The claim's status.
    pub fn status(self) -> Status {
        match self {
            Claim::None => Status::None,
            Claim::Verified(_) => Status::Verified,
            Claim::Spoofed(_) => Status::Spoofed,
            Claim::Unknown(_) => Status::Unknown,
        }
    }
}

/// Checks crawler claims.
#[derive(Debug, Default)]
pub struct Crawlers {
    defs: Definitions,
    dns: Option<Arc<ReverseDns>>,
    /// Lookups so far; carried across reloads so the metric only grows.
    counts: Arc<dns::LookupCounts>,
}

/// Why crawler verification cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up DNS for crawler verification: {0}")]
pub struct DnsSetupError(String);

impl Crawlers {
    /// Crawlers with DNS set up when any of them names reverse-DNS
    /// suffixes.
    /// Without `dns_servers`, a system without a usable DNS configuration
    /// gets a warning, and claims that need DNS stay unknown.
    pub fn new(defs: Definitions, config: &CrawlersConfig) -> Result<Self, DnsSetupError> {
        Crawlers::after(defs, config, None)
    }

    /// Crawlers that replace `previous` on a reload: the lookup counts
    /// carry over, and so do the resolver and its remembered answers when
    /// the DNS settings and every crawler's reverse-DNS suffixes are
    /// unchanged (answers are remembered per crawler position, so a
    /// changed list starts with none).
    pub fn after(
        defs: Definitions,
        config: &CrawlersConfig,
        previous: Option<&Crawlers>,
    ) -> Result<Self, DnsSetupError> {
        let counts = previous.map(|p| p.counts.clone()).unwrap_or_default();
        let same_suffixes = |old: &Definitions| {
            old.list.len() == defs.list.len()
                && old
                    .list
                    .iter()
                    .zip(&defs.list)
                    .all(|(a, b)| a.rdns == b.rdns)
        };
        let reusable = previous
            .filter(|p| same_suffixes(&p.defs))
            .and_then(|p| p.dns.clone())
            .filter(|dns| dns.config() == config);
        let dns = if !defs.list.iter().any(|c| !c.rdns.is_empty()) {
            None
        } else if let Some(dns) = reusable {
            Some(dns)
        } else {
            match ReverseDns::new(config, counts.clone()) {
                Ok(dns) => Some(Arc::new(dns)),
                Err(e) if config.dns_servers.is_empty() => {
                    tracing::warn!(
                        "{e}; crawler claims that need DNS stay unknown (set crawlers.dns_servers)"
                    );
                    None
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Crawlers { defs, dns, counts })
    }

    /// Reverse-DNS lookups so far (all zero while DNS is not in use).
    pub fn dns_counts(&self) -> &dns::LookupCounts {
        &self.counts
    }

    /// The crawlers.
    pub fn list(&self) -> &[Crawler] {
        &self.defs.list
    }

    /// The crawler a user agent claims, if any (the first defined).
    fn claimed(&self, user_agent: Option<&[u8]>) -> Option<u16> {
        let (agents, ua) = (self.defs.agents.as_ref()?, user_agent?);
        let first = agents.matches(ua).first()?;
        self.defs.owner.get(first).copied()
    }

    /// The claim as far as it is known now, without waiting: address
    /// ranges, then remembered DNS answers.
    pub fn check(&self, user_agent: Option<&[u8]>, ip: IpAddr) -> Claim {
        let Some(i) = self.claimed(user_agent) else {
            return Claim::None;
        };
        self.check_crawler(i, ip)
    }

    fn check_crawler(&self, i: u16, ip: IpAddr) -> Claim {
        let Some(crawler) = self.defs.list.get(usize::from(i)) else {
            return Claim::None;
        };
        if crawler.ranges.contains(ip) {
            return Claim::Verified(i);
        }
        if crawler.rdns.is_empty() {
            return Claim::Spoofed(i);
        }
        match self.dns.as_ref().and_then(|d| d.remembered(ip, i)) {
            Some(true) => Claim::Verified(i),
            Some(false) => Claim::Spoofed(i),
            None => Claim::Unknown(i),
        }
    }

    /// The claim, asking DNS when it must and waiting at most the
    /// configured budget; a lookup that takes longer finishes in the
    /// background for the next request.
    pub async fn verify(&self, user_agent: Option<&[u8]>, ip: IpAddr) -> Claim {
        let Some(i) = self.claimed(user_agent) else {
            return Claim::None;
        };
        let claim = self.check_crawler(i, ip);
        let (Claim::Unknown(_), Some(dns)) = (claim, &self.dns) else {
            return claim;
        };
        let suffixes = self.defs.list[usize::from(i)].rdns.clone();
        match dns.confirm(ip, i, suffixes).await {
            Some(true) => Claim::Verified(i),
            Some(false) => Claim::Spoofed(i),
            None => Claim::Unknown(i),
        }
    }

    /// The name of a claimed crawler.
    pub fn name(&self, claim: Claim) -> Option<&str> {
        let (Claim::Verified(i) | Claim::Spoofed(i) | Claim::Unknown(i)) = claim else {
            return None;
        };
        self.defs.list.get(usize::from(i)).map(|c| &*c.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarded::Cidr;

    fn crawlers(rdns: &[&str]) -> Crawlers {
        let defs = Definitions {
            agents: Some(MemoSet::new(
                regex::bytes::RegexSet::new(["Googlebot", "(?i)bingbot"]).unwrap(),
            )),
            owner: vec![0, 1],
            list: vec![
                Crawler {
                    name: "googlebot".into(),
                    ranges: NetSet::new(&["66.249.64.0/27".parse::<Cidr>().unwrap()]),
                    rdns: rdns
                        .iter()
                        .map(|s| dns::Suffix::parse(s).unwrap())
                        .collect(),
                },
                Crawler {
                    name: "bingbot".into(),
                    ranges: NetSet::new(&[]),
                    rdns: Arc::from([]),
                },
            ],
        };
        Crawlers {
            defs,
            dns: None,
            counts: Arc::default(),
        }
    }

    #[test]
    fn ranges_verify_and_everything_else_is_spoofed_without_dns() {
        let c = crawlers(&[]);
        let ua = b"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
        assert_eq!(
            c.check(Some(ua), "66.249.64.7".parse().unwrap()),
            Claim::Verified(0)
        );
        assert_eq!(
            c.check(Some(ua), "127.0.0.1".parse().unwrap()),
            Claim::Spoofed(0)
        );
        assert_eq!(
            c.check(Some(b"BingBot/2.0"), "127.0.0.1".parse().unwrap()),
            Claim::Spoofed(1)
        );
        assert_eq!(
            c.check(
                Some(b"Mozilla/5.0 Firefox/120"),
                "127.0.0.1".parse().unwrap()
            ),
            Claim::None
        );
        assert_eq!(c.check(None, "127.0.0.1".parse().unwrap()), Claim::None);
        assert_eq!(c.name(Claim::Spoofed(1)), Some("bingbot"));
        assert_eq!(Status::parse("spoofed"), Some(Status::Spoofed));
        assert_eq!(Status::parse("Spoofed"), None);
    }

    #[test]
    fn without_a_resolver_an_rdns_crawler_stays_unknown() {
        // `check` never waits: with nothing remembered, the claim is
        // neither trusted nor blamed.
        let c = crawlers(&["googlebot.com"]);
        assert_eq!(
            c.check(Some(b"Googlebot/2.1"), "192.0.2.1".parse().unwrap()),
            Claim::Unknown(0)
        );
    }
}
