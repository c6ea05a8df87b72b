//! Time as plain values: the engine never reads a clock.

use serde::{Deserialize, Serialize};

/// An instant: milliseconds since the Unix epoch, as the Durable Object's
/// `Date.now()` / alarm API speaks it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

/// A duration in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    pub const fn seconds(s: u64) -> Self {
        Millis(s * 1_000)
    }
    pub const fn minutes(m: u64) -> Self {
        Millis(m * 60_000)
    }
    pub const fn hours(h: u64) -> Self {
        Millis(h * 3_600_000)
    }
    pub const fn days(d: u64) -> Self {
        Millis(d * 86_400_000)
    }
}

impl Timestamp {
    pub const fn plus(self, d: Millis) -> Timestamp {
        Timestamp(self.0.saturating_add(d.0))
    }
    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub const fn since(self, earlier: Timestamp) -> Millis {
        Millis(self.0.saturating_sub(earlier.0))
    }
}
