//! Consistency modes (SPEC §8, docs/modes.md): the home of an account and its moves,
//! debits forwarded to the home and their answers, and the time-outs of both. Every rule is
//! here; the host only moves the messages and calls `handle_timeout`.

use std::collections::{BTreeMap, VecDeque};

use std::collections::BTreeSet;

use rust_decimal::Decimal;

use crate::event::{AccountOp, Body, Event, OrderKey, Tx};
use crate::id::{AccountId, EventId, RegionId};
use crate::message::{ForwardResult, Message};
use crate::money::{Amount, Currency};
use crate::policy::{Fallback, Mode};

use super::{Output, Replica, SubmitError, Submitted, TxRequest};

/// Default time a region waits for the home's answer to a forwarded debit, in ms.
pub const FORWARD_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// Most requests a region keeps waiting (forwarded to a home, or waiting for rights); beyond
/// it a debit that would wait is refused at once with a retryable error.
pub const PENDING_REQUESTS_MAX: usize = 10_000;

/// How often a region gives spare escrow rights toward where an account spends, ms.
pub const REBALANCE_INTERVAL_MS: u64 = 1_000;

/// Which step of a client request [`Replica::decide`] is taking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// A client's request at this region.
    Client,
    /// A debit a member forwarded here as the home.
    Forwarded,
    /// A debit waiting for escrow rights, tried again (still short: it keeps waiting).
    Retry,
    /// A debit whose wait for rights timed out: the fallback applies.
    Fallback,
}

/// A debit waiting for escrow rights.
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    pub(crate) req: TxRequest,
    pub(crate) deadline_ms: u64,
}

/// A home move held: who issued it, to whom, where it is in the total order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Move {
    pub(crate) key: OrderKey,
    pub(crate) to: RegionId,
}

/// A debit sent to the home, waiting for its answer.
#[derive(Debug, Clone)]
pub(crate) struct Forwarded {
    pub(crate) home: RegionId,
    pub(crate) deadline_ms: u64,
    pub(crate) currency: Currency,
    /// The amount asked for, rendered (for an `InsufficientFunds` answer).
    pub(crate) requested: String,
    /// Seals applied here when it was sent (`ack = "peer"`: an acceptance that a seal may
    /// have voided is not acknowledged).
    pub(crate) seals: usize,
}

/// `ack = "peer"`: a forwarded debit the home accepted, answered once this region holds the
/// event durably too.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) request: u64,
    pub(crate) home: RegionId,
    pub(crate) result: Submitted,
    pub(crate) deadline_ms: u64,
    /// Seals applied here when the debit was forwarded.
    pub(crate) seals: usize,
}

/// Counters of the modes, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModeStats {
    /// Debits this region forwarded to a home.
    pub forwarded: u64,
    /// Forwarded debits answered by the home (accepted or refused).
    pub forward_answers: u64,
    /// Forwarded debits that got no answer in time (refused `HomeUnreachable`).
    pub forward_timeouts: u64,
    /// Forwarded debits this region decided as the home.
    pub forwards_decided: u64,
    /// Home moves this region issued.
    pub home_moves: u64,
    /// Escrow debits accepted within this region's own rights, with no coordination.
    pub escrow_local: u64,
    /// Escrow debits that had to ask the members for rights (the synchronous path).
    pub rights_requests: u64,
    /// Of those, decided once rights came in (before the time-out).
    pub rights_arrived: u64,
    /// Of those, decided by the fallback: refused (`InsufficientRights`).
    pub fallback_refused: u64,
    /// Of those, decided by the fallback: accepted within the risk limit (the hybrid).
    pub fallback_accepted: u64,
    /// Rights transfers this region issued in answer to a request.
    pub transfers_given: u64,
    /// Rights transfers this region issued to rebalance.
    pub transfers_rebalance: u64,
}

