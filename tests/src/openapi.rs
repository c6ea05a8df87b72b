//! `docs/openapi.yaml` as a checker: every answer of the payments and
//! marketplace Workers that an end-to-end test sees goes through [`check`].
//!
//! How an answer is matched to the document:
//!
//! 1. The service (`payments` or `marketplace`) is the path item's
//!    `x-service` extension; the caller says which service answered (the
//!    harness works it out from the URL's base, see `crate::send`).
//! 2. The concrete path (query string and fragment ignored, empty segments
//!    dropped as the Workers' routers do) is matched against that service's
//!    path templates segment by segment; `{name}` matches any one non-empty
//!    segment (its schema is not applied: a malformed id still belongs to the
//!    operation, which documents the 404 it gets). When several templates
//!    match, the one with the most literal segments wins, as OpenAPI says.
//!    A path that matches no template of the service is not in the public API
//!    (`/healthz`, `/internal/...`, unknown routes) and is skipped.
//! 3. The method picks the operation. A method the path item does not list
//!    must be answered 405 `method_not_allowed` in the shared error shape.
//! 4. The status picks the response: the exact code, else `4XX`-style
//!    ranges, else `default`. A status the operation does not document is an
//!    error. The body is validated against the response's `application/json`
//!    schema as JSON Schema draft 2020-12 with `format` asserted; a response
//!    without content must come with an empty body.
//!
//! `$ref`s to `#/components/...` inside schemas resolve because every
//! compiled schema is `{"components": <the document's components>, "allOf":
//! [<the response schema>]}`: the references are JSON pointers into the
//! compiled document itself. Response objects that are `$ref`s to
//! `#/components/responses/...` are resolved here before compiling.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use serde_json::{json, Value};

/// The services the document describes, as `x-service` names them.
pub const SERVICES: &[&str] = &["payments", "marketplace"];

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Where the document is: `docs/openapi.yaml` at the workspace root.
pub fn spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("docs").join("openapi.yaml")
}

/// The document, loaded and compiled once per process. Panics with the
/// reason if it does not load: every check depends on it.
pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = spec_path();
        Spec::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
}

/// Checks one answer against the document. `path` is the request's path
/// (`/v1/purchases/pur_1?x=1`; a full URL is accepted too, its origin is
/// ignored). `Ok` when the answer conforms or when the path is not part of
/// the public API of `service`; `Err` says which operation, which status and
/// what is wrong.
pub fn check(service: &str, method: &str, path: &str, status: u16, body: &Value) -> Result<(), String> {
    spec().check(service, method, path, status, body)
}

/// A path template split into segments.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

fn parse_template(template: &str) -> Result<Vec<Segment>, String> {
    if !template.starts_with('/') {
        return Err(format!("path {template:?} does not start with '/'"));
    }
    template
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() || name.contains(['{', '}']) {
                    return Err(format!("path {template:?}: bad parameter segment {s:?}"));
                }
                Ok(Segment::Param(name.to_string()))
            } else if s.contains(['{', '}']) {
                Err(format!("path {template:?}: a parameter must be a whole segment, not {s:?}"))
            } else {
                Ok(Segment::Literal(s.to_string()))
            }
        })
        .collect()
}

/// The non-empty segments of a concrete path, without query or fragment.
/// A full URL is taken too: its scheme and authority are dropped.
fn concrete_segments(path: &str) -> Vec<&str> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = match path.split_once("://") {
        Some((scheme, rest)) if !scheme.is_empty() && !scheme.contains('/') => {
            rest.find('/').map_or("", |i| &rest[i..])
        }
        _ => path,
    };
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// Whether a concrete path (e.g. `/v1/purchases/pur_1?x=1`) matches a
/// template (e.g. `/v1/purchases/{id}`).
pub fn matches_template(template: &str, path: &str) -> bool {
    parse_template(template).is_ok_and(|t| segments_match(&t, &concrete_segments(path)))
}

fn segments_match(template: &[Segment], path: &[&str]) -> bool {
    template.len() == path.len()
        && template.iter().zip(path).all(|(t, p)| match t {
            Segment::Literal(l) => l == p,
            Segment::Param(_) => !p.is_empty(),
        })
}

