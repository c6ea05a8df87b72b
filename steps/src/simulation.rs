//! Deterministic simulation of many purchases against a simulated marketplace
//! and payment provider, with injected faults, then invariant checks.
//!
//! Everything is driven by one seeded PRNG and a simulated clock, so the same
//! `(sagas, seed)` always produces the same run. The shell model is the real
//! one: persist state, then perform effects under their idempotency keys;
//! a "crash" either loses the transition (state reverts to the last persisted
//! one, the sender redelivers) or happens between two effects (the shell
//! reloads the persisted JSON and re-performs every pending effect).

use crate::money::{Currency, Money};
use crate::purchase::*;
use orchestrator::{ActionKind, EffectId, Timestamp};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub sagas: u64,
    pub seed: u64,
    /// Sagas that run concurrently (sharing listings) in one batch.
    pub batch: u64,
    /// A deliberately broken saga, to show the checker catches it.
    pub sabotage: Option<Sabotage>,
}

impl SimConfig {
    pub fn new(sagas: u64, seed: u64) -> Self {
        SimConfig { sagas, seed, batch: 1_000, sabotage: None }
    }
}

/// A broken invariant, with the saga's history for replay.
#[derive(Clone, Debug)]
pub struct Violation {
    pub purchase_id: String,
    pub invariant: &'static str,
    pub detail: String,
    /// The saga's state (with its bounded history) as JSON.
    pub state_json: String,
}

/// The outcome of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub sagas: u64,
    pub seed: u64,
    pub transitions: u64,
    pub violations: Vec<Violation>,
    /// Final purchase states and how many sagas ended in each.
    pub outcomes: Vec<(PurchaseState, u64)>,
    /// Buyer/operator commands refused with a typed error (expected).
    pub rejected_commands: u64,
    pub crashes: u64,
    pub early_captures: u64,
    /// Times a saga entered `needs_attention` (operators then retried it).
    pub attention_episodes: u64,
}

impl Report {
    /// `sagas=N seed=S transitions=T violations=V elapsed_ms=E`
    pub fn summary_line(&self, elapsed_ms: u128) -> String {
        format!(
            "sagas={} seed={} transitions={} violations={} elapsed_ms={}",
            self.sagas,
            self.seed,
            self.transitions,
            self.violations.len(),
            elapsed_ms
        )
    }
}

/// Runs the whole simulation.
pub fn run(cfg: &SimConfig) -> Result<Report, PurchaseError> {
    let saga = match cfg.sabotage {
        Some(s) => PurchaseSaga::sabotaged(PurchaseConfig::default(), s)?,
        None => PurchaseSaga::new(PurchaseConfig::default())?,
    };
    let mut report = Report { sagas: cfg.sagas, seed: cfg.seed, ..Report::default() };
    let mut outcomes: HashMap<PurchaseState, u64> = HashMap::new();
    let mut rng = Rng(cfg.seed ^ 0x5EED_0F_5A6A);
    let batch = cfg.batch.max(1);
    let mut first = 0;
    while first < cfg.sagas {
        let n = batch.min(cfg.sagas - first);
        let mut world = World::new(&saga, rng.next(), first, n);
        world.run();
        world.check();
        report.transitions += world.transitions;
        report.rejected_commands += world.rejected;
        report.crashes += world.crashes;
        report.early_captures += world.early_captures;
        report.attention_episodes += world.attention_episodes;
        for s in &world.shells {
            *outcomes.entry(saga.state(&s.live)).or_default() += 1;
        }
        report.violations.append(&mut world.violations);
        first += n;
    }
    let mut o: Vec<_> = outcomes.into_iter().collect();
    o.sort_by_key(|(s, _)| s.as_str());
    report.outcomes = o;
    Ok(report)
}

/// splitmix64: small, fast, deterministic everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    /// True with probability `permille / 1000`.
    fn chance(&mut self, permille: u64) -> bool {
        self.below(1_000) < permille
    }
}

