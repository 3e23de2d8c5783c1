//! The HTTP response cache for retries: what the first request with an `Idempotency-Key`
//! got, per account, kept [`IDEMPOTENCY_TTL_MS`] by wall clock.
//!
//! This is host state (the replica keeps its own key index for events): a retry with the same
//! body is answered with the stored bytes, a retry with another body gets `409`. Each result
//! is persisted by the actor in the same group commit as its event; expiry is a host timer
//! armed for the oldest result ([`IdemCache::next_expiry`]), and each expired result is
//! deleted from storage too.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use axum::body::Bytes;
use wallet_core::AccountId;

use crate::command::Reply;
use crate::storage::IdemRecord;

/// How long an idempotency result is kept, by wall clock.
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 60 * 60 * 1_000;
/// Most expired results dropped per expiry pass (the next pass follows at once when more are
/// due, so other inputs are served in between).
pub const IDEMPOTENCY_EXPIRE_PER_PASS_MAX: usize = 10_000;

struct Entry {
    rec: Arc<IdemRecord>,
    /// Write sequence number of its record: a replay waits until it is durable.
    seq: u64,
}

/// What a request with a key finds.
#[derive(Debug)]
pub enum Lookup {
    /// No live result under this key: process the request.
    Miss,
    /// The same body was answered before: send this answer once write `seq` is durable.
    Replay {
        /// The stored answer, marked replayed.
        answer: Reply,
        /// Write sequence number of the stored result.
        seq: u64,
    },
    /// The key was used with another body.
    Conflict,
}

/// The cache: results by account and key, and their expiry order.
#[derive(Default)]
pub struct IdemCache {
    map: BTreeMap<AccountId, BTreeMap<Box<str>, Entry>>,
    /// (created, account, key) in creation order; an entry replaced since is skipped.
    expiry: VecDeque<(u64, AccountId, Box<str>)>,
    count: u64,
}

impl IdemCache {
    /// The results read back from storage (already durable: write sequence 0).
    pub fn restore(mut stored: Vec<(AccountId, String, IdemRecord)>) -> IdemCache {
        stored.sort_by_key(|(_, _, r)| r.created_ms);
        let mut c = IdemCache::default();
        for (account, key, rec) in stored {
            c.insert(account, key.into(), Arc::new(rec), 0);
        }
        c
    }

    /// Results held.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when no result is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// What a request on `account` with `key` and body `fingerprint` finds at `now_ms`.
    pub fn lookup(
        &self,
        account: &AccountId,
        key: &str,
        fingerprint: &[u8; 32],
        now_ms: u64,
    ) -> Lookup {
        let Some(e) = self.map.get(account).and_then(|m| m.get(key)) else {
            return Lookup::Miss;
        };
        if now_ms >= e.rec.created_ms.saturating_add(IDEMPOTENCY_TTL_MS) {
            return Lookup::Miss;
        }
        if e.rec.fingerprint != *fingerprint {
            return Lookup::Conflict;
        }
        Lookup::Replay {
            answer: Reply {
                status: e.rec.status,
                body: Bytes::from(e.rec.body.clone()),
                replayed: true,
            },
            seq: e.seq,
        }
    }

    /// The record of `answer` to a request with body `fingerprint`, made at `now_ms`.
    pub fn record(fingerprint: [u8; 32], answer: &Reply, now_ms: u64) -> Arc<IdemRecord> {
        Arc::new(IdemRecord {
            fingerprint,
            status: answer.status,
            body: String::from_utf8_lossy(&answer.body).into_owned(),
            created_ms: now_ms,
        })
    }

    /// Holds `rec` under (`account`, `key`), written with sequence number `seq`.
    pub fn insert(&mut self, account: AccountId, key: Box<str>, rec: Arc<IdemRecord>, seq: u64) {
        self.expiry
            .push_back((rec.created_ms, account.clone(), key.clone()));
        let prev = self
            .map
            .entry(account)
            .or_default()
            .insert(key, Entry { rec, seq });
        if prev.is_none() {
            self.count += 1;
        }
    }

