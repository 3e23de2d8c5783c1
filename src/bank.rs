//! A Jepsen-bank-style workload and checker over the public HTTP API only (issue 15).
//!
//! [`run_workload`] drives deposits and purchases against every region from concurrent
//! workers, each with a seeded RNG: every operation has an `Idempotency-Key`, is retried on
//! a transport error or a 5xx (same key, same body; the retry may go to another region), and
//! a share of operations is sent on purpose to two regions with the same key (cross-region
//! duplicates). It records every attempt and its answer. [`check`] then reads every region
//! (status, each account's history and balances, the compensation feed) and checks:
//!
//! - `convergence`: the same version vector, event and compensation counts, histories,
//!   balances and feed on every region, everything settled;
//! - `no_lost_ack`: every event id a region acknowledged (201) is in its account's history,
//!   with the body that was sent;
//! - `no_phantom`: every client event in a history was sent by the workload (its key and
//!   body match an operation);
//! - `idempotency`: per key, exactly one standing (not reversed) event when it was
//!   acknowledged, at most one otherwise;
//! - `compensations_exactly_once`: feed ids unique, every cause present, at most one fee and
//!   one reversal per cause, every reversed event's reversal in the feed, the feed equal to
//!   the compensations in the histories;
//! - `conservation`: each account's balance equals the signed sum of its history (client
//!   events plus compensation deltas), and provisional equals settled;
//! - `no_5xx_outside_downtime`: every 5xx came from a region within one of its own
//!   downtime windows (the faults that took it down, recorded by the caller:
//!   [`check_with_downtime`]); a partition, latency or a peer's crash is no excuse.
//!
//! The result is a [`BankResult`] (serialisable to JSON) with a one-line [`BankResult::summary`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use crate::cluster::{Client, ClusterError};

/// Timeout of one workload request (short: a paused or partitioned region must not stall
/// a worker for the harness's 30 s).
pub const OP_TIMEOUT_MS: u64 = 2_000;
/// Attempts per operation (the first included).
pub const OP_ATTEMPTS_MAX: usize = 3;
/// Pause between a failed attempt and its retry.
pub const RETRY_BACKOFF_MS: u64 = 100;
/// Initial deposit per account, in cents.
pub const INITIAL_CENTS: i64 = 10_000;
/// Largest purchase or deposit of the workload, in whole USD.
pub const AMOUNT_MAX_USD: i64 = 40;

/// What can go wrong running the workload or the checker (a failed check is not an error:
/// it is in the result).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BankError {
    /// The harness failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A region answered something the checker cannot read.
    #[error("unreadable answer: {0}")]
    Unreadable(String),
    /// Bad workload parameters.
    #[error("workload: {0}")]
    Args(String),
}

/// Workload parameters.
#[derive(Debug, Clone)]
pub struct Workload {
    /// RNG seed.
    pub seed: u64,
    /// Accounts `bank-0..n`.
    pub accounts: usize,
    /// Concurrent workers.
    pub workers: usize,
    /// How long the workers run.
    pub duration: Duration,
    /// Share of operations (percent) also sent to a second region with the same key.
    pub duplicate_percent: u32,
    /// Pause between two operations of one worker.
    pub think: Duration,
    /// The run's time origin: attempts record their times from it, and so do the fault
    /// windows ([`Downtime`]) the caller passes to [`check_with_downtime`].
    pub t0: Instant,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            seed: 1,
            accounts: 6,
            workers: 6,
            duration: Duration::from_secs(10),
            duplicate_percent: 20,
            think: Duration::from_millis(20),
            t0: Instant::now(),
        }
    }
}

/// One attempt of an operation.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// Region index.
    pub region: usize,
    /// HTTP status (0: no answer).
    pub status: u16,
    /// The event id of a 201.
    pub id: Option<String>,
    /// `Idempotent-Replayed: true`.
    pub replayed: bool,
    /// Transport error.
    pub error: Option<String>,
    /// Sent at, ms after [`Workload::t0`].
    pub at_ms: u64,
    /// Answered (or given up) at, ms after [`Workload::t0`].
    pub end_ms: u64,
}

