//! The HTTP response cache for retries: what the first request with an `Idempotency-Key`
//! got, per account, kept for the configured retention (`idempotency_retention_ms`, the same
//! value as the core's key retention; default 24 h) by wall clock.
//!
//! This is host state (the replica keeps its own key index for events): a retry with the same
//! body is answered with the stored bytes, a retry with another body gets `409`. Each result
//! is persisted by the actor in the same group commit as its event, and each expired result
//! is deleted from storage too. Expiry keeps up with any accept rate: every insert first
//! drains every result already due ([`IdemCache::expire`], called by the actor before
//! each insert; each result is queued
//! and dropped once, so this costs O(1) amortized per insert), and a host timer armed for the
//! oldest result ([`IdemCache::next_expiry`]) drains the rest when no request comes. There is
//! no per-pass cap that a sustained rate could outrun: at most one retention's worth of
//! results is ever held.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use axum::body::Bytes;
use wallet_core::AccountId;

use crate::command::Reply;
use crate::storage::IdemRecord;

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
pub struct IdemCache {
    map: BTreeMap<AccountId, BTreeMap<Box<str>, Entry>>,
    /// (created, account, key) in creation order; an entry replaced since is skipped.
    expiry: VecDeque<(u64, AccountId, Box<str>)>,
    count: u64,
    /// How long a result is kept, wall-clock ms.
    retention_ms: u64,
}

impl IdemCache {
    /// An empty cache keeping results `retention_ms`.
    pub fn new(retention_ms: u64) -> IdemCache {
        IdemCache {
            map: BTreeMap::new(),
            expiry: VecDeque::new(),
            count: 0,
            retention_ms,
        }
    }

    /// The results read back from storage (already durable: write sequence 0).
    pub fn restore(
        mut stored: Vec<(AccountId, String, IdemRecord)>,
        retention_ms: u64,
    ) -> IdemCache {
        stored.sort_by_key(|(_, _, r)| r.created_ms);
        let mut c = IdemCache::new(retention_ms);
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
        if now_ms >= e.rec.created_ms.saturating_add(self.retention_ms) {
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
                retry_after: None,
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
            .map(|(created, _, _)| created.saturating_add(self.retention_ms))
    }

    /// Drops every result older than the retention at `now_ms` (all of them: no cap that a
    /// sustained rate could outrun); returns them, to delete from storage.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(AccountId, Box<str>)> {
        let mut out = Vec::new();
        while let Some((created, _, _)) = self.expiry.front() {
            if now_ms < created.saturating_add(self.retention_ms) {
                break;
            }
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

    const IDEMPOTENCY_TTL_MS: u64 = 24 * 60 * 60 * 1_000;

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
        let mut c = IdemCache::new(IDEMPOTENCY_TTL_MS);
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
        let mut c = IdemCache::restore(Vec::new(), IDEMPOTENCY_TTL_MS);
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

    #[test]
    fn expiry_keeps_up_with_twenty_thousand_keyed_requests_a_second() {
        // Simulated time: 20 keyed results per ms (20 000 a second, four times the old
        // 5 000-a-second expiry cap) for 10 s, retention 1 s, inserted the way the actor does.
        const PER_MS: u64 = 20;
        const RETENTION_MS: u64 = 1_000;
        let mut c = IdemCache::new(RETENTION_MS);
        let (mut most, mut deleted) = (0, 0u64);
        for i in 0..(PER_MS * 10_000) {
            let now = i / PER_MS;
            let answer = Reply::json(422, "{}".to_string());
            let rec = IdemCache::record([1; 32], &answer, now);
            deleted += c.expire(now).len() as u64;
            c.insert(acct("alice"), format!("k{i}").into(), rec, i);
            most = most.max(c.len());
        }
        // Never more than one retention's worth (plus the millisecond being filled).
        assert!(most <= PER_MS * (RETENTION_MS + 1), "held {most}");
        assert_eq!(deleted + c.len(), PER_MS * 10_000);
        // The timer drains the rest once no request comes.
        assert_eq!(c.next_expiry(), Some(9_000 + RETENTION_MS));
        assert_eq!(c.expire(10_000 + RETENTION_MS).len() as u64, PER_MS * 1_000);
        assert!(c.is_empty());
    }
}