/// The modes' state of a replica.
#[derive(Debug, Default)]
pub(crate) struct Modes {
    /// Per (account, currency), the home moves held, by epoch: the first in total order when
    /// two name one epoch (which only a broken member can cause).
    pub(crate) moves: BTreeMap<AccountId, BTreeMap<Currency, BTreeMap<u64, Move>>>,
    /// Debits this region forwarded, by request id.
    pub(crate) forwarded: BTreeMap<u64, Forwarded>,
    /// Forwarded debits this region accepted as the home, answered once the event is
    /// durable: (own seq, requester, request id, event id, existing).
    pub(crate) owed: VecDeque<(u64, RegionId, u64, EventId, bool)>,
    /// `ack = "peer"`: forwarded debits the home accepted, not yet durable here.
    pub(crate) held: Vec<Held>,
    pub(crate) stats: ModeStats,
    /// How long to wait for a home's answer, ms.
    pub(crate) forward_timeout_ms: u64,
    /// Escrow debits waiting for rights, by request id.
    pub(crate) waiting: BTreeMap<u64, Waiting>,
    /// Since the last rebalance: per (account, currency), the member that last asked this
    /// region for rights.
    pub(crate) demand: BTreeMap<(AccountId, Currency), RegionId>,
    /// Since the last rebalance: the pairs this region spent from itself.
    pub(crate) local_spend: BTreeSet<(AccountId, Currency)>,
    /// When the next rebalance is due (0: not scheduled).
    pub(crate) next_rebalance_ms: u64,
}

impl Modes {
    /// Notes an event's effect on the modes' state (every event passes here once).
    pub(crate) fn index(&mut self, event: &Event) {
        let Body::Account(op) = &event.body else {
            return;
        };
        if let AccountOp::HomeMove {
            account,
            currency,
            to,
            epoch,
        } = &**op
        {
            let m = Move {
                key: event.key(),
                to: *to,
            };
            let slot = self
                .moves
                .entry(account.clone())
                .or_default()
                .entry(*currency)
                .or_default()
                .entry(*epoch)
                .or_insert(m);
            if m.key < slot.key {
                *slot = m;
            }
        }
    }

    /// Takes back a voided home move (above a retired region's cut).
    pub(crate) fn unindex(&mut self, event: &Event) {
        let Body::Account(op) = &event.body else {
            return;
        };
        if let AccountOp::HomeMove {
            account,
            currency,
            epoch,
            ..
        } = &**op
        {
            if let Some(by_epoch) = self
                .moves
                .get_mut(account)
                .and_then(|m| m.get_mut(currency))
            {
                if by_epoch.get(epoch).is_some_and(|m| m.key == event.key()) {
                    by_epoch.remove(epoch);
                }
            }
        }
    }

    /// The home of (account, currency) and its epoch, as this region knows it: the policy's
    /// home (epoch 0), then each move of the next epoch issued by the home it moves away from,
    /// as long as the chain has no gap. A region holding move `e` of origin X holds every
    /// earlier event of X (logs are gap-free), and X held every earlier move when it issued
    /// it: so the home decides only with every debit of every earlier home in hand.
    pub(crate) fn home_of(
        &self,
        account: &AccountId,
        currency: Currency,
        policy_home: RegionId,
    ) -> (RegionId, u64) {
        let mut home = (policy_home, 0);
        let Some(moves) = self.moves.get(account).and_then(|m| m.get(&currency)) else {
            return home;
        };
        for (epoch, m) in moves {
            // Epoch 1 is issued by whoever the policy named home when it was issued (the
            // policy may have changed since); later epochs by the previous move's target.
            if *epoch != home.1 + 1 || (*epoch > 1 && m.key.1 != home.0) {
                break;
            }
            home = (m.to, *epoch);
        }
        home
    }

    /// The earliest deadline of a waiting request.
    pub(crate) fn deadline(&self) -> u64 {
        let f = self.forwarded.values().map(|f| f.deadline_ms).min();
        let w = self.waiting.values().map(|w| w.deadline_ms).min();
        let h = self.held.iter().map(|h| h.deadline_ms).min();
        f.into_iter().chain(w).chain(h).min().unwrap_or(u64::MAX)
    }

    /// When to rebalance: only while some member asked for rights.
    pub(crate) fn rebalance_deadline(&self) -> u64 {
        if self.demand.is_empty() {
            u64::MAX
        } else {
            self.next_rebalance_ms
        }
    }
}

