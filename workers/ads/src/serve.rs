//! The serving path: `GET /v1/ads` and `GET /v1/ads/click/{token}`, the
//! isolate's snapshot cache and the background sync.
//!
//! Per ad request: no Durable Object call and no KV read once the snapshot
//! is cached. The snapshot is re-read from KV in the background when older
//! than `SNAPSHOT_TTL_SECONDS` (default 30 s) and served stale meanwhile;
//! KV itself propagates a new snapshot to other locations within about a
//! minute, so a paused campaign may keep serving for up to TTL + ~60 s
//! outside the location that wrote it (its budget still bounds its spend).

use std::rc::Rc;

use serde::Deserialize;
use serde_json::json;
use worker::{Context, Env, Request, Response};
use worker_common::log::{self, Level};
use worker_common::{json as json_response, route, ApiError};

use crate::auction::{Index, Query};
use crate::campaign::{self, money_of_micros, normalize_value, BidType, Campaign, MICROS};
use crate::events::{Event, Kind, Sink};
use crate::objects::{self, Snapshot, SyncReply};
use crate::pacing::Delta;
use crate::state;
use crate::token::{self, Click, Dna};
use crate::{now_ms, random_hex, SERVICE};

struct Config {
    reserve_ecpm: i64,
    snapshot_ttl_ms: u64,
    sync_ms: u64,
    allowance_bps: i64,
    click_ttl_s: u64,
    click_dedup_s: u64,
}

fn config(env: &Env) -> Config {
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
    }
}

/// After a campaign write in this isolate: the next ad request re-reads KV.
pub fn invalidate_snapshot() {
    state::with(|s| s.fetched_at_ms = None);
}

async fn load_snapshot(env: &Env) -> Result<Rc<Index>, ApiError> {
    let kv = env.kv("CAMPAIGNS").map_err(|e| ApiError::internal(format!("KV binding: {e}")))?;
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
                    if let Err(e) = load_snapshot(&env).await {
                        log::event(Level::Warn, SERVICE, "snapshot refresh failed", json!({ "error": e.message }));
                    }
                    state::with(|s| s.refreshing = false);
                });
            }
            Ok(index)
        }
        None => load_snapshot(env).await,
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