/// One documented response: its compiled schema, or none when it has no
/// JSON content (then the body must be empty).
struct Expected {
    schema: Option<jsonschema::Validator>,
}

/// One operation of the document.
pub struct Operation {
    pub id: String,
    /// `GET`, `POST`, ...
    pub method: String,
    /// Status keys as written: `200`, `4XX`, `default`.
    pub statuses: Vec<String>,
    responses: BTreeMap<String, Expected>,
}

struct PathItem {
    template: String,
    service: String,
    segments: Vec<Segment>,
    operations: Vec<Operation>,
}

impl PathItem {
    fn literal_count(&self) -> usize {
        self.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count()
    }
}

/// What a request resolves to.
pub enum Found<'a> {
    Operation {
        service: &'a str,
        template: &'a str,
        operation: &'a Operation,
    },
    /// The path is documented but not with this method.
    MethodNotDocumented {
        service: &'a str,
        template: &'a str,
    },
    /// Not part of the public API of this service: not checked.
    NotDocumented,
}

/// The compiled document.
pub struct Spec {
    document: Value,
    paths: Vec<PathItem>,
    /// `#/components/schemas/Error`, for 405s of undocumented methods.
    error: Option<jsonschema::Validator>,
}

/// Resolves a local reference (`#/components/schemas/Money`) in `document`.
pub fn resolve_ref<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return None;
    }
    document.pointer(pointer)
}

/// Follows `$ref`s of an OpenAPI object (a response, a parameter) until a
/// concrete one.
fn deref<'a>(document: &'a Value, mut value: &'a Value) -> Result<&'a Value, String> {
    for _ in 0..16 {
        match value.get("$ref").and_then(Value::as_str) {
            Some(r) => value = resolve_ref(document, r).ok_or_else(|| format!("$ref {r:?} does not resolve"))?,
            None => return Ok(value),
        }
    }
    Err("a $ref chain longer than 16".into())
}

fn compile(document: &Value, schema: &Value) -> Result<jsonschema::Validator, String> {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": document.get("components").cloned().unwrap_or(Value::Null),
        "allOf": [schema],
    });
    jsonschema::draft202012::options().should_validate_formats(true).build(&root).map_err(|e| e.to_string())
}

