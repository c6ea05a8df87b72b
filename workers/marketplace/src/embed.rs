//! The `Embedder` seam: sentence embeddings of listings and queries.
//!
//! Two real implementations, chosen by configuration:
//! - **Workers AI** (production): the `AI` binding running
//!   `@cf/baai/bge-small-en-v1.5` (384 dimensions).
//! - **Local service** (development and tests): `EMBEDDER_URL` points at the
//!   `embedder` crate's HTTP service (all-MiniLM-L6-v2, 384 dimensions),
//!   which `cargo xtask dev`/`test` start. Workers AI has no local simulation.
//!
//! Every answer carries the model's name: it is stored next to each vector
//! and a query is only compared with vectors of the same model.

use serde::Deserialize;
use serde_json::json;
use worker::{Env, Fetch, Headers, Method, Request, RequestInit};

pub const DIMENSIONS: usize = 384;
pub const WORKERS_AI_MODEL: &str = "@cf/baai/bge-small-en-v1.5";
/// Texts per call: Workers AI accepts up to 100 per request.
pub const BATCH: usize = 64;

pub enum Embedder {
    WorkersAi(worker::Ai),
    Local { url: String },
}

/// Vectors with the model that made them.
pub struct Embeddings {
    pub model: String,
    pub vectors: Vec<Vec<f32>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("no embedder is configured (set EMBEDDER_URL, or bind Workers AI as AI)")]
    NotConfigured,
    #[error("the embedder is unreachable: {0}")]
    Unreachable(String),
    #[error("the embedder answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the embedder's answer is malformed: {0}")]
    Malformed(String),
}

impl Embedder {
    /// `EMBEDDER_URL` wins (local stacks set it); otherwise the `AI` binding.
    pub fn from_env(env: &Env) -> Result<Embedder, EmbedError> {
        if let Some(url) = worker_common::route::config(env, "EMBEDDER_URL") {
            return Ok(Embedder::Local { url: url.trim_end_matches('/').to_string() });
        }
        env.ai("AI").map(Embedder::WorkersAi).map_err(|_| EmbedError::NotConfigured)
    }

    pub fn describe(&self) -> String {
        match self {
            Embedder::WorkersAi(_) => format!("workers-ai {WORKERS_AI_MODEL}"),
            Embedder::Local { url } => format!("local {url}"),
        }
    }

    /// One unit-length vector of [`DIMENSIONS`] per text, in order.
    pub async fn embed(&self, texts: &[String]) -> Result<Embeddings, EmbedError> {
        let mut all = Embeddings { model: String::new(), vectors: Vec::with_capacity(texts.len()) };
        for chunk in texts.chunks(BATCH) {
            let part = match self {
                Embedder::WorkersAi(ai) => workers_ai(ai, chunk).await?,
                Embedder::Local { url } => local(url, chunk).await?,
            };
            if part.vectors.len() != chunk.len()
                || part.vectors.iter().any(|v| v.len() != DIMENSIONS || v.iter().any(|x| !x.is_finite()))
            {
                return Err(EmbedError::Malformed(format!(
                    "expected {} finite vectors of {DIMENSIONS} dimensions",
                    chunk.len()
                )));
            }
            if !all.model.is_empty() && all.model != part.model {
                return Err(EmbedError::Malformed(format!(
                    "the model changed mid-request: {} then {}",
                    all.model, part.model
                )));
            }
            all.model = part.model;
            all.vectors.extend(part.vectors);
        }
        Ok(all)
    }

    /// Health: a real embedding of a probe text (local), or the binding's
    /// presence (Workers AI: a probe per health check would be billed).
    pub async fn probe(&self) -> Result<serde_json::Value, String> {
        match self {
            Embedder::WorkersAi(_) => Ok(json!({ "backend": "workers-ai", "model": WORKERS_AI_MODEL })),
            Embedder::Local { url } => {
                let e = self.embed(&["health probe".to_string()]).await.map_err(|e| e.to_string())?;
                Ok(json!({ "backend": "local", "url": url, "model": e.model, "dimensions": DIMENSIONS }))
            }
        }
    }
}

#[derive(Deserialize)]
struct WorkersAiAnswer {
    data: Vec<Vec<f32>>,
}

async fn workers_ai(ai: &worker::Ai, texts: &[String]) -> Result<Embeddings, EmbedError> {
    let answer: WorkersAiAnswer =
        ai.run(WORKERS_AI_MODEL, json!({ "text": texts })).await.map_err(|e| EmbedError::Unreachable(e.to_string()))?;
    // bge is trained for cosine similarity; normalise so both backends store unit vectors.
    Ok(Embeddings { model: WORKERS_AI_MODEL.to_string(), vectors: answer.data.into_iter().map(normalise).collect() })
}

fn normalise(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[derive(Deserialize)]
struct LocalAnswer {
    model: String,
    vectors: Vec<Vec<f32>>,
}

async fn local(url: &str, texts: &[String]) -> Result<Embeddings, EmbedError> {
    let headers = Headers::new();
    let _ = headers.set("content-type", "application/json");
    let body = json!({ "texts": texts }).to_string();
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers).with_body(Some(body.into()));
    let request = Request::new_with_init(&format!("{url}/v1/embed"), &init)
        .map_err(|e| EmbedError::Unreachable(e.to_string()))?;
    let mut response = Fetch::Request(request).send().await.map_err(|e| EmbedError::Unreachable(e.to_string()))?;
    let status = response.status_code();
    let text = response.text().await.map_err(|e| EmbedError::Unreachable(e.to_string()))?;
    if status != 200 {
        return Err(EmbedError::Refused { status, body: text.chars().take(300).collect() });
    }
    let answer: LocalAnswer = serde_json::from_str(&text).map_err(|e| EmbedError::Malformed(e.to_string()))?;
    Ok(Embeddings { model: answer.model, vectors: answer.vectors })
}

/// What is embedded for a listing. Changing this changes every vector: the
/// backfill re-embeds listings whose text or model differs.
pub fn listing_text(title: &str, description: &str) -> String {
    if description.is_empty() {
        title.to_string()
    } else {
        format!("{title}\n{description}")
    }
}

/// pgvector's text form, `[0.1,-0.2,...]`, bound as text and cast in SQL
/// (`$n::text::vector`): tokio-postgres has no vector type of its own.
pub fn vector_literal(v: &[f32]) -> String {
    let mut out = String::with_capacity(v.len() * 10 + 2);
    out.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&x.to_string());
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_literal_is_pgvector_text() {
        assert_eq!(vector_literal(&[0.5, -1.0, 0.0]), "[0.5,-1,0]");
        assert_eq!(vector_literal(&[]), "[]");
    }

    #[test]
    fn normalise_gives_unit_vectors_and_leaves_zero_alone() {
        let v = normalise(vec![3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(normalise(vec![0.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn listing_text_joins_title_and_description() {
        assert_eq!(listing_text("Heater", ""), "Heater");
        assert_eq!(listing_text("Heater", "50 W"), "Heater\n50 W");
    }
}
