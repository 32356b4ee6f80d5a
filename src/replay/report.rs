//! What a replay found: requests per class and action, rules, the busiest
//! clients per class (in fixed space), malformed lines, and — comparing two
//! configs — every change of class or action, grouped by transition and by
//! the rules responsible. Memory is bounded whatever the log's size.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use foldhash::fast::RandomState;

use super::LogRequest;
use crate::verdict::{Action, Class, Verdict};

/// Malformed line numbers kept for the report (all are counted).
const MALFORMED_KEPT: usize = 100;

/// Clients tracked per class (the heaviest survive).
const CLIENTS_TRACKED: usize = 1024;

/// Examples kept per transition.
const EXAMPLES: usize = 3;

/// The summary of a replay.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests classified.
    pub requests: u64,
    /// Per class, in `Class::ALL` order.
    pub classes: [u64; 5],
    /// Per action, in `Action::ALL` order.
    pub actions: [u64; 4],
    rules: HashMap<Arc<str>, u64, RandomState>,
    shadow: HashMap<Arc<str>, u64, RandomState>,
    clients: [HeavyHitters; 5],
    /// Malformed lines: how many.
    pub malformed: u64,
    malformed_lines: Vec<(u64, String)>,
    /// Set when comparing two configs.
    pub comparison: Option<Comparison>,
}

/// Requests whose verdict changes under the other config.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Requests whose class or action changed.
    pub changed: u64,
    transitions: HashMap<Transition, Changes>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Transition {
    from: (Class, Action),
    to: (Class, Action),
}

#[derive(Debug, Default)]
struct Changes {
    count: u64,
    /// By the difference in matched rules (`+added -removed`).
    by_rules: HashMap<String, u64>,
    examples: Vec<String>,
}

impl Report {
    pub(super) fn new(comparing: bool) -> Self {
        Report {
            comparison: comparing.then(Comparison::default),
            ..Report::default()
        }
    }

    pub(super) fn malformed(&mut self, line: u64, why: &str) {
        self.malformed += 1;
        if self.malformed_lines.len() < MALFORMED_KEPT {
            self.malformed_lines.push((line, why.to_owned()));
        }
    }

    pub(super) fn count(
        &mut self,
        line: u64,
        r: &LogRequest,
        v: &Verdict,
        shadow: &[Arc<str>],
        other: Option<&Verdict>,
    ) {
        self.requests += 1;
        self.classes[v.class.index()] += 1;
        self.actions[v.action.index()] += 1;
        for rule in &v.reasons {
            bump(&mut self.rules, rule);
        }
        for rule in shadow {
            bump(&mut self.shadow, rule);
        }
        self.clients[v.class.index()].add(r.ip);
        if let (Some(cmp), Some(o)) = (self.comparison.as_mut(), other) {
            cmp.count(line, r, v, o);
        }
    }

    /// Lines that could not be read: (line number, why), the first 100.
    pub fn malformed_lines(&self) -> &[(u64, String)] {
        &self.malformed_lines
    }

    /// Rules by matches, most first.
    pub fn top_rules(&self) -> Vec<(&str, u64)> {
        let mut rules: Vec<(&str, u64)> = self.rules.iter().map(|(k, v)| (&**k, *v)).collect();
        rules.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        rules
    }

    /// The busiest clients of a class, most first, with the requests each
    /// certainly made (exact while the class has at most 1,024 clients; a
    /// lower bound past that, and clients with no certain count are left
    /// out).
    pub fn top_clients(&self, class: Class, n: usize) -> Vec<(IpAddr, u64)> {
        self.clients[class.index()].top(n)
    }
}

/// Count one match of `rule` (its name is shared, not copied, and only
/// the first time).
fn bump(counts: &mut HashMap<Arc<str>, u64, RandomState>, rule: &Arc<str>) {
    match counts.get_mut(rule) {
        Some(n) => *n += 1,
        None => {
            counts.insert(rule.clone(), 1);
        }
    }
}

