//! The serving path: `GET /v1/ads` and `GET /v1/ads/click/{token}`, the
//! isolate's snapshot cache and the background sync.
//!
//! Per ad request: no Durable Object call and no KV read once the snapshot
//! is cached. The snapshot is re-read from KV in the background when older
//! than `SNAPSHOT_TTL_SECONDS` (default 30 s) and served stale meanwhile;
//! KV itself propagates a new snapshot to other locations within about a
//! minute, so a paused campaign may keep serving for up to TTL + ~60 s
//! outside the location that wrote it (its budget still bounds its spend).
//! A refresh first reads the small `snapshot_version` key and re-reads the
//! snapshot itself only when the version differs from the cached one.
//!
//! Everything that talks to Durable Objects runs in the background sync, at
//! most once per `PACING_SYNC_MS` per isolate: one call to the budget
//! object, one per user shard with new capped impressions or users new to
//! the isolate, and (local stacks) one to the recorder.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::json;
use worker::{Context, Env, Response};
use worker_common::log::{self, Level};
use worker_common::{json as json_response, route, ApiError};

use crate::auction::{Index, Query};
use crate::campaign::{self, money_of_micros, normalize_value, BidType, Campaign, MICROS};
use crate::events::{Event, Kind, Sink};
use crate::objects::{self, Snapshot, SyncReply, UserSyncReply};
use crate::pacing::{user_shard, Delta};
use crate::state;
use crate::token::{self, Click, Dna};
use crate::{now_ms, SERVICE};

/// The Worker's settings, read once per isolate: vars and secrets do not
/// change during an isolate's life (a new deployment starts new isolates).
pub(crate) struct Config {
    reserve_ecpm: i64,
    snapshot_ttl_ms: u64,
    sync_ms: u64,
    allowance_bps: i64,
    click_ttl_s: u64,
    click_dedup_s: u64,
    user_shards: u32,
    signing_key: Option<String>,
    pub(crate) recorder: bool,
}

thread_local! {
    static CONFIG: OnceCell<Rc<Config>> = const { OnceCell::new() };
}

pub(crate) fn config(env: &Env) -> Rc<Config> {
    CONFIG.with(|c| c.get_or_init(|| Rc::new(read_config(env))).clone())
}