const T0: u64 = 1_700_000_000_000;
const SEC: u64 = 1_000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;
/// Faults (lost/late/duplicated messages, crashes, transient errors) stop here.
const FAULTS_UNTIL: u64 = T0 + 2 * DAY;
/// Every saga must be finished or in `needs_attention` by then.
const LIVENESS_BY: u64 = FAULTS_UNTIL + 30 * DAY;

type CallResult = Result<Option<String>, (bool, String)>;

#[derive(Clone, Debug)]
enum Msg {
    Start,
    Result { effect: EffectId, result: CallResult },
    Webhook(StripeEvent),
    Alarm(Timestamp),
    Buyer(BuyerCommand),
    Operator(PurchaseOperatorCommand),
    Lapse(String),
}

struct Scheduled {
    at: u64,
    seq: u64,
    saga: u32,
    msg: Msg,
}
impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    // Min-heap on (at, seq).
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

struct Listing {
    listed: u32,
    reserved: u32,
    sold: u32,
    holds: HashMap<String, u32>,
    sold_to: HashSet<String>,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum PiStatus {
    RequiresCapture,
    Canceled,
    Succeeded,
}

struct Pi {
    purchase: u32,
    amount: i64,
    status: PiStatus,
    captured: i64,
    refunded: i64,
    captures: u32,
    expires_at: u64,
    lapsed_while: Option<PurchaseState>,
}

struct Shell {
    live: Purchase,
    persisted: Purchase,
    alarm: Option<Timestamp>,
    last_state: PurchaseState,
    /// Steps whose forward action was issued, and compensations in issue order.
    forward_issued: [bool; 6],
    compensations: Vec<u16>,
    operator_retries: u32,
    paid_out: Vec<i64>,
}

struct World<'a> {
    saga: &'a PurchaseSaga,
    rng: Rng,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    now: u64,
    shells: Vec<Shell>,
    listings: Vec<Listing>,
    /// Provider-side replay cache: one execution per idempotency key.
    cache: HashMap<String, CallResult>,
    executions: HashMap<String, u32>,
    pis: HashMap<String, Pi>,
    pi_by_purchase: HashMap<u32, Vec<String>>,
    next_id: u64,
    transitions: u64,
    rejected: u64,
    crashes: u64,
    early_captures: u64,
    attention_episodes: u64,
    violations: Vec<Violation>,
    liveness_checked: bool,
}

impl<'a> World<'a> {
    fn new(saga: &'a PurchaseSaga, seed: u64, first: u64, n: u64) -> Self {
        let mut rng = Rng(seed);
        let listings = (0..(n * 2 / 3).max(1))
            .map(|_| Listing {
                listed: rng.range(1, 4) as u32,
                reserved: 0,
                sold: 0,
                holds: HashMap::new(),
                sold_to: HashSet::new(),
            })
            .collect::<Vec<_>>();
        let mut w = World {
            saga,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
            now: T0,
            shells: Vec::with_capacity(n as usize),
            listings,
            cache: HashMap::new(),
            executions: HashMap::new(),
            pis: HashMap::new(),
            pi_by_purchase: HashMap::new(),
            next_id: 0,
            transitions: 0,
            rejected: 0,
            crashes: 0,
            early_captures: 0,
            attention_episodes: 0,
            violations: Vec::new(),
            liveness_checked: false,
        };
        for i in 0..n {
            let listing = w.rng.below(w.listings.len() as u64);
            let currency = [Currency::EUR, Currency::USD, Currency::GBP, Currency::JPY][w.rng.below(4) as usize];
            let minor = w.rng.range(100, 500_000) as i64;
            let total = Money::from_minor(minor, currency).unwrap_or(Money::zero(currency));
            let req = OrderRequest {
                purchase_id: format!("p{}", first + i),
                listing_id: format!("l{listing}"),
                units: w.rng.range(1, 2) as u32,
                buyer_id: format!("cus_{}", first + i),
                seller_account: format!("acct_{}", listing),
                total,
            };
            let order = Order {
                purchase_id: req.purchase_id.clone(),
                listing_id: req.listing_id.clone(),
                units: req.units,
                buyer_id: req.buyer_id.clone(),
                seller_account: req.seller_account.clone(),
                total,
                fee: total,
                payout: total,
            };
            // Placeholder until Start: the real purchase is built by `start`.
            let p = Purchase {
                saga: saga.definition().new_saga(order.purchase_id.clone()),
                order,
                cancel_requests: Vec::new(),
            };
            w.shells.push(Shell {
                live: p.clone(),
                persisted: p,
                alarm: None,
                last_state: PurchaseState::Reserving,
                forward_issued: [false; 6],
                compensations: Vec::new(),
                operator_retries: 0,
                paid_out: Vec::new(),
            });
            let at = T0 + w.rng.below(DAY);
            w.schedule(at, i as u32, Msg::Start);
            if w.rng.chance(50) {
                let d = w.rng.range(0, 5 * SEC);
                w.schedule(at + d, i as u32, Msg::Buyer(BuyerCommand::Cancel { request_id: format!("cancel-{i}") }));
            }
            if w.rng.chance(30) {
                let d = w.rng.range(0, 10 * DAY);
                let cmd =
                    if w.rng.chance(500) { PurchaseOperatorCommand::RetryNow } else { PurchaseOperatorCommand::Refund };
                w.schedule(at + d, i as u32, Msg::Operator(cmd));
            }
            if w.rng.chance(20) {
                // A confirmation at a random (usually invalid) moment: must be a typed 409.
                let d = w.rng.range(0, 5 * DAY);
                w.schedule(
                    at + d,
                    i as u32,
                    Msg::Buyer(BuyerCommand::ConfirmDelivery { request_id: format!("stray-{i}") }),
                );
            }
        }
        w
    }

