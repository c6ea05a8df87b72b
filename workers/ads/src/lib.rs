//! The PetAds Worker. See the crate README and docs/ads.md.
//!
//! This file authenticates, validates and routes; the auction
//! ([`auction`]), pacing arithmetic ([`pacing`]), campaign validation
//! ([`campaign`]) and click tokens ([`token`]) are pure modules tested
//! natively; [`objects`] holds the Durable Objects.

pub mod auction;
pub mod campaign;
pub mod events;
pub mod objects;
pub mod pacing;
mod serve;
pub mod state;
pub mod token;

use serde::Deserialize;
use serde_json::json;
use worker::{event, Context, Env, Method, Request, Response};
use worker_common::auth::{Role, Tokens};
use worker_common::{body, health, json as json_response, respond, route, ApiError};

use campaign::{valid_campaign_id, Campaign, CampaignInput};
pub use objects::{BudgetObject, CatalogObject, RecorderObject, UserObject};

pub(crate) const SERVICE: &str = "ads";

/// The most campaigns one bulk write may carry.
const BULK_MAX: usize = 1000;

#[event(fetch)]
async fn fetch(req: worker::worker_sys::web_sys::Request, env: Env, ctx: Context) -> worker::Result<Response> {
    // The ad path needs only the URL. Taking the raw request spares it the
    // conversion to `worker::Request`, which deep-copies the request's `cf`
    // object through JSON (measured: about 9 % of the Worker's CPU per ad).
    // Any other path, `/v1/ads/` included, goes through the router.
    if req.method() == "GET" {
        if let Ok(url) = worker::Url::parse(&req.url()) {
            if url.path() == "/v1/ads" {
                return respond(serve::ad(&url, &env, &ctx).await);
            }
        }
    }
    respond(handle(req.into(), env, ctx).await)
}

fn tokens(env: &Env) -> Tokens {
    Tokens::new().with(Role::Ops, &route::config(env, "OPS_TOKEN").unwrap_or_default())
}

pub(crate) fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}

