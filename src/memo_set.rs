//! Regex sets that remember their answers. Real traffic repeats a few
//! thousand user agents and hot paths, so each distinct one is scanned by
//! the whole set once and the result kept in a bounded table; later
//! requests pay a hash and a compare instead of a scan of every pattern.

use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use regex::bytes::RegexSet;

/// Remembered subjects per set, at most (a direct-mapped table: a new
/// subject replaces whichever one shared its slot).
const SLOTS: usize = 4096;

/// Longer subjects are scanned every time rather than remembered, so the
/// table stays small (browsers' user agents are under 300 bytes).
const MAX_REMEMBERED: usize = 512;

/// A regex set with a bounded memory of its answers.
pub struct MemoSet {
    set: RegexSet,
    slots: Box<[Mutex<Option<Slot>>]>,
    hasher: foldhash::fast::RandomState,
}

struct Slot {
    subject: Box<[u8]>,
    matched: Matched,
}

/// Which patterns of a set matched one subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched(Arc<[u64]>);

impl Matched {
    fn new(set: &RegexSet, subject: &[u8]) -> Self {
        let mut bits = vec![0u64; set.len().div_ceil(64)];
        for i in set.matches(subject).iter() {
            bits[i / 64] |= 1 << (i % 64);
        }
        Matched(bits.into())
    }

    /// Whether pattern `i` matched.
    pub fn contains(&self, i: usize) -> bool {
        self.0
            .get(i / 64)
            .is_some_and(|word| word & (1 << (i % 64)) != 0)
    }

    /// Whether any pattern in `range` matched.
    pub fn any(&self, range: Range<usize>) -> bool {
        range.into_iter().any(|i| self.contains(i))
    }

    /// The first pattern that matched.
    pub fn first(&self) -> Option<usize> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, word)| **word != 0)
            .map(|(i, word)| i * 64 + word.trailing_zeros() as usize)
    }
}

impl MemoSet {
    /// Remember the answers of `set`.
    pub fn new(set: RegexSet) -> Self {
        MemoSet {
            set,
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The patterns, for display.
    pub fn patterns(&self) -> &[String] {
        self.set.patterns()
    }

    /// How many patterns the set holds.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether the set holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Which patterns match `subject`: remembered, or scanned and
    /// remembered.
    pub fn matches(&self, subject: &[u8]) -> Matched {
        if subject.len() > MAX_REMEMBERED {
            return Matched::new(&self.set, subject);
        }
        let slot = &self.slots[self.hasher.hash_one(subject) as usize % SLOTS];
        // A poisoned slot (a panic elsewhere while it was held) is only a
        // cache: scan instead.
        if let Ok(slot) = slot.lock()
            && let Some(hit) = slot.as_ref().filter(|s| *s.subject == *subject)
        {
            return hit.matched.clone();
        }
        // Scanned without the lock held, so a slow scan never blocks the
        // other requests whose subjects share the slot.
        let matched = Matched::new(&self.set, subject);
        if let Ok(mut slot) = slot.lock() {
            *slot = Some(Slot {
                subject: subject.into(),
                matched: matched.clone(),
            });
        }
        matched
    }
}

impl std::fmt::Debug for MemoSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoSet")
            .field("patterns", &self.set.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(patterns: &[&str]) -> MemoSet {
        MemoSet::new(RegexSet::new(patterns).unwrap())
    }

    #[test]
    fn remembered_answers_equal_fresh_scans() {
        let s = set(&["(?i)bot", "curl/", "^Mozilla", "Googlebot"]);
        let agents: [&[u8]; 5] = [
            b"Mozilla/5.0 (compatible; Googlebot/2.1)",
            b"curl/8.5.0",
            b"Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
            b"",
            b"\xff\xfe not utf-8 bot",
        ];
        for _ in 0..3 {
            for agent in agents {
                let got = s.matches(agent);
                let want: Vec<usize> = s.set.matches(agent).into_iter().collect();
                let have: Vec<usize> = (0..s.len()).filter(|&i| got.contains(i)).collect();
                assert_eq!(have, want, "{:?}", String::from_utf8_lossy(agent));
                assert_eq!(got.first(), want.first().copied());
            }
        }
    }

    #[test]
    fn ranges_and_first_cover_more_than_one_word() {
        let patterns: Vec<String> = (0..130).map(|i| format!("^p{i}$")).collect();
        let s = MemoSet::new(RegexSet::new(&patterns).unwrap());
        let m = s.matches(b"p129");
        assert_eq!(m.first(), Some(129));
        assert!(m.any(128..130));
        assert!(!m.any(0..129));
        assert!(!m.contains(500), "out of range is no match");
        assert_eq!(s.matches(b"none").first(), None);
    }

    #[test]
    fn a_flood_of_distinct_subjects_stays_within_the_table() {
        let s = set(&["bot"]);
        for i in 0..(SLOTS * 3) {
            let agent = format!("agent-{i}-bot");
            assert!(s.matches(agent.as_bytes()).contains(0));
        }
        let held = s
            .slots
            .iter()
            .filter(|slot| slot.lock().unwrap().is_some())
            .count();
        assert!(held <= SLOTS);
        // Colliding subjects never answer for each other.
        assert!(!s.matches(b"agent-1").contains(0));
        assert!(s.matches(b"agent-1-bot").contains(0));
    }

    #[test]
    fn long_subjects_are_scanned_not_remembered() {
        let s = set(&["bot$"]);
        let long = format!("{}bot", "x".repeat(MAX_REMEMBERED));
        assert!(s.matches(long.as_bytes()).contains(0));
        assert!(s.slots.iter().all(|slot| slot.lock().unwrap().is_none()));
    }
}