/// A window in which region `region` was down on purpose (killed, paused, its disk full,
/// restoring…): a 5xx from it is allowed only in such a window. Times in ms after
/// [`Workload::t0`]; a window still open ends at `u64::MAX`.
#[derive(Debug, Clone, Serialize)]
pub struct Downtime {
    /// Region index.
    pub region: usize,
    /// Start, ms.
    pub from_ms: u64,
    /// End, ms.
    pub to_ms: u64,
    /// The fault.
    pub what: String,
}

fn ms_since(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One operation: a transaction with its key, and every attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    /// Idempotency key.
    pub key: String,
    /// Account.
    pub account: String,
    /// `deposit` or `purchase`.
    pub kind: String,
    /// Amount in cents.
    pub cents: i64,
    /// Attempts in order.
    pub attempts: Vec<Attempt>,
}

impl Op {
    /// Some attempt got 201.
    pub fn acked(&self) -> bool {
        self.attempts.iter().any(|a| a.status == 201)
    }

    /// Every answered attempt was 422 (a definite refusal).
    pub fn refused(&self) -> bool {
        !self.acked() && self.attempts.iter().any(|a| a.status == 422)
    }
}

/// What the workload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct History {
    /// Every operation.
    pub ops: Vec<Op>,
    /// Accounts used.
    pub accounts: Vec<String>,
}

fn account_name(k: usize) -> String {
    format!("bank-{k}")
}

fn usd(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.unsigned_abs();
    format!("{sign}{}.{:02}", c / 100, c % 100)
}

/// Sends one attempt of `op` to `client` (region `region`).
async fn attempt(client: &Client, region: usize, op: &Op, t0: Instant) -> Attempt {
    let body = json!({"type": op.kind, "amount": usd(op.cents), "currency": "USD"});
    let url = format!("{}/v1/accounts/{}/transactions", client.url(), op.account);
    let rb = client
        .http()
        .post(url)
        .bearer_auth(client.token())
        .header("content-type", "application/json")
        .header("Idempotency-Key", &op.key)
        .timeout(Duration::from_millis(OP_TIMEOUT_MS))
        .body(body.to_string());
    let mut a = Attempt {
        region,
        status: 0,
        id: None,
        replayed: false,
        error: None,
        at_ms: ms_since(t0),
        end_ms: 0,
    };
    match rb.send().await {
        Err(e) => a.error = Some(e.to_string()),
        Ok(r) => {
            a.status = r.status().as_u16();
            a.replayed = r
                .headers()
                .get("Idempotent-Replayed")
                .is_some_and(|v| v == "true");
            match r.text().await {
                Ok(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    a.id = v["id"].as_str().map(str::to_string);
                }
                Err(e) => a.error = Some(e.to_string()),
            }
        }
    }
    a.end_ms = ms_since(t0);
    a
}

/// Attempts `op` on `first` until an answer below 500 (retries go round the regions).
async fn drive(clients: &[Client], first: usize, op: &mut Op, t0: Instant) {
    let n = clients.len();
    for k in 0..OP_ATTEMPTS_MAX {
        let r = (first + k) % n;
        let Some(c) = clients.get(r) else { return };
        let a = attempt(c, r, op, t0).await;
        let done = a.status != 0 && a.status < 500;
        op.attempts.push(a);
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS)).await;
    }
}