    fn faults(&self) -> bool {
        self.now < FAULTS_UNTIL
    }

    fn schedule(&mut self, at: u64, saga: u32, msg: Msg) {
        self.seq += 1;
        self.queue.push(Scheduled { at, seq: self.seq, saga, msg });
    }

    fn run(&mut self) {
        while let Some(ev) = self.queue.pop() {
            self.now = self.now.max(ev.at);
            if !self.liveness_checked && self.now > LIVENESS_BY {
                self.check_liveness();
            }
            self.deliver(ev.saga, ev.msg);
        }
        if !self.liveness_checked {
            self.check_liveness();
        }
    }

    fn check_liveness(&mut self) {
        self.liveness_checked = true;
        for i in 0..self.shells.len() {
            let st = self.saga.state(&self.shells[i].live);
            if !st.is_finished() && st != PurchaseState::NeedsAttention {
                self.violate(i, "liveness", format!("still {} after faults stopped + 30 days", st.as_str()));
            }
        }
    }

    fn violate(&mut self, i: usize, invariant: &'static str, detail: String) {
        let s = &self.shells[i].live;
        self.violations.push(Violation {
            purchase_id: s.order.purchase_id.clone(),
            invariant,
            detail,
            state_json: serde_json::to_string_pretty(s).unwrap_or_default(),
        });
    }

