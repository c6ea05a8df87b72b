use orchestrator::{ActionKind, Millis, Outcome, StepPhase, Timestamp};
use proptest::prelude::*;
use rust_decimal::Decimal;
use std::str::FromStr;
use steps::simulation::{run, SimConfig};
use steps::*;

fn eur(v: &str) -> Money {
    Money::new(Decimal::from_str(v).unwrap(), Currency::EUR).unwrap()
}

fn saga() -> PurchaseSaga {
    PurchaseSaga::new(PurchaseConfig::default()).unwrap()
}

fn order() -> OrderRequest {
    OrderRequest {
        purchase_id: "pur_1".into(),
        listing_id: "lst_1".into(),
        units: 1,
        buyer_id: "cus_1".into(),
        seller_account: "acct_1".into(),
        total: eur("120.00"),
    }
}

fn ok(e: &PurchaseEffect, out: Option<&str>) -> PurchaseInput {
    PurchaseInput::EffectSucceeded { effect: e.id, output: out.map(str::to_string) }
}

fn one(tr: &PurchaseTransition) -> PurchaseEffect {
    assert_eq!(tr.effects.len(), 1, "{tr:?}");
    tr.effects[0].clone()
}

const H: u64 = 3_600_000;

/// Reserved and held: waiting for delivery at t = 2.
fn awaiting(s: &PurchaseSaga) -> Purchase {
    let (mut p, tr) = s.start(order(), Timestamp(0), 1).unwrap();
    let reserve = one(&tr);
    assert!(matches!(reserve.call, Call::ReserveListing { .. }));
    assert_eq!(reserve.idempotency_key, "pur_1:reserve_listing:reserve");
    let hold = one(&s.handle(&mut p, Timestamp(1), ok(&reserve, None)).unwrap());
    assert_eq!(
        hold.call,
        Call::CreatePaymentIntent { amount_minor: 12_000, currency: Currency::EUR, customer: "cus_1".into() }
    );
    assert_eq!(s.state(&p), PurchaseState::HoldingFunds);
    s.handle(&mut p, Timestamp(2), ok(&hold, Some("pi_1"))).unwrap();
    assert_eq!(s.state(&p), PurchaseState::AwaitingDelivery);
    p
}

#[test]
fn fee_is_rounded_once_half_up_and_parts_sum() {
    let split = eur("1.25").split_fee(1_000).unwrap();
    assert_eq!(split.fee, eur("0.13"), "0.125 rounds half-up");
    assert_eq!(split.payout, eur("1.12"));
    let jpy = Money::from_minor(1_005, Currency::JPY).unwrap().split_fee(1_000).unwrap();
    assert_eq!(jpy.fee.to_minor().unwrap(), 101, "100.5 JPY rounds up");
    assert_eq!(jpy.payout.to_minor().unwrap(), 904);
}

