//! The client workload, generated up front from its own PRNG stream so that it is identical
//! whatever the policy or the network does (`--compare-policies` depends on this).

use rust_decimal::Decimal;
use wallet_core::{AccountId, Amount, Currency, Kind};

use crate::config::SimConfig;
use crate::rng::Rng;
use crate::scenario::Action;

/// Why a submission is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The first send.
    First,
    /// The client sends it again with the same key to the same region.
    Retry,
    /// The same key sent to a second region.
    SecondRegion,
    /// The key of an earlier request sent with another body to a region across a partition
    /// (a new logical request: a client bug, or two clients sharing a key).
    Conflict,
    /// That second body retried at a third region.
    ConflictRetry,
}

/// One client submission.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Simulated time, ms.
    pub at_ms: u64,
    /// Target region index.
    pub region: usize,
    /// Account index into [`Workload::accounts`].
    pub account: u32,
    /// Kind.
    pub kind: Kind,
    /// Amount (for a debit sent to the floor: the amount it would have had; the amount sent
    /// is decided when it is sent).
    pub amount: Amount,
    /// Currency.
    pub currency: Currency,
    /// A debit sent "to the floor": its amount is the provisional balance the region sees
    /// minus its floor when the request is first sent (retries and copies send the same).
    /// A credit sent "to the floor": its account, currency and amount are decided when it is
    /// first sent: an (account, currency) the region's settled view has in an overdraft
    /// episode with fees, and the amount that brings its balance without those fees exactly
    /// back to the floor (else it is sent as drawn).
    pub to_floor: bool,
    /// Logical request number (retries share it).
    pub logical: u32,
    /// Why it is sent.
    pub attempt: Attempt,
}

/// The generated workload.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    /// Accounts by index.
    pub accounts: Vec<AccountId>,
    /// Submissions in time order.
    pub submissions: Vec<Submission>,
    /// Idempotency key per logical request (None: sent without a key).
    pub keys: Vec<Option<Box<str>>>,
    /// Number of logical requests.
    pub logical: u32,
    /// Time of the last submission, ms.
    pub end_ms: u64,
    /// A digest of the request stream (equal digests: identical workloads).
    pub digest: u64,
}

/// Round debit amounts, in cents (or yen, or hundredths of a dinar): the figures the policy
/// generator also draws its grace amounts from.
pub const ROUND_CENTS: [u64; 4] = [100, 500, 1000, 2000];

/// The currency of the charts and of scripted transactions (scenario lines may name
/// another).
pub const CURRENCY: Currency = Currency::USD;

/// An amount of `units` minor units of `currency` (cents, yen, fils).
pub fn from_minor(units: u64, currency: Currency) -> Option<Amount> {
    Amount::new(
        Decimal::new(i64::try_from(units).ok()?, currency.minor_units()),
        currency,
    )
    .ok()
}

/// The amount in minor units of its currency (amounts are held at the currency's scale).
pub fn minor(amount: Amount) -> Option<u64> {
    u64::try_from(amount.value().mantissa()).ok()
}

/// A generated amount of `c` USD cents in `currency`: as many cents, yen, or hundredths of
/// a dinar plus `thousandth` fils (0 to 9).
fn generated(c: u64, currency: Currency, thousandth: u64) -> Option<Amount> {
    match currency.minor_units() {
        0 => from_minor(c, currency),
        3 => from_minor(c.checked_mul(10)?.checked_add(thousandth)?, currency),
        _ => from_minor(c, currency),
    }
}

/// `amount` written at the scale of a currency with more minor units than `currency` has:
/// `12.34` USD as `12.340`, `1234` JPY as `1234.00`; with `extra`, one more digit in the
/// finer place (`12.341`, `1234.01`), which `currency` cannot carry. None for a currency
/// without a finer one here.
fn odd_scale(amount: Amount, currency: Currency, extra: bool) -> Option<Amount> {
    let finer = [Currency::USD, Currency::BHD]
        .into_iter()
        .find(|f| f.minor_units() > currency.minor_units())?;
    let mut v = amount.value();
    v.rescale(finer.minor_units());
    if extra {
        v = v.checked_add(Decimal::new(1, finer.minor_units()))?;
    }
    Amount::new(v, finer).ok()
}

