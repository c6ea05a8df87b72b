//! Purchase saga (placeholder until it lands).