impl Spec {
    /// Reads, parses and compiles the document at `path`.
    pub fn load(path: &std::path::Path) -> Result<Spec, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
        Spec::from_yaml(&text)
    }

    /// Parses and compiles a document given as YAML (or JSON) text.
    pub fn from_yaml(text: &str) -> Result<Spec, String> {
        let document: Value = serde_norway::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
        Spec::from_document(document)
    }

    pub fn from_document(document: Value) -> Result<Spec, String> {
        let version = document.get("openapi").and_then(Value::as_str).unwrap_or_default();
        if !version.starts_with("3.1") {
            return Err(format!("openapi is {version:?}, expected 3.1.x"));
        }
        let raw_paths = document.get("paths").and_then(Value::as_object).ok_or("no paths")?;
        let mut paths = Vec::new();
        for (template, item) in raw_paths {
            let segments = parse_template(template)?;
            let item = deref(&document, item)?;
            let service = item
                .get("x-service")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("path {template}: no x-service (one of {SERVICES:?})"))?;
            if !SERVICES.contains(&service) {
                return Err(format!("path {template}: x-service {service:?} is not one of {SERVICES:?}"));
            }
            let mut operations = Vec::new();
            for method in METHODS {
                let Some(op) = item.get(*method) else { continue };
                let id = op
                    .get("operationId")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{} {template}: no operationId", method.to_uppercase()))?
                    .to_string();
                let raw_responses =
                    op.get("responses").and_then(Value::as_object).ok_or_else(|| format!("{id}: no responses"))?;
                let mut responses = BTreeMap::new();
                for (status, response) in raw_responses {
                    let response = deref(&document, response).map_err(|e| format!("{id} {status}: {e}"))?;
                    let schema = match response.get("content") {
                        None => None,
                        Some(content) => {
                            let media = content
                                .get("application/json")
                                .ok_or_else(|| format!("{id} {status}: content without application/json"))?;
                            let schema = media
                                .get("schema")
                                .ok_or_else(|| format!("{id} {status}: application/json without a schema"))?;
                            Some(
                                compile(&document, schema)
                                    .map_err(|e| format!("{id} {status}: schema does not compile: {e}"))?,
                            )
                        }
                    };
                    responses.insert(status.clone(), Expected { schema });
                }
                operations.push(Operation {
                    id,
                    method: method.to_uppercase(),
                    statuses: raw_responses.keys().cloned().collect(),
                    responses,
                });
            }
            paths.push(PathItem { template: template.clone(), service: service.to_string(), segments, operations });
        }
        // Most specific first: literal segments win over parameters.
        paths.sort_by_key(|p| std::cmp::Reverse(p.literal_count()));
        let error = match resolve_ref(&document, "#/components/schemas/Error") {
            Some(_) => Some(
                compile(&document, &json!({"$ref": "#/components/schemas/Error"}))
                    .map_err(|e| format!("Error schema: {e}"))?,
            ),
            None => None,
        };
        Ok(Spec { document, paths, error })
    }

    /// Compiles any schema in the context of the document (its `$ref`s to
    /// `#/components/...` resolve), e.g. to check examples or request bodies.
    pub fn validator(&self, schema: &Value) -> Result<jsonschema::Validator, String> {
        compile(&self.document, schema)
    }

    /// Problems of `instance` against `schema` (empty when it conforms).
    pub fn problems(&self, schema: &Value, instance: &Value) -> Result<Vec<String>, String> {
        Ok(self.validator(schema)?.iter_errors(instance).map(|e| describe(&e)).collect())
    }

    /// The parsed document.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Every operation: `(service, template, operation)`.
    pub fn operations(&self) -> impl Iterator<Item = (&str, &str, &Operation)> {
        self.paths.iter().flat_map(|p| p.operations.iter().map(move |o| (p.service.as_str(), p.template.as_str(), o)))
    }

    /// Finds what `method path` on `service` is in the document.
    pub fn find<'a>(&'a self, service: &str, method: &str, path: &str) -> Found<'a> {
        let segments = concrete_segments(path);
        let Some(item) = self.paths.iter().find(|p| p.service == service && segments_match(&p.segments, &segments))
        else {
            return Found::NotDocumented;
        };
        match item.operations.iter().find(|o| o.method.eq_ignore_ascii_case(method)) {
            Some(operation) => Found::Operation { service: &item.service, template: &item.template, operation },
            None => Found::MethodNotDocumented { service: &item.service, template: &item.template },
        }
    }

    pub fn check(&self, service: &str, method: &str, path: &str, status: u16, body: &Value) -> Result<(), String> {
        let method = method.to_uppercase();
        match self.find(service, &method, path) {
            Found::NotDocumented => Ok(()),
            Found::MethodNotDocumented { template, .. } => {
                let errors = self.error_body_problems(body, "method_not_allowed");
                if status == 405 && errors.is_empty() {
                    Ok(())
                } else if status != 405 {
                    Err(format!(
                        "{service}: {method} is not documented for {template}, so it must be answered 405 method_not_allowed, not {status}"
                    ))
                } else {
                    Err(format!("{service}: 405 for {method} {template} breaks the Error schema:\n{}", bullet(&errors)))
                }
            }
            Found::Operation { template, operation, .. } => {
                let name = format!("{} ({method} {template} on {service})", operation.id);
                let expected = response_for(&operation.responses, status).ok_or_else(|| {
                    format!(
                        "{name} answered {status}, which it does not document (documented: {})",
                        operation.statuses.join(", ")
                    )
                })?;
                match &expected.schema {
                    None if body.is_null() || body.as_str() == Some("") => Ok(()),
                    None => Err(format!("{name} answered {status}, documented without a body, with a body")),
                    Some(validator) => {
                        let errors: Vec<String> = validator.iter_errors(body).map(|e| describe(&e)).collect();
                        if errors.is_empty() {
                            Ok(())
                        } else {
                            Err(format!(
                                "{name} answered {status} with a body that breaks its schema:\n{}",
                                bullet(&errors)
                            ))
                        }
                    }
                }
            }
        }
    }

    /// Problems of `body` as the shared Error schema with `code`.
    fn error_body_problems(&self, body: &Value, code: &str) -> Vec<String> {
        let mut problems: Vec<String> = match &self.error {
            Some(v) => v.iter_errors(body).map(|e| describe(&e)).collect(),
            None => vec!["the document has no #/components/schemas/Error".to_string()],
        };
        if problems.is_empty() && body["error"]["code"] != code {
            problems.push(format!("/error/code: expected {code:?}, got {}", body["error"]["code"]));
        }
        problems
    }
}