#[test]
fn money_serializes_scaled_to_the_currency() {
    let m = eur("120");
    assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"value":"120.00","currency":"EUR"}"#);
    let y: Money = serde_json::from_str(r#"{"value":"500","currency":"JPY"}"#).unwrap();
    assert_eq!(y.to_minor().unwrap(), 500);
    assert!(serde_json::from_str::<Money>(r#"{"value":"1.001","currency":"EUR"}"#).is_err());
    assert!(matches!(Money::new(Decimal::from_str("0.5").unwrap(), Currency::JPY), Err(MoneyError::TooPrecise { .. })));
    assert_eq!(Money::from_minor(12_345, Currency::USD).unwrap().value(), Decimal::from_str("123.45").unwrap());
}

#[test]
fn happy_path_releases_payout_and_marks_sold() {
    let s = saga();
    let mut p = awaiting(&s);
    assert_eq!(p.order.fee, eur("12.00"));
    let tr = s
        .handle(&mut p, Timestamp(3), PurchaseInput::Buyer(BuyerCommand::ConfirmDelivery { request_id: "r1".into() }))
        .unwrap();
    let capture = one(&tr);
    assert_eq!(capture.call, Call::CapturePaymentIntent { payment_intent: "pi_1".into(), amount_minor: 12_000 });
    assert_eq!(s.state(&p), PurchaseState::Releasing);
    let transfer = one(&s.handle(&mut p, Timestamp(4), ok(&capture, None)).unwrap());
    assert_eq!(
        transfer.call,
        Call::TransferToSeller { destination: "acct_1".into(), amount_minor: 10_800, currency: Currency::EUR }
    );
    assert_eq!(transfer.idempotency_key, "pur_1:release_funds:transfer");
    let sold = one(&s.handle(&mut p, Timestamp(5), ok(&transfer, Some("tr_1"))).unwrap());
    assert!(matches!(sold.call, Call::MarkListingSold { .. }));
    s.handle(&mut p, Timestamp(6), ok(&sold, None)).unwrap();
    assert_eq!(s.state(&p), PurchaseState::Completed);
    // A repeated confirmation request is answered, not refused.
    let again = PurchaseInput::Buyer(BuyerCommand::ConfirmDelivery { request_id: "r1".into() });
    assert!(s.handle(&mut p, Timestamp(7), again).is_ok());
}

#[test]
fn inspection_window_deadline_auto_releases() {
    let s = saga();
    let mut p = awaiting(&s);
    let due = s.poll_timeout(&p).unwrap();
    assert_eq!(due, Timestamp(2 + Millis::days(3).0));
    let capture = one(&s.handle(&mut p, due, PurchaseInput::Timer).unwrap());
    assert!(matches!(capture.call, Call::CapturePaymentIntent { .. }));
}

#[test]
fn buyer_commands_in_the_wrong_state_are_409() {
    let s = saga();
    let (mut p, _) = s.start(order(), Timestamp(0), 1).unwrap();
    let before = p.clone();
    let err = s
        .handle(&mut p, Timestamp(1), PurchaseInput::Buyer(BuyerCommand::ConfirmDelivery { request_id: "x".into() }))
        .unwrap_err();
    assert_eq!(err, PurchaseError::InvalidState { state: PurchaseState::Reserving, command: "confirm_delivery" });
    assert_eq!((err.http_status(), err.code()), (409, "invalid_state"));
    assert_eq!(p, before);
    // Once disputed, only an operator decides: the buyer can no longer cancel.
    let mut p = awaiting(&s);
    s.handle(&mut p, Timestamp(3), PurchaseInput::Buyer(BuyerCommand::Dispute { request_id: "d".into() })).unwrap();
    let err = s
        .handle(&mut p, Timestamp(4), PurchaseInput::Buyer(BuyerCommand::Cancel { request_id: "c".into() }))
        .unwrap_err();
    assert_eq!(err.http_status(), 409);
}

#[test]
fn buyer_cancel_while_awaiting_delivery_voids_the_hold_and_ends_refunded() {
    let s = saga();
    let mut p = awaiting(&s);
    let tr =
        s.handle(&mut p, Timestamp(3), PurchaseInput::Buyer(BuyerCommand::Cancel { request_id: "c".into() })).unwrap();
    assert_eq!(tr.state, PurchaseState::Compensating);
    let void = one(&tr);
    assert!(matches!(void.call, Call::CancelPaymentIntent { .. }), "{void:?}");
    let tr = s.handle(&mut p, Timestamp(4), PurchaseInput::EffectSucceeded { effect: void.id, output: None }).unwrap();
    let release = one(&tr);
    assert!(matches!(release.call, Call::ReleaseListing { .. }), "{release:?}");
    let tr =
        s.handle(&mut p, Timestamp(5), PurchaseInput::EffectSucceeded { effect: release.id, output: None }).unwrap();
    assert_eq!(tr.state, PurchaseState::Refunded);
    assert!(tr.effects.is_empty());
    // The buyer's client lost the answer and retries the same request: the
    // first answer again, not a 409; a new cancel request is refused.
    let again =
        s.handle(&mut p, Timestamp(6), PurchaseInput::Buyer(BuyerCommand::Cancel { request_id: "c".into() })).unwrap();
    assert_eq!((again.state, again.effects.len()), (PurchaseState::Refunded, 0));
    let reloaded = s.load(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(reloaded, p, "cancel request ids survive a restart");
    let other = s.handle(&mut p, Timestamp(7), PurchaseInput::Buyer(BuyerCommand::Cancel { request_id: "c2".into() }));
    assert_eq!(other.unwrap_err().http_status(), 409);
    let history = s.history_views(&p);
    assert_eq!(history.last().map(|h| h.to), Some(PurchaseState::Refunded));
    assert!(history.iter().any(|h| h.from == PurchaseState::AwaitingDelivery && h.to == PurchaseState::Compensating));
}

#[test]
fn dispute_freezes_until_resolved_refund_voids_the_hold() {
    let s = saga();
    let mut p = awaiting(&s);
    s.handle(&mut p, Timestamp(3), PurchaseInput::Buyer(BuyerCommand::Dispute { request_id: "d".into() })).unwrap();
    assert_eq!(s.state(&p), PurchaseState::Disputed);
    // the only wake-up left is the hold-expiry guard, not the inspection deadline
    assert_eq!(s.poll_timeout(&p), Some(Timestamp(1 + Millis::days(6).0)));
    let confirm = PurchaseInput::Buyer(BuyerCommand::ConfirmDelivery { request_id: "c".into() });
    assert_eq!(s.handle(&mut p, Timestamp(4), confirm).unwrap_err().http_status(), 409);
    let resolve = PurchaseInput::Operator(PurchaseOperatorCommand::ResolveDispute { outcome: DisputeOutcome::Refund });
    let void = one(&s.handle(&mut p, Timestamp(5), resolve).unwrap());
    assert_eq!(void.call, Call::CancelPaymentIntent { payment_intent: "pi_1".into() });
    let release = one(&s.handle(&mut p, Timestamp(6), ok(&void, None)).unwrap());
    assert!(matches!(release.call, Call::ReleaseListing { .. }));
    s.handle(&mut p, Timestamp(7), ok(&release, None)).unwrap();
    assert_eq!(s.state(&p), PurchaseState::Refunded);
}

#[test]
fn a_long_dispute_captures_before_the_hold_lapses_then_refunds() {
    let s = saga();
    let mut p = awaiting(&s);
    s.handle(&mut p, Timestamp(3), PurchaseInput::Buyer(BuyerCommand::Dispute { request_id: "d".into() })).unwrap();
    let guard = s.poll_timeout(&p).unwrap();
    assert!(guard < s.hold_expires_at(&p).unwrap());
    let capture = one(&s.handle(&mut p, guard, PurchaseInput::Timer).unwrap());
    assert!(matches!(capture.call, Call::CapturePaymentIntent { .. }));
    assert_eq!(s.state(&p), PurchaseState::Disputed, "still disputed, money now in the platform balance");
    // the capture webhook arrives instead of the HTTP answer
    let hook = StripeEvent { id: "evt_1".into(), kind: StripeEventKind::Succeeded, object_id: Some("pi_1".into()) };
    s.handle(&mut p, Timestamp(guard.0 + 1), PurchaseInput::Stripe(hook.clone())).unwrap();
    // the late HTTP answer and a duplicate webhook change nothing
    assert_eq!(
        s.handle(&mut p, Timestamp(guard.0 + 2), ok(&capture, None)).unwrap().outcome,
        Outcome::Ignored(orchestrator::Ignored::Stale)
    );
    let dup = s.handle(&mut p, Timestamp(guard.0 + 3), PurchaseInput::Stripe(hook)).unwrap();
    assert_eq!(dup.outcome, Outcome::Ignored(orchestrator::Ignored::Duplicate));
    let resolve = PurchaseInput::Operator(PurchaseOperatorCommand::ResolveDispute { outcome: DisputeOutcome::Refund });
    let refund = one(&s.handle(&mut p, Timestamp(guard.0 + 10 * H), resolve).unwrap());
    assert_eq!(refund.call, Call::RefundPaymentIntent { payment_intent: "pi_1".into(), amount_minor: 12_000 });
    // voiding is superseded by the refund: next is releasing the listing
    let release = one(&s.handle(&mut p, Timestamp(guard.0 + 11 * H), ok(&refund, None)).unwrap());
    assert!(matches!(release.call, Call::ReleaseListing { .. }));
}

#[test]
fn declined_card_ends_cancelled_after_releasing_the_listing() {
    let s = saga();
    let (mut p, tr) = s.start(order(), Timestamp(0), 1).unwrap();
    let reserve = one(&tr);
    s.handle(&mut p, Timestamp(1), ok(&reserve, None)).unwrap();
    let declined =
        StripeEvent { id: "evt_d".into(), kind: StripeEventKind::PaymentFailed, object_id: Some("pi_1".into()) };
    let release = one(&s.handle(&mut p, Timestamp(2), PurchaseInput::Stripe(declined)).unwrap());
    assert!(matches!(release.call, Call::ReleaseListing { .. }));
    s.handle(&mut p, Timestamp(3), ok(&release, None)).unwrap();
    assert_eq!(s.state(&p), PurchaseState::Cancelled);
}

#[test]
fn refund_is_refused_after_the_pivot() {
    let s = saga();
    let mut p = awaiting(&s);
    let capture = one(&s
        .handle(&mut p, Timestamp(3), PurchaseInput::Buyer(BuyerCommand::ConfirmDelivery { request_id: "r".into() }))
        .unwrap());
    s.handle(&mut p, Timestamp(4), ok(&capture, None)).unwrap();
    let err = s.handle(&mut p, Timestamp(5), PurchaseInput::Operator(PurchaseOperatorCommand::Refund)).unwrap_err();
    assert_eq!(err, PurchaseError::PastPivot);
    assert_eq!(err.http_status(), 409);
}

#[test]
fn state_names_and_operator_view() {
    assert_eq!(serde_json::to_string(&PurchaseState::NeedsAttention).unwrap(), "\"needs_attention\"");
    assert_eq!(serde_json::to_string(&PurchaseState::HoldingFunds).unwrap(), "\"holding_funds\"");
    let s = saga();
    let (mut p, tr) = s.start(order(), Timestamp(0), 1).unwrap();
    let reserve = one(&tr);
    s.handle(
        &mut p,
        Timestamp(1),
        PurchaseInput::EffectFailed { effect: reserve.id, retryable: true, error: "503".into() },
    )
    .unwrap();
    let v = &s.step_views(&p)[0];
    assert_eq!((v.name.as_str(), v.status, v.attempts), ("reserve_listing", StepPhase::Running, 1));
    assert_eq!(v.last_error.as_deref(), Some("503"));
    assert!(v.next_attempt_at.is_some());
}

#[test]
fn persisted_purchase_reloads_and_resumes_under_the_same_keys() {
    let s = saga();
    let (p, tr) = s.start(order(), Timestamp(0), 1).unwrap();
    let json = serde_json::to_string(&p).unwrap();
    let mut back = s.load(&json).unwrap();
    assert_eq!(back, p);
    let again = s.handle(&mut back, Timestamp(10), PurchaseInput::Resume).unwrap();
    assert_eq!(again.effects[0].idempotency_key, tr.effects[0].idempotency_key);
    assert_eq!(again.effects[0].id.action, ActionKind::Forward);
}

#[test]
fn simulation_is_deterministic_and_clean() {
    let a = run(&SimConfig::new(3_000, 42)).unwrap();
    let b = run(&SimConfig::new(3_000, 42)).unwrap();
    assert_eq!(a.transitions, b.transitions);
    assert_eq!(a.outcomes, b.outcomes);
    assert!(a.violations.is_empty(), "{:?}", a.violations.first().map(|v| (v.invariant, &v.detail)));
    assert!(a.early_captures > 0 && a.crashes > 0, "faults and the hold guard are exercised");
}

#[test]
fn a_deliberately_skipped_compensation_is_caught() {
    let cfg = SimConfig { sabotage: Some(Sabotage::SkipReleaseListing), ..SimConfig::new(3_000, 42) };
    let report = run(&cfg).unwrap();
    assert!(report.violations.iter().any(|v| v.invariant == "inventory"), "the leak must be reported");
    assert!(report.violations[0].state_json.contains("\"history\""), "with the saga's history for replay");
}

proptest! {
    #[test]
    fn fee_plus_payout_is_always_the_total(minor in 1i64..10_000_000_000, bps in 0u32..=10_000, c in 0usize..5) {
        let cur = [Currency::EUR, Currency::USD, Currency::GBP, Currency::CHF, Currency::JPY][c];
        let total = Money::from_minor(minor, cur).unwrap();
        let split = total.split_fee(bps).unwrap();
        prop_assert_eq!(split.fee.to_minor().unwrap() + split.payout.to_minor().unwrap(), minor);
        prop_assert!(split.fee.value() <= total.value());
        let json = serde_json::to_string(&split.payout).unwrap();
        let back: Money = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, split.payout);
    }

    #[test]
    fn purchase_inputs_never_panic_and_stay_consistent(ops in prop::collection::vec((0u8..12, 0u64..(10 * H)), 1..60)) {
        let s = saga();
        let (mut p, _) = s.start(order(), Timestamp(0), 9).unwrap();
        let mut now = 0;
        for (op, dt) in ops {
            now += dt;
            let pending = s.pending_effects(&p);
            let input = match op {
                0 | 1 => match pending.first() { Some(e) => ok(e, Some("pi_1")), None => PurchaseInput::Timer },
                2 => match pending.first() {
                    Some(e) => PurchaseInput::EffectFailed { effect: e.id, retryable: dt % 2 == 0, error: "e".into() },
                    None => PurchaseInput::Timer,
                },
                3 => PurchaseInput::Timer,
                4 => PurchaseInput::Buyer(BuyerCommand::ConfirmDelivery { request_id: format!("c{}", dt % 3) }),
                5 => PurchaseInput::Buyer(BuyerCommand::Dispute { request_id: "d".into() }),
                6 => PurchaseInput::Buyer(BuyerCommand::Cancel { request_id: "x".into() }),
                7 => PurchaseInput::Operator(PurchaseOperatorCommand::Refund),
                8 => PurchaseInput::Operator(PurchaseOperatorCommand::RetryNow),
                9 => PurchaseInput::Operator(PurchaseOperatorCommand::ResolveDispute { outcome: if dt % 2 == 0 { DisputeOutcome::Release } else { DisputeOutcome::Refund } }),
                10 => PurchaseInput::Resume,
                _ => PurchaseInput::Stripe(StripeEvent { id: format!("evt_{}", dt % 4), kind: StripeEventKind::Succeeded, object_id: None }),
            };
            let before = p.clone();
            let was = s.state(&p);
            match s.handle(&mut p, Timestamp(now), input) {
                Err(_) => prop_assert_eq!(&p, &before),
                Ok(tr) => {
                    for e in &tr.effects {
                        if e.id.action == ActionKind::Compensation && matches!(e.call, Call::CancelPaymentIntent { .. }) {
                            prop_assert!(p.saga.steps()[3].succeeded_at.is_none(), "never void a captured hold");
                        }
                    }
                }
            }
            if was.is_finished() {
                prop_assert_eq!(s.state(&p), was, "finished is final");
            }
            let st = s.state(&p);
            if matches!(st, PurchaseState::AwaitingDelivery | PurchaseState::Disputed) && p.saga.steps()[3].phase == StepPhase::Pending {
                let cfg = s.config();
                let guard = s.hold_expires_at(&p).map(|e| Timestamp(e.0 - cfg.hold_safety_margin.0));
                prop_assert!(guard.is_some());
                prop_assert!(s.poll_timeout(&p) <= guard, "the alarm never sleeps past the hold guard");
            }
        }
    }
}