    fn deliver(&mut self, i: u32, msg: Msg) {
        let idx = i as usize;
        let now = Timestamp(self.now);
        if let Msg::Lapse(pi) = &msg {
            return self.lapse(pi.clone());
        }
        let input = match msg.clone() {
            Msg::Start => {
                let s = &self.shells[idx];
                let req = OrderRequest {
                    purchase_id: s.live.order.purchase_id.clone(),
                    listing_id: s.live.order.listing_id.clone(),
                    units: s.live.order.units,
                    buyer_id: s.live.order.buyer_id.clone(),
                    seller_account: s.live.order.seller_account.clone(),
                    total: s.live.order.total,
                };
                let seed = self.rng.next();
                match self.saga.start(req, now, seed) {
                    Ok((p, tr)) => {
                        self.transitions += 1;
                        self.shells[idx].live = p;
                        self.after(idx, tr);
                    }
                    Err(e) => self.violate(idx, "start", e.to_string()),
                }
                return;
            }
            Msg::Alarm(t) => {
                if self.shells[idx].alarm != Some(t) {
                    return; // superseded alarm
                }
                self.shells[idx].alarm = None;
                PurchaseInput::Timer
            }
            Msg::Result { effect, result } => match result {
                Ok(output) => PurchaseInput::EffectSucceeded { effect, output },
                Err((retryable, error)) => PurchaseInput::EffectFailed { effect, retryable, error },
            },
            Msg::Webhook(e) => PurchaseInput::Stripe(e),
            Msg::Buyer(c) => PurchaseInput::Buyer(c),
            Msg::Operator(c) => PurchaseInput::Operator(c),
            Msg::Lapse(_) => return,
        };
        // Crash before the transition is persisted: it is lost; senders retry.
        if self.faults() && self.rng.chance(10) {
            self.crashes += 1;
            self.restart(idx);
            match msg {
                Msg::Result { .. } => {} // the answer is lost: the engine times out
                Msg::Alarm(t) => {
                    self.shells[idx].alarm = Some(t);
                    self.schedule(self.now + SEC, i, Msg::Alarm(t));
                }
                other => {
                    let d = self.rng.range(SEC, 10 * MIN);
                    self.schedule(self.now + d, i, other);
                }
            }
            return;
        }
        let is_command = matches!(input, PurchaseInput::Buyer(_) | PurchaseInput::Operator(_));
        let res = self.saga.handle(&mut self.shells[idx].live, now, input);
        match res {
            Ok(tr) => {
                self.transitions += 1;
                self.after(idx, tr);
            }
            Err(e) if is_command && e.http_status() == 409 => {
                self.rejected += 1;
                // Rejections leave the state untouched.
                self.restore_alarm(idx);
            }
            Err(e) => self.violate(idx, "no_rejection_of_shell_inputs", e.to_string()),
        }
    }

    fn restore_alarm(&mut self, idx: usize) {
        let wake = self.saga.poll_timeout(&self.shells[idx].live);
        self.set_alarm(idx, wake);
    }

    fn set_alarm(&mut self, idx: usize, wake: Option<Timestamp>) {
        if self.shells[idx].alarm != wake {
            self.shells[idx].alarm = wake;
            if let Some(t) = wake {
                let at = t.0.max(self.now);
                self.schedule(at, idx as u32, Msg::Alarm(t));
            }
        }
    }

    /// Reloads the last persisted state through JSON, as a fresh isolate would,
    /// and re-performs what was in flight.
    fn restart(&mut self, idx: usize) {
        let json = serde_json::to_string(&self.shells[idx].persisted).unwrap_or_default();
        match self.saga.load(&json) {
            Ok(p) => self.shells[idx].live = p,
            Err(e) => return self.violate(idx, "state_round_trip", e.to_string()),
        }
        if self.shells[idx].live != self.shells[idx].persisted {
            self.violate(idx, "state_round_trip", "reloaded state differs".into());
        }
        self.shells[idx].alarm = None;
        match self.saga.handle(&mut self.shells[idx].live, Timestamp(self.now), PurchaseInput::Resume) {
            Ok(tr) => {
                self.transitions += 1;
                self.shells[idx].persisted = self.shells[idx].live.clone();
                self.set_alarm(idx, tr.wake_at);
                for e in tr.effects {
                    self.record_issue(idx, &e);
                    self.perform(idx, e);
                }
            }
            Err(e) => self.violate(idx, "no_rejection_of_shell_inputs", e.to_string()),
        }
    }

    fn after(&mut self, idx: usize, tr: PurchaseTransition) {
        // Persist state + outbox before performing anything.
        self.shells[idx].persisted = self.shells[idx].live.clone();
        self.set_alarm(idx, tr.wake_at);
        let n = tr.effects.len();
        let crash_after =
            if self.faults() && n > 0 && self.rng.chance(15) { Some(self.rng.below(n as u64) as usize) } else { None };
        for (k, e) in tr.effects.into_iter().enumerate() {
            if crash_after == Some(k) {
                self.crashes += 1;
                self.restart(idx);
                break;
            }
            self.record_issue(idx, &e);
            self.perform(idx, e);
        }
        self.observe(idx);
    }