/// Deposits [`INITIAL_CENTS`] into every account, then runs the workers for
/// `w.duration`. `clients[i]` is region `i`'s client with the client token.
pub async fn run_workload(clients: Vec<Client>, w: Workload) -> Result<History, BankError> {
    if clients.is_empty() || w.accounts == 0 || w.workers == 0 {
        return Err(BankError::Args(
            "needs regions, accounts and workers".into(),
        ));
    }
    let n = clients.len();
    let accounts: Vec<String> = (0..w.accounts).map(account_name).collect();
    let mut ops = Vec::new();
    for (k, a) in accounts.iter().enumerate() {
        let mut op = Op {
            key: format!("init-{k}"),
            account: a.clone(),
            kind: "deposit".into(),
            cents: INITIAL_CENTS,
            attempts: Vec::new(),
        };
        drive(&clients, k % n, &mut op, w.t0).await;
        ops.push(op);
    }
    let deadline = Instant::now() + w.duration;
    let workers = (0..w.workers).map(|wk| {
        let clients = clients.clone();
        let accounts = accounts.clone();
        let w = w.clone();
        async move {
            let mut rng = StdRng::seed_from_u64(w.seed.wrapping_mul(1000).wrapping_add(wk as u64));
            let mut mine = Vec::new();
            let home = wk % n;
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let acct = accounts
                    .get(rng.gen_range(0..accounts.len()))
                    .cloned()
                    .unwrap_or_default();
                let kind = if rng.gen_bool(0.3) {
                    "deposit"
                } else {
                    "purchase"
                };
                let mut op = Op {
                    key: format!("w{wk}-{seq}"),
                    account: acct,
                    kind: kind.into(),
                    cents: rng.gen_range(1..=AMOUNT_MAX_USD) * 100,
                    attempts: Vec::new(),
                };
                drive(&clients, home, &mut op, w.t0).await;
                if n > 1 && rng.gen_range(0..100) < w.duplicate_percent {
                    // The same key and body at another region: a client that failed over.
                    let other = (home + rng.gen_range(1..n)) % n;
                    if let Some(c) = clients.get(other) {
                        let a = attempt(c, other, &op, w.t0).await;
                        op.attempts.push(a);
                    }
                }
                mine.push(op);
                tokio::time::sleep(w.think).await;
            }
            mine
        }
    });
    for mine in futures::future::join_all(workers).await {
        ops.extend(mine);
    }
    Ok(History { ops, accounts })
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    /// Check name.
    pub name: &'static str,
    /// Passed.
    pub ok: bool,
    /// The first problems found (empty when it passed).
    pub problems: Vec<String>,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct BankResult {
    /// All checks passed.
    pub valid: bool,
    /// Operations sent.
    pub ops: usize,
    /// Acknowledged (some attempt 201).
    pub acked: usize,
    /// Definitely refused (422).
    pub refused: usize,
    /// No definite answer.
    pub indeterminate: usize,
    /// Attempts in all.
    pub attempts: usize,
    /// Attempts answered 5xx.
    pub http_5xx: usize,
    /// Attempts without an answer (transport error or time-out).
    pub no_answer: usize,
    /// Operations sent to two regions with one key.
    pub duplicates_sent: usize,
    /// Client events in the converged histories.
    pub events: usize,
    /// Of which reversed.
    pub reversed: usize,
    /// Feed entries by type.
    pub compensations: BTreeMap<String, usize>,
    /// Sum of the settled balances, in cents.
    pub total_cents: i64,
    /// Checks.
    pub checks: Vec<CheckOutcome>,
    /// Faults the caller injected (free text, set by the caller).
    pub faults: Vec<String>,
}

impl BankResult {
    /// One line: verdict, counts, failed checks.
    pub fn summary(&self) -> String {
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect();
        let comp: Vec<String> = self
            .compensations
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "bank {}: ops={} acked={} refused={} indeterminate={} attempts={} 5xx={} no_answer={} dup_sent={} events={} reversed={} compensations[{}] total={} faults={}{}",
            if self.valid { "VALID" } else { "INVALID" },
            self.ops,
            self.acked,
            self.refused,
            self.indeterminate,
            self.attempts,
            self.http_5xx,
            self.no_answer,
            self.duplicates_sent,
            self.events,
            self.reversed,
            comp.join(" "),
            usd(self.total_cents),
            self.faults.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(" FAILED: {}", failed.join(","))
            }
        )
    }
}

/// Parses a USD decimal string (`"-12.30"`) to cents.
pub fn parse_cents(s: &str) -> Result<i64, BankError> {
    let bad = || BankError::Unreadable(format!("amount {s:?}"));
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, "00"));
    if frac.len() != 2 {
        return Err(bad());
    }
    let w: i64 = whole.parse().map_err(|_| bad())?;
    let f: i64 = frac.parse().map_err(|_| bad())?;
    let v = w
        .checked_mul(100)
        .and_then(|x| x.checked_add(f))
        .ok_or_else(bad)?;
    Ok(if neg { -v } else { v })
}

fn str_of<'a>(v: &'a Value, field: &str) -> Result<&'a str, BankError> {
    v[field]
        .as_str()
        .ok_or_else(|| BankError::Unreadable(format!("no string `{field}` in {v}")))
}