    /// When the oldest result expires, if any is held.
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiry
            .front()
            .map(|(created, _, _)| created.saturating_add(IDEMPOTENCY_TTL_MS))
    }

    /// Drops results older than the TTL at `now_ms`, at most
    /// [`IDEMPOTENCY_EXPIRE_PER_PASS_MAX`]; returns them, to delete from storage.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(AccountId, Box<str>)> {
        let mut out = Vec::new();
        let mut n = 0;
        while let Some((created, _, _)) = self.expiry.front() {
            if n >= IDEMPOTENCY_EXPIRE_PER_PASS_MAX
                || now_ms < created.saturating_add(IDEMPOTENCY_TTL_MS)
            {
                break;
            }
            n += 1;
            let Some((created, account, key)) = self.expiry.pop_front() else {
                break;
            };
            let current = self
                .map
                .get(&account)
                .and_then(|m| m.get(&key))
                .is_some_and(|e| e.rec.created_ms == created);
            if !current {
                continue; // replaced since: its newer entry expires later
            }
            if let Some(m) = self.map.get_mut(&account) {
                m.remove(&key);
                if m.is_empty() {
                    self.map.remove(&account);
                }
            }
            self.count = self.count.saturating_sub(1);
            out.push((account, key));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(s: &str) -> AccountId {
        AccountId::new(s).expect("account id")
    }

    fn put(c: &mut IdemCache, account: &str, key: &str, fp: u8, now: u64) {
        let answer = Reply::json(201, format!("{{\"n\":{fp}}}"));
        let rec = IdemCache::record([fp; 32], &answer, now);
        c.insert(acct(account), key.into(), rec, u64::from(fp));
    }

    #[test]
    fn a_retry_replays_the_stored_answer_and_another_body_conflicts() {
        let mut c = IdemCache::default();
        put(&mut c, "alice", "k1", 7, 1_000);
        match c.lookup(&acct("alice"), "k1", &[7; 32], 2_000) {
            Lookup::Replay { answer, seq } => {
                assert_eq!((answer.status, answer.replayed, seq), (201, true, 7));
                assert_eq!(&answer.body[..], b"{\"n\":7}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.lookup(&acct("alice"), "k1", &[8; 32], 2_000),
            Lookup::Conflict
        ));
        assert!(matches!(
            c.lookup(&acct("bob"), "k1", &[7; 32], 2_000),
            Lookup::Miss
        ));
        // Past the TTL the key is free again, even before the expiry pass ran.
        let later = 1_000 + IDEMPOTENCY_TTL_MS;
        assert!(matches!(
            c.lookup(&acct("alice"), "k1", &[8; 32], later),
            Lookup::Miss
        ));
    }

    #[test]
    fn expiry_drops_results_in_creation_order_and_keeps_a_replaced_one() {
        let mut c = IdemCache::restore(Vec::new());
        put(&mut c, "alice", "k1", 1, 1_000);
        put(&mut c, "bob", "k2", 2, 2_000);
        put(&mut c, "alice", "k1", 3, 3_000); // replaced: expires with its new time
        assert_eq!(c.len(), 2);
        assert_eq!(c.next_expiry(), Some(1_000 + IDEMPOTENCY_TTL_MS));
        assert!(c.expire(999 + IDEMPOTENCY_TTL_MS).is_empty());
        let gone = c.expire(2_000 + IDEMPOTENCY_TTL_MS);
        assert_eq!(gone, vec![(acct("bob"), "k2".into())]);
        assert_eq!(c.len(), 1);
        assert_eq!(c.next_expiry(), Some(3_000 + IDEMPOTENCY_TTL_MS));
        let gone = c.expire(3_000 + IDEMPOTENCY_TTL_MS);
        assert_eq!(gone, vec![(acct("alice"), "k1".into())]);
        assert!(c.is_empty());
        assert_eq!(c.next_expiry(), None);
    }
}
