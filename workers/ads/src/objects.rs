//! The ads Worker's Durable Objects. Each is a thin shell: it parses a JSON
//! command, runs a few SQL statements and answers JSON.
//!
//! - [`CatalogObject`] (one, `catalog`): serializes campaign writes. It
//!   keeps every campaign in SQLite, writes each one to KV and rewrites the
//!   compact snapshot of the active ones (`snapshot` in KV) after every
//!   change, so concurrent writes cannot lose each other's entries.
//! - [`BudgetObject`] (one, `budget`): today's spend and all-time delivery
//!   per campaign, fed by the isolates' background syncs (see `pacing`).
//! - [`UserObject`] (one per shard of pseudonymous users, `users:{n}`):
//!   the impressions behind frequency caps, and click deduplication.
//! - [`RecorderObject`] (one, local only): the data points that Analytics
//!   Engine would receive, for the tests to read.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use wasm_bindgen::JsValue;
use worker::{durable_object, DurableObject, Env, Request, Response, SqlStorage, SqlStorageValue, State};
use worker_common::{body, json as json_response, respond, ApiError};

use crate::campaign::{Campaign, Entry};
use crate::pacing::Delta;

/// Campaigns can be written in bulk (the bench loads 10,000).
pub const COMMAND_LIMIT: usize = 8 * 1024 * 1024;

fn sql_err(e: worker::Error) -> ApiError {
    ApiError::internal(format!("storage: {e}"))
}

fn exec(sql: &SqlStorage, query: &str, args: Vec<SqlStorageValue>) -> Result<worker::SqlCursor, ApiError> {
    sql.exec(query, if args.is_empty() { None } else { Some(args) }).map_err(sql_err)
}

async fn command<T: for<'de> Deserialize<'de>>(req: &mut Request) -> Result<T, ApiError> {
    let bytes = body::bytes(req, COMMAND_LIMIT).await?;
    body::parse_json(&bytes)
}

// ---------------------------------------------------------------- catalog

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum CatalogCommand {
    Upsert { campaigns: Vec<Campaign> },
    List { after: Option<String>, limit: u32 },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: i64,
    pub entries: Vec<Entry>,
}

pub const SNAPSHOT_KEY: &str = "snapshot";
/// The version of the snapshot last written, alone: an isolate whose cached
/// snapshot has this version skips re-reading (and re-parsing) the snapshot.
pub const SNAPSHOT_VERSION_KEY: &str = "snapshot_version";

/// Campaign records written to KV at once by one upsert.
const KV_WRITES_IN_FLIGHT: usize = 64;

pub fn campaign_key(id: &str) -> String {
    format!("campaign:{id}")
}

#[durable_object]
pub struct CatalogObject {
    state: State,
    env: Env,
    /// The newest snapshot version whose KV write has completed. Upserts
    /// interleave while they wait for KV, so their snapshot writes may
    /// complete out of order; a write that completes after a newer one
    /// writes the current snapshot again (see `write_snapshot`).
    snapshot_written: std::cell::Cell<i64>,
}

impl DurableObject for CatalogObject {
    fn new(state: State, env: Env) -> Self {
        let sql = state.storage().sql();
        let _ = sql
            .exec("CREATE TABLE IF NOT EXISTS campaigns (id TEXT PRIMARY KEY, body TEXT NOT NULL, entry TEXT)", None);
        let _ = sql.exec(
            "CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
            None,
        );
        CatalogObject { state, env, snapshot_written: std::cell::Cell::new(0) }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        respond(
            async {
                match command::<CatalogCommand>(&mut req).await? {
                    CatalogCommand::Upsert { campaigns } => self.upsert(campaigns).await,
                    CatalogCommand::List { after, limit } => self.list(after, limit),
                }
            }
            .await,
        )
    }
}

#[derive(Deserialize)]
struct BodyRow {
    body: String,
}

#[derive(Deserialize)]
struct EntryRow {
    entry: String,
}

#[derive(Deserialize)]
struct Count {
    n: i64,
}

