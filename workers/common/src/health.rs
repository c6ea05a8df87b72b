//! `GET /healthz`: each check touches the real dependency (a query to
//! PostgreSQL, a write and read back in KV) so a green answer means the
//! Worker can do its job, not merely that it is running.

use serde::Serialize;
use serde_json::{json, Value};
use worker::{Date, Response};

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub latency_ms: u64,
    #[serde(flatten)]
    pub detail: Value,
}

/// Runs `SELECT version(), current_database()` over a fresh connection.
pub async fn postgres(database_url: Option<&str>) -> Check {
    let started = Date::now().as_millis();
    let detail = match database_url {
        None => Err("DATABASE_URL is not configured".to_string()),
        Some(url) => probe_postgres(url).await,
    };
    finish("postgres", started, detail)
}

async fn probe_postgres(url: &str) -> Result<Value, String> {
    let client = crate::db::connect(url).await.map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version') AS version, current_database() AS database, \
             (SELECT count(*) FROM schema_migrations) AS migrations",
            &[],
        )
        .await
        .map_err(|e| format!("query failed: {e}"))?;
    let version: String = row.try_get("version").map_err(|e| e.to_string())?;
    let database: String = row.try_get("database").map_err(|e| e.to_string())?;
    let migrations: i64 = row.try_get("migrations").map_err(|e| e.to_string())?;
    Ok(json!({ "server_version": version, "database": database, "migrations_applied": migrations }))
}

/// Writes a fresh nonce to KV and reads it back.
pub async fn kv(store: Result<worker::KvStore, String>, nonce: &str) -> Check {
    let started = Date::now().as_millis();
    let detail = match store {
        Err(e) => Err(e),
        Ok(store) => probe_kv(&store, nonce).await,
    };
    finish("kv", started, detail)
}

async fn probe_kv(store: &worker::KvStore, nonce: &str) -> Result<Value, String> {
    const KEY: &str = "_healthz/probe";
    // 60 s is KV's minimum TTL: the probe key cleans itself up.
    store
        .put(KEY, nonce)
        .map_err(|e| e.to_string())?
        .expiration_ttl(60)
        .execute()
        .await
        .map_err(|e| format!("write failed: {e}"))?;
    let read = store.get(KEY).text().await.map_err(|e| format!("read failed: {e}"))?;
    if read.as_deref() == Some(nonce) {
        Ok(json!({ "round_trip": true, "nonce": nonce }))
    } else {
        Err(format!("read back {read:?} instead of the nonce just written"))
    }
}

fn finish(name: &'static str, started: u64, detail: Result<Value, String>) -> Check {
    let latency_ms = Date::now().as_millis().saturating_sub(started);
    match detail {
        Ok(detail) => Check { name, ok: true, latency_ms, detail },
        Err(error) => Check { name, ok: false, latency_ms, detail: json!({ "error": error }) },
    }
}

/// 200 when every check passed, 503 otherwise.
pub fn report(service: &str, checks: Vec<Check>) -> Response {
    let ok = checks.iter().all(|c| c.ok);
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "service": service,
        "checks": checks,
    });
    crate::json(if ok { 200 } else { 503 }, &body)
}
