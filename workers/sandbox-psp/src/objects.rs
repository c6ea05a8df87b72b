//! The Stripe objects the sandbox keeps, and their JSON as Stripe renders it
//! (API version 2024-06-20). The structs are the stored form; `to_json`
//! renders what clients and webhooks see.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub type Metadata = BTreeMap<String, String>;

pub const API_VERSION: &str = "2024-06-20";

/// The currencies the sandbox accepts (lowercase ISO 4217, as Stripe writes them).
pub const CURRENCIES: [&str; 5] = ["eur", "usd", "gbp", "chf", "jpy"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiStatus {
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresCapture,
    Succeeded,
    Canceled,
}

impl PiStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PiStatus::RequiresPaymentMethod => "requires_payment_method",
            PiStatus::RequiresConfirmation => "requires_confirmation",
            PiStatus::RequiresCapture => "requires_capture",
            PiStatus::Succeeded => "succeeded",
            PiStatus::Canceled => "canceled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub created: i64,
    pub amount: i64,
    pub currency: String,
    /// `manual`, `automatic` or `automatic_async`.
    pub capture_method: String,
    pub status: PiStatus,
    pub amount_capturable: i64,
    pub amount_received: i64,
    pub payment_method: Option<String>,
    pub metadata: Metadata,
    pub transfer_group: Option<String>,
    pub description: Option<String>,
    pub customer: Option<String>,
    pub latest_charge: Option<String>,
    pub canceled_at: Option<i64>,
    pub cancellation_reason: Option<String>,
    pub last_payment_error: Option<Value>,
    pub client_secret: String,
    /// Sandbox bookkeeping (not on the wire): the amount that was ever held
    /// or charged, and the part of it released without capture.
    pub authorized: i64,
    pub voided: i64,
}

impl PaymentIntent {
    /// The purchase this belongs to: `metadata[purchase_id]`, else the transfer group.
    pub fn purchase_id(&self) -> Option<String> {
        self.metadata.get("purchase_id").cloned().or_else(|| self.transfer_group.clone())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "payment_intent",
            "amount": self.amount,
            "amount_capturable": self.amount_capturable,
            "amount_details": {"tip": {}},
            "amount_received": self.amount_received,
            "application": null,
            "application_fee_amount": null,
            "automatic_payment_methods": null,
            "canceled_at": self.canceled_at,
            "cancellation_reason": self.cancellation_reason,
            "capture_method": self.capture_method,
            "client_secret": self.client_secret,
            "confirmation_method": "automatic",
            "created": self.created,
            "currency": self.currency,
            "customer": self.customer,
            "description": self.description,
            "invoice": null,
            "last_payment_error": self.last_payment_error,
            "latest_charge": self.latest_charge,
            "livemode": false,
            "metadata": self.metadata,
            "next_action": null,
            "on_behalf_of": null,
            "payment_method": self.payment_method,
            "payment_method_configuration_details": null,
            "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
            "payment_method_types": ["card"],
            "processing": null,
            "receipt_email": null,
            "review": null,
            "setup_future_usage": null,
            "shipping": null,
            "source": null,
            "statement_descriptor": null,
            "statement_descriptor_suffix": null,
            "status": self.status.as_str(),
            "transfer_data": null,
            "transfer_group": self.transfer_group,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    pub id: String,
    pub created: i64,
    pub amount: i64,
    pub currency: String,
    pub payment_intent: String,
    pub payment_method: Option<String>,
    /// `succeeded` or `failed`.
    pub status: String,
    pub captured: bool,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub decline_code: Option<String>,
    /// Copied from the PaymentIntent, as Stripe does.
    pub metadata: Metadata,
    pub transfer_group: Option<String>,
    pub purchase_id: Option<String>,
}

impl Charge {
    /// Fully refunded (Stripe's `refunded` flag).
    pub fn refunded(&self) -> bool {
        self.amount_captured > 0 && self.amount_refunded >= self.amount_captured
    }

