//! `application/x-www-form-urlencoded` bodies as Stripe reads them.
//!
//! Stripe nests parameters with brackets: `metadata[purchase_id]=pur_1` is
//! the key `purchase_id` of the hash `metadata`, and `expand[]=a&expand[]=b`
//! is a list. [`decode`] turns a body into a tree of [`Param`]s; handlers then
//! *take* the parameters they know ([`Params::take_str`], ...) and
//! [`Params::finish`] refuses whatever is left, as Stripe refuses unknown
//! parameters. The tree serializes canonically (keys sorted), which is what
//! idempotency compares.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::errors::StripeError;

/// Most pairs a body may hold, longest key, deepest nesting.
const MAX_PAIRS: usize = 1000;
const MAX_KEY_LEN: usize = 256;
const MAX_DEPTH: usize = 4;

/// Metadata limits, as Stripe's.
pub const METADATA_MAX_KEYS: usize = 50;
pub const METADATA_MAX_KEY_LEN: usize = 40;
pub const METADATA_MAX_VALUE_LEN: usize = 500;

/// One decoded parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Param {
    Str(String),
    List(Vec<String>),
    Map(BTreeMap<String, Param>),
}

/// The decoded top-level parameters of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Params(BTreeMap<String, Param>);

/// Decodes a form body (or a query string).
pub fn decode(body: &[u8]) -> Result<Params, StripeError> {
    let mut params = Params::default();
    let mut pairs = 0;
    for pair in body.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        pairs += 1;
        if pairs > MAX_PAIRS {
            return Err(StripeError::invalid_request(format!("Invalid request: more than {MAX_PAIRS} parameters.")));
        }
        let (raw_key, raw_value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let key = percent_decode(raw_key)?;
        let value = percent_decode(raw_value)?;
        let path = parse_key(&key)?;
        params.insert(&key, &path, value)?;
    }
    Ok(params)
}

/// `%XX` escapes and `+` as space, then UTF-8.
fn percent_decode(raw: &[u8]) -> Result<String, StripeError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        return Err(StripeError::invalid_request(
                            "Invalid request: malformed percent-encoding in the request body.",
                        ))
                    }
                }
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| StripeError::invalid_request("Invalid request: the request body is not valid UTF-8."))
}

/// `a[b][c]` → `["a", "b", "c"]`; `a[]` → `["a", ""]` (an empty segment appends).
fn parse_key(key: &str) -> Result<Vec<String>, StripeError> {
    let malformed = || StripeError::invalid_request(format!("Invalid parameter name: {key}")).param(key.to_string());
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(malformed());
    }
    let (name, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    if name.is_empty() || name.contains(']') {
        return Err(malformed());
    }
    let mut path = vec![name.to_string()];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(malformed)?;
        let close = inner.find(']').ok_or_else(malformed)?;
        let segment = &inner[..close];
        if segment.contains('[') {
            return Err(malformed());
        }
        path.push(segment.to_string());
        rest = &inner[close + 1..];
    }
    if path.len() > MAX_DEPTH || path[..path.len() - 1].iter().any(String::is_empty) {
        return Err(malformed());
    }
    Ok(path)
}