impl Workload {
    /// Generates the workload of a run.
    pub fn generate(cfg: &SimConfig) -> Workload {
        let w = &cfg.workload;
        let mut rng = Rng::new(cfg.seed, b"workload");
        let mut accounts: Vec<AccountId> = (0..w.accounts)
            .filter_map(|i| AccountId::new(&format!("acct-{i:04}")).ok())
            .collect();
        let mut subs = Vec::new();
        let mut keys = Vec::new();
        let mut logical: u32 = 0;
        // Scripted transactions first.
        for step in &cfg.scenario.steps {
            if let Action::Tx {
                region,
                account,
                kind,
                amount,
                currency,
                key,
            } = &step.action
            {
                let idx = match accounts.iter().position(|a| a == account) {
                    Some(i) => i,
                    None => {
                        accounts.push(account.clone());
                        accounts.len() - 1
                    }
                };
                subs.push(Submission {
                    at_ms: step.at_ms,
                    region: *region,
                    account: idx as u32,
                    kind: *kind,
                    amount: *amount,
                    currency: *currency,
                    to_floor: false,
                    logical,
                    attempt: Attempt::First,
                });
                keys.push(key.as_deref().map(Box::from));
                logical += 1;
            }
        }
        let regions = cfg.regions.len().max(1) as u64;
        let total_mix: u64 = w.mix.iter().map(|m| u64::from(*m)).sum::<u64>().max(1);
        let n_accounts = u64::from(w.accounts);
        let hot = u64::from(w.hot_accounts.min(w.accounts));
        // Currencies and floor debits come from their own streams: with one currency and no
        // floor share the request stream is the one of earlier versions.
        let mut cur_rng = Rng::new(cfg.seed, b"currencies");
        let mut floor_rng = Rng::new(cfg.seed, b"floor");
        let mut credit_rng = Rng::new(cfg.seed, b"floor-credit");
        let mut scale_rng = Rng::new(cfg.seed, b"odd-scale");
        let mut round_rng = Rng::new(cfg.seed, b"round-amounts");
        // Its own stream: without locality the request stream is the one of earlier versions.
        let mut locality_rng = Rng::new(cfg.seed, b"locality");
        let cur_total: u64 = w.currencies.iter().map(|(_, x)| u64::from(*x)).sum();
        for i in 0..w.transactions {
            if n_accounts == 0 {
                break;
            }
            let at_ms = i.saturating_mul(1_000) / w.rate.max(1);
            let drawn = rng.below(regions) as usize;
            let account = if hot > 0 && rng.chance(w.hot_share_ppm) {
                rng.below(hot)
            } else {
                rng.below(n_accounts)
            } as u32;
            let region = if w.locality_ppm > 0 && locality_rng.chance(w.locality_ppm) {
                (u64::from(account) % regions) as usize
            } else {
                drawn
            };
            let mut pick = rng.below(total_mix);
            let mut kind = Kind::Deposit;
            for (k, share) in Kind::ALL.iter().zip(w.mix) {
                if pick < u64::from(share) {
                    kind = *k;
                    break;
                }
                pick -= u64::from(share);
            }
            let (lo, hi) = w.amount_cents;
            // Mostly small amounts, some up to the maximum.
            let mut c = if rng.chance(600_000) {
                rng.range(lo, lo + hi.saturating_sub(lo) / 10)
            } else {
                rng.range(lo, hi)
            };
            if kind == Kind::Deposit {
                c = c.saturating_mul(w.deposit_multiplier.max(1));
            } else if round_rng.chance(w.round_ppm) {
                // A round amount, as people pay: the policy generator draws its grace (and
                // other amounts) from the same round figures, so an overdraft of exactly the
                // grace happens (the second of two concurrent debits, the first landing on the
                // floor, overdraws by its own amount).
                c = ROUND_CENTS[round_rng.below(ROUND_CENTS.len() as u64) as usize];
            }
            let mut currency = w.currencies.first().map(|(c, _)| *c).unwrap_or(CURRENCY);
            let mut thousandth = 0;
            if w.currencies.len() > 1 {
                let mut pick = cur_rng.below(cur_total.max(1));
                for (cur, weight) in &w.currencies {
                    if pick < u64::from(*weight) {
                        currency = *cur;
                        break;
                    }
                    pick -= u64::from(*weight);
                }
                thousandth = cur_rng.below(10);
            }
            let to_floor = if kind.is_debit() {
                floor_rng.chance(w.floor_ppm)
            } else {
                kind == Kind::Deposit && credit_rng.chance(w.floor_credit_ppm)
            };
            let Some(mut amount) = generated(c, currency, thousandth) else {
                continue;
            };
            if !to_floor && scale_rng.chance(w.odd_scale_ppm) {
                if let Some(a) = odd_scale(amount, currency, scale_rng.chance(500_000)) {
                    amount = a;
                }
            }
            let retry = rng.chance(w.retry_ppm);
            let retry_after = rng.range(100, 3_000);
            let second = regions > 1 && rng.chance(w.two_region_ppm);
            let second_region =
                (region as u64 + 1 + rng.below(regions - 1)) as usize % regions as usize;
            let second_after = rng.range(0, 80);
            let base = Submission {
                at_ms,
                region,
                account,
                kind,
                amount,
                currency,
                to_floor,
                logical,
                attempt: Attempt::First,
            };
            if retry {
                subs.push(Submission {
                    at_ms: at_ms + retry_after,
                    attempt: Attempt::Retry,
                    ..base.clone()
                });
            }
            if second {
                subs.push(Submission {
                    at_ms: at_ms + second_after,
                    region: second_region,
                    attempt: Attempt::SecondRegion,
                    ..base.clone()
                });
            }
            subs.push(base);
            keys.push(Some(format!("k{logical}").into()));
            logical += 1;
        }
        let mut w = Workload {
            accounts,
            submissions: subs,
            keys,
            logical,
            end_ms: 0,
            digest: 0,
        };
        w.seal();
        w
    }