pub async fn ad(req: &Request, env: &Env, ctx: &Context) -> Result<Response, ApiError> {
    let url = req.url()?;
    let (placement, user, query) = parse_query(&url)?;
    let cfg = config(env);
    let index = index(env, ctx, &cfg).await?;
    let now_s = now_ms() / 1000;
    let mut seed_bytes = [0u8; 8];
    getrandom::fill(&mut seed_bytes).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    let seed = u64::from_le_bytes(seed_bytes);

    let outcome = state::with(|s| {
        if s.ledger.day == 0 {
            s.ledger = crate::pacing::Ledger::new(now_s / 86_400, cfg.allowance_bps);
        }
        s.ledger.roll_day(now_s / 86_400);
        let ledger = &s.ledger;
        let log = s.freq.get(&user);
        index.run(&query, cfg.reserve_ecpm, seed, |c| {
            ledger.allows(&c.entry.id, c.entry.daily_budget_micros)
                && match (c.entry.cap, log) {
                    (Some((max, per)), Some(log)) => log.allows(&c.entry.id, max, per, now_s),
                    _ => true,
                }
        })
    });
    let needs_history = state::with(|s| {
        let log = s.freq.user(&user);
        let start = !log.loaded && !log.loading;
        if start {
            log.loading = true;
        }
        start
    });
    if needs_history {
        let (env2, user2) = (env.clone(), user.clone());
        ctx.wait_until(async move { load_history(&env2, &user2).await });
    }
    let Some(outcome) = outcome else {
        schedule_sync(env, ctx, &cfg);
        return Ok(Response::empty()?.with_status(204));
    };
    let winner = &index.ranked()[outcome.position];
    let entry = &winner.entry;
    let impression_id = format!("imp_{}", random_hex(12)?);
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
    let key = route::config(env, "CLICK_SIGNING_KEY")
        .ok_or_else(|| ApiError::unavailable("not_configured", "CLICK_SIGNING_KEY is not set"))?;
    let token =
        token::sign(key.as_bytes(), &click).ok_or_else(|| ApiError::internal("could not sign the click token"))?;
    let price = money_of_micros(outcome.price_micros).ok_or_else(|| ApiError::internal("price off the cent grid"))?;

    state::with(|s| {
        s.ledger.charge(&entry.id, Delta { spend_micros: charge, impressions: 1, clicks: 0 });
        s.freq.user(&user).record(&entry.id, now_s);
        s.pending_seen.entry(user.clone()).or_default().push((entry.id.clone(), now_s));
    });
    Sink::from_env(env).write(
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
    let key = route::config(env, "CLICK_SIGNING_KEY")
        .ok_or_else(|| ApiError::unavailable("not_configured", "CLICK_SIGNING_KEY is not set"))?;
    let now_s = now_ms() / 1000;
    let click = token::verify(key.as_bytes(), token, now_s, cfg.click_ttl_s)
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
    let (env2, dedup) = (env.clone(), cfg.click_dedup_s);
    let sync_ms = cfg.sync_ms;
    ctx.wait_until(async move {
        if let Err(e) = record_click(&env2, &click, budget, dedup, now_s).await {
            log::event(
                Level::Warn,
                SERVICE,
                "click not recorded",
                json!({ "error": e.message, "impression": click.impression_id }),
            );
        }
        sync_loop(&env2, sync_ms).await;
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
async fn record_click(env: &Env, click: &Click, budget: i64, window: u64, now_s: u64) -> Result<(), ApiError> {
    let reply: First = objects::call(
        env,
        "USERS",
        &format!("user:{}", click.user),
        &json!({
            "op": "click", "impression_id": click.impression_id, "now": now_s, "window": window,
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
    Sink::from_env(env).write(
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

#[derive(Deserialize)]
struct History {
    seen: Vec<(String, u64)>,
}

async fn load_history(env: &Env, user: &str) {
    let now_s = now_ms() / 1000;
    match objects::call::<History>(env, "USERS", &format!("user:{user}"), &json!({ "op": "history", "now": now_s }))
        .await
    {
        Ok(h) => state::with(|s| s.freq.user(user).merge(h.seen, now_s)),
        Err(e) => {
            state::with(|s| s.freq.user(user).loading = false);
            log::event(Level::Warn, SERVICE, "frequency history not loaded", json!({ "error": e.message }));
        }
    }
}

/// Starts the background sync when there is something to send or the
/// budget view is older than the sync interval.
fn schedule_sync(env: &Env, ctx: &Context, cfg: &Config) {
    let now = now_ms();
    let start = state::with(|s| {
        let due =
            s.ledger.has_pending() || !s.pending_points.is_empty() || now.saturating_sub(s.last_sync_ms) >= cfg.sync_ms;
        due && !s.sync_running
    });
    if start {
        let env = env.clone();
        let sync_ms = cfg.sync_ms;
        ctx.wait_until(async move { sync_loop(&env, sync_ms).await });
    }
}

/// One sync at a time per isolate, at most one per interval, until nothing
/// is left to send.
async fn sync_loop(env: &Env, sync_ms: u64) {
    if state::with(|s| std::mem::replace(&mut s.sync_running, true)) {
        return;
    }
    for _ in 0..60 {
        let wait = state::with(|s| (s.last_sync_ms + sync_ms).saturating_sub(now_ms()));
        if wait > 0 {
            worker::Delay::from(std::time::Duration::from_millis(wait)).await;
        }
        sync_once(env).await;
        let more =
            state::with(|s| s.ledger.has_pending() || !s.pending_points.is_empty() || !s.pending_seen.is_empty());
        if !more {
            break;
        }
    }
    state::with(|s| s.sync_running = false);
}

async fn sync_once(env: &Env) {
    let (day, since, batch, seen, points) = state::with(|s| {
        s.last_sync_ms = now_ms();
        (
            s.ledger.day,
            s.budget_revision,
            s.ledger.begin_sync(),
            std::mem::take(&mut s.pending_seen),
            std::mem::take(&mut s.pending_points),
        )
    });
    let message = json!({ "op": "sync", "day": day, "since": since, "batch": batch });
    let budget = objects::call::<SyncReply>(env, "BUDGET", "budget", &message);
    let users = futures_util::future::join_all(seen.into_iter().map(|(user, seen)| async move {
        let r = objects::call::<serde_json::Value>(
            env,
            "USERS",
            &format!("user:{user}"),
            &json!({ "op": "record", "seen": seen }),
        )
        .await;
        if let Err(e) = r {
            log::event(
                Level::Warn,
                SERVICE,
                "impressions not recorded for frequency caps",
                json!({ "error": e.message }),
            );
        }
    }));
    let recorder = async {
        if !points.is_empty() {
            let r = objects::call::<serde_json::Value>(
                env,
                "RECORDER",
                "recorder",
                &json!({ "op": "write", "points": points }),
            )
            .await;
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
            // Click rates move slowly: re-rank at most every 10 s.
            let now = now_ms();
            if s.stats_changed && now.saturating_sub(s.last_rebuild_ms) >= 10_000 {
                if let Some(index) = &s.index {
                    let entries = index.ranked().iter().map(|r| r.entry.clone()).collect();
                    s.index = Some(Rc::new(Index::build(entries, &s.stats)));
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