impl CatalogObject {
    async fn upsert(&self, campaigns: Vec<Campaign>) -> Result<Response, ApiError> {
        let sql = self.state.storage().sql();
        let kv = self.env.kv("CAMPAIGNS").map_err(|e| ApiError::internal(format!("KV binding: {e}")))?;
        let mut created = Vec::new();
        let mut bodies = Vec::with_capacity(campaigns.len());
        for c in &campaigns {
            let existing: Count =
                exec(&sql, "SELECT count(*) AS n FROM campaigns WHERE id = ?", vec![c.id.clone().into()])?
                    .one()
                    .map_err(sql_err)?;
            if existing.n == 0 {
                created.push(c.id.clone());
            }
            let body = serde_json::to_string(c).map_err(|e| ApiError::internal(e.to_string()))?;
            let entry = c
                .entry()
                .map(|e| serde_json::to_string(&e))
                .transpose()
                .map_err(|e| ApiError::internal(e.to_string()))?;
            exec(
                &sql,
                "INSERT OR REPLACE INTO campaigns (id, body, entry) VALUES (?, ?, ?)",
                vec![c.id.clone().into(), body.clone().into(), entry.into()],
            )?;
            bodies.push((campaign_key(&c.id), body));
        }
        // Each campaign's own key before the snapshot that serves it (a
        // click on a served ad must find its campaign), many at a time.
        for chunk in bodies.chunks(KV_WRITES_IN_FLIGHT) {
            let writes = chunk.iter().map(|(key, body)| {
                let kv = &kv;
                async move {
                    kv.put(key, body.as_str())
                        .map_err(|e| ApiError::internal(e.to_string()))?
                        .execute()
                        .await
                        .map_err(|e| ApiError::unavailable("kv_unavailable", format!("KV write failed: {e}")))
                }
            });
            futures_util::future::try_join_all(writes).await?;
        }
        exec(
            &sql,
            "INSERT INTO meta (id, version) VALUES (1, 1) ON CONFLICT(id) DO UPDATE SET version = version + 1",
            vec![],
        )?;
        let (version, active) = self.write_snapshot(&kv).await?;
        Ok(json_response(200, &json!({ "created": created, "active": active, "version": version })))
    }

    /// Writes the snapshot of every active campaign, rebuilt from SQLite
    /// (which only this object writes, so it reflects every write
    /// acknowledged so far), then its version. If a newer snapshot's write
    /// completed while this one was under way, KV may now hold this older
    /// one: write the current one again. So the last write to complete is
    /// always the newest.
    async fn write_snapshot(&self, kv: &worker::kv::KvStore) -> Result<(i64, usize), ApiError> {
        let sql = self.state.storage().sql();
        loop {
            let version: Value = exec(&sql, "SELECT version FROM meta WHERE id = 1", vec![])?.one().map_err(sql_err)?;
            let version = version["version"].as_i64().unwrap_or(0);
            let rows: Vec<EntryRow> =
                exec(&sql, "SELECT entry FROM campaigns WHERE entry IS NOT NULL ORDER BY id", vec![])?
                    .to_array()
                    .map_err(sql_err)?;
            let mut text = String::with_capacity(rows.iter().map(|r| r.entry.len() + 1).sum::<usize>() + 64);
            text.push_str(&format!("{{\"version\":{version},\"entries\":["));
            for (i, row) in rows.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&row.entry);
            }
            text.push_str("]}");
            for (key, value) in [(SNAPSHOT_KEY, text), (SNAPSHOT_VERSION_KEY, version.to_string())] {
                kv.put(key, value)
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .execute()
                    .await
                    .map_err(|e| ApiError::unavailable("kv_unavailable", format!("KV write failed: {e}")))?;
            }
            if version >= self.snapshot_written.get() {
                self.snapshot_written.set(version);
                return Ok((version, rows.len()));
            }
        }
    }

    fn list(&self, after: Option<String>, limit: u32) -> Result<Response, ApiError> {
        let sql = self.state.storage().sql();
        let limit = limit.clamp(1, 500) as i64;
        let rows: Vec<BodyRow> = exec(
            &sql,
            "SELECT body FROM campaigns WHERE id > ? ORDER BY id LIMIT ?",
            vec![after.unwrap_or_default().into(), (limit + 1).into()],
        )?
        .to_array()
        .map_err(sql_err)?;
        let mut campaigns: Vec<Value> = rows.iter().filter_map(|r| serde_json::from_str(&r.body).ok()).collect();
        let next = if campaigns.len() as i64 > limit {
            campaigns.truncate(limit as usize);
            campaigns.last().and_then(|c| c["id"].as_str()).map(str::to_string)
        } else {
            None
        };
        Ok(json_response(200, &json!({ "campaigns": campaigns, "next_cursor": next })))
    }
}