fn response_for(responses: &BTreeMap<String, Expected>, status: u16) -> Option<&Expected> {
    let range = format!("{}XX", status / 100);
    responses
        .get(&status.to_string())
        .or_else(|| responses.iter().find(|(k, _)| k.eq_ignore_ascii_case(&range)).map(|(_, v)| v))
        .or_else(|| responses.get("default"))
}

fn describe(error: &jsonschema::ValidationError<'_>) -> String {
    let path = error.instance_path().to_string();
    let mut text = error.to_string();
    if text.chars().count() > 300 {
        text = text.chars().take(300).collect::<String>() + "…";
    }
    format!("{}: {text}", if path.is_empty() { "(body)" } else { &path })
}

fn bullet(errors: &[String]) -> String {
    let mut out: Vec<String> = errors.iter().take(20).map(|e| format!("  - {e}")).collect();
    if errors.len() > 20 {
        out.push(format!("  ... and {} more", errors.len() - 20));
    }
    out.join("\n")
}

/// Notes that an answer was seen, for a coverage report: one line
/// `service operationId METHOD template status` per distinct answer, in
/// `<target dir>/openapi-coverage/<test binary>-<pid>.txt`. Quiet: any
/// failure to write is ignored.
pub fn record(service: &str, method: &str, path: &str, status: u16) {
    let Found::Operation { template, operation, .. } = spec().find(service, method, path) else { return };
    let line = format!("{service} {} {} {template} {status}", operation.id, operation.method);
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut seen = SEEN.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if !seen.insert(line.clone()) {
        return;
    }
    let Some(file) = coverage_file() else { return };
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(file) {
        let _ = writeln!(f, "{line}");
    }
}

fn coverage_file() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let name = exe.file_stem()?.to_string_lossy().into_owned();
    // <target>/<profile>/deps/<binary>
    let target = exe
        .ancestors()
        .nth(3)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))?;
    Some(target.join("openapi-coverage").join(format!("{name}-{}.txt", std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_whole_segments() {
        assert!(matches_template("/v1/purchases/{id}", "/v1/purchases/pur_1"));
        assert!(matches_template("/v1/purchases/{id}", "/v1/purchases/pur_1/?x=1#y"));
        assert!(matches_template("/v1/purchases", "/v1/purchases?limit=2"));
        assert!(matches_template("/v1/purchases", "//v1//purchases/"));
        assert!(!matches_template("/v1/purchases/{id}", "/v1/purchases"));
        assert!(!matches_template("/v1/purchases/{id}", "/v1/purchases/pur_1/cancel"));
        assert!(!matches_template("/v1/purchases/{id}/cancel", "/v1/purchases/pur_1/dispute"));
        assert!(
            !matches_template("/v1/purchases/{id}.json", "/v1/purchases/pur_1.json"),
            "partial-segment parameters are refused"
        );
        assert!(
            matches_template("/v1/purchases/{id}", "http://127.0.0.1:8797/v1/purchases/pur_1?x=1"),
            "full URLs too"
        );
        assert!(matches_template("/v1/purchases", "https://pay.example/v1/purchases"));
        assert!(!matches_template("/v1/purchases", "http://127.0.0.1:8797"));
    }

    #[test]
    fn status_lookup_prefers_exact_then_range_then_default() {
        let mut responses = BTreeMap::new();
        for key in ["200", "4XX", "default"] {
            responses.insert(key.to_string(), Expected { schema: compile(&json!({}), &json!({"const": key})).ok() });
        }
        let key = |status| {
            let expected = response_for(&responses, status).expect("some response");
            ["200", "4XX", "default"]
                .into_iter()
                .find(|k| expected.schema.as_ref().expect("schema").is_valid(&json!(k)))
                .expect("one")
        };
        assert_eq!(key(200), "200");
        assert_eq!(key(404), "4XX");
        assert_eq!(key(503), "default");
        responses.remove("default");
        assert!(response_for(&responses, 503).is_none());
    }
}
