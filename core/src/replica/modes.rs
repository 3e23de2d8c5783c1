//! Consistency modes (SPEC §8, docs/modes.md): the home of an account and its moves,
//! debits forwarded to the home and their answers, and the time-outs of both. Every rule is
//! here; the host only moves the messages and calls `handle_timeout`.

use std::collections::{BTreeMap, VecDeque};

use crate::event::{AccountOp, Body, Event, OrderKey, Tx};
use crate::id::{AccountId, EventId, RegionId};
use crate::message::{ForwardResult, Message};
use crate::money::Currency;
use crate::policy::Mode;

use super::{Output, Replica, SubmitError, Submitted, TxRequest};

/// Default time a region waits for the home's answer to a forwarded debit, in ms.
pub const FORWARD_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// Most requests a region keeps waiting (forwarded to a home, or waiting for rights); beyond
/// it a debit that would wait is refused at once with a retryable error.
pub const PENDING_REQUESTS_MAX: usize = 10_000;

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
}

/// The modes' state of a replica.
#[derive(Debug, Default)]
pub(crate) struct Modes {
    /// Per (account, currency), the home moves held, by epoch: the first in total order when
    /// two name one epoch (which only a broken member can cause).
    pub(crate) moves: BTreeMap<(AccountId, Currency), BTreeMap<u64, Move>>,
    /// Debits this region forwarded, by request id.
    pub(crate) forwarded: BTreeMap<u64, Forwarded>,
    /// Forwarded debits this region accepted as the home, answered once the event is
    /// durable: (own seq, requester, request id, event id, existing).
    pub(crate) owed: VecDeque<(u64, RegionId, u64, EventId, bool)>,
    pub(crate) stats: ModeStats,
    /// How long to wait for a home's answer, ms.
    pub(crate) forward_timeout_ms: u64,
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
                .entry((account.clone(), *currency))
                .or_default()
                .entry(*epoch)
                .or_insert(m);
            if m.key < slot.key {
                *slot = m;
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
        let Some(moves) = self.moves.get(&(account.clone(), currency)) else {
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
        self.forwarded
            .values()
            .map(|f| f.deadline_ms)
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// Where a debit of a strict mode must be decided, if not by the usual local rule.
pub(crate) enum Route {
    /// Decide here, against the local provisional balance less the credits that may still be
    /// reversed.
    Strict,
    /// Forward to this home.
    Forward(RegionId),
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
            Mode::Optimistic | Mode::Escrow { .. } => None,
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
        let result = match self.decide(now_ms, req, true) {
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
        self.outputs.push_back(Output::Decided {
            request,
            result,
            durable_after: None,
        });
    }

    /// Refuses forwarded debits whose answer is late: `HomeUnreachable`, retryable (the home
    /// may still have decided it: a retry with the same idempotency key finds out).
    pub(crate) fn forward_timeouts(&mut self, now_ms: u64) {
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
}