    pub fn to_json(&self) -> Value {
        let succeeded = self.status == "succeeded";
        json!({
            "id": self.id,
            "object": "charge",
            "amount": self.amount,
            "amount_captured": self.amount_captured,
            "amount_refunded": self.amount_refunded,
            "application": null,
            "application_fee": null,
            "application_fee_amount": null,
            "balance_transaction": null,
            "billing_details": {"address": null, "email": null, "name": null, "phone": null},
            "calculated_statement_descriptor": "PETNET SANDBOX",
            "captured": self.captured,
            "created": self.created,
            "currency": self.currency,
            "customer": null,
            "description": null,
            "disputed": false,
            "failure_balance_transaction": null,
            "failure_code": self.failure_code,
            "failure_message": self.failure_message,
            "fraud_details": {},
            "livemode": false,
            "metadata": self.metadata,
            "on_behalf_of": null,
            "outcome": if succeeded {
                json!({"network_status": "approved_by_network", "reason": null, "risk_level": "normal", "seller_message": "Payment complete.", "type": "authorized"})
            } else {
                json!({"network_status": "declined_by_network", "reason": self.decline_code, "risk_level": "normal", "seller_message": "The bank did not return any further details with this decline.", "type": "issuer_declined"})
            },
            "paid": succeeded,
            "payment_intent": self.payment_intent,
            "payment_method": self.payment_method,
            "receipt_email": null,
            "receipt_url": null,
            "refunded": self.refunded(),
            "review": null,
            "source_transfer": null,
            "statement_descriptor": null,
            "status": self.status,
            "transfer_data": null,
            "transfer_group": self.transfer_group,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub created: i64,
    pub amount: i64,
    pub currency: String,
    pub charge: String,
    pub payment_intent: String,
    pub metadata: Metadata,
    pub reason: Option<String>,
    pub purchase_id: Option<String>,
}

impl Refund {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "refund",
            "amount": self.amount,
            "balance_transaction": null,
            "charge": self.charge,
            "created": self.created,
            "currency": self.currency,
            "destination_details": {"card": {"reference_status": "pending", "reference_type": "acquirer_reference_number", "type": "refund"}, "type": "card"},
            "metadata": self.metadata,
            "payment_intent": self.payment_intent,
            "reason": self.reason,
            "receipt_number": null,
            "source_transfer_reversal": null,
            "status": "succeeded",
            "transfer_reversal": null,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    pub id: String,
    pub created: i64,
    pub amount: i64,
    pub currency: String,
    pub destination: String,
    pub destination_payment: String,
    pub transfer_group: Option<String>,
    pub description: Option<String>,
    pub metadata: Metadata,
    pub purchase_id: Option<String>,
}

impl Transfer {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "transfer",
            "amount": self.amount,
            "amount_reversed": 0,
            "balance_transaction": null,
            "created": self.created,
            "currency": self.currency,
            "description": self.description,
            "destination": self.destination,
            "destination_payment": self.destination_payment,
            "livemode": false,
            "metadata": self.metadata,
            "reversals": {"object": "list", "data": [], "has_more": false, "total_count": 0, "url": format!("/v1/transfers/{}/reversals", self.id)},
            "reversed": false,
            "source_transaction": null,
            "source_type": "card",
            "transfer_group": self.transfer_group,
        })
    }
}

/// Any stored object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "object", rename_all = "snake_case")]
pub enum Object {
    PaymentIntent(PaymentIntent),
    Charge(Charge),
    Refund(Refund),
    Transfer(Transfer),
}

impl Object {
    pub fn id(&self) -> &str {
        match self {
            Object::PaymentIntent(o) => &o.id,
            Object::Charge(o) => &o.id,
            Object::Refund(o) => &o.id,
            Object::Transfer(o) => &o.id,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Object::PaymentIntent(_) => "payment_intent",
            Object::Charge(_) => "charge",
            Object::Refund(_) => "refund",
            Object::Transfer(_) => "transfer",
        }
    }

    pub fn purchase_id(&self) -> Option<String> {
        match self {
            Object::PaymentIntent(o) => o.purchase_id(),
            Object::Charge(o) => o.purchase_id.clone(),
            Object::Refund(o) => o.purchase_id.clone(),
            Object::Transfer(o) => o.purchase_id.clone(),
        }
    }

    pub fn transfer_group(&self) -> Option<String> {
        match self {
            Object::PaymentIntent(o) => o.transfer_group.clone(),
            Object::Charge(o) => o.transfer_group.clone(),
            Object::Refund(_) => None,
            Object::Transfer(o) => o.transfer_group.clone(),
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Object::PaymentIntent(o) => o.to_json(),
            Object::Charge(o) => o.to_json(),
            Object::Refund(o) => o.to_json(),
            Object::Transfer(o) => o.to_json(),
        }
    }
}

/// The event envelope Stripe posts to webhook endpoints.
pub fn event_json(
    id: &str,
    kind: &str,
    created: i64,
    object: &Value,
    request_id: Option<&str>,
    idempotency_key: Option<&str>,
) -> Value {
    json!({
        "id": id,
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": {"object": object},
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": request_id, "idempotency_key": idempotency_key},
        "type": kind,
    })
}