/// Where a debit of a strict mode must be decided, if not by the usual local rule.
pub(crate) enum Route {
    /// Decide here, against the local provisional balance less the credits that may still be
    /// reversed.
    Strict,
    /// Forward to this home.
    Forward(RegionId),
    /// Escrow: within this region's rights.
    Escrow,
    /// This region is not the home and may not forward (a forwarded request).
    NotHome(RegionId),
}

impl Replica {
    /// The home of an account in a currency and its epoch, when the policy in force puts it
    /// in home mode (`None` otherwise). A host forwards an admin home move to this region.
    pub fn home(&mut self, account: &AccountId, currency: Currency) -> Option<(RegionId, u64)> {
        let Mode::Home { home } = self.settle.applied(account, currency).mode else {
            return None;
        };
        Some(self.modes.home_of(account, currency, home))
    }

    /// Counters of the consistency modes.
    pub fn mode_stats(&self) -> ModeStats {
        self.modes.stats
    }

    /// Home mode: hands (account, currency) to `to`, with the next epoch. Only the current
    /// home may: elsewhere `NotHome` names it (the host forwards the admin call there). From
    /// this event on, this region forwards the account's debits to `to`.
    pub fn move_home(
        &mut self,
        now_ms: u64,
        account: AccountId,
        currency: Currency,
        to: RegionId,
    ) -> Result<EventId, SubmitError> {
        self.can_issue()?;
        let (home, epoch) = self
            .home(&account, currency)
            .ok_or(SubmitError::NotHomeMode)?;
        if home != self.cfg.region {
            return Err(SubmitError::NotHome { home });
        }
        if to == self.cfg.region || !self.logs.members.contains_key(&to) {
            return Err(SubmitError::Invalid(crate::id::IdError::Region(
                to.as_str().to_string(),
            )));
        }
        let account = self.accounts.intern(account);
        self.modes.stats.home_moves += 1;
        Ok(self.issue_own(
            now_ms,
            Body::Account(Box::new(AccountOp::HomeMove {
                account,
                currency,
                to,
                epoch: epoch + 1,
            })),
        ))
    }

    /// Where a debit under `mode` is decided (None: the optimistic rule, here).
    pub(crate) fn route(&self, req: &TxRequest, mode: &Mode, forwarded: bool) -> Option<Route> {
        if !req.kind.is_debit() {
            return None; // credits are taken anywhere, in every mode
        }
        match mode {
            Mode::Optimistic => None,
            Mode::Escrow { .. } => Some(Route::Escrow),
            Mode::Home { home } => {
                let (home, _) = self.modes.home_of(&req.account, req.currency, *home);
                Some(if home == self.cfg.region {
                    Route::Strict
                } else if forwarded {
                    Route::NotHome(home)
                } else {
                    Route::Forward(home)
                })
            }
        }
    }

    /// Sends a debit to its home; the answer (or the time-out) comes as
    /// [`Output::Decided`].
    pub(crate) fn forward(
        &mut self,
        now_ms: u64,
        home: RegionId,
        tx: Tx,
    ) -> Result<Submitted, SubmitError> {
        if self.modes.forwarded.len() >= PENDING_REQUESTS_MAX {
            return Err(SubmitError::HomeUnreachable { home });
        }
        // A fresh HLC: request ids never repeat, not even across a restart (the clock never
        // goes back below its durable ceiling), so a late answer to a request of an earlier
        // incarnation matches nothing.
        let request = self.clock.tick(now_ms).0;
        self.modes.forwarded.insert(
            request,
            Forwarded {
                home,
                deadline_ms: now_ms.saturating_add(self.modes.forward_timeout_ms),
                currency: tx.currency,
                requested: tx.currency.render(tx.amount.value()),
                seals: self.seal_count(),
            },
        );
        self.modes.stats.forwarded += 1;
        self.outputs.push_back(Output::Send {
            to: home,
            msg: Message::Forward { request, tx },
        });
        Ok(Submitted::Pending { request })
    }

