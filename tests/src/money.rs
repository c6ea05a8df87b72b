//! The money rules every finished purchase obeys at the provider, checked
//! from the purchase as the API shows it and the sandbox's ledger for it.
//! Pure (no I/O): the e2e tests and the crash drill (`xtask/src/crash.rs`,
//! which includes this file) apply the same rules.

use serde_json::Value;

/// `{"value": "120.00", ...}` in minor units (12000); -1 if unreadable.
pub fn minor(money: &Value) -> i64 {
    let value = money["value"].as_str().unwrap_or("");
    let (whole, frac) = value.split_once('.').unwrap_or((value, ""));
    format!("{whole}{frac}").parse().unwrap_or(-1)
}

/// `Ok` when the ledger matches the purchase's final state: each operation
/// executed once, a completed purchase captured the total and paid the
/// seller the payout, a refunded one gave back all it held and paid nobody,
/// a cancelled one took nothing.
pub fn check(purchase: &Value, ledger: &Value) -> Result<(), String> {
    let id = purchase["id"].as_str().unwrap_or_default();
    let int = |field: &str| ledger[field].as_i64().ok_or_else(|| format!("{id}: ledger field {field} missing"));
    let (captured, refunded, voided, transferred) =
        (int("captured")?, int("refunded")?, int("voided")?, int("transferred")?);
    let total = minor(&purchase["amount"]);
    let fail = |what: &str| Err(format!("{id} ({}): {what}; ledger {ledger}", purchase["state"]));
    for op in ledger["operations"].as_array().into_iter().flatten() {
        if op["executions"] != 1 {
            return fail(&format!("operation {} executed {} times", op["idempotency_key"], op["executions"]));
        }
    }
    if refunded > captured {
        return fail("refunded more than captured");
    }
    match purchase["state"].as_str() {
        Some("completed") if captured != total || refunded != 0 || transferred != minor(&purchase["seller_payout"]) => {
            fail("a completed purchase must capture the total and pay the seller total minus fee, exactly once")
        }
        Some("refunded") if transferred != 0 || captured != refunded || voided + refunded != total => {
            fail("a refunded purchase must return everything it held and pay nobody")
        }
        Some("cancelled") if captured != 0 || transferred != 0 => {
            fail("a cancelled purchase must not have taken money")
        }
        Some("completed" | "refunded" | "cancelled") => Ok(()),
        other => fail(&format!("not finished: {other:?}")),
    }
}