async fn handle(mut req: Request, env: Env, ctx: Context) -> Result<Response, ApiError> {
    let segments = route::segments(&req)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method();
    match (method.clone(), segments.as_slice()) {
        (Method::Get, ["healthz"]) => {
            let nonce = random_hex(12)?;
            let store = env.kv("CAMPAIGNS").map_err(|e| format!("KV binding CAMPAIGNS: {e}"));
            Ok(health::report(SERVICE, vec![health::kv(store, &nonce).await]))
        }
        (Method::Get, ["v1", "ads"]) => serve::ad(&req.url()?, &env, &ctx).await,
        (Method::Get, ["v1", "ads", "click", token]) => serve::click(&env, &ctx, token).await,
        (Method::Put, ["v1", "campaigns", id]) => {
            tokens(&env).require(&req, &[Role::Ops])?;
            if !valid_campaign_id(id) {
                return Err(ApiError::not_found("campaign ids look like cmp_<1-64 of A-Z a-z 0-9 _ ->"));
            }
            let input: CampaignInput = body::json(&mut req).await?;
            let campaign = to_campaign(id, input)?;
            let reply: serde_json::Value =
                objects::call(&env, "CATALOG", "catalog", &json!({ "op": "upsert", "campaigns": [campaign] })).await?;
            serve::invalidate_snapshot();
            let created = reply["created"].as_array().is_some_and(|c| !c.is_empty());
            Ok(json_response(if created { 201 } else { 200 }, &campaign))
        }
        (Method::Post, ["v1", "campaigns", "bulk"]) => {
            tokens(&env).require(&req, &[Role::Ops])?;
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Bulk {
                campaigns: Vec<serde_json::Value>,
            }
            let bytes = body::bytes(&mut req, objects::COMMAND_LIMIT).await?;
            let bulk: Bulk = body::parse_json(&bytes)?;
            if bulk.campaigns.len() > BULK_MAX {
                return Err(ApiError::invalid(
                    "too_many_campaigns",
                    format!("at most {BULK_MAX} campaigns per bulk write"),
                ));
            }
            let mut campaigns = Vec::with_capacity(bulk.campaigns.len());
            for (i, mut value) in bulk.campaigns.into_iter().enumerate() {
                let id = value
                    .as_object_mut()
                    .and_then(|o| o.remove("id"))
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                if !valid_campaign_id(&id) {
                    return Err(ApiError::invalid(
                        "invalid_field",
                        format!("campaigns[{i}].id must look like cmp_..."),
                    ));
                }
                let input: CampaignInput = serde_json::from_value(value)
                    .map_err(|e| ApiError::invalid("invalid_field", format!("campaigns[{i}]: {e}")))?;
                campaigns.push(
                    to_campaign(&id, input)
                        .map_err(|e| ApiError::invalid(e.code, format!("campaigns[{i}].{}", e.message)))?,
                );
            }
            let reply: serde_json::Value =
                objects::call(&env, "CATALOG", "catalog", &json!({ "op": "upsert", "campaigns": campaigns })).await?;
            serve::invalidate_snapshot();
            Ok(json_response(
                200,
                &json!({ "written": campaigns.len(), "active": reply["active"], "version": reply["version"] }),
            ))
        }
        (Method::Get, ["v1", "campaigns"]) => {
            tokens(&env).require(&req, &[Role::Ops])?;
            let url = req.url()?;
            let param = |name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.to_string());
            let limit = match param("limit") {
                None => 100,
                Some(l) => l
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=500).contains(l))
                    .ok_or_else(|| ApiError::invalid("invalid_field", "limit must be 1-500"))?,
            };
            let reply: serde_json::Value = objects::call(
                &env,
                "CATALOG",
                "catalog",
                &json!({ "op": "list", "after": param("cursor"), "limit": limit }),
            )
            .await?;
            Ok(json_response(200, &reply))
        }
        (Method::Get, ["v1", "campaigns", id]) => {
            tokens(&env).require(&req, &[Role::Ops])?;
            // KV is eventually consistent: another location may answer with
            // the previous version for up to a minute after a write.
            let kv = env.kv("CAMPAIGNS").map_err(|e| ApiError::internal(format!("KV binding: {e}")))?;
            let text = if valid_campaign_id(id) {
                kv.get(&objects::campaign_key(id))
                    .text()
                    .await
                    .map_err(|e| ApiError::unavailable("kv_unavailable", e.to_string()))?
            } else {
                None
            };
            let text = text.ok_or_else(|| ApiError::not_found(format!("no campaign {id}")))?;
            let campaign: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ApiError::internal(format!("stored campaign unreadable: {e}")))?;
            Ok(json_response(200, &campaign))
        }
        (Method::Get, ["v1", "campaigns", id, "delivery"]) => {
            tokens(&env).require(&req, &[Role::Ops])?;
            if !valid_campaign_id(id) {
                return Err(ApiError::not_found(format!("no campaign {id}")));
            }
            let reply: serde_json::Value =
                objects::call(&env, "BUDGET", "budget", &json!({ "op": "delivery", "id": id })).await?;
            Ok(json_response(200, &reply))
        }
        (Method::Get, ["_test", "events"]) if route::config(&env, "ADS_EVENT_RECORDER").as_deref() == Some("on") => {
            let url = req.url()?;
            let campaign = url.query_pairs().find(|(k, _)| k == "campaign").map(|(_, v)| v.to_string());
            let reply: serde_json::Value =
                objects::call(&env, "RECORDER", "recorder", &json!({ "op": "read", "campaign": campaign })).await?;
            Ok(json_response(200, &reply))
        }
        (Method::Get, ["_test", "users", user]) if serve::config(&env).recorder => {
            // What the user's shard object holds for frequency caps.
            let reply: serde_json::Value = objects::call(
                &env,
                "USERS",
                &serve::user_object(user, &serve::config(&env)),
                &json!({ "op": "sync", "now": now_ms() / 1000, "record": [], "history": [user] }),
            )
            .await?;
            Ok(json_response(200, &reply))
        }
        (_, ["healthz"]) => Err(ApiError::method_not_allowed(method.as_ref(), "/healthz")),
        (_, ["v1", "campaigns", ..] | ["v1", "ads", ..]) => {
            Err(ApiError::method_not_allowed(method.as_ref(), &req.path()))
        }
        _ => Err(ApiError::not_found(format!("no route for {} {}", method, req.path()))),
    }
}

fn to_campaign(id: &str, input: CampaignInput) -> Result<Campaign, ApiError> {
    let input = input.validate().map_err(|e| ApiError::invalid(e.code, e.to_string()))?;
    Ok(Campaign {
        id: id.to_string(),
        creative_id: campaign::creative_id(&input.creative),
        input,
        updated_at: now_ms() / 1000,
    })
}

pub(crate) fn random_hex(n: usize) -> Result<String, ApiError> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(bytes))
}