// ---------------------------------------------------------------- budget

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum BudgetCommand {
    /// Adds an isolate's deltas (for `day`) and returns today's spend and
    /// all-time delivery changed after revision `since`.
    Sync {
        day: u64,
        since: i64,
        batch: Vec<(String, Delta)>,
    },
    Delivery {
        id: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SyncReply {
    pub day: u64,
    pub revision: i64,
    pub spent: Vec<(String, i64)>,
    pub stats: Vec<(String, u64, u64)>,
}

#[durable_object]
pub struct BudgetObject {
    state: State,
}

impl DurableObject for BudgetObject {
    fn new(state: State, _env: Env) -> Self {
        let sql = state.storage().sql();
        let _ = sql.exec(
            "CREATE TABLE IF NOT EXISTS spend (campaign TEXT NOT NULL, day INTEGER NOT NULL, micros INTEGER NOT NULL, rev INTEGER NOT NULL, PRIMARY KEY (campaign, day))",
            None,
        );
        let _ = sql.exec(
            "CREATE TABLE IF NOT EXISTS delivery (campaign TEXT PRIMARY KEY, impressions INTEGER NOT NULL, clicks INTEGER NOT NULL, rev INTEGER NOT NULL)",
            None,
        );
        let _ = sql.exec(
            "CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1), rev INTEGER NOT NULL)",
            None,
        );
        BudgetObject { state }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        respond(
            async {
                match command::<BudgetCommand>(&mut req).await? {
                    BudgetCommand::Sync { day, since, batch } => self.sync(day, since, batch),
                    BudgetCommand::Delivery { id } => self.delivery(&id),
                }
            }
            .await,
        )
    }
}

#[derive(Deserialize)]
struct SpendRow {
    campaign: String,
    micros: i64,
}

#[derive(Deserialize)]
struct DeliveryRow {
    campaign: String,
    impressions: i64,
    clicks: i64,
}

impl BudgetObject {
    fn today() -> u64 {
        worker::Date::now().as_millis() / 86_400_000
    }

    fn sync(&self, day: u64, since: i64, batch: Vec<(String, Delta)>) -> Result<Response, ApiError> {
        let sql = self.state.storage().sql();
        let today = Self::today();
        exec(&sql, "INSERT INTO meta (id, rev) VALUES (1, 1) ON CONFLICT(id) DO UPDATE SET rev = rev + 1", vec![])?;
        let rev: Value = exec(&sql, "SELECT rev FROM meta WHERE id = 1", vec![])?.one().map_err(sql_err)?;
        let rev = rev["rev"].as_i64().unwrap_or(0);
        // One statement per table for the whole batch: an isolate's sync
        // carries every campaign it served since the last one.
        let rows: Vec<(&str, i64, u64, u64)> =
            batch.iter().map(|(id, d)| (id.as_str(), d.spend_micros, d.impressions, d.clicks)).collect();
        let rows = serde_json::to_string(&rows).map_err(|e| ApiError::internal(e.to_string()))?;
        exec(
            &sql,
            "INSERT INTO spend (campaign, day, micros, rev)
             SELECT json_extract(value, '$[0]'), ?, json_extract(value, '$[1]'), ? FROM json_each(?)
             WHERE json_extract(value, '$[1]') != 0
             ON CONFLICT(campaign, day) DO UPDATE SET micros = micros + excluded.micros, rev = excluded.rev",
            vec![(day as i64).into(), rev.into(), rows.clone().into()],
        )?;
        exec(
            &sql,
            "INSERT INTO delivery (campaign, impressions, clicks, rev)
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[2]'), json_extract(value, '$[3]'), ?
             FROM json_each(?)
             WHERE json_extract(value, '$[2]') != 0 OR json_extract(value, '$[3]') != 0
             ON CONFLICT(campaign) DO UPDATE SET impressions = impressions + excluded.impressions,
               clicks = clicks + excluded.clicks, rev = excluded.rev",
            vec![rev.into(), rows.into()],
        )?;
        // An isolate still on another day needs all of today's rows.
        let since = if day == today { since } else { 0 };
        let spent: Vec<SpendRow> = exec(
            &sql,
            "SELECT campaign, micros FROM spend WHERE day = ? AND rev > ?",
            vec![(today as i64).into(), since.into()],
        )?
        .to_array()
        .map_err(sql_err)?;
        let stats: Vec<DeliveryRow> =
            exec(&sql, "SELECT campaign, impressions, clicks FROM delivery WHERE rev > ?", vec![since.into()])?
                .to_array()
                .map_err(sql_err)?;
        let reply = SyncReply {
            day: today,
            revision: rev,
            spent: spent.into_iter().map(|r| (r.campaign, r.micros)).collect(),
            stats: stats
                .into_iter()
                .map(|r| (r.campaign, r.impressions.max(0) as u64, r.clicks.max(0) as u64))
                .collect(),
        };
        Ok(json_response(200, &reply))
    }

    fn delivery(&self, id: &str) -> Result<Response, ApiError> {
        let sql = self.state.storage().sql();
        let today = Self::today();
        let spent: Vec<SpendRow> = exec(
            &sql,
            "SELECT campaign, micros FROM spend WHERE campaign = ? AND day = ?",
            vec![id.to_string().into(), (today as i64).into()],
        )?
        .to_array()
        .map_err(sql_err)?;
        let d: Vec<DeliveryRow> = exec(
            &sql,
            "SELECT campaign, impressions, clicks FROM delivery WHERE campaign = ?",
            vec![id.to_string().into()],
        )?
        .to_array()
        .map_err(sql_err)?;
        let micros = spent.first().map_or(0, |r| r.micros);
        Ok(json_response(
            200,
            &json!({
                "day": today,
                "spent_micros": micros,
                "impressions": d.first().map_or(0, |r| r.impressions),
                "clicks": d.first().map_or(0, |r| r.clicks),
            }),
        ))
    }
}

// ---------------------------------------------------------------- users

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum UserCommand {
    /// Records impressions of capped campaigns, `(user, campaign, served
    /// at, cap window in seconds)`, then returns the unexpired impressions
    /// of `history`'s users (including those just recorded).
    Sync { now: u64, record: Vec<(String, String, u64, u32)>, history: Vec<String> },
    /// First click on this impression within `window` seconds?
    Click { impression_id: String, now: u64, window: u64 },
}

/// What a user-shard sync answers: `(user, campaign, served at)`, oldest first.
#[derive(Debug, Serialize, Deserialize)]
pub struct UserSyncReply {
    pub history: Vec<(String, String, u64)>,
}

/// One object per shard of users (`users:{n}`, see `pacing::user_shard`):
/// the impressions behind frequency caps and click deduplication of the
/// users that hash to it. A shard rather than one object per user keeps an
/// isolate's background sync to one call per shard however many users it
/// served; a user always maps to the same shard.
#[durable_object]
pub struct UserObject {
    state: State,
}

#[derive(Deserialize)]
struct SeenRow {
    user: String,
    campaign: String,
    at: i64,
}

#[derive(Deserialize)]
struct ClickRow {
    at: i64,
}

impl DurableObject for UserObject {
    fn new(state: State, _env: Env) -> Self {
        let sql = state.storage().sql();
        // An impression matters until its cap window has passed (`expires`).
        let _ = sql.exec(
            "CREATE TABLE IF NOT EXISTS impressions (user TEXT NOT NULL, campaign TEXT NOT NULL, at INTEGER NOT NULL, expires INTEGER NOT NULL)",
            None,
        );
        let _ = sql.exec("CREATE INDEX IF NOT EXISTS impressions_by_user ON impressions (user, at)", None);
        let _ = sql.exec("CREATE INDEX IF NOT EXISTS impressions_by_expiry ON impressions (expires)", None);
        let _ =
            sql.exec("CREATE TABLE IF NOT EXISTS clicks (impression_id TEXT PRIMARY KEY, at INTEGER NOT NULL)", None);
        UserObject { state }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        respond(
            async {
                let sql = self.state.storage().sql();
                match command::<UserCommand>(&mut req).await? {
                    UserCommand::Sync { now, record, history } => {
                        exec(&sql, "DELETE FROM impressions WHERE expires <= ?", vec![(now as i64).into()])?;
                        if !record.is_empty() {
                            let rows: Vec<(&str, &str, u64, u64)> = record
                                .iter()
                                .map(|(user, campaign, at, per)| {
                                    (user.as_str(), campaign.as_str(), *at, at + *per as u64)
                                })
                                .collect();
                            let rows = serde_json::to_string(&rows).map_err(|e| ApiError::internal(e.to_string()))?;
                            exec(
                                &sql,
                                "INSERT INTO impressions (user, campaign, at, expires)
                                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),
                                        json_extract(value, '$[2]'), json_extract(value, '$[3]')
                                 FROM json_each(?)",
                                vec![rows.into()],
                            )?;
                        }
                        let history = if history.is_empty() {
                            Vec::new()
                        } else {
                            let users =
                                serde_json::to_string(&history).map_err(|e| ApiError::internal(e.to_string()))?;
                            let rows: Vec<SeenRow> = exec(
                                &sql,
                                "SELECT user, campaign, at FROM impressions
                                 WHERE user IN (SELECT value FROM json_each(?)) AND expires > ? ORDER BY at",
                                vec![users.into(), (now as i64).into()],
                            )?
                            .to_array()
                            .map_err(sql_err)?;
                            rows.into_iter().map(|r| (r.user, r.campaign, r.at.max(0) as u64)).collect()
                        };
                        Ok(json_response(200, &UserSyncReply { history }))
                    }
                    UserCommand::Click { impression_id, now, window } => {
                        let rows: Vec<ClickRow> = exec(
                            &sql,
                            "SELECT at FROM clicks WHERE impression_id = ?",
                            vec![impression_id.clone().into()],
                        )?
                        .to_array()
                        .map_err(sql_err)?;
                        let first = rows.first().is_none_or(|r| now.saturating_sub(r.at.max(0) as u64) >= window);
                        if first {
                            exec(
                                &sql,
                                "INSERT OR REPLACE INTO clicks (impression_id, at) VALUES (?, ?)",
                                vec![impression_id.into(), (now as i64).into()],
                            )?;
                        }
                        exec(
                            &sql,
                            "DELETE FROM clicks WHERE at < ?",
                            vec![(now.saturating_sub(86_400) as i64).into()],
                        )?;
                        Ok(json_response(200, &json!({ "first": first })))
                    }
                }
            }
            .await,
        )
    }
}

// ---------------------------------------------------------------- recorder

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum RecorderCommand {
    /// `points`: a JSON array of data points, as text.
    Write {
        points: String,
    },
    Read {
        campaign: Option<String>,
    },
}

#[durable_object]
pub struct RecorderObject {
    state: State,
}

impl DurableObject for RecorderObject {
    fn new(state: State, _env: Env) -> Self {
        let _ = state
            .storage()
            .sql()
            .exec("CREATE TABLE IF NOT EXISTS points (seq INTEGER PRIMARY KEY AUTOINCREMENT, campaign TEXT NOT NULL, body TEXT NOT NULL)", None);
        RecorderObject { state }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        respond(
            async {
                let sql = self.state.storage().sql();
                match command::<RecorderCommand>(&mut req).await? {
                    RecorderCommand::Write { points } => {
                        exec(
                            &sql,
                            "INSERT INTO points (campaign, body)
                             SELECT json_extract(value, '$.indexes[0]'), value FROM json_each(?)",
                            vec![points.into()],
                        )?;
                        Ok(json_response(200, &json!({ "ok": true })))
                    }
                    RecorderCommand::Read { campaign } => {
                        let rows: Vec<BodyRow> = match campaign {
                            Some(c) => {
                                exec(&sql, "SELECT body FROM points WHERE campaign = ? ORDER BY seq", vec![c.into()])?
                            }
                            None => exec(&sql, "SELECT body FROM points ORDER BY seq DESC LIMIT 1000", vec![])?,
                        }
                        .to_array()
                        .map_err(sql_err)?;
                        let points: Vec<Value> =
                            rows.iter().filter_map(|r| serde_json::from_str(&r.body).ok()).collect();
                        Ok(json_response(200, &json!({ "points": points })))
                    }
                }
            }
            .await,
        )
    }
}

/// Sends a JSON command to the named object of `binding` and parses the
/// JSON answer.
pub async fn call<T: for<'de> Deserialize<'de>>(
    env: &Env,
    binding: &str,
    name: &str,
    message: &Value,
) -> Result<T, ApiError> {
    let namespace = env.durable_object(binding)?;
    let stub = namespace.id_from_name(name)?.get_stub()?;
    let mut init = worker::RequestInit::new();
    init.with_method(worker::Method::Post).with_body(Some(JsValue::from_str(&message.to_string())));
    let request = Request::new_with_init("https://ads.internal/", &init)?;
    let mut response = stub.fetch_with_request(request).await?;
    let status = response.status_code();
    let text = response.text().await?;
    if status != 200 {
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = v["error"]["message"].as_str().unwrap_or(&text).to_string();
        return Err(ApiError::new(
            if status >= 500 { 503 } else { status },
            "object_error",
            format!("{binding}: {message}"),
        ));
    }
    serde_json::from_str(&text).map_err(|e| ApiError::internal(format!("{binding} answered unreadable JSON: {e}")))
}
