//! The marketplace Worker: listings in PostgreSQL, the reservation API
//! the payments Worker calls, and hybrid search over listings
//! (docs/search.md). See README.md for the API.

mod embed;
mod listing;
mod reservation;
mod search;
mod search_spell;
mod search_sql;

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
    embedder: Result<embed::Embedder, embed::EmbedError>,
}

impl Config {
    fn from_env(env: &Env) -> Self {
        Config {
            database_url: route::config(env, "DATABASE_URL"),
            tokens: Tokens::new()
                .with(Role::Ops, &route::config(env, "OPS_TOKEN").unwrap_or_default())
                .with(Role::Service, &route::config(env, "INTERNAL_TOKEN").unwrap_or_default()),
            embedder: embed::Embedder::from_env(env),
        }
    }

    fn embedder(&self) -> Result<&embed::Embedder, ApiError> {
        self.embedder.as_ref().map_err(|e| ApiError::unavailable("embedder_unavailable", e.to_string()))
    }

    async fn db(&self) -> Result<tokio_postgres::Client, ApiError> {
        let url = self
            .database_url
            .as_deref()
            .ok_or_else(|| ApiError::unavailable("database_unavailable", "DATABASE_URL is not configured"))?;
        db::connect(url).await.map_err(|e| ApiError::unavailable("database_unavailable", e.to_string()))
    }
}

async fn handle(mut req: Request, env: Env) -> Result<Response, ApiError> {
    let config = Config::from_env(&env);
    let segments = route::segments(&req)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method();
    match (method.clone(), segments.as_slice()) {
        (Method::Get, ["healthz"]) => Ok(health::report(
            SERVICE,
            vec![health::postgres(config.database_url.as_deref()).await, embedder_check(&config).await],
        )),
        (Method::Get, ["v1", "search"]) => {
            let url = req.url().map_err(|_| ApiError::not_found("unparseable URL"))?;
            let query = search::Query::parse(url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())))?;
            let mut client = config.db().await?;
            let corrected = search::correct(&client, &query.q)
                .await
                .map_err(|e| ApiError::unavailable("database_error", format!("PostgreSQL: {e}")))?;
            let embedded = config.embedder()?.embed(std::slice::from_ref(&corrected)).await.map_err(embed_error)?;
            let vector = embedded
                .vectors
                .first()
                .map(|v| embed::vector_literal(v))
                .ok_or_else(|| embed_error(embed::EmbedError::Malformed("no vector".into())))?;
            Ok(json(200, &search::run(&mut client, &query, &corrected, Some((&vector, &embedded.model))).await?))
        }
        (Method::Post, ["v1", "listings"]) => {
            config.tokens.require(&req, &[Role::Ops])?;
            let input: listing::NewListingInput = body::json(&mut req).await?;
            let new = input.validate()?;
            let embedding = embed_listing(&config, &new.title, &new.description).await;
            let client = config.db().await?;
            let created = create_listing(&client, &new, embedding.as_ref()).await?;
            Ok(json(201, &created))
        }
        (Method::Patch, ["v1", "listings", id]) => {
            config.tokens.require(&req, &[Role::Ops])?;
            let id = listing_id(id)?;
            let input: listing::ListingChangeInput = body::json(&mut req).await?;
            let change = input.validate()?;
            let mut client = config.db().await?;
            Ok(json(200, &update_listing(&config, &mut client, &id, &change).await?))
        }
        (Method::Post, ["internal", "search", "reindex"]) => {
            config.tokens.require(&req, &[Role::Ops])?;
            let client = config.db().await?;
            Ok(json(200, &reindex(&config, &client).await?))
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
            config.tokens.require(&req, &[Role::Service])?;
            let input: reservation::ReserveInput = body::json(&mut req).await?;
            purchase_id(&input.purchase_id)?;
            let mut client = config.db().await?;
            let (reservation, created) = reservation::reserve(&mut client, &input).await?;
            Ok(json(if created { 201 } else { 200 }, &reservation))
        }
        (Method::Post, ["internal", "reservations", id, action @ ("release" | "sold")]) => {
            config.tokens.require(&req, &[Role::Service])?;
            let id = purchase_id(id)?;
            let to = if *action == "release" { "released" } else { "sold" };
            let mut client = config.db().await?;
            match reservation::settle(&mut client, &id, to).await? {
                Some(reservation) => Ok(json(200, &reservation)),
                None => Ok(json(200, &json!({ "purchase_id": id, "status": "none" }))),
            }
        }
        (
            _,
            ["healthz"]
            | ["v1", "listings"]
            | ["v1", "listings", _]
            | ["v1", "search"]
            | ["internal", "reservations", ..]
            | ["internal", "search", ..],
        ) => Err(ApiError::method_not_allowed(&method.to_string(), &req.path())),
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

/// A listing's embedding, best effort: a listing is still created or changed
/// when the embedder is down (full-text search finds it meanwhile), and
/// `POST /internal/search/reindex` embeds it later.
async fn embed_listing(config: &Config, title: &str, description: &str) -> Option<(String, String)> {
    let text = embed::listing_text(title, description);
    let result = match config.embedder() {
        Ok(embedder) => embedder.embed(&[text]).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.message),
    };
    match result {
        Ok(mut e) => e.vectors.pop().map(|v| (embed::vector_literal(&v), e.model)),
        Err(error) => {
            worker_common::log::event(
                worker_common::log::Level::Warn,
                SERVICE,
                "listing stored without an embedding",
                json!({ "error": error }),
            );
            None
        }
    }
}