    fn record_issue(&mut self, idx: usize, e: &PurchaseEffect) {
        let step = e.id.step as usize;
        match e.id.action {
            ActionKind::Forward => {
                if step < 6 {
                    self.shells[idx].forward_issued[step] = true;
                }
            }
            ActionKind::Compensation => {
                let s = &mut self.shells[idx];
                if !s.compensations.contains(&e.id.step) {
                    s.compensations.push(e.id.step);
                    if step >= 6 || !s.forward_issued[step] {
                        self.violate(
                            idx,
                            "compensate_only_completed",
                            format!("compensation of step {step} never performed"),
                        );
                    }
                }
            }
        }
        if step == step_index::CAPTURE && e.id.action == ActionKind::Forward {
            let confirm = &self.shells[idx].live.saga.steps()[step_index::CONFIRM];
            if confirm.succeeded_at.is_none() && e.id.attempt == 1 {
                self.early_captures += 1;
            }
        }
    }

    /// Reacts like buyers and operators would to the new state.
    fn observe(&mut self, idx: usize) {
        let st = self.saga.state(&self.shells[idx].live);
        let prev = self.shells[idx].last_state;
        if st == prev {
            return;
        }
        self.shells[idx].last_state = st;
        let i = idx as u32;
        match st {
            PurchaseState::AwaitingDelivery if prev != PurchaseState::Disputed => {
                let r = self.rng.below(100);
                if r < 55 {
                    let d = self.rng.range(HOUR, 60 * HOUR);
                    let cmd = BuyerCommand::ConfirmDelivery { request_id: format!("confirm-{idx}") };
                    self.schedule(self.now + d, i, Msg::Buyer(cmd.clone()));
                    if self.rng.chance(200) {
                        let d2 = self.rng.range(0, 10 * MIN);
                        self.schedule(self.now + d + d2, i, Msg::Buyer(cmd));
                    }
                } else if r < 75 {
                    let d = self.rng.range(HOUR, 48 * HOUR);
                    self.schedule(
                        self.now + d,
                        i,
                        Msg::Buyer(BuyerCommand::Dispute { request_id: format!("dispute-{idx}") }),
                    );
                }
            }
            PurchaseState::Disputed => {
                let d = self.rng.range(HOUR, 9 * DAY);
                let outcome = if self.rng.chance(500) { DisputeOutcome::Release } else { DisputeOutcome::Refund };
                self.schedule(self.now + d, i, Msg::Operator(PurchaseOperatorCommand::ResolveDispute { outcome }));
            }
            PurchaseState::NeedsAttention => {
                self.attention_episodes += 1;
                if self.shells[idx].operator_retries < 20 {
                    self.shells[idx].operator_retries += 1;
                    let d = self.rng.range(10 * MIN, DAY);
                    self.schedule(self.now + d, i, Msg::Operator(PurchaseOperatorCommand::RetryNow));
                }
            }
            _ => {}
        }
    }

    fn reply(&mut self, idx: usize, effect: EffectId, result: CallResult) {
        let faults = self.faults();
        if faults && self.rng.chance(60) {
            return; // answer lost
        }
        let mut d = self.rng.range(5, 2 * SEC);
        if faults && self.rng.chance(30) {
            d = self.rng.range(31 * SEC, 5 * MIN); // after the timeout
        }
        self.schedule(self.now + d, idx as u32, Msg::Result { effect, result: result.clone() });
        if faults && self.rng.chance(30) {
            let d2 = self.rng.range(0, 10 * MIN);
            self.schedule(self.now + d + d2, idx as u32, Msg::Result { effect, result });
        }
    }

    fn webhook(&mut self, idx: usize, kind: StripeEventKind, object_id: &str) {
        self.next_id += 1;
        let ev = StripeEvent { id: format!("evt_{}", self.next_id), kind, object_id: Some(object_id.to_string()) };
        let faults = self.faults();
        // May arrive before the HTTP answer, after it, or much later.
        let mut d = self.rng.range(0, 3 * SEC);
        if faults && self.rng.chance(50) {
            d = self.rng.range(MIN, 6 * HOUR);
        }
        self.schedule(self.now + d, idx as u32, Msg::Webhook(ev.clone()));
        let copies = if faults && self.rng.chance(100) { 2 } else { 0 };
        for _ in 0..copies {
            let d2 = self.rng.range(0, HOUR);
            self.schedule(self.now + d + d2, idx as u32, Msg::Webhook(ev.clone()));
        }
    }