/// What one region shows at the end.
#[derive(Debug, Clone, PartialEq)]
struct RegionView {
    vv: Value,
    events: Value,
    compensations: Value,
    histories: BTreeMap<String, Vec<Value>>,
    balances: BTreeMap<String, Value>,
    feed: Vec<Value>,
}

async fn view(c: &Client, accounts: &[String]) -> Result<RegionView, BankError> {
    let st = c.status().await?;
    let mut histories = BTreeMap::new();
    let mut balances = BTreeMap::new();
    for a in accounts {
        histories.insert(a.clone(), c.history(a).await?);
        balances.insert(
            a.clone(),
            c.get_ok(&format!("/v1/accounts/{a}/balances")).await?,
        );
    }
    Ok(RegionView {
        vv: st["version_vector"].clone(),
        events: st["events"].clone(),
        compensations: st["compensations"].clone(),
        histories,
        balances,
        feed: c.feed().await?,
    })
}

fn all_settled(v: &RegionView) -> bool {
    v.histories.values().flatten().all(|e| e["settled"] == true)
}

/// Waits up to `timeout` for every region to show the same settled state, then checks
/// `h` against it. `clients[i]` is region `i`'s client. No region was down on purpose: any
/// 5xx fails `no_5xx_outside_downtime`.
pub async fn check(
    clients: &[Client],
    h: &History,
    timeout: Duration,
) -> Result<BankResult, BankError> {
    check_with_downtime(clients, h, timeout, &[]).await
}