    /// A member forwarded a client debit here: decide it as the home would a local one;
    /// answer at once, or once the event is durable.
    pub(crate) fn handle_forward(&mut self, now_ms: u64, from: RegionId, request: u64, tx: Tx) {
        if !self.is_peer(from) {
            self.report(super::Report::UnknownMember { from });
            return;
        }
        let req = TxRequest {
            account: tx.account,
            kind: tx.kind,
            amount: tx.amount,
            currency: tx.currency,
            idempotency_key: tx.idempotency_key.map(Into::into),
            reference: tx.reference.map(Into::into),
        };
        self.modes.stats.forwards_decided += 1;
        let me = self.cfg.region;
        let result = match self.decide(now_ms, req, Stage::Forwarded) {
            // Answered once durable here: a crash before that loses the event and the answer
            // together, and the requester times out. A retry (or a duplicated message) that
            // finds an own event not durable yet waits for it too.
            Ok(Submitted::New(id)) => {
                self.modes
                    .owed
                    .push_back((id.seq, from, request, id, false));
                self.answer_owed();
                return;
            }
            Ok(Submitted::Existing(id)) if id.origin == me => {
                self.modes.owed.push_back((id.seq, from, request, id, true));
                self.answer_owed();
                return;
            }
            Ok(Submitted::Existing(id)) => ForwardResult::Accepted { id, existing: true },
            Ok(Submitted::Pending { .. }) => ForwardResult::Unavailable {
                reason: "the home could not decide at once".into(),
            },
            Err(SubmitError::InsufficientFunds { available, .. }) => {
                ForwardResult::InsufficientFunds { available }
            }
            Err(SubmitError::IdempotencyConflict { existing }) => {
                ForwardResult::IdempotencyConflict { existing }
            }
            Err(e) => ForwardResult::Unavailable {
                reason: e.to_string(),
            },
        };
        self.outputs.push_back(Output::Send {
            to: from,
            msg: Message::ForwardAnswer { request, result },
        });
    }

    /// Answers forwarded debits whose events are now durable.
    pub(crate) fn answer_owed(&mut self) {
        // In seq order, but a retry's seq may be below the queue's last: sort it in.
        self.modes.owed.make_contiguous().sort_by_key(|o| o.0);
        while let Some(&(seq, to, request, id, existing)) = self.modes.owed.front() {
            if seq > self.dur.own_durable_seq {
                break;
            }
            self.modes.owed.pop_front();
            self.outputs.push_back(Output::Send {
                to,
                msg: Message::ForwardAnswer {
                    request,
                    result: ForwardResult::Accepted { id, existing },
                },
            });
        }
    }

    /// The home answered a forwarded debit.
    pub(crate) fn handle_forward_answer(
        &mut self,
        now_ms: u64,
        from: RegionId,
        request: u64,
        result: ForwardResult,
    ) {
        // Only the region it was sent to answers it, once.
        if self.modes.forwarded.get(&request).map(|f| f.home) != Some(from) {
            return;
        }
        let Some(f) = self.modes.forwarded.remove(&request) else {
            return;
        };
        self.modes.stats.forward_answers += 1;
        let result = match result {
            ForwardResult::Accepted { id, existing: true } => Ok(Submitted::Existing(id)),
            ForwardResult::Accepted { id, .. } => Ok(Submitted::New(id)),
            ForwardResult::InsufficientFunds { available } => Err(SubmitError::InsufficientFunds {
                available,
                requested: f.requested,
                currency: f.currency,
            }),
            ForwardResult::IdempotencyConflict { existing } => {
                Err(SubmitError::IdempotencyConflict { existing })
            }
            ForwardResult::Unavailable { .. } => Err(SubmitError::HomeUnreachable { home: f.home }),
        };
        if let (true, &Ok(accepted)) = (self.cfg.ack_peer, &result) {
            // `ack = "peer"`: the home answered on its own durability; the client hears once
            // this region holds the event durably too (two members).
            self.modes.held.push(Held {
                request,
                home: f.home,
                result: accepted,
                deadline_ms: now_ms.saturating_add(self.modes.forward_timeout_ms),
                seals: f.seals,
            });
            self.release_held(Some(now_ms));
            return;
        }
        self.outputs.push_back(Output::Decided {
            request,
            result,
            durable_after: None,
        });
    }