    fn perform(&mut self, idx: usize, e: PurchaseEffect) {
        let faults = self.faults();
        let pid = self.shells[idx].live.order.purchase_id.clone();
        let expected = expected_key(&pid, &e.call);
        if e.idempotency_key != expected {
            self.violate(idx, "stable_keys", format!("{} != {}", e.idempotency_key, expected));
        }
        // Transient failure before the provider did anything.
        if faults && self.rng.chance(80) {
            let effect = e.id;
            return self.reply(idx, effect, Err((true, "503 service unavailable".into())));
        }
        // The request is lost on the way: nothing happens, no answer.
        if faults && self.rng.chance(30) {
            return;
        }
        let result = match self.cache.get(&e.idempotency_key) {
            Some(r) => r.clone(),
            None => {
                let r = self.execute(idx, &e);
                *self.executions.entry(e.idempotency_key.clone()).or_default() += 1;
                if r.as_ref().err().is_none_or(|(retryable, _)| !retryable) {
                    self.cache.insert(e.idempotency_key.clone(), r.clone());
                }
                r
            }
        };
        self.reply(idx, e.id, result);
    }

    fn execute(&mut self, idx: usize, e: &PurchaseEffect) -> CallResult {
        let now = self.now;
        match &e.call {
            Call::ReserveListing { listing_id, units, purchase_id } => {
                let Some(l) = self.listing(listing_id) else { return Err((false, "no such listing".into())) };
                if l.listed - l.reserved - l.sold < *units {
                    return Err((false, "out_of_stock".into()));
                }
                l.reserved += units;
                l.holds.insert(purchase_id.clone(), *units);
                let bad = l.reserved + l.sold > l.listed;
                if bad {
                    self.violate(idx, "inventory", "reserved beyond listed".into());
                }
                Ok(None)
            }
            Call::ReleaseListing { listing_id, purchase_id, .. } => {
                let Some(l) = self.listing(listing_id) else { return Err((false, "no such listing".into())) };
                if let Some(u) = l.holds.remove(purchase_id) {
                    l.reserved -= u;
                }
                Ok(None)
            }
            Call::MarkListingSold { listing_id, purchase_id, .. } => {
                let Some(l) = self.listing(listing_id) else { return Err((false, "no such listing".into())) };
                match l.holds.remove(purchase_id) {
                    Some(u) => {
                        l.reserved -= u;
                        l.sold += u;
                        l.sold_to.insert(purchase_id.clone());
                        Ok(None)
                    }
                    None => Err((false, "not reserved".into())),
                }
            }
            Call::CreatePaymentIntent { amount_minor, .. } => {
                self.next_id += 1;
                let pi = format!("pi_{}", self.next_id);
                if self.rng.chance(50) {
                    self.webhook(idx, StripeEventKind::PaymentFailed, &pi);
                    return Err((false, "card_declined".into()));
                }
                let expires_at = now + self.saga.config().hold_lifetime.0;
                self.pis.insert(
                    pi.clone(),
                    Pi {
                        purchase: idx as u32,
                        amount: *amount_minor,
                        status: PiStatus::RequiresCapture,
                        captured: 0,
                        refunded: 0,
                        captures: 0,
                        expires_at,
                        lapsed_while: None,
                    },
                );
                self.pi_by_purchase.entry(idx as u32).or_default().push(pi.clone());
                self.schedule(expires_at, idx as u32, Msg::Lapse(pi.clone()));
                self.webhook(idx, StripeEventKind::AmountCapturableUpdated, &pi);
                Ok(Some(pi))
            }
            Call::CapturePaymentIntent { payment_intent, amount_minor } => {
                let Some(p) = self.pis.get_mut(payment_intent) else {
                    return Err((false, "no such payment_intent".into()));
                };
                if p.status == PiStatus::RequiresCapture && now >= p.expires_at {
                    return Err((false, "authorization expired".into()));
                }
                if p.status != PiStatus::RequiresCapture {
                    return Err((false, format!("cannot capture a {:?} payment_intent", p.status)));
                }
                p.status = PiStatus::Succeeded;
                p.captured += amount_minor;
                p.captures += 1;
                self.webhook(idx, StripeEventKind::Succeeded, &payment_intent.clone());
                Ok(Some(payment_intent.clone()))
            }
            Call::CancelPaymentIntent { payment_intent } => {
                let Some(p) = self.pis.get_mut(payment_intent) else {
                    return Err((false, "no such payment_intent".into()));
                };
                match p.status {
                    PiStatus::RequiresCapture => {
                        p.status = PiStatus::Canceled;
                        self.webhook(idx, StripeEventKind::Canceled, &payment_intent.clone());
                        Ok(None)
                    }
                    PiStatus::Canceled => Ok(None),
                    PiStatus::Succeeded => Err((false, "cannot cancel a captured payment_intent".into())),
                }
            }
            Call::RefundPaymentIntent { payment_intent, amount_minor } => {
                let Some(p) = self.pis.get_mut(payment_intent) else {
                    return Err((false, "no such payment_intent".into()));
                };
                if p.status != PiStatus::Succeeded || p.refunded + amount_minor > p.captured {
                    return Err((false, "refund exceeds captured amount".into()));
                }
                p.refunded += amount_minor;
                self.webhook(idx, StripeEventKind::ChargeRefunded, &payment_intent.clone());
                Ok(None)
            }
            Call::TransferToSeller { amount_minor, .. } => {
                if self.rng.chance(10) {
                    return Err((false, "destination account cannot receive transfers".into()));
                }
                self.next_id += 1;
                let tr = format!("tr_{}", self.next_id);
                self.shells[idx].paid_out.push(*amount_minor);
                self.webhook(idx, StripeEventKind::TransferCreated, &tr);
                Ok(Some(tr))
            }
        }
    }