fn read_config(env: &Env) -> Config {
    let num =
        |name: &str, default: u64| route::config(env, name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(default);
    let reserve = route::config(env, "RESERVE_CPM")
        .and_then(|v| v.parse::<rust_decimal::Decimal>().ok())
        .and_then(campaign::to_micros)
        .filter(|m| *m >= 0)
        .unwrap_or(MICROS / 2);
    Config {
        reserve_ecpm: reserve,
        snapshot_ttl_ms: num("SNAPSHOT_TTL_SECONDS", 30) * 1000,
        sync_ms: num("PACING_SYNC_MS", 1000).max(50),
        allowance_bps: num("PACING_ALLOWANCE_BPS", 500).clamp(1, 10_000) as i64,
        click_ttl_s: num("CLICK_TTL_SECONDS", 3600),
        click_dedup_s: num("CLICK_DEDUP_SECONDS", 30),
        user_shards: num("USER_SHARDS", 16).clamp(1, 4096) as u32,
        signing_key: route::config(env, "CLICK_SIGNING_KEY"),
        recorder: route::config(env, "ADS_EVENT_RECORDER").as_deref() == Some("on"),
    }
}

fn signing_key(cfg: &Config) -> Result<&[u8], ApiError> {
    cfg.signing_key
        .as_deref()
        .map(str::as_bytes)
        .ok_or_else(|| ApiError::unavailable("not_configured", "CLICK_SIGNING_KEY is not set"))
}

pub(crate) fn user_object(user: &str, cfg: &Config) -> String {
    format!("users:{}", user_shard(user, cfg.user_shards))
}

/// After a campaign write in this isolate: the next ad request re-reads KV.
pub fn invalidate_snapshot() {
    state::with(|s| s.fetched_at_ms = None);
}

/// Reads the snapshot from KV and installs its index. With `revalidate`
/// (a background refresh of a cached snapshot) it first reads the version
/// key and keeps the cached index when the version is unchanged.
async fn load_snapshot(env: &Env, revalidate: bool) -> Result<Rc<Index>, ApiError> {
    let kv = env.kv("CAMPAIGNS").map_err(|e| ApiError::internal(format!("KV binding: {e}")))?;
    if revalidate {
        let cached = state::with(|s| s.index.clone().map(|index| (index, s.snapshot_version)));
        if let Some((index, version)) = cached {
            let current = kv
                .get(objects::SNAPSHOT_VERSION_KEY)
                .text()
                .await
                .map_err(|e| ApiError::unavailable("kv_unavailable", e.to_string()))?;
            if current.and_then(|v| v.parse::<i64>().ok()) == Some(version) {
                state::with(|s| s.fetched_at_ms = Some(now_ms()));
                return Ok(index);
            }
        }
    }
    let text = kv
        .get(objects::SNAPSHOT_KEY)
        .text()
        .await
        .map_err(|e| ApiError::unavailable("kv_unavailable", e.to_string()))?;
    let snapshot = match text {
        Some(t) => {
            serde_json::from_str::<Snapshot>(&t).map_err(|e| ApiError::internal(format!("snapshot unreadable: {e}")))?
        }
        None => Snapshot { version: 0, entries: Vec::new() },
    };
    let fetched = now_ms();
    Ok(state::with(|s| {
        // Versions only grow; an older one (a read that raced a newer one,
        // or another location's KV lagging) does not replace a newer index.
        if let Some(index) = s.index.clone().filter(|_| snapshot.version < s.snapshot_version) {
            s.fetched_at_ms = Some(fetched);
            return index;
        }
        let index = Rc::new(Index::build(snapshot.entries, &s.stats));
        s.index = Some(index.clone());
        s.snapshot_version = snapshot.version;
        s.fetched_at_ms = Some(fetched);
        s.stats_changed = false;
        s.last_rebuild_ms = fetched;
        index
    }))
}

/// The cached index; read synchronously only when there is none (first
/// request, or right after a write in this isolate), else refreshed in the
/// background when stale.
async fn index(env: &Env, ctx: &Context, cfg: &Config) -> Result<Rc<Index>, ApiError> {
    let now = now_ms();
    let (cached, stale) = state::with(|s| {
        let fresh_enough = s.fetched_at_ms.is_some_and(|at| now.saturating_sub(at) < cfg.snapshot_ttl_ms);
        let valid = s.fetched_at_ms.is_some();
        let start_refresh = valid && !fresh_enough && !s.refreshing;
        if start_refresh {
            s.refreshing = true;
        }
        (if valid { s.index.clone() } else { None }, start_refresh)
    });
    match cached {
        Some(index) => {
            if stale {
                let env = env.clone();
                ctx.wait_until(async move {
                    if let Err(e) = load_snapshot(&env, true).await {
                        log::event(Level::Warn, SERVICE, "snapshot refresh failed", json!({ "error": e.message }));
                    }
                    state::with(|s| s.refreshing = false);
                });
            }
            Ok(index)
        }
        None => load_snapshot(env, false).await,
    }
}

fn param(url: &worker::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.to_string())
}

fn id_param(url: &worker::Url, name: &str, max: usize) -> Result<String, ApiError> {
    let v = param(url, name).ok_or_else(|| ApiError::invalid("invalid_field", format!("`{name}` is required")))?;
    if v.is_empty() || v.len() > max || !v.bytes().all(campaign::token_byte) {
        return Err(ApiError::invalid(
            "invalid_field",
            format!("`{name}` must be 1-{max} characters of A-Z a-z 0-9 _ -"),
        ));
    }
    Ok(v)
}

fn slug_param(url: &worker::Url, name: &str) -> Result<Option<String>, ApiError> {
    match param(url, name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => normalize_value(&v)
            .map(Some)
            .ok_or_else(|| ApiError::invalid("invalid_field", format!("`{name}` must be a slug of a-z 0-9 _ -"))),
    }
}

fn parse_query(url: &worker::Url) -> Result<(String, String, Query), ApiError> {
    let placement = id_param(url, "placement", 64)?;
    let user = id_param(url, "user", 128)?;
    let age_months = match param(url, "age_months").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(
            v.parse::<u32>()
                .ok()
                .filter(|a| *a <= campaign::MAX_AGE_MONTHS)
                .ok_or_else(|| ApiError::invalid("invalid_field", "`age_months` must be 0-600"))?,
        ),
    };
    let mut interests = Vec::new();
    if let Some(list) = param(url, "interests") {
        for item in list.split(',').filter(|s| !s.trim().is_empty()) {
            let v = normalize_value(item)
                .ok_or_else(|| ApiError::invalid("invalid_field", "`interests` must be comma-separated slugs"))?;
            if !interests.contains(&v) {
                interests.push(v);
            }
        }
        if interests.len() > campaign::MAX_LIST {
            return Err(ApiError::invalid("invalid_field", "at most 64 interests"));
        }
    }
    let query = Query {
        species: slug_param(url, "species")?,
        breed: slug_param(url, "breed")?,
        age_months,
        interests,
        region: slug_param(url, "region")?,
    };
    Ok((placement, user, query))
}