    /// `ack = "peer"`: answers the held acceptances whose events are now durable here and at
    /// another member ([`Replica::durable_at_two`]). One past its deadline, or one a seal
    /// applied since the debit was forwarded may have voided (an id of an old epoch is
    /// another event in the new one), is answered `HomeUnreachable`: retryable, and a retry
    /// with the same idempotency key finds the event if it survived. `now_ms`: None where the
    /// input carries no time (a persist acknowledgement): no deadline passes.
    pub(crate) fn release_held(&mut self, now_ms: Option<u64>) {
        if self.modes.held.is_empty() {
            return;
        }
        let seals = self.seal_count();
        for h in std::mem::take(&mut self.modes.held) {
            let result = match h.result.id() {
                _ if h.seals != seals => Err(SubmitError::HomeUnreachable { home: h.home }),
                Some(id) if self.durable_at_two(id) => Ok(h.result),
                _ if now_ms.is_some_and(|t| t >= h.deadline_ms) => {
                    Err(SubmitError::HomeUnreachable { home: h.home })
                }
                _ => {
                    self.modes.held.push(h);
                    continue;
                }
            };
            self.outputs.push_back(Output::Decided {
                request: h.request,
                result,
                durable_after: None,
            });
        }
    }

    /// Refuses forwarded debits whose answer is late: `HomeUnreachable`, retryable (the home
    /// may still have decided it: a retry with the same idempotency key finds out).
    pub(crate) fn forward_timeouts(&mut self, now_ms: u64) {
        self.release_held(Some(now_ms));
        let late: Vec<u64> = self
            .modes
            .forwarded
            .iter()
            .filter(|(_, f)| f.deadline_ms <= now_ms)
            .map(|(r, _)| *r)
            .collect();
        for request in late {
            if let Some(f) = self.modes.forwarded.remove(&request) {
                self.modes.stats.forward_timeouts += 1;
                self.outputs.push_back(Output::Decided {
                    request,
                    result: Err(SubmitError::HomeUnreachable { home: f.home }),
                    durable_after: None,
                });
            }
        }
    }

    /// What a strict mode may spend of (account, currency) here: the provisional balance less
    /// every credit that may still be taken back (SPEC §8): a credit above the watermark whose
    /// idempotency key another held event also carries may be reversed as a duplicate. O(the
    /// account's duplicate keys), which are rare.
    pub(crate) fn strict_provisional(
        &self,
        account: &AccountId,
        currency: Currency,
    ) -> rust_decimal::Decimal {
        let mut p = self.accounts.balance(account, currency).provisional;
        let Some(acct) = self.accounts.map.get(account) else {
            return p;
        };
        for (key, others) in &acct.more_keys {
            let first = acct.keys.get(&self.logs.members, key);
            for id in first.into_iter().chain(others.iter().copied()) {
                let Some(e) = self.logs.event(id) else {
                    continue;
                };
                let Some(t) = e.tx() else { continue };
                if t.currency == currency && !t.kind.is_debit() && !self.settle.is_settled(&e.key())
                {
                    p = p
                        .checked_sub(t.amount.value())
                        .unwrap_or(rust_decimal::Decimal::MIN);
                }
            }
        }
        p
    }

    /// This region's spending rights on (account, currency) (SPEC §8): what it may debit
    /// with no coordination under escrow.
    pub fn rights(&self, account: &AccountId, currency: Currency) -> Decimal {
        self.rights_of(account, currency, self.cfg.region)
    }

    /// Every region's rights on (account, currency), as this region derives them, and the
    /// credits that grant none yet (keyed, not settled). Their sum is the provisional
    /// balance.
    pub fn all_rights(
        &self,
        account: &AccountId,
        currency: Currency,
    ) -> (Vec<(RegionId, Decimal)>, Decimal) {
        match self.accounts.state(account, currency) {
            Some(st) => (
                st.rights.iter().map(|(r, d)| (*r, *d)).collect(),
                st.unspendable,
            ),
            None => (Vec::new(), Decimal::ZERO),
        }
    }

    pub(crate) fn rights_of(
        &self,
        account: &AccountId,
        currency: Currency,
        r: RegionId,
    ) -> Decimal {
        self.accounts
            .state(account, currency)
            .and_then(|st| st.rights.get(&r).copied())
            .unwrap_or_default()
    }

