//! Structured logs: one JSON object per line, so Workers Logs and `wrangler
//! tail` can filter on fields. Every line names the service; saga code adds
//! the saga id as a field.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// Logs `message` with `fields` (a JSON object; anything else is nested under
/// `"fields"`).
pub fn event(level: Level, service: &str, message: &str, fields: Value) {
    let mut line = Map::new();
    line.insert(
        "level".into(),
        Value::from(match level {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }),
    );
    line.insert("service".into(), Value::from(service));
    line.insert("msg".into(), Value::from(message));
    match fields {
        Value::Object(map) => line.extend(map),
        Value::Null => {}
        other => {
            line.insert("fields".into(), other);
        }
    }
    let text = Value::Object(line).to_string();
    match level {
        Level::Info => worker::console_log!("{text}"),
        Level::Warn => worker::console_warn!("{text}"),
        Level::Error => worker::console_error!("{text}"),
    }
}