pub async fn ad(url: &worker::Url, env: &Env, ctx: &Context) -> Result<Response, ApiError> {
    let (placement, user, query) = parse_query(url)?;
    let cfg = config(env);
    let index = index(env, ctx, &cfg).await?;
    let now_s = now_ms() / 1000;
    // The tie-break seed and the impression id, from one call.
    let mut random = [0u8; 20];
    getrandom::fill(&mut random).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    let (seed, id_bytes) = random.split_at(8);
    let seed = u64::from_le_bytes(seed.try_into().unwrap_or_default());

    let outcome = state::with(|s| {
        if s.ledger.day == 0 {
            s.ledger = crate::pacing::Ledger::new(now_s / 86_400, cfg.allowance_bps);
        }
        s.ledger.roll_day(now_s / 86_400);
        let ledger = &s.ledger;
        let log = s.freq.get(&user);
        let outcome = index.run(&query, cfg.reserve_ecpm, seed, |c| {
            ledger.allows(&c.entry.id, c.entry.daily_budget_micros)
                && match (c.entry.cap, log) {
                    (Some((max, per)), Some(log)) => log.allows(&c.entry.id, max, per, now_s),
                    _ => true,
                }
        });
        // A user new to this isolate: the next sync loads their history.
        let log = s.freq.user(&user);
        if !log.loaded && !log.loading {
            log.loading = true;
            s.history_wanted.push(user.clone());
        }
        outcome
    });
    let Some(outcome) = outcome else {
        schedule_sync(env, ctx, &cfg);
        return Ok(Response::empty()?.with_status(204));
    };
    let winner = &index.ranked()[outcome.position];
    let entry = &winner.entry;
    let impression_id = format!("imp_{}", hex::encode(id_bytes));
    let dna = Dna {
        species: query.species,
        breed: query.breed,
        age_months: query.age_months,
        interests: query.interests,
        region: query.region,
    };
    let (charge, click_price) = match entry.kind {
        BidType::Cpm => (outcome.price_micros / 1000, 0),
        BidType::Cpc => (0, outcome.price_micros),
    };
    let click = Click {
        version: 1,
        campaign_id: entry.id.clone(),
        creative_id: entry.creative_id.clone(),
        placement: placement.clone(),
        user: user.clone(),
        issued_at: now_s,
        impression_id: impression_id.clone(),
        click_price_micros: click_price,
        dna: dna.clone(),
    };
    let token =
        token::sign(signing_key(&cfg)?, &click).ok_or_else(|| ApiError::internal("could not sign the click token"))?;
    let price = money_of_micros(outcome.price_micros).ok_or_else(|| ApiError::internal("price off the cent grid"))?;

    state::with(|s| {
        s.ledger.charge(&entry.id, Delta { spend_micros: charge, impressions: 1, clicks: 0 });
        // Only capped campaigns need the user's impressions.
        if let Some((max, per)) = entry.cap {
            s.freq.user(&user).record(&entry.id, now_s, max, per);
            s.pending_seen.entry(user.clone()).or_default().push((entry.id.clone(), now_s, per));
        }
    });
    Sink::new(env, cfg.recorder).write(
        Event {
            kind: Kind::Impression,
            campaign_id: &entry.id,
            creative_id: &entry.creative_id,
            placement: &placement,
            user: &user,
            impression_id: &impression_id,
            dna: &dna,
            price_micros: outcome.price_micros,
            charge_micros: charge,
            billed: charge > 0,
        }
        .point(),
    );
    schedule_sync(env, ctx, &cfg);
    let origin = url.origin().ascii_serialization();
    Ok(json_response(
        200,
        &json!({ "ad": {
            "id": impression_id,
            "campaign_id": entry.id,
            "title": entry.title,
            "image_url": entry.image_url,
            "click_url": format!("{origin}/v1/ads/click/{token}"),
            "price": price,
        }}),
    ))
}