impl Comparison {
    fn count(&mut self, line: u64, r: &LogRequest, v: &Verdict, o: &Verdict) {
        if v.class == o.class && v.action == o.action {
            return;
        }
        self.changed += 1;
        let key = Transition {
            from: (v.class, v.action),
            to: (o.class, o.action),
        };
        let mut diff: Vec<String> = Vec::new();
        for rule in &o.reasons {
            if !v.reasons.contains(rule) {
                diff.push(format!("+{rule}"));
            }
        }
        for rule in &v.reasons {
            if !o.reasons.contains(rule) {
                diff.push(format!("-{rule}"));
            }
        }
        let diff = if diff.is_empty() {
            "(same rules; thresholds or actions differ)".to_owned()
        } else {
            diff.join(" ")
        };
        let changes = self.transitions.entry(key).or_default();
        changes.count += 1;
        // Bounded: the distinct differences are bounded by the rule sets.
        *changes.by_rules.entry(diff).or_default() += 1;
        if changes.examples.len() < EXAMPLES {
            changes.examples.push(format!(
                "line {line}: {} {} {}",
                r.ip,
                r.method(),
                r.target()
            ));
        }
    }
}

/// The heaviest clients in fixed space (the Space-Saving algorithm): at
/// most `CLIENTS_TRACKED` counters; a newcomer takes over the smallest,
/// and remembers how much of its count it inherited.
#[derive(Debug, Default)]
struct HeavyHitters {
    /// Per client: (count, inherited part of it).
    counts: HashMap<IpAddr, (u64, u64), RandomState>,
    /// Once full: the clients that held the smallest count, `min`, when
    /// they were last looked for. Counts only grow, so an entry whose count
    /// moved on (or that was evicted) is stale and skipped, and one scan
    /// serves every newcomer until all of them have moved on.
    smallest: Vec<IpAddr>,
    min: u64,
}

impl HeavyHitters {
    fn add(&mut self, ip: IpAddr) {
        if let Some((c, _)) = self.counts.get_mut(&ip) {
            *c += 1;
            return;
        }
        if self.counts.len() < CLIENTS_TRACKED {
            self.counts.insert(ip, (1, 0));
            return;
        }
        let Some((evicted, min)) = self.take_smallest() else {
            return;
        };
        self.counts.remove(&evicted);
        self.counts.insert(ip, (min + 1, min));
    }

    /// A client with the smallest count, and that count.
    fn take_smallest(&mut self) -> Option<(IpAddr, u64)> {
        loop {
            while let Some(ip) = self.smallest.pop() {
                if self.counts.get(&ip).is_some_and(|(c, _)| *c == self.min) {
                    return Some((ip, self.min));
                }
            }
            // The minimum never falls while full (newcomers start above
            // it), so a rescan finds it at or above `min`.
            self.min = self.counts.values().map(|(c, _)| *c).min()?;
            let min = self.min;
            self.smallest.extend(
                self.counts
                    .iter()
                    .filter(|(_, (c, _))| *c == min)
                    .map(|(ip, _)| *ip),
            );
        }
    }