impl Params {
    fn insert(&mut self, key: &str, path: &[String], value: String) -> Result<(), StripeError> {
        let conflict = || {
            StripeError::invalid_request(format!(
                "Invalid request: the parameter {key} was given more than once or with conflicting shapes."
            ))
            .param(key.to_string())
        };
        let (first, rest) = path.split_first().ok_or_else(conflict)?;
        insert_into(&mut self.0, first, rest, value).map_err(|()| conflict())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The canonical text of the parameters (keys sorted, lists in order).
    pub fn canonical(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_default()
    }

    /// A plain string parameter, removed from the set.
    pub fn take_str(&mut self, name: &str) -> Result<Option<String>, StripeError> {
        match self.0.remove(name) {
            None => Ok(None),
            Some(Param::Str(value)) => Ok(Some(value)),
            Some(_) => Err(StripeError::invalid_request(format!(
                "Invalid string: {name} must be a string, not a hash or a list."
            ))
            .param(name)),
        }
    }

    /// A non-empty string; an empty value counts as absent, as Stripe unsets
    /// a parameter sent empty.
    pub fn take_nonempty(&mut self, name: &str) -> Result<Option<String>, StripeError> {
        Ok(self.take_str(name)?.filter(|v| !v.is_empty()))
    }

    pub fn require_str(&mut self, name: &str) -> Result<String, StripeError> {
        self.take_nonempty(name)?.ok_or_else(|| StripeError::missing_param(name))
    }

    /// A decimal integer (`12000`, no sign, no decimals, no exponent).
    pub fn take_int(&mut self, name: &str) -> Result<Option<i64>, StripeError> {
        match self.take_str(name)? {
            None => Ok(None),
            Some(text) => parse_int(&text).map(Some).ok_or_else(|| StripeError::invalid_integer(name, &text)),
        }
    }

    pub fn require_int(&mut self, name: &str) -> Result<i64, StripeError> {
        self.take_int(name)?.ok_or_else(|| StripeError::missing_param(name))
    }

    /// A positive amount in minor units, at most Stripe's eight digits.
    pub fn take_amount(&mut self, name: &str) -> Result<Option<i64>, StripeError> {
        match self.take_int(name)? {
            None => Ok(None),
            Some(amount) if amount < 1 => {
                Err(StripeError::invalid_request("This value must be greater than or equal to 1.")
                    .code("parameter_invalid_integer")
                    .param(name))
            }
            Some(amount) if amount > 99_999_999 => Err(StripeError::invalid_request(
                "Amount must be no more than 99999999 in the currency's smallest unit.",
            )
            .code("amount_too_large")
            .param(name)),
            Some(amount) => Ok(Some(amount)),
        }
    }

    pub fn require_amount(&mut self, name: &str) -> Result<i64, StripeError> {
        self.take_amount(name)?.ok_or_else(|| StripeError::missing_param(name))
    }

    pub fn take_bool(&mut self, name: &str) -> Result<Option<bool>, StripeError> {
        match self.take_str(name)?.as_deref() {
            None | Some("") => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(StripeError::invalid_request(format!("Invalid boolean: {other}")).param(name)),
        }
    }

    /// One of `allowed`, or absent.
    pub fn take_enum(&mut self, name: &str, allowed: &[&str]) -> Result<Option<String>, StripeError> {
        match self.take_nonempty(name)? {
            None => Ok(None),
            Some(value) if allowed.contains(&value.as_str()) => Ok(Some(value)),
            Some(value) => Err(StripeError::invalid_request(format!(
                "Invalid {name}: must be one of {} (got {value:?})",
                allowed.join(", ")
            ))
            .param(name)),
        }
    }

    /// `metadata[key]=value` pairs; `metadata=` (empty) is an empty hash.
    pub fn take_metadata(&mut self) -> Result<BTreeMap<String, String>, StripeError> {
        let map = match self.0.remove("metadata") {
            None => return Ok(BTreeMap::new()),
            Some(Param::Str(s)) if s.is_empty() => return Ok(BTreeMap::new()),
            Some(Param::Map(map)) => map,
            Some(_) => {
                return Err(StripeError::invalid_request(
                    "Invalid hash: metadata must be a hash of string keys and values.",
                )
                .param("metadata"))
            }
        };
        if map.len() > METADATA_MAX_KEYS {
            return Err(StripeError::invalid_request(format!("Metadata can have at most {METADATA_MAX_KEYS} keys."))
                .param("metadata"));
        }
        let mut out = BTreeMap::new();
        for (key, value) in map {
            let param = format!("metadata[{key}]");
            if key.chars().count() > METADATA_MAX_KEY_LEN {
                return Err(StripeError::invalid_request(format!(
                    "Metadata keys can have a maximum length of {METADATA_MAX_KEY_LEN} characters."
                ))
                .param(param));
            }
            match value {
                // An empty value unsets the key.
                Param::Str(value) if value.is_empty() => {}
                Param::Str(value) if value.chars().count() > METADATA_MAX_VALUE_LEN => {
                    return Err(StripeError::invalid_request(format!(
                        "Metadata values can have a maximum length of {METADATA_MAX_VALUE_LEN} characters."
                    ))
                    .param(param));
                }
                Param::Str(value) => {
                    out.insert(key, value);
                }
                _ => return Err(StripeError::invalid_request("Invalid metadata: values must be strings.").param(param)),
            }
        }
        Ok(out)
    }

    /// Refuses any parameter no handler took.
    pub fn finish(self) -> Result<(), StripeError> {
        match self.0.into_iter().next() {
            None => Ok(()),
            Some((name, Param::Map(inner))) => {
                let nested = inner.keys().next().map(|k| format!("{name}[{k}]")).unwrap_or(name);
                Err(StripeError::unknown_param(&nested))
            }
            Some((name, _)) => Err(StripeError::unknown_param(&name)),
        }
    }
}

fn insert_into(map: &mut BTreeMap<String, Param>, first: &str, rest: &[String], value: String) -> Result<(), ()> {
    match rest {
        [] => match map.get(first) {
            Some(_) => Err(()),
            None => {
                map.insert(first.to_string(), Param::Str(value));
                Ok(())
            }
        },
        [append] if append.is_empty() => {
            match map.entry(first.to_string()).or_insert_with(|| Param::List(Vec::new())) {
                Param::List(list) => {
                    list.push(value);
                    Ok(())
                }
                _ => Err(()),
            }
        }
        [next, tail @ ..] => match map.entry(first.to_string()).or_insert_with(|| Param::Map(BTreeMap::new())) {
            Param::Map(inner) => insert_into(inner, next, tail, value),
            _ => Err(()),
        },
    }
}

/// Digits only, optionally a leading `-`, no overflow.
fn parse_int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(body: &str) -> Params {
        decode(body.as_bytes()).expect("decodes")
    }