pub async fn click(env: &Env, ctx: &Context, token: &str) -> Result<Response, ApiError> {
    let cfg = config(env);
    let now_s = now_ms() / 1000;
    let click = token::verify(signing_key(&cfg)?, token, now_s, cfg.click_ttl_s)
        .map_err(|e| ApiError::new(400, e.code(), e.to_string()))?;
    // The landing URL comes from the stored campaign, never from the token
    // or the request. A paused campaign's ads still land.
    let kv = env.kv("CAMPAIGNS").map_err(|e| ApiError::internal(format!("KV binding: {e}")))?;
    let stored = kv
        .get(&objects::campaign_key(&click.campaign_id))
        .text()
        .await
        .map_err(|e| ApiError::unavailable("kv_unavailable", e.to_string()))?;
    let campaign: Campaign = stored
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| ApiError::new(400, "unknown_campaign", "the click token names no known campaign"))?;
    if campaign.creative_id != click.creative_id {
        return Err(ApiError::new(
            400,
            "unknown_creative",
            "the click token names a creative the campaign no longer has",
        ));
    }
    let budget = campaign::to_micros(campaign.input.daily_budget.value()).unwrap_or(0);
    let env2 = env.clone();
    ctx.wait_until(async move {
        if let Err(e) = record_click(&env2, &cfg, &click, budget, now_s).await {
            log::event(
                Level::Warn,
                SERVICE,
                "click not recorded",
                json!({ "error": e.message, "impression": click.impression_id }),
            );
        }
        sync_loop(&env2, &cfg).await;
    });
    let headers = worker::Headers::new();
    headers.set("location", &campaign.input.creative.landing_url)?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::empty()?.with_status(302).with_headers(headers))
}

#[derive(Deserialize)]
struct First {
    first: bool,
}

/// Counts a click once per impression within the dedup window (the user's
/// object decides, so a double click reaching two isolates counts once),
/// bills it to a CPC campaign while its budget allows, and writes its point.
async fn record_click(env: &Env, cfg: &Config, click: &Click, budget: i64, now_s: u64) -> Result<(), ApiError> {
    let reply: First = objects::call(
        env,
        "USERS",
        &user_object(&click.user, cfg),
        &json!({
            "op": "click", "impression_id": click.impression_id, "now": now_s, "window": cfg.click_dedup_s,
        }),
    )
    .await?;
    if !reply.first {
        return Ok(());
    }
    let billed = state::with(|s| {
        let billed = click.click_price_micros > 0 && s.ledger.allows(&click.campaign_id, budget);
        let charge = if billed { click.click_price_micros } else { 0 };
        s.ledger.charge(&click.campaign_id, Delta { spend_micros: charge, impressions: 0, clicks: 1 });
        billed
    });
    Sink::new(env, cfg.recorder).write(
        Event {
            kind: Kind::Click,
            campaign_id: &click.campaign_id,
            creative_id: &click.creative_id,
            placement: &click.placement,
            user: &click.user,
            impression_id: &click.impression_id,
            dna: &click.dna,
            price_micros: click.click_price_micros,
            charge_micros: if billed { click.click_price_micros } else { 0 },
            billed,
        }
        .point(),
    );
    Ok(())
}

/// Starts the background sync when there is something to send or load, or
/// the budget view is older than the sync interval.
fn schedule_sync(env: &Env, ctx: &Context, cfg: &Rc<Config>) {
    let now = now_ms();
    let start = state::with(|s| {
        let due = s.ledger.has_pending()
            || !s.pending_points.is_empty()
            || !s.pending_seen.is_empty()
            || !s.history_wanted.is_empty()
            || now.saturating_sub(s.last_sync_ms) >= cfg.sync_ms;
        due && !s.sync_running
    });
    if start {
        let (env, cfg) = (env.clone(), cfg.clone());
        ctx.wait_until(async move { sync_loop(&env, &cfg).await });
    }
}

/// One sync at a time per isolate, at most one per interval, until nothing
/// is left to send.
async fn sync_loop(env: &Env, cfg: &Config) {
    if state::with(|s| std::mem::replace(&mut s.sync_running, true)) {
        return;
    }
    for _ in 0..60 {
        let wait = state::with(|s| (s.last_sync_ms + cfg.sync_ms).saturating_sub(now_ms()));
        if wait > 0 {
            worker::Delay::from(std::time::Duration::from_millis(wait)).await;
        }
        sync_once(env, cfg).await;
        let more = state::with(|s| {
            s.ledger.has_pending()
                || !s.pending_points.is_empty()
                || !s.pending_seen.is_empty()
                || !s.history_wanted.is_empty()
        });
        if !more {
            break;
        }
    }
    state::with(|s| s.sync_running = false);
}

/// Capped impressions kept for a retry when a user shard could not be
/// reached; beyond this they are dropped (caps then hold per isolate only).
const MAX_UNSENT_IMPRESSIONS: usize = 100_000;

/// What one user shard gets in one sync.
#[derive(Default)]
struct ShardBatch {
    record: Vec<(String, String, u64, u32)>,
    history: Vec<String>,
}