fn embed_error(e: embed::EmbedError) -> ApiError {
    ApiError::unavailable("embedder_unavailable", e.to_string())
}

async fn embedder_check(config: &Config) -> health::Check {
    let started = worker::Date::now().as_millis();
    let detail = match &config.embedder {
        Ok(embedder) => embedder.probe().await.map_err(|e| format!("{}: {e}", embedder.describe())),
        Err(e) => Err(e.to_string()),
    };
    let latency_ms = worker::Date::now().as_millis().saturating_sub(started);
    match detail {
        Ok(detail) => health::Check { name: "embedder", ok: true, latency_ms, detail },
        Err(error) => health::Check { name: "embedder", ok: false, latency_ms, detail: json!({ "error": error }) },
    }
}

/// Applies a change; a changed title or description is re-embedded in the
/// same statement, so a listing's vector never describes its old text.
async fn update_listing(
    config: &Config,
    client: &mut tokio_postgres::Client,
    id: &str,
    change: &listing::ListingChange,
) -> Result<listing::Listing, ApiError> {
    let tx = client.transaction().await.map_err(db_error)?;
    let current = tx
        .query_opt("SELECT title, description FROM listings WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .map_err(db_error)?
        .ok_or_else(|| ApiError::not_found(format!("listing {id} does not exist")))?;
    let old_title: String = current.try_get("title").map_err(db_error)?;
    let old_description: String = current.try_get("description").map_err(db_error)?;
    let title = change.title.clone().unwrap_or(old_title.clone());
    let description = change.description.clone().unwrap_or(old_description.clone());
    let text_changed = title != old_title || description != old_description;
    let embedding = if text_changed { embed_listing(config, &title, &description).await } else { None };
    let (vector, model) = embedding.map_or((None, None), |(v, m)| (Some(v), Some(m)));
    let row = tx
        .query_one(
            &format!(
                "UPDATE listings SET title = $2, description = $3, status = COALESCE($4, status),
                     embedding = CASE WHEN $5 THEN $6::text::vector ELSE embedding END,
                     embedding_model = CASE WHEN $5 THEN $7 ELSE embedding_model END,
                     updated_at = now()
                 WHERE id = $1 RETURNING {}",
                listing::COLUMNS
            ),
            &[&id, &title, &description, &change.status, &text_changed, &vector, &model],
        )
        .await
        .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    listing::from_row(&row)
}

/// Embeds up to one batch of listings that have no vector, or a vector of
/// another model than the configured embedder's (after a model change).
async fn reindex(config: &Config, client: &tokio_postgres::Client) -> Result<serde_json::Value, ApiError> {
    let embedder = config.embedder()?;
    let model = embedder.embed(&["probe".to_string()]).await.map_err(embed_error)?.model;
    let rows = client
        .query(
            "SELECT id, title, description FROM listings WHERE embedding IS NULL OR embedding_model <> $1 ORDER BY id LIMIT $2",
            &[&model, &(embed::BATCH as i64)],
        )
        .await
        .map_err(db_error)?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut texts = Vec::with_capacity(rows.len());
    for row in &rows {
        ids.push(row.try_get::<_, String>("id").map_err(db_error)?);
        texts.push(embed::listing_text(
            &row.try_get::<_, String>("title").map_err(db_error)?,
            &row.try_get::<_, String>("description").map_err(db_error)?,
        ));
    }
    let embedded = embedder.embed(&texts).await.map_err(embed_error)?;
    for (id, (text, vector)) in ids.iter().zip(texts.iter().zip(&embedded.vectors)) {
        // Only if the text is still what was embedded: a concurrent change wins.
        client
            .execute(
                "UPDATE listings SET embedding = $2::text::vector, embedding_model = $3
                 WHERE id = $1 AND (CASE WHEN description = '' THEN title ELSE title || E'\\n' || description END) = $4",
                &[id, &embed::vector_literal(vector), &embedded.model, text],
            )
            .await
            .map_err(db_error)?;
    }
    let remaining: i64 = client
        .query_one("SELECT count(*) FROM listings WHERE embedding IS NULL OR embedding_model <> $1", &[&model])
        .await
        .map_err(db_error)?
        .try_get(0)
        .map_err(db_error)?;
    Ok(json!({ "embedded": ids.len(), "remaining": remaining, "model": model }))
}

async fn create_listing(
    client: &tokio_postgres::Client,
    new: &listing::NewListing,
    embedding: Option<&(String, String)>,
) -> Result<listing::Listing, ApiError> {
    let id = format!("lst_{}", uuid::Uuid::new_v4().simple());
    let price_minor = new.price.to_minor().map_err(|e| ApiError::invalid("invalid_amount", e.to_string()))?;
    let currency = new.price.currency().stripe_code().to_ascii_uppercase();
    let row = client
        .query_one(
            &format!(
                "INSERT INTO listings (id, seller_id, seller_account, title, description, species, breed, age_months, region, price_minor, currency, quantity, embedding, embedding_model)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::text::vector, $14) RETURNING {}",
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
                &embedding.map(|(v, _)| v.as_str()),
                &embedding.map(|(_, m)| m.as_str()),
            ],
        )
        .await
        .map_err(db_error)?;
    listing::from_row(&row)
}
