//! The marketplace Worker: listings in PostgreSQL and the reservation API
//! the payments Worker calls. See README.md for the API.

mod listing;
mod reservation;

use serde_json::json;
use worker::{event, Context, Env, Method, Request, Response};
use worker_common::auth::{Role, Tokens};
use worker_common::{body, db, health, json, respond, route, ApiError};

const SERVICE: &str = "marketplace";

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    respond(handle(req, env).await)
}

struct Config {
    database_url: Option<String>,
    tokens: Tokens,
}

impl Config {
    fn from_env(env: &Env) -> Self {
        Config {
            database_url: route::config(env, "DATABASE_URL"),
            tokens: Tokens::new().with(Role::Ops, &route::config(env, "OPS_TOKEN").unwrap_or_default()),
        }
    }

    async fn db(&self) -> Result<tokio_postgres::Client, ApiError> {
        let url = self.database_url.as_deref().ok_or_else(|| ApiError::unavailable("database_unavailable", "DATABASE_URL is not configured"))?;
        db::connect(url).await.map_err(|e| ApiError::unavailable("database_unavailable", e.to_string()))
    }
}

async fn handle(mut req: Request, env: Env) -> Result<Response, ApiError> {
    let config = Config::from_env(&env);
    let segments = route::segments(&req)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method();
    match (method.clone(), segments.as_slice()) {
        (Method::Get, ["healthz"]) => Ok(health::report(SERVICE, vec![health::postgres(config.database_url.as_deref()).await])),
        (Method::Post, ["v1", "listings"]) => {
            config.tokens.require(&req, &[Role::Ops])?;
            let input: listing::NewListingInput = body::json(&mut req).await?;
            let new = input.validate()?;
            let client = config.db().await?;
            let created = create_listing(&client, &new).await?;
            Ok(json(201, &created))
        }
        (Method::Get, ["v1", "listings", id]) => {
            let id = listing_id(id)?;
            let client = config.db().await?;
            let row = client
                .query_opt(&format!("SELECT {} FROM listings WHERE id = $1", listing::COLUMNS), &[&id])
                .await
                .map_err(db_error)?
                .ok_or_else(|| ApiError::not_found(format!("listing {id} does not exist")))?;
            Ok(json(200, &listing::from_row(&row)?))
        }
        (Method::Post, ["internal", "reservations"]) => {
            config.tokens.require(&req, &[Role::Ops])?;
            let input: reservation::ReserveInput = body::json(&mut req).await?;
            purchase_id(&input.purchase_id)?;
            let mut client = config.db().await?;
            let (reservation, created) = reservation::reserve(&mut client, &input).await?;
            Ok(json(if created { 201 } else { 200 }, &reservation))
        }
        (Method::Post, ["internal", "reservations", id, action @ ("release" | "sold")]) => {
            config.tokens.require(&req, &[Role::Ops])?;
            let id = purchase_id(id)?;
            let to = if *action == "release" { "released" } else { "sold" };
            let mut client = config.db().await?;
            match reservation::settle(&mut client, &id, to).await? {
                Some(reservation) => Ok(json(200, &reservation)),
                None => Ok(json(200, &json!({ "purchase_id": id, "status": "none" }))),
            }
        }
        (_, ["healthz"] | ["v1", "listings"] | ["v1", "listings", _] | ["internal", "reservations", ..]) => {
            Err(ApiError::method_not_allowed(&method.to_string(), &req.path()))
        }
        _ => Err(ApiError::not_found(format!("no route for {} {}", method, req.path()))),
    }
}

fn db_error(e: tokio_postgres::Error) -> ApiError {
    ApiError::unavailable("database_error", format!("PostgreSQL: {e}"))
}

/// `lst_` followed by 1–64 lowercase letters or digits.
fn listing_id(raw: &str) -> Result<String, ApiError> {
    prefixed_id(raw, "lst_").ok_or_else(|| ApiError::not_found(format!("{raw:?} is not a listing id")))
}

fn purchase_id(raw: &str) -> Result<String, ApiError> {
    prefixed_id(raw, "pur_").ok_or_else(|| ApiError::invalid("invalid_field", format!("{raw:?} is not a purchase id")))
}

fn prefixed_id(raw: &str, prefix: &str) -> Option<String> {
    let rest = raw.strip_prefix(prefix)?;
    let ok = !rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    ok.then(|| raw.to_string())
}

async fn create_listing(client: &tokio_postgres::Client, new: &listing::NewListing) -> Result<listing::Listing, ApiError> {
    let id = format!("lst_{}", uuid::Uuid::new_v4().simple());
    let price_minor = new.price.to_minor().map_err(|e| ApiError::invalid("invalid_amount", e.to_string()))?;
    let currency = new.price.currency().stripe_code().to_ascii_uppercase();
    let row = client
        .query_one(
            &format!(
                "INSERT INTO listings (id, seller_id, seller_account, title, description, species, breed, age_months, region, price_minor, currency, quantity)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {}",
                listing::COLUMNS
            ),
            &[
                &id,
                &new.seller_id,
                &new.seller_account,
                &new.title,
                &new.description,
                &new.species,
                &new.breed,
                &new.age_months,
                &new.region,
                &price_minor,
                &currency,
                &new.quantity,
            ],
        )
        .await
        .map_err(db_error)?;
    listing::from_row(&row)
}