    /// Sorts the submissions by time and computes `end_ms` and the digest.
    fn seal(&mut self) {
        // Stable: same time keeps generation order (first sends before their copies).
        self.submissions
            .sort_by_key(|s| (s.at_ms, s.logical, s.attempt as u8));
        self.end_ms = self.submissions.last().map(|s| s.at_ms).unwrap_or(0);
        let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
        let mut mix = |v: u64| {
            for b in v.to_le_bytes() {
                digest ^= u64::from(b);
                digest = digest.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for s in &self.submissions {
            mix(s.at_ms);
            mix(s.region as u64);
            mix(u64::from(s.account));
            mix(s.kind as u64);
            mix(u64::try_from(s.amount.value().mantissa()).unwrap_or(0));
            mix(u64::from(s.logical));
            // (Only what earlier versions did not have, so that their digests still hold.)
            if s.currency != CURRENCY {
                for b in s.currency.as_str().bytes() {
                    mix(u64::from(b));
                }
            }
            if s.to_floor {
                mix(0xf1);
            }
            if matches!(s.attempt, Attempt::Conflict | Attempt::ConflictRetry) {
                // Which key it reuses.
                let key = self.keys.get(s.logical as usize).and_then(|k| k.as_deref());
                for b in key.unwrap_or("").bytes() {
                    mix(u64::from(b));
                }
            }
        }
        self.digest = digest;
    }

    /// Adds key conflicts during partitions (`Workload::conflict_ppm` of the generated
    /// requests sent while a partition is on, from their own PRNG stream): the request's key
    /// is sent again with another amount (a different body) to a region on the other side of
    /// the partition 0-100 ms later, as a new logical request, and that second body is retried
    /// with the same key at a third region (the first one with two regions) 0-300 ms after
    /// that. Depending on what has arrived where, the second and third sends are refused as
    /// a conflict, answered with the existing event, or issued as new events: then the settled
    /// fold must reverse the third as a duplicate of the second, although the first holder of
    /// the key has another body.
    ///
    /// `windows`: the partitions of the run, (start, end, group of each region).
    pub fn add_conflicts(&mut self, cfg: &SimConfig, windows: &[(u64, u64, Vec<u32>)]) {
        let ppm = cfg.workload.conflict_ppm;
        let n = cfg.regions.len();
        if ppm == 0 || n < 2 || windows.is_empty() {
            return;
        }
        let mut rng = Rng::new(cfg.seed, b"conflicts");
        let mut added = Vec::new();
        let mut logical = self.logical;
        let mut w = 0;
        for s in &self.submissions {
            if s.attempt != Attempt::First {
                continue;
            }
            while windows.get(w).is_some_and(|(_, end, _)| *end <= s.at_ms) {
                w += 1;
            }
            let Some((start, _, group)) = windows.get(w) else {
                break;
            };
            if s.at_ms < *start || !rng.chance(ppm) {
                continue;
            }
            let Some(key) = self.keys.get(s.logical as usize).cloned().flatten() else {
                continue;
            };
            let mine = group.get(s.region).copied();
            let across: Vec<usize> = (0..n).filter(|r| group.get(*r).copied() != mine).collect();
            let Some(&second) = across.get(rng.below(across.len() as u64) as usize) else {
                continue;
            };
            let third = if n >= 3 {
                let others: Vec<usize> =
                    (0..n).filter(|r| *r != s.region && *r != second).collect();
                others[rng.below(others.len() as u64) as usize]
            } else {
                s.region
            };
            // Another body: 1 to 100 minor units more (of a debit sent to the floor, more
            // than the amount it was drawn with; sent as drawn, not to the floor).
            let was = minor(s.amount);
            let Some(amount) =
                was.and_then(|c| from_minor(c.saturating_add(rng.range(1, 100)), s.currency))
            else {
                continue;
            };
            let at = s.at_ms + rng.range(0, 100);
            let body = Submission {
                at_ms: at,
                region: second,
                amount,
                to_floor: false,
                logical,
                attempt: Attempt::Conflict,
                ..s.clone()
            };
            added.push(Submission {
                at_ms: at + rng.range(0, 300),
                region: third,
                attempt: Attempt::ConflictRetry,
                ..body.clone()
            });
            added.push(body);
            self.keys.push(Some(key));
            logical += 1;
        }
        if added.is_empty() {
            return;
        }
        self.logical = logical;
        self.submissions.append(&mut added);
        self.seal();
    }

    /// The account with the most submissions (lowest index on ties).
    pub fn hottest(&self) -> Option<u32> {
        let mut counts = vec![0u64; self.accounts.len()];
        for s in &self.submissions {
            if let Some(c) = counts.get_mut(s.account as usize) {
                *c += 1;
            }
        }
        let mut best: Option<(u64, u32)> = None;
        for (i, c) in counts.iter().enumerate() {
            if best.is_none_or(|(bc, _)| *c > bc) {
                best = Some((*c, i as u32));
            }
        }
        best.map(|(_, i)| i)
    }
}
