//! `[connections]`: how much a client connection may hold of usher —
//! how many may be open at once, and how large a request head may be.

use serde::{Deserialize, Deserializer};

/// Limits on client connections and request heads.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Connections {
    /// Client connections open at once; past it a new one is answered
    /// 503 and closed.
    #[serde(deserialize_with = "max")]
    pub max: usize,
    /// The largest request head (request line and header fields), in
    /// bytes; past it, 431. For HTTP/2, the largest header list.
    #[serde(deserialize_with = "max_header_bytes")]
    pub max_header_bytes: usize,
    /// The most header fields in an HTTP/1 request; past it, 431.
    #[serde(deserialize_with = "max_headers")]
    pub max_headers: usize,
    /// The most requests one HTTP/2 connection may have in flight.
    #[serde(deserialize_with = "h2_max_streams")]
    pub h2_max_streams: u32,
}

/// hyper's own default header count, which keeps the header array on the
/// stack; another count costs an allocation per request.
pub const DEFAULT_MAX_HEADERS: usize = 100;

impl Default for Connections {
    fn default() -> Self {
        Connections {
            max: 10_000,
            max_header_bytes: 32 * 1024,
            max_headers: DEFAULT_MAX_HEADERS,
            h2_max_streams: 100,
        }
    }
}

/// A whole number within a range, or an error naming the range.
pub(super) fn within<'de, D, T>(d: D, low: T, high: T, what: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + PartialOrd + std::fmt::Display + Copy,
{
    let n = T::deserialize(d)?;
    if n < low || n > high {
        return Err(serde::de::Error::custom(format!(
            "{what} must be between {low} and {high}"
        )));
    }
    Ok(n)
}

fn max<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    within(d, 1, 1_000_000, "max")
}

fn max_header_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    // hyper reads HTTP/1 heads into a buffer of at least 8 KiB.
    within(d, 8 * 1024, 1024 * 1024, "max_header_bytes")
}

fn max_headers<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    within(d, 16, 1_000, "max_headers")
}

fn h2_max_streams<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    within(d, 1, 1_000, "h2_max_streams")
}