    fn listing(&mut self, id: &str) -> Option<&mut Listing> {
        let n: usize = id.strip_prefix('l')?.parse().ok()?;
        self.listings.get_mut(n)
    }

    /// The provider lets an uncaptured authorization lapse.
    fn lapse(&mut self, pi: String) {
        let Some(p) = self.pis.get_mut(&pi) else { return };
        if p.status != PiStatus::RequiresCapture {
            return;
        }
        p.status = PiStatus::Canceled;
        let idx = p.purchase as usize;
        let st = self.saga.state(&self.shells[idx].live);
        p.lapsed_while = Some(st);
        // Lapsing is only acceptable while the saga is already undoing the hold
        // (or stuck with an operator): never while it still counts on it.
        if !matches!(st, PurchaseState::Compensating | PurchaseState::NeedsAttention) {
            self.violate(idx, "hold_never_lapses_silently", format!("hold {pi} lapsed while {}", st.as_str()));
        }
        self.webhook(idx, StripeEventKind::Canceled, &pi);
    }

    fn check(&mut self) {
        let repeated: Vec<(String, u32)> =
            self.executions.iter().filter(|(_, n)| **n > 1).map(|(k, n)| (k.clone(), *n)).collect();
        for (key, n) in repeated {
            {
                let idx = self.shells.iter().position(|s| key.starts_with(&format!("{}:", s.live.order.purchase_id)));
                let msg = format!("{key} executed {n} times");
                if let Some(i) = idx {
                    self.violate(i, "one_execution_per_key", msg);
                }
            }
        }
        for (l_idx, l) in self.listings.iter().enumerate() {
            let held: u32 = l.holds.values().sum();
            if held != l.reserved || l.reserved + l.sold > l.listed {
                let d = format!(
                    "listing l{l_idx}: listed {} reserved {} held {held} sold {}",
                    l.listed, l.reserved, l.sold
                );
                self.violations.push(Violation {
                    purchase_id: String::new(),
                    invariant: "inventory",
                    detail: d,
                    state_json: String::new(),
                });
            }
        }
        for idx in 0..self.shells.len() {
            self.check_saga(idx);
        }
    }