    /// Escrow's rule for a debit (SPEC §8): within this region's rights it goes on (to the
    /// floor check); short, a client's debit asks the members and waits (`Some(Pending)`), a
    /// retried one keeps waiting, and a late one takes the fallback: `refuse`, or (the
    /// hybrid) accept while this region's rights stay above minus its share of the risk
    /// limit, the floor lowered by the risk limit.
    pub(crate) fn escrow_check(
        &mut self,
        now_ms: u64,
        req: &TxRequest,
        mode: &Mode,
        stage: Stage,
        floor: &mut Decimal,
    ) -> Result<Option<Submitted>, SubmitError> {
        let Mode::Escrow {
            fallback,
            risk_limit,
            rights_timeout_ms,
        } = mode
        else {
            return Ok(None);
        };
        let have = self.rights(&req.account, req.currency);
        let amount = req.amount.value();
        let refused = || SubmitError::InsufficientRights {
            available: req.currency.render(have.max(Decimal::ZERO)),
            requested: req.currency.render(amount),
            currency: req.currency,
        };
        if amount <= have {
            self.modes
                .local_spend
                .insert((req.account.clone(), req.currency));
            if stage == Stage::Client {
                self.modes.stats.escrow_local += 1;
            }
            return Ok(None);
        }
        match stage {
            Stage::Client => {
                let short = amount
                    .checked_sub(have.max(Decimal::ZERO))
                    .ok_or(SubmitError::Overflow)?;
                self.wait_for_rights(now_ms, req, short, u64::from(*rights_timeout_ms))
                    .map(Some)
                    .ok_or_else(refused)
            }
            Stage::Retry => Ok(Some(Submitted::Pending { request: 0 })),
            Stage::Forwarded => Err(refused()),
            Stage::Fallback => match fallback {
                Fallback::Refuse => Err(refused()),
                Fallback::Optimistic => {
                    // Each member may take the account at most its share of the risk limit
                    // below its rights: together, never more than the limit below zero.
                    let members = Decimal::from(self.logs.members.len().max(1) as u64);
                    let share = (risk_limit / members).round_dp_with_strategy(
                        req.currency.minor_units(),
                        rust_decimal::RoundingStrategy::ToZero,
                    );
                    let after = have.checked_sub(amount).ok_or(SubmitError::Overflow)?;
                    if after < -share {
                        return Err(refused());
                    }
                    *floor = floor
                        .checked_sub(*risk_limit)
                        .ok_or(SubmitError::Overflow)?;
                    Ok(None)
                }
            },
        }
    }

    /// Parks a debit until rights come in, and asks every member for the shortfall. `None`
    /// when too many wait already.
    fn wait_for_rights(
        &mut self,
        now_ms: u64,
        req: &TxRequest,
        short: Decimal,
        timeout_ms: u64,
    ) -> Option<Submitted> {
        if self.modes.waiting.len() >= PENDING_REQUESTS_MAX {
            return None;
        }
        let request = self.clock.tick(now_ms).0;
        self.modes.waiting.insert(
            request,
            Waiting {
                req: req.clone(),
                deadline_ms: now_ms.saturating_add(timeout_ms),
            },
        );
        self.modes.stats.rights_requests += 1;
        if let Ok(amount) = Amount::new(short, req.currency) {
            self.outputs
                .push_back(Output::Broadcast(Message::RightsRequest {
                    account: req.account.clone(),
                    currency: req.currency,
                    amount,
                }));
        }
        Some(Submitted::Pending { request })
    }