    /// The clients with the most certain requests (count less what was
    /// inherited).
    fn top(&self, n: usize) -> Vec<(IpAddr, u64)> {
        let mut all: Vec<(IpAddr, u64)> = self
            .counts
            .iter()
            .map(|(k, (c, inherited))| (*k, c - inherited))
            .filter(|(_, certain)| *certain > 0)
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

fn share(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        n as f64 * 100.0 / total as f64
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} requests replayed, {} malformed lines\n",
            self.requests, self.malformed
        )?;
        writeln!(f, "{:<18} {:>10} {:>7}", "class", "requests", "share")?;
        for class in Class::ALL {
            let n = self.classes[class.index()];
            writeln!(
                f,
                "{:<18} {:>10} {:>6.1}%",
                class.as_str(),
                n,
                share(n, self.requests)
            )?;
        }
        writeln!(f, "\n{:<18} {:>10} {:>7}", "action", "requests", "share")?;
        for action in Action::ALL {
            let n = self.actions[action.index()];
            writeln!(
                f,
                "{:<18} {:>10} {:>6.1}%",
                action.as_str(),
                n,
                share(n, self.requests)
            )?;
        }
        let rules = self.top_rules();
        if !rules.is_empty() {
            writeln!(f, "\n{:<40} {:>10}", "rule", "matches")?;
            for (rule, n) in rules.iter().take(20) {
                writeln!(f, "{rule:<40} {n:>10}")?;
            }
        }
        let mut shadow: Vec<(&str, u64)> = self.shadow.iter().map(|(k, v)| (&**k, *v)).collect();
        shadow.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        if !shadow.is_empty() {
            writeln!(f, "\n{:<40} {:>10}", "shadow rule (no effect)", "matches")?;
            for (rule, n) in shadow.iter().take(20) {
                writeln!(f, "{rule:<40} {n:>10}")?;
            }
        }
        writeln!(f, "\ntop clients per class")?;
        for class in Class::ALL {
            let top = self.top_clients(class, 5);
            if top.is_empty() {
                continue;
            }
            let list: Vec<String> = top.iter().map(|(ip, n)| format!("{ip} ({n})")).collect();
            writeln!(f, "  {:<16} {}", class.as_str(), list.join(", "))?;
        }
        if self.malformed > 0 {
            let lines: Vec<String> = self
                .malformed_lines
                .iter()
                .take(20)
                .map(|(n, _)| n.to_string())
                .collect();
            let more = if self.malformed > 20 { ", …" } else { "" };
            writeln!(f, "\nmalformed lines: {}{more}", lines.join(", "))?;
            for (n, why) in self.malformed_lines.iter().take(5) {
                writeln!(f, "  line {n}: {why}")?;
            }
        }
        if let Some(cmp) = &self.comparison {
            write!(f, "\n{cmp}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "compared: {} requests change class or action",
            self.changed
        )?;
        let mut transitions: Vec<(&Transition, &Changes)> = self.transitions.iter().collect();
        let order = |t: &Transition| {
            [
                t.from.0.index(),
                t.from.1.index(),
                t.to.0.index(),
                t.to.1.index(),
            ]
        };
        transitions.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(order(a.0).cmp(&order(b.0))));
        for (t, changes) in transitions {
            writeln!(
                f,
                "\n  {} ({}) → {} ({}): {} requests",
                t.from.0, t.from.1, t.to.0, t.to.1, changes.count
            )?;
            let mut by_rules: Vec<(&String, &u64)> = changes.by_rules.iter().collect();
            by_rules.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (diff, n) in by_rules.iter().take(10) {
                writeln!(f, "    {n:>8}  {diff}")?;
            }
            for example in &changes.examples {
                writeln!(f, "      e.g. {example}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A skewed stream: a few heavy clients among many light ones.
    fn stream(n: u32) -> Vec<IpAddr> {
        let mut x: u32 = 12_345;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let r = x >> 8;
                let id = if i % 4 == 0 { r % 8 } else { 100 + r % 20_000 };
                IpAddr::from([10, 0, (id >> 8) as u8, id as u8])
            })
            .collect()
    }

    #[test]
    fn heavy_hitters_keep_space_saving_bounds() {
        let ips = stream(200_000);
        let mut truth: HashMap<IpAddr, u64> = HashMap::new();
        let mut hh = HeavyHitters::default();
        for ip in &ips {
            *truth.entry(*ip).or_default() += 1;
            hh.add(*ip);
        }
        assert_eq!(hh.counts.len(), CLIENTS_TRACKED);
        // Every counted request is in some counter.
        let total: u64 = hh.counts.values().map(|(c, _)| c).sum();
        assert_eq!(total, ips.len() as u64);
        // A counter never undercounts, and its certain part never
        // overcounts.
        for (ip, (count, inherited)) in &hh.counts {
            assert!(*count >= truth[ip], "{ip}");
            assert!(count - inherited <= truth[ip], "{ip}");
        }
        // The eight heavy clients come first, each certain of most of its
        // requests.
        let top = hh.top(8);
        assert_eq!(top.len(), 8);
        for (ip, certain) in top {
            assert!(truth[&ip] > 5_000 && certain * 2 > truth[&ip], "{ip}");
        }
    }

    #[test]
    fn heavy_hitters_are_exact_below_capacity() {
        let mut hh = HeavyHitters::default();
        for i in 0..CLIENTS_TRACKED as u32 {
            for _ in 0..=(i % 3) {
                hh.add(IpAddr::from(i.to_be_bytes()));
            }
        }
        assert!(
            hh.counts
                .values()
                .all(|(c, inherited)| *inherited == 0 && *c <= 3)
        );
        assert_eq!(hh.top(1)[0].1, 3);
    }
}