    fn check_saga(&mut self, idx: usize) {
        let p = &self.shells[idx].live;
        let st = self.saga.state(p);
        let order = p.order.clone();
        let pis: Vec<&Pi> = self
            .pi_by_purchase
            .get(&(idx as u32))
            .map(|v| v.iter().filter_map(|k| self.pis.get(k)).collect())
            .unwrap_or_default();
        let mut bad: Vec<(&'static str, String)> = Vec::new();
        if pis.len() > 1 {
            bad.push(("one_operation_per_key", format!("{} payment intents", pis.len())));
        }
        for pi in &pis {
            if pi.captures > 1 {
                bad.push(("money", "captured twice".into()));
            }
            if pi.refunded > pi.captured {
                bad.push(("money", "refund exceeds capture".into()));
            }
        }
        let paid = &self.shells[idx].paid_out;
        if paid.len() > 1 {
            bad.push(("money", "seller paid twice".into()));
        }
        let payout = order.payout.to_minor().unwrap_or(-1);
        let total = order.total.to_minor().unwrap_or(-1);
        let fee = order.fee.to_minor().unwrap_or(-1);
        if fee + payout != total {
            bad.push(("money", "fee + payout != total".into()));
        }
        let seller_paid = paid.first() == Some(&payout);
        let buyer_whole = pis.iter().all(|pi| match pi.status {
            PiStatus::RequiresCapture => false,
            PiStatus::Canceled => pi.captured == 0,
            PiStatus::Succeeded => pi.refunded == pi.captured,
        });
        let listing = self.listings.get(order.listing_id[1..].parse::<usize>().unwrap_or(usize::MAX));
        let holds = listing.is_some_and(|l| l.holds.contains_key(&order.purchase_id));
        let sold = listing.is_some_and(|l| l.sold_to.contains(&order.purchase_id));
        if st.is_finished() {
            if seller_paid == buyer_whole {
                bad.push(("money", format!("{}: seller_paid={seller_paid} buyer_refunded={buyer_whole}", st.as_str())));
            }
            if holds {
                bad.push(("inventory", format!("{}: units still reserved", st.as_str())));
            }
            let want_sold = st == PurchaseState::Completed;
            if sold != want_sold || (want_sold && !seller_paid) {
                bad.push(("inventory", format!("{}: sold={sold}", st.as_str())));
            }
            if st == PurchaseState::Completed
                && pis.iter().any(|pi| pi.amount != total || pi.captured != total || pi.refunded != 0)
            {
                bad.push(("money", "completed without a full capture".into()));
            }
        }
        let comps = &self.shells[idx].compensations;
        if comps.windows(2).any(|w| w[0] <= w[1]) {
            bad.push(("compensation_order", format!("compensations ran in order {comps:?}")));
        }
        for (inv, d) in bad {
            self.violate(idx, inv, d);
        }
    }
}

mod step_index {
    pub const CONFIRM: usize = 2;
    pub const CAPTURE: usize = 3;
}

/// The key a correct engine must use for each call.
fn expected_key(pid: &str, call: &Call) -> String {
    let (step, action) = match call {
        Call::ReserveListing { .. } => ("reserve_listing", "reserve"),
        Call::ReleaseListing { .. } => ("reserve_listing", "release"),
        Call::CreatePaymentIntent { .. } => ("hold_funds", "authorize"),
        Call::CancelPaymentIntent { .. } => ("hold_funds", "void"),
        Call::CapturePaymentIntent { .. } => ("capture_funds", "capture"),
        Call::RefundPaymentIntent { .. } => ("capture_funds", "refund"),
        Call::TransferToSeller { .. } => ("release_funds", "transfer"),
        Call::MarkListingSold { .. } => ("mark_sold", "mark_sold"),
    };
    format!("{pid}:{step}:{action}")
}
