//! Saga engine (placeholder until the engine lands).
