//! The Durable Object's SQLite: schema, the [`Store`] over it, and atomic
//! transactions through the storage's `transactionSync` (which `worker` does
//! not bind; Durable Object SQL refuses `BEGIN`/`COMMIT` statements).

use serde::de::DeserializeOwned;
use serde::Deserialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::{SqlStorage, SqlStorageValue, Storage};

use crate::objects::Object;
use crate::store::{Store, StoreError};

const SCHEMA: &[&str] = &[
    // Stripe objects as JSON documents, indexed by what the ledger and the
    // transfer guard look up.
    "CREATE TABLE IF NOT EXISTS objects (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        purchase_id TEXT,
        transfer_group TEXT,
        doc TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS objects_by_purchase ON objects (purchase_id)",
    "CREATE INDEX IF NOT EXISTS objects_by_group ON objects (transfer_group)",
    // First answers per idempotency key.
    "CREATE TABLE IF NOT EXISTS idempotency (
        key TEXT PRIMARY KEY,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        params TEXT NOT NULL,
        status INTEGER NOT NULL,
        body TEXT NOT NULL,
        request_id TEXT NOT NULL,
        purchase_id TEXT,
        created_ms INTEGER NOT NULL,
        executions INTEGER NOT NULL,
        replays INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS idempotency_by_purchase ON idempotency (purchase_id)",
    // Events in creation order (`seq`), with the exact JSON delivered.
    "CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        created INTEGER NOT NULL,
        purchase_id TEXT,
        body TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS events_by_purchase ON events (purchase_id)",
    // Webhook deliveries: one per event, two when chaos duplicates it.
    // state: pending | held | delivered | failed.
    "CREATE TABLE IF NOT EXISTS deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_seq INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        state TEXT NOT NULL,
        due_ms INTEGER NOT NULL,
        hold_until_ms INTEGER,
        drop_first INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        last_attempt_ms INTEGER,
        created_ms INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, due_ms)",
    // Chaos settings and the health probe.
    "CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
];

pub fn migrate(sql: &SqlStorage) -> Result<(), StoreError> {
    for statement in SCHEMA {
        run(sql, statement, vec![])?;
    }
    Ok(())
}

fn err(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{context}: {e}"))
}

/// Runs a statement for its effect.
pub fn run(sql: &SqlStorage, query: &str, bindings: Vec<SqlStorageValue>) -> Result<(), StoreError> {
    let cursor = sql.exec(query, bindings).map_err(|e| err(query, e))?;
    for row in cursor.raw() {
        row.map_err(|e| err(query, e))?;
    }
    Ok(())
}

/// Runs a query and deserializes every row.
pub fn rows<T: DeserializeOwned>(
    sql: &SqlStorage,
    query: &str,
    bindings: Vec<SqlStorageValue>,
) -> Result<Vec<T>, StoreError> {
    let cursor = sql.exec(query, bindings).map_err(|e| err(query, e))?;
    cursor.to_array::<T>().map_err(|e| err(query, e))
}

pub fn text(value: impl Into<String>) -> SqlStorageValue {
    SqlStorageValue::String(value.into())
}

pub fn opt_text(value: Option<impl Into<String>>) -> SqlStorageValue {
    value.map(|v| SqlStorageValue::String(v.into())).unwrap_or(SqlStorageValue::Null)
}

pub fn int(value: i64) -> SqlStorageValue {
    SqlStorageValue::Integer(value)
}

#[derive(Deserialize)]
struct Doc {
    doc: String,
}

fn decode_docs(docs: Vec<Doc>) -> Result<Vec<Object>, StoreError> {
    docs.into_iter().map(|d| serde_json::from_str(&d.doc).map_err(|e| err("stored object", e))).collect()
}

/// [`Store`] over the `objects` table.
pub struct SqlStore<'a> {
    pub sql: &'a SqlStorage,
}

impl SqlStore<'_> {
    /// The objects of a purchase (by `metadata[purchase_id]` or transfer group), oldest first.
    pub fn of_purchase(&self, purchase_id: &str) -> Result<Vec<Object>, StoreError> {
        decode_docs(rows(
            self.sql,
            "SELECT doc FROM objects WHERE purchase_id = ?1 OR transfer_group = ?1 ORDER BY rowid",
            vec![text(purchase_id)],
        )?)
    }
}

impl Store for SqlStore<'_> {
    fn get(&self, id: &str) -> Result<Option<Object>, StoreError> {
        Ok(decode_docs(rows(self.sql, "SELECT doc FROM objects WHERE id = ?", vec![text(id)])?)?.into_iter().next())
    }

    fn put(&mut self, object: &Object) -> Result<(), StoreError> {
        let doc = serde_json::to_string(object).map_err(|e| err("encoding an object", e))?;
        run(
            self.sql,
            "INSERT INTO objects (id, kind, purchase_id, transfer_group, doc) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, purchase_id = excluded.purchase_id,
                 transfer_group = excluded.transfer_group, doc = excluded.doc",
            vec![
                text(object.id()),
                text(object.kind()),
                opt_text(object.purchase_id()),
                opt_text(object.transfer_group()),
                text(doc),
            ],
        )
    }

    fn in_transfer_group(&self, group: &str) -> Result<Vec<Object>, StoreError> {
        decode_docs(rows(
            self.sql,
            "SELECT doc FROM objects WHERE transfer_group = ? ORDER BY rowid",
            vec![text(group)],
        )?)
    }

    fn all(&self) -> Result<Vec<Object>, StoreError> {
        decode_docs(rows(self.sql, "SELECT doc FROM objects ORDER BY rowid", vec![])?)
    }
}

#[wasm_bindgen]
extern "C" {
    /// The runtime's `DurableObjectStorage`, seen through the one method we need.
    #[wasm_bindgen(extends = js_sys::Object)]
    type SyncTransactionStorage;

    /// Runs `callback` in a transaction: committed when it returns, rolled
    /// back (and the exception rethrown) when it throws.
    #[wasm_bindgen(method, catch, js_name = transactionSync)]
    fn transaction_sync(
        this: &SyncTransactionStorage,
        callback: &mut dyn FnMut() -> Result<JsValue, JsValue>,
    ) -> Result<JsValue, JsValue>;
}

/// Runs `f` atomically: every write it makes commits together, or none
/// does when it returns `Err`. `storage_error` turns a runtime failure into `E`.
pub fn atomically<T, E>(
    storage: &Storage,
    f: impl FnOnce() -> Result<T, E>,
    storage_error: impl FnOnce(String) -> E,
) -> Result<T, E> {
    let raw: &SyncTransactionStorage = storage.as_raw().unchecked_ref();
    let mut work = Some(f);
    let mut outcome: Option<Result<T, E>> = None;
    let js = {
        let mut callback = || -> Result<JsValue, JsValue> {
            let Some(work) = work.take() else { return Err(JsValue::from_str("transaction callback called twice")) };
            let result = work();
            let failed = result.is_err();
            outcome = Some(result);
            if failed {
                Err(JsValue::from_str("rolled back"))
            } else {
                Ok(JsValue::UNDEFINED)
            }
        };
        raw.transaction_sync(&mut callback)
    };
    match (outcome, js) {
        (Some(Err(e)), _) => Err(e),
        (Some(Ok(value)), Ok(_)) => Ok(value),
        (Some(Ok(_)), Err(e)) => Err(storage_error(format!("the transaction did not commit: {e:?}"))),
        (None, result) => Err(storage_error(format!("the transaction callback did not run: {result:?}"))),
    }
}