    /// Tries the debits waiting for rights again; applies the fallback to those whose time
    /// is up. Each decided one comes out as [`Output::Decided`].
    pub(crate) fn retry_waiting(&mut self, now_ms: u64) {
        if self.modes.waiting.is_empty() {
            return;
        }
        let ids: Vec<u64> = self.modes.waiting.keys().copied().collect();
        for request in ids {
            let Some(w) = self.modes.waiting.get(&request).cloned() else {
                continue;
            };
            let late = now_ms >= w.deadline_ms;
            let stage = if late { Stage::Fallback } else { Stage::Retry };
            let before = self.dur.persist_index;
            let result = self.decide(now_ms, w.req, stage);
            if matches!(result, Ok(Submitted::Pending { .. })) {
                continue;
            }
            self.modes.waiting.remove(&request);
            let s = &mut self.modes.stats;
            match (&result, late) {
                (Err(SubmitError::InsufficientRights { .. }), true) => s.fallback_refused += 1,
                (Ok(Submitted::New(_)), true) => s.fallback_accepted += 1,
                _ => s.rights_arrived += 1,
            }
            let issued = self.dur.persist_index > before && matches!(result, Ok(Submitted::New(_)));
            // A copy that found an own event not durable yet (issued for an earlier copy in
            // this pass, or still in the commit) waits for it too: acknowledged only once
            // durable (SPEC §3).
            let found_pending = matches!(result, Ok(Submitted::Existing(id))
                if id.origin == self.cfg.region && id.seq > self.dur.own_durable_seq);
            let issued = issued || found_pending;
            self.outputs.push_back(Output::Decided {
                request,
                result,
                durable_after: issued.then_some(self.dur.persist_index),
            });
        }
    }

    /// A member is short of rights on (account, currency): give it what this region holds,
    /// up to what it asked, by a signed, replicated transfer.
    pub(crate) fn handle_rights_request(
        &mut self,
        now_ms: u64,
        from: RegionId,
        account: AccountId,
        currency: Currency,
        amount: Amount,
    ) {
        if !self.is_peer(from) {
            self.report(super::Report::UnknownMember { from });
            return;
        }
        if self.can_issue().is_err()
            || !matches!(
                self.settle.applied(&account, currency).mode,
                Mode::Escrow { .. }
            )
        {
            return;
        }
        self.modes.demand.insert((account.clone(), currency), from);
        if self.modes.next_rebalance_ms == 0 {
            self.modes.next_rebalance_ms = now_ms.saturating_add(REBALANCE_INTERVAL_MS);
        }
        let give = self.rights(&account, currency).min(amount.value());
        if self.give_rights(now_ms, account, currency, give, from) {
            self.modes.stats.transfers_given += 1;
        }
    }

    /// Issues a transfer of `amount` rights to `to`, if positive. True if issued.
    fn give_rights(
        &mut self,
        now_ms: u64,
        account: AccountId,
        currency: Currency,
        amount: Decimal,
        to: RegionId,
    ) -> bool {
        if amount <= Decimal::ZERO {
            return false;
        }
        let Ok(amount) = Amount::new(amount, currency) else {
            return false;
        };
        let account = self.accounts.intern(account);
        self.issue_own(
            now_ms,
            Body::Account(Box::new(AccountOp::RightsTransfer {
                account,
                currency,
                amount,
                to,
            })),
        );
        true
    }

    /// Background rebalancing (SPEC §8), every [`REBALANCE_INTERVAL_MS`] while members ask:
    /// for each account a member asked this region rights of, and that this region did not
    /// spend from itself since, half of this region's rights go to that member. Rights drift
    /// toward where an account spends, so the synchronous path gets rarer.
    pub(crate) fn rebalance(&mut self, now_ms: u64) {
        if self.modes.demand.is_empty() || now_ms < self.modes.next_rebalance_ms {
            return;
        }
        self.modes.next_rebalance_ms = now_ms.saturating_add(REBALANCE_INTERVAL_MS);
        if self.can_issue().is_err() {
            return;
        }
        let demand = std::mem::take(&mut self.modes.demand);
        let spent = std::mem::take(&mut self.modes.local_spend);
        for ((account, currency), to) in demand {
            if spent.contains(&(account.clone(), currency))
                || !matches!(
                    self.settle.applied(&account, currency).mode,
                    Mode::Escrow { .. }
                )
            {
                continue;
            }
            let half = (self.rights(&account, currency) / Decimal::TWO).round_dp_with_strategy(
                currency.minor_units(),
                rust_decimal::RoundingStrategy::ToZero,
            );
            if self.give_rights(now_ms, account, currency, half, to) {
                self.modes.stats.transfers_rebalance += 1;
            }
        }
    }
}