    #[test]
    fn bracketed_keys_nest_into_hashes_and_lists() {
        let mut p = params("amount=12000&metadata%5Bpurchase_id%5D=pur_1&metadata[buyer_id]=b+1&expand[]=a&expand[]=b&note=a%26b%3Dc%2F%C3%A9");
        assert_eq!(p.take_int("amount").unwrap(), Some(12000));
        let metadata = p.take_metadata().unwrap();
        assert_eq!(metadata.get("purchase_id").map(String::as_str), Some("pur_1"));
        assert_eq!(metadata.get("buyer_id").map(String::as_str), Some("b 1"));
        assert_eq!(p.take_str("note").unwrap().as_deref(), Some("a&b=c/é"));
        assert_eq!(p.0.get("expand"), Some(&Param::List(vec!["a".into(), "b".into()])));
    }

    #[test]
    fn the_payments_clients_encoding_round_trips() {
        // What workers/payments/src/stripe.rs::form_encode produces.
        let mut p = params("metadata%5Bpurchase_id%5D=pur_1&description=a+b%26c%3Dd%2F%C3%A9");
        assert_eq!(p.take_str("description").unwrap().as_deref(), Some("a b&c=d/é"));
        assert_eq!(p.take_metadata().unwrap().get("purchase_id").map(String::as_str), Some("pur_1"));
        p.finish().unwrap();
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in [
            "a=%zz",
            "a=%4",
            "[x]=1",
            "a[b=1",
            "a]=1",
            "a[b]c=1",
            "a[][b]=1",
            "a=1&a=2",
            "a=1&a[b]=2",
            "a[b]=1&a=2",
            "a[b][c][d][e]=1",
            "a=%FF",
        ] {
            assert!(decode(body.as_bytes()).is_err(), "{body} should be refused");
        }
        assert!(decode(b"").unwrap().is_empty());
        assert!(decode(b"&&").unwrap().is_empty());
    }

    #[test]
    fn typed_accessors_answer_with_stripes_codes() {
        let mut p = params("amount=12.5&count=-3&confirm=yes&currency=");
        let err = p.take_int("amount").unwrap_err();
        assert_eq!((err.code, err.param.as_deref()), (Some("parameter_invalid_integer"), Some("amount")));
        let err = p.take_amount("count").unwrap_err();
        assert_eq!(err.code, Some("parameter_invalid_integer"));
        assert!(p.take_bool("confirm").is_err());
        let err = p.require_str("currency").unwrap_err();
        assert_eq!((err.code, err.message.as_str()), (Some("parameter_missing"), "Missing required param: currency."));
        assert_eq!(params("amount=100000000").take_amount("amount").unwrap_err().code, Some("amount_too_large"));
        assert_eq!(parse_int("1e3"), None);
        assert_eq!(parse_int("+5"), None);
        assert_eq!(parse_int("99999999999999999999"), None);
    }

    #[test]
    fn leftovers_are_unknown_parameters() {
        let mut p = params("amount=1&colour=red");
        p.take_int("amount").unwrap();
        let err = p.finish().unwrap_err();
        assert_eq!((err.code, err.param.as_deref()), (Some("parameter_unknown"), Some("colour")));
        let err = params("shipping[name]=x").finish().unwrap_err();
        assert_eq!(err.param.as_deref(), Some("shipping[name]"));
    }

    #[test]
    fn metadata_follows_stripes_limits() {
        let long_key = "k".repeat(41);
        assert!(params(&format!("metadata[{long_key}]=v")).take_metadata().is_err());
        assert!(params(&format!("metadata[k]={}", "v".repeat(501))).take_metadata().is_err());
        assert!(params("metadata[a][b]=v").take_metadata().is_err());
        assert!(params("metadata=x").take_metadata().is_err());
        assert!(params("metadata=").take_metadata().unwrap().is_empty());
        assert!(params("metadata[a]=").take_metadata().unwrap().is_empty());
    }

    #[test]
    fn canonical_text_ignores_pair_order_but_not_values() {
        let a = params("amount=1&metadata[x]=1&metadata[y]=2");
        let b = params("metadata[y]=2&amount=1&metadata[x]=1");
        let c = params("metadata[y]=2&amount=2&metadata[x]=1");
        assert_eq!(a.canonical(), b.canonical());
        assert_ne!(a.canonical(), c.canonical());
        // Lists keep their order.
        assert_ne!(params("e[]=a&e[]=b").canonical(), params("e[]=b&e[]=a").canonical());
    }
}