async fn sync_once(env: &Env, cfg: &Config) {
    let (day, since, batch, seen, wanted, points) = state::with(|s| {
        s.last_sync_ms = now_ms();
        (
            s.ledger.day,
            s.budget_revision,
            s.ledger.begin_sync(),
            std::mem::take(&mut s.pending_seen),
            std::mem::take(&mut s.history_wanted),
            std::mem::take(&mut s.pending_points),
        )
    });
    let message = json!({ "op": "sync", "day": day, "since": since, "batch": batch });
    let budget = objects::call::<SyncReply>(env, "BUDGET", "budget", &message);

    let mut shards: BTreeMap<u32, ShardBatch> = BTreeMap::new();
    for (user, list) in seen {
        let shard = shards.entry(user_shard(&user, cfg.user_shards)).or_default();
        shard.record.extend(list.into_iter().map(|(campaign, at, per)| (user.clone(), campaign, at, per)));
    }
    for user in wanted {
        shards.entry(user_shard(&user, cfg.user_shards)).or_default().history.push(user);
    }
    let users = futures_util::future::join_all(
        shards.into_iter().map(|(shard, batch)| sync_user_shard(env, format!("users:{shard}"), batch)),
    );
    let recorder = async {
        if !points.is_empty() {
            let r = match serde_json::to_string(&points) {
                Ok(points) => {
                    objects::call::<serde_json::Value>(
                        env,
                        "RECORDER",
                        "recorder",
                        &json!({ "op": "write", "points": points }),
                    )
                    .await
                }
                Err(e) => Err(ApiError::internal(e.to_string())),
            };
            if let Err(e) = r {
                log::event(Level::Warn, SERVICE, "recorder write failed", json!({ "error": e.message }));
            }
        }
    };
    let (budget, _, _) = futures_util::join!(budget, users, recorder);
    match budget {
        Ok(reply) => state::with(|s| {
            s.ledger.finish_sync(reply.day, reply.spent);
            s.budget_revision = reply.revision;
            for (id, impressions, clicks) in reply.stats {
                s.stats.insert(id, crate::auction::Stats { impressions, clicks });
                s.stats_changed = true;
            }
            // Click rates move slowly: re-rank at most every 10 s, in place.
            let now = now_ms();
            if s.stats_changed && now.saturating_sub(s.last_rebuild_ms) >= 10_000 {
                if let Some(index) = s.index.as_mut() {
                    Rc::make_mut(index).rerank(&s.stats);
                }
                s.stats_changed = false;
                s.last_rebuild_ms = now;
            }
        }),
        Err(e) => {
            state::with(|s| s.ledger.abort_sync());
            log::event(Level::Warn, SERVICE, "budget sync failed", json!({ "error": e.message }));
        }
    }
}

/// Sends a shard its users' new capped impressions and loads the history of
/// the users new to this isolate (the object records first, so the history
/// includes what this isolate just sent; impressions recorded here since
/// are added from `pending_seen`).
async fn sync_user_shard(env: &Env, object: String, batch: ShardBatch) {
    let now_s = now_ms() / 1000;
    let reply = objects::call::<UserSyncReply>(
        env,
        "USERS",
        &object,
        &json!({ "op": "sync", "now": now_s, "record": batch.record, "history": batch.history }),
    )
    .await;
    match reply {
        Ok(reply) => state::with(|s| {
            let mut by_user: std::collections::HashMap<String, Vec<(String, u64)>> =
                batch.history.iter().map(|u| (u.clone(), Vec::new())).collect();
            for (user, campaign, at) in reply.history {
                if let Some(list) = by_user.get_mut(&user) {
                    list.push((campaign, at));
                }
            }
            for (user, history) in by_user {
                let unsent: Vec<(String, u64)> = s
                    .pending_seen
                    .get(&user)
                    .map(|l| l.iter().map(|(c, at, _)| (c.clone(), *at)).collect())
                    .unwrap_or_default();
                s.freq.user(&user).merge(history, &unsent, now_s);
            }
        }),
        Err(e) => {
            state::with(|s| {
                for user in &batch.history {
                    s.freq.user(user).loading = false;
                }
                let kept: usize = s.pending_seen.values().map(Vec::len).sum();
                if kept + batch.record.len() <= MAX_UNSENT_IMPRESSIONS {
                    for (user, campaign, at, per) in batch.record {
                        s.pending_seen.entry(user).or_default().push((campaign, at, per));
                    }
                }
            });
            log::event(
                Level::Warn,
                SERVICE,
                "user shard sync failed: frequency caps hold per isolate until it succeeds",
                json!({ "error": e.message, "object": object }),
            );
        }
    }
}
