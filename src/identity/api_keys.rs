//! API keys: looked up by their SHA-256 in a keys file that never holds a
//! key, compared in constant time, each mapped to an owner and a class.

use std::collections::HashMap;

use aws_lc_rs::digest::{SHA256, digest};
use serde::{Deserialize, Deserializer};

use super::jwt::prefixed;
use super::{Identity, InvalidReason, Source, Tier};
use crate::config::{ConfigError, parse_toml};
use crate::verdict::Class;

/// Keys longer than this are refused unhashed.
pub const MAX_KEY_LEN: usize = 512;

/// A SHA-256 digest.
type Hash = [u8; 32];

/// The keys file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

/// One `[[key]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    #[serde(deserialize_with = "sha256_hex")]
    sha256: Hash,
    #[serde(deserialize_with = "owner")]
    owner: String,
    #[serde(deserialize_with = "key_class")]
    class: Class,
}

/// What a verified key stands for.
#[derive(Clone, Debug)]
struct Holder {
    hash: Hash,
    identity: Identity,
}

/// The loaded keys, indexed by the first bytes of their hash.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_prefix: HashMap<[u8; 8], Vec<Holder>>,
}

impl ApiKeys {
    /// Parse a keys file; `file` names it in errors, `prefix` goes before
    /// every owner.
    pub fn parse(text: &str, file: &str, subject_prefix: &str) -> Result<Self, ConfigError> {
        let parsed: KeysFile = parse_toml(text, file)?;
        let mut keys = ApiKeys::default();
        for (i, entry) in parsed.key.into_iter().enumerate() {
            let identity = match entry.class {
                Class::ServiceClient => Identity::Service {
                    source: Source::ApiKey,
                    client_id: prefixed(subject_prefix, &entry.owner),
                    claims: Default::default(),
                },
                _ => Identity::User {
                    source: Source::ApiKey,
                    subject: prefixed(subject_prefix, &entry.owner),
                    tier: Tier::Paying,
                    claims: Default::default(),
                },
            };
            let bucket = keys.by_prefix.entry(prefix(&entry.sha256)).or_default();
            if bucket.iter().any(|h| h.hash == entry.sha256) {
                return Err(ConfigError::Inconsistent {
                    file: file.to_owned(),
                    message: format!("key[{i}]: the same sha256 is listed twice"),
                });
            }
            bucket.push(Holder {
                hash: entry.sha256,
                identity,
            });
        }
        Ok(keys)
    }

    /// How many keys are loaded.
    pub fn len(&self) -> usize {
        self.by_prefix.values().map(Vec::len).sum()
    }

    /// Whether no keys are loaded.
    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }

    /// The identity a presented key stands for.
    pub fn verify(&self, key: &str) -> Identity {
        let invalid = |reason| Identity::Invalid {
            source: Source::ApiKey,
            reason,
        };
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return invalid(InvalidReason::Malformed);
        }
        let hash = sha256(key.as_bytes());
        let Some(bucket) = self.by_prefix.get(&prefix(&hash)) else {
            return invalid(InvalidReason::UnknownKey);
        };
        bucket
            .iter()
            .find(|h| aws_lc_rs::constant_time::verify_slices_are_equal(&h.hash, &hash).is_ok())
            .map_or_else(
                || invalid(InvalidReason::UnknownKey),
                |h| h.identity.clone(),
            )
    }
}

/// SHA-256 of a key.
pub fn sha256(key: &[u8]) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key).as_ref());
    out
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn prefix(hash: &Hash) -> [u8; 8] {
    let mut p = [0u8; 8];
    p.copy_from_slice(&hash[..8]);
    p
}

fn sha256_hex<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
    let s = String::deserialize(d)?;
    let bad = || {
        serde::de::Error::custom(
            "expected 64 hex digits (the SHA-256 of the key; `usher keys hash` prints it)",
        )
    };
    if s.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn owner<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() || s.chars().any(char::is_control) {
        return Err(serde::de::Error::custom(
            "the owner must be a non-empty name without control characters",
        ));
    }
    Ok(s)
}

fn key_class<'de, D: Deserializer<'de>>(d: D) -> Result<Class, D::Error> {
    match Class::deserialize(d)? {
        class @ (Class::ServiceClient | Class::PayingCustomer) => Ok(class),
        other => Err(serde::de::Error::custom(format!(
            "an API key makes `service_client` or `paying_customer`, not `{other}`"
        ))),
    }
}

/// The `[[key]]` block `usher keys hash` prints for a new key.
pub fn entry_for(key: &[u8], owner: &str, class: Class) -> String {
    format!(
        "[[key]]\nsha256 = \"{}\"\nowner = {}\nclass = \"{class}\"\n",
        hex(&sha256(key)),
        toml_string(owner)
    )
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[(&str, &str, &str)]) -> String {
        entries
            .iter()
            .map(|(key, owner, class)| entry_for(key.as_bytes(), owner, class.parse().unwrap()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn keys_map_to_their_owner_and_class() {
        let keys = ApiKeys::parse(
            &file(&[
                ("k-acme", "acme", "service_client"),
                ("k-pro", "bob \"b\"", "paying_customer"),
            ]),
            "keys.toml",
            "",
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.verify("k-acme").class(), Class::ServiceClient);
        assert_eq!(keys.verify("k-acme").subject().map(|s| &**s), Some("acme"));
        assert_eq!(keys.verify("k-pro").class(), Class::PayingCustomer);
        assert_eq!(
            keys.verify("k-pro").subject().map(|s| &**s),
            Some("bob \"b\"")
        );
        for wrong in ["k-acme ", "K-ACME", "k-acm", "", &"x".repeat(10_000)] {
            assert!(
                matches!(keys.verify(wrong), Identity::Invalid { .. }),
                "{wrong:?}"
            );
        }
    }

    #[test]
    fn the_file_never_holds_keys_and_is_checked() {
        let text = file(&[("secret-key-material", "acme", "service_client")]);
        assert!(!text.contains("secret-key-material"));
        assert!(text.contains(&hex(&sha256(b"secret-key-material"))));
        for (bad, line) in [
            (
                "[[key]]\nsha256 = \"abc\"\nowner = \"a\"\nclass = \"service_client\"",
                2,
            ),
            (
                "[[key]]\nsha256 = \"zz\"\nowner = \"a\"\nclass = \"service_client\"",
                2,
            ),
            (
                &format!(
                    "[[key]]\nsha256 = \"{}\"\nowner = \"a\"\nclass = \"registered_user\"",
                    "0".repeat(64)
                ),
                4,
            ),
            (
                &format!(
                    "[[key]]\nsha256 = \"{}\"\nowner = \"\"\nclass = \"service_client\"",
                    "0".repeat(64)
                ),
                3,
            ),
            (
                &format!(
                    "[[key]]\nsha256 = \"{}\"\nowner = \"a\"\nclass = \"service_client\"\nkey = \"plain\"",
                    "0".repeat(64)
                ),
                5,
            ),
        ] {
            let e = ApiKeys::parse(bad, "keys.toml", "")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("keys.toml:{line}:")), "{e}");
        }
        let dup = file(&[("k", "a", "service_client"), ("k", "b", "service_client")]);
        assert!(
            ApiKeys::parse(&dup, "keys.toml", "")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