/// [`check`], where a 5xx from a region is allowed only within one of its `downtime`
/// windows (the faults that took it down).
pub async fn check_with_downtime(
    clients: &[Client],
    h: &History,
    timeout: Duration,
    downtime: &[Downtime],
) -> Result<BankResult, BankError> {
    let deadline = Instant::now() + timeout;
    let mut views;
    loop {
        views = Vec::new();
        for c in clients {
            views.push(view(c, &h.accounts).await?);
        }
        let same = views.windows(2).all(|w| w[0] == w[1]);
        if (same && views.iter().all(all_settled)) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    evaluate(&views, h, downtime)
}

/// The checks over what every region showed at the end.
fn evaluate(
    views: &[RegionView],
    h: &History,
    downtime: &[Downtime],
) -> Result<BankResult, BankError> {
    let mut checks = Vec::new();
    let first = views
        .first()
        .cloned()
        .ok_or_else(|| BankError::Args("no regions".into()))?;

    // convergence
    let mut p = Vec::new();
    for (i, v) in views.iter().enumerate().skip(1) {
        if v.vv != first.vv || v.events != first.events || v.compensations != first.compensations {
            p.push(format!(
                "region #{i}: vv {} events {} compensations {} vs #0: vv {} events {} compensations {}",
                v.vv, v.events, v.compensations, first.vv, first.events, first.compensations
            ));
        }
        if v.histories != first.histories {
            p.push(format!("region #{i}: histories differ from #0"));
        }
        if v.balances != first.balances {
            p.push(format!("region #{i}: balances differ from #0"));
        }
        if v.feed != first.feed {
            p.push(format!("region #{i}: compensation feed differs from #0"));
        }
    }
    for (i, v) in views.iter().enumerate() {
        if !all_settled(v) {
            p.push(format!("region #{i}: unsettled events"));
        }
    }
    checks.push(outcome("convergence", p));

    // Index the converged state (region 0).
    let mut by_id: BTreeMap<String, (String, Value)> = BTreeMap::new();
    let mut client_events = 0usize;
    let mut reversed = 0usize;
    for (a, list) in &first.histories {
        for e in list {
            let id = str_of(e, "id")?.to_string();
            if !is_compensation(str_of(e, "type")?) {
                client_events += 1;
                if e["status"] == "reversed" {
                    reversed += 1;
                }
            }
            by_id.insert(id, (a.clone(), e.clone()));
        }
    }
    let ops_by_key: BTreeMap<(&str, &str), &Op> = h
        .ops
        .iter()
        .map(|o| ((o.account.as_str(), o.key.as_str()), o))
        .collect();

    // no_lost_ack
    let mut p = Vec::new();
    for o in &h.ops {
        for a in o.attempts.iter().filter(|a| a.status == 201) {
            let Some(id) = &a.id else {
                p.push(format!("{}: a 201 without an id", o.key));
                continue;
            };
            match by_id.get(id) {
                None => p.push(format!(
                    "{} acknowledged as {id} by #{}: lost",
                    o.key, a.region
                )),
                Some((acct, e)) => {
                    if *acct != o.account || !same_body(e, o)? {
                        p.push(format!("{} acknowledged as {id}: stored as {e}", o.key));
                    }
                }
            }
        }
    }
    checks.push(outcome("no_lost_ack", p));

    // no_phantom and idempotency
    let mut phantom = Vec::new();
    let mut standing: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (id, (acct, e)) in &by_id {
        if is_compensation(str_of(e, "type")?) {
            continue;
        }
        let key = e["idempotency_key"].as_str().unwrap_or("");
        match ops_by_key.get(&(acct.as_str(), key)) {
            Some(o) if same_body(e, o)? => {
                let n = standing.entry((acct.clone(), key.to_string())).or_default();
                if e["status"] != "reversed" {
                    *n += 1;
                }
            }
            _ => phantom.push(format!("{id} on {acct} (key {key:?}) was never sent: {e}")),
        }
    }
    checks.push(outcome("no_phantom", phantom));
    let mut p = Vec::new();
    for o in &h.ops {
        let n = standing
            .get(&(o.account.clone(), o.key.clone()))
            .copied()
            .unwrap_or(0);
        if n > 1 || (o.acked() && n != 1) {
            p.push(format!(
                "{} ({}acknowledged): {n} standing events",
                o.key,
                if o.acked() { "" } else { "not " }
            ));
        }
    }
    checks.push(outcome("idempotency", p));

    // compensations_exactly_once
    let mut p = Vec::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut per_cause: BTreeSet<(String, String)> = BTreeSet::new();
    for c in &first.feed {
        let id = str_of(c, "id")?.to_string();
        let ty = str_of(c, "type")?.to_string();
        *kinds.entry(ty.clone()).or_default() += 1;
        if !seen.insert(id.clone()) {
            p.push(format!("{id} twice in the feed"));
        }
        let cause = c["cause"].as_str().unwrap_or("").to_string();
        if !by_id.contains_key(&cause) {
            p.push(format!("{id}: cause {cause:?} not in any history"));
        }
        if !per_cause.insert((ty.clone(), cause.clone())) {
            p.push(format!("two {ty} for {cause}"));
        }
        if !by_id.contains_key(&id) {
            p.push(format!("{id}: in the feed, not in its account's history"));
        }
    }
    for (id, (_, e)) in &by_id {
        let ty = str_of(e, "type")?;
        if is_compensation(ty) && !seen.contains(id) {
            p.push(format!("{id}: in a history, not in the feed"));
        }
        if e["status"] == "reversed" {
            let r = e["reversed_by"].as_str().unwrap_or("");
            if !seen.contains(r) {
                p.push(format!("{id} reversed by {r:?}, which is not in the feed"));
            }
        }
    }
    checks.push(outcome("compensations_exactly_once", p));

    // conservation
    let mut p = Vec::new();
    let mut total = 0i64;
    for (a, list) in &first.histories {
        let mut sum = 0i64;
        for e in list {
            let ty = str_of(e, "type")?;
            sum += if is_compensation(ty) {
                match e["delta"].as_str() {
                    Some(d) => parse_cents(d)?,
                    None => 0,
                }
            } else {
                let amt = parse_cents(str_of(e, "amount")?)?;
                if matches!(ty, "purchase" | "withdrawal") {
                    -amt
                } else {
                    amt
                }
            };
        }
        let b = first
            .balances
            .get(a)
            .and_then(|v| v["balances"].as_array())
            .and_then(|l| l.iter().find(|b| b["currency"] == "USD"))
            .cloned()
            .unwrap_or(Value::Null);
        let (prov, settled) = match (b["provisional"].as_str(), b["settled"].as_str()) {
            (Some(x), Some(y)) => (parse_cents(x)?, parse_cents(y)?),
            _ if list.is_empty() => (0, 0),
            _ => {
                p.push(format!("{a}: no USD balance"));
                continue;
            }
        };
        if settled != sum || prov != settled {
            p.push(format!(
                "{a}: history sums to {}, balance provisional {} settled {}",
                usd(sum),
                usd(prov),
                usd(settled)
            ));
        }
        total += settled;
    }
    checks.push(outcome("conservation", p));

    // no_5xx_outside_downtime: a region answers 5xx only while a fault has it down.
    let mut p = Vec::new();
    for o in &h.ops {
        for a in o.attempts.iter().filter(|a| a.status >= 500) {
            let excused = downtime
                .iter()
                .any(|d| d.region == a.region && a.at_ms <= d.to_ms && a.end_ms >= d.from_ms);
            if !excused {
                p.push(format!(
                    "{}: HTTP {} from #{} at {}-{} ms, outside its downtime",
                    o.key, a.status, a.region, a.at_ms, a.end_ms
                ));
            }
        }
    }
    checks.push(outcome("no_5xx_outside_downtime", p));

    let attempts = h.ops.iter().map(|o| o.attempts.len()).sum();
    let all = || h.ops.iter().flat_map(|o| o.attempts.iter());
    Ok(BankResult {
        valid: checks.iter().all(|c| c.ok),
        ops: h.ops.len(),
        acked: h.ops.iter().filter(|o| o.acked()).count(),
        refused: h.ops.iter().filter(|o| o.refused()).count(),
        indeterminate: h.ops.iter().filter(|o| !o.acked() && !o.refused()).count(),
        attempts,
        http_5xx: all().filter(|a| a.status >= 500).count(),
        no_answer: all().filter(|a| a.status == 0).count(),
        duplicates_sent: h
            .ops
            .iter()
            .filter(|o| {
                o.attempts
                    .iter()
                    .map(|a| a.region)
                    .collect::<BTreeSet<_>>()
                    .len()
                    > 1
            })
            .count(),
        events: client_events,
        reversed,
        compensations: kinds,
        total_cents: total,
        checks,
        faults: Vec::new(),
    })
}

fn is_compensation(ty: &str) -> bool {
    matches!(ty, "overdraft_fee" | "reversal" | "idempotency_conflict")
}

fn same_body(e: &Value, o: &Op) -> Result<bool, BankError> {
    Ok(str_of(e, "type")? == o.kind
        && e["currency"] == "USD"
        && parse_cents(str_of(e, "amount")?)? == o.cents)
}

/// Problems beyond this many are counted, not listed.
const PROBLEMS_LISTED_MAX: usize = 10;

fn outcome(name: &'static str, mut problems: Vec<String>) -> CheckOutcome {
    let n = problems.len();
    if n > PROBLEMS_LISTED_MAX {
        problems.truncate(PROBLEMS_LISTED_MAX);
        problems.push(format!("… {} more", n - PROBLEMS_LISTED_MAX));
    }
    CheckOutcome {
        name,
        ok: n == 0,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, kind: &str, cents: i64, acked_as: Option<&str>) -> Op {
        Op {
            key: key.into(),
            account: "a".into(),
            kind: kind.into(),
            cents,
            attempts: vec![Attempt {
                region: 0,
                status: if acked_as.is_some() { 201 } else { 0 },
                id: acked_as.map(str::to_string),
                replayed: false,
                error: None,
                at_ms: 100,
                end_ms: 200,
            }],
        }
    }

    fn ev(id: &str, kind: &str, amount: &str, key: &str) -> Value {
        json!({"id": id, "type": kind, "amount": amount, "currency": "USD",
               "settled": true, "status": "settled", "idempotency_key": key})
    }

    fn region(history: Vec<Value>, feed: Vec<Value>, balance: &str) -> RegionView {
        RegionView {
            vv: json!({"eu": history.len()}),
            events: json!(history.len()),
            compensations: json!(feed.len()),
            histories: [("a".to_string(), history)].into_iter().collect(),
            balances: [(
                "a".to_string(),
                json!({"balances": [{"currency": "USD", "provisional": balance, "settled": balance}]}),
            )]
            .into_iter()
            .collect(),
            feed,
        }
    }

    fn failed(r: &BankResult) -> Vec<&'static str> {
        r.checks.iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }

    fn good() -> (Vec<Value>, History) {
        let hist = vec![
            ev("eu:1", "deposit", "100.00", "k1"),
            ev("eu:2", "purchase", "30.00", "k2"),
        ];
        let h = History {
            ops: vec![
                op("k1", "deposit", 10_000, Some("eu:1")),
                op("k2", "purchase", 3_000, Some("eu:2")),
            ],
            accounts: vec!["a".into()],
        };
        (hist, h)
    }

    #[test]
    fn a_consistent_run_is_valid() {
        let (hist, h) = good();
        let v = region(hist, vec![], "70.00");
        let r = evaluate(&[v.clone(), v], &h, &[]).unwrap();
        assert!(r.valid, "{:?}", r.checks);
        assert_eq!((r.acked, r.events, r.total_cents), (2, 2, 7_000));
    }

    #[test]
    fn each_violation_is_named() {
        // A lost acknowledgement.
        let (mut hist, h) = good();
        hist.pop();
        let v = region(hist, vec![], "100.00");
        assert_eq!(
            failed(&evaluate(&[v], &h, &[]).unwrap()),
            ["no_lost_ack", "idempotency"]
        );
        // A phantom event.
        let (mut hist, h) = good();
        hist.push(ev("eu:3", "deposit", "5.00", "nobody"));
        let v = region(hist, vec![], "75.00");
        assert_eq!(failed(&evaluate(&[v], &h, &[]).unwrap()), ["no_phantom"]);
        // A duplicate that stands twice.
        let (mut hist, h) = good();
        hist.push(ev("us:1", "purchase", "30.00", "k2"));
        let v = region(hist, vec![], "40.00");
        assert_eq!(failed(&evaluate(&[v], &h, &[]).unwrap()), ["idempotency"]);
        // A balance that does not add up.
        let (hist, h) = good();
        let v = region(hist, vec![], "71.00");
        assert_eq!(failed(&evaluate(&[v], &h, &[]).unwrap()), ["conservation"]);
        // Regions that disagree.
        let (hist, h) = good();
        let v0 = region(hist.clone(), vec![], "70.00");
        let mut v1 = v0.clone();
        v1.events = json!(3);
        assert_eq!(
            failed(&evaluate(&[v0, v1], &h, &[]).unwrap()),
            ["convergence"]
        );
        // A fee twice in the feed.
        let (mut hist, h) = good();
        let fee = json!({"id": "fee:eu:2", "type": "overdraft_fee", "amount": "5.00",
            "delta": "-5.00", "currency": "USD", "cause": "eu:2", "settled": true});
        hist.push(fee.clone());
        let v = region(hist, vec![fee.clone(), fee], "65.00");
        assert_eq!(
            failed(&evaluate(&[v], &h, &[]).unwrap()),
            ["compensations_exactly_once"]
        );
    }

    #[test]
    fn a_5xx_outside_the_regions_downtime_fails() {
        let (hist, mut h) = good();
        if let Some(o) = h.ops.get_mut(1) {
            o.attempts.insert(
                0,
                Attempt {
                    region: 1,
                    status: 503,
                    id: None,
                    replayed: false,
                    error: None,
                    at_ms: 1_000,
                    end_ms: 1_010,
                },
            );
        }
        let v = region(hist, vec![], "70.00");
        let r = evaluate(std::slice::from_ref(&v), &h, &[]).unwrap();
        assert_eq!(failed(&r), ["no_5xx_outside_downtime"]);
        // Region 1 down from 900 to 1 005 ms: excused; region 0's window does not excuse it.
        let down = |region| Downtime {
            region,
            from_ms: 900,
            to_ms: 1_005,
            what: "kill -9".into(),
        };
        let r = evaluate(std::slice::from_ref(&v), &h, &[down(0)]).unwrap();
        assert_eq!(failed(&r), ["no_5xx_outside_downtime"]);
        let r = evaluate(&[v], &h, &[down(1)]).unwrap();
        assert!(r.valid, "{:?}", r.checks);
    }

    #[test]
    fn cents_parse() {
        assert_eq!(parse_cents("12.30").unwrap(), 1230);
        assert_eq!(parse_cents("-5.00").unwrap(), -500);
        assert_eq!(parse_cents("7").unwrap(), 700);
        assert!(parse_cents("1.5").is_err());
        assert!(parse_cents("x").is_err());
        assert_eq!(usd(1230), "12.30");
        assert_eq!(usd(-1205), "-12.05");
    }
}
