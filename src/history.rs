//! Reads of the whole history (issue 13): the live part the replica holds joined with the
//! folded part in the [`Archive`], for `GET /v1/transactions/{id}`,
//! `GET /v1/accounts/{a}/transactions` and `GET /v1/compensations`; and the batch a
//! compaction archives.
//!
//! The join rule: the archive's last mark `A` (the last snapshot point archived) splits an
//! account's history. Entries with an HLC at or below `A` come from the archive (they are
//! final: settled, with their final status and compensations); those above come from the
//! replica. The same entry keys order both parts, so a page and its cursor are the ones a
//! never-compacted region gives, and a cursor stays valid across a compaction between two
//! pages. The feed splits at the replica's first held position.
//!
//! A read is split in two ([`Read`]): the live part is taken from the replica on the actor,
//! and the archived part, when one is needed, is read on the archive's own thread
//! ([`crate::archiver`]) against the mark the actor knew ([`Archived`]); its jobs run in
//! order, so the batch up to that mark is appended before the read runs.

use wallet_core::{Compensation, EntryKey, EventId, Hlc, Replica, Status};

use crate::archive::{Archive, ArchiveError, ArchiveRecord, STATUS_REVERSED, STATUS_SETTLED};
use crate::command::Reply;
use crate::render::{self, EntryView};

/// What one compaction at `at` archives: every event the replica holds at or below `at`
/// whose entry key follows `after` (the archive's last), and the feed from `feed_from` up to
/// its end (the feed at the settled watermark, `at`), in entry-key order; and the feed length.
pub fn batch(
    r: &Replica,
    at: Hlc,
    after: Option<EntryKey>,
    feed_from: u64,
) -> (Vec<ArchiveRecord>, u64) {
    let mut out: Vec<(EntryKey, ArchiveRecord)> = Vec::new();
    for m in r.members() {
        for e in r.origin_events(m.region, 0) {
            if e.hlc > at {
                break;
            }
            let key = (e.key(), 0);
            if after.is_some_and(|a| key <= a) {
                continue;
            }
            let (status, comp) = match r.status(e.id) {
                Some((Status::Reversed, c)) => (STATUS_REVERSED, c.cloned()),
                Some((_, c)) => (STATUS_SETTLED, c.cloned()),
                None => (STATUS_SETTLED, None),
            };
            out.push((
                key,
                ArchiveRecord::Event {
                    event: e.clone(),
                    status,
                    comp,
                },
            ));
        }
    }
    let feed_len = r.feed_len();
    for c in r.feed(feed_from, usize::MAX) {
        out.push((
            wallet_core::comp_entry_key(c),
            ArchiveRecord::Comp(c.clone()),
        ));
    }
    out.sort_by_key(|a| a.0);
    (out.into_iter().map(|(_, r)| r).collect(), feed_len)
}

/// What the archive holds once every batch sent to it is appended: its last mark and last
/// entry key (the actor's view; the archive's thread applies the batches in order).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Archived {
    /// The last mark: (snapshot point, feed length).
    pub mark: Option<(Hlc, u64)>,
    /// The last entry key.
    pub last_key: Option<EntryKey>,
}

impl Archived {
    /// What `a` holds now.
    pub fn of(a: &Archive) -> Archived {
        Archived {
            mark: a.mark(),
            last_key: a.last_key(),
        }
    }

    /// The snapshot point archived.
    pub fn at(&self) -> Option<Hlc> {
        self.mark.map(|(at, _)| at)
    }
}

/// One batch for the archive: its records in entry-key order, then a mark at `at`.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The records.
    pub records: Vec<ArchiveRecord>,
    /// The snapshot point it archives up to.
    pub at: Hlc,
    /// The feed length at `at`.
    pub feed_len: u64,
}

impl Batch {
    /// What the archive holds once this batch is appended after `known`.
    pub fn applied(&self, known: Archived) -> Archived {
        Archived {
            mark: Some((self.at, self.feed_len)),
            last_key: self
                .records
                .iter()
                .rev()
                .find_map(ArchiveRecord::entry_key)
                .or(known.last_key),
        }
    }
}

/// The batch that brings the archive (holding `known`) up to the replica's compaction point,
/// if the replica may compact now.
pub fn next_batch(r: &Replica, known: Archived) -> Option<Batch> {
    if !r.compaction_allowed() {
        return None;
    }
    let at = r.compaction_point()?;
    let feed_from = known.mark.map_or(0, |(_, n)| n);
    let (records, feed_len) = batch(r, at, known.last_key, feed_from);
    Some(Batch {
        records,
        at,
        feed_len,
    })
}

/// One compaction with its archive, on this thread (tests; walletd runs the same steps on
/// the archive's thread, [`crate::archiver`]): the batch is appended and made durable first,
/// then retention runs, and only then the replica folds (and emits the `Record::Snapshot`
/// that lets the store delete the folded events). Ok(None): nothing to fold; Err: the archive
/// failed and nothing was folded.
pub fn archive_and_compact(
    r: &mut Replica,
    archive: Option<&mut Archive>,
    now_ms: u64,
) -> Result<Option<wallet_core::Snapshot>, ArchiveError> {
    if let Some(a) = archive {
        let Some(b) = next_batch(r, Archived::of(a)) else {
            return Ok(None);
        };
        a.append(&b.records, b.at, b.feed_len)?;
        a.expire(now_ms)?;
    } else if !r.compaction_allowed() {
        return Ok(None);
    }
    Ok(r.compact())
}

/// A read of the history: answered now from the replica, or with a part to read from the
/// archive on its thread.
pub enum Read {
    /// The answer.
    Now(Reply),
    /// The answer, once the archive is read.
    Archive(ArchiveRead),
}

/// The archived part of a read, run on the archive's thread.
pub type ArchiveRead = Box<dyn FnOnce(&Archive) -> Reply + Send>;

impl Read {
    /// Answers on this thread (tests, and tools holding the archive).
    pub fn answer(self, archive: Option<&Archive>) -> Reply {
        match (self, archive) {
            (Read::Now(r), _) => r,
            (Read::Archive(f), Some(a)) => f(a),
            (Read::Archive(_), None) => behind(),
        }
    }
}

/// The archive holds less than the mark the actor read against: an append failed (the
/// region stops acknowledging at the fold, see [`crate::archiver`]).
fn behind() -> Reply {
    tracing::error!("archive read below a mark the archive does not hold");
    Reply::error(
        500,
        "archive_unavailable",
        "the archive of compacted history could not be read on this region",
    )
}

fn is_behind(a: &Archive, known: Archived) -> bool {
    a.mark() < known.mark
}

fn archive_error(e: &ArchiveError) -> Reply {
    tracing::error!(error = %e, "archive read failed");
    Reply::error(
        500,
        "archive_unavailable",
        "the archive of compacted history could not be read on this region",
    )
}

fn expired(what: &str) -> Reply {
    Reply::error(
        410,
        "archived_expired",
        &format!(
            "{what} is older than this region's archive retention \
             ([storage] archive_retention_days): its archive segment was deleted"
        ),
    )
}

/// An archived record as the API shows it.
fn view(r: &ArchiveRecord, with_account: bool) -> Option<EntryView> {
    match r {
        ArchiveRecord::Event {
            event,
            status,
            comp,
        } => {
            let st = if *status == STATUS_REVERSED {
                Status::Reversed
            } else {
                Status::Settled
            };
            Some(EntryView::Event(render::event_view(
                event,
                Some((st, comp.as_ref())),
                with_account,
            )))
        }
        ArchiveRecord::Comp(c) => Some(EntryView::Compensation(render::comp_view(c, with_account))),
        ArchiveRecord::Mark { .. } => None,
    }
}

/// `GET /v1/transactions/{id}`: at or below the archive's last mark from the archive (final,
/// whole: after a restart the replica keeps only the key of a folded event still within its
/// idempotency retention, and no compensation below its snapshot), above it from the replica;
/// 410 `archived_expired` below the retention, 410 `compacted` when folded and not in this
/// region's archive (a region started from a peer's snapshot holds no archive below it).
pub fn transaction(r: &Replica, archive: Option<Archived>, id: &str) -> Read {
    let nf = || not_found(id);
    let (cause, comp_sub) = if let Ok(eid) = EventId::parse(id) {
        (eid, None)
    } else {
        let Some((prefix, cause)) = render::parse_comp_id(id) else {
            return Read::Now(Reply::error(
                400,
                "invalid_transaction_id",
                "transaction ids look like <region>:<seq> (e.g. eu:12) or fee:/rev:/conflict:<region>:<seq>",
            ));
        };
        (cause, Some(if prefix == "conflict" { 2 } else { 1 }))
    };
    let live = || -> Reply {
        let Some(ev) = r.event(cause) else {
            return nf();
        };
        let Some(sub) = comp_sub else {
            return Reply::json(200, render::event_json(ev, r.status(cause), true));
        };
        let found = ev.tx().and_then(|tx| {
            let key = ev.key();
            r.entries(&tx.account, Some((key, sub - 1)), 2)
                .into_iter()
                .find(|(k, _)| *k == (key, sub))
        });
        match found {
            Some((_, wallet_core::Entry::Compensation(c))) if c.id() == id => {
                Reply::json(200, render::comp_json(c, true))
            }
            _ => nf(),
        }
    };
    let boundary = archive.and_then(|a| a.at());
    let held = r.event(cause);
    let archived_range = match held {
        Some(e) => boundary.is_some_and(|b| e.hlc <= b),
        None => r.compacted(cause),
    };
    if !archived_range {
        return Read::Now(live());
    }
    // What to answer when the archive does not hold it.
    let fallback = if held.is_some() {
        live()
    } else {
        compacted(id)
    };
    let Some(known) = archive else {
        return Read::Now(fallback);
    };
    let id = id.to_string();
    Read::Archive(Box::new(move |a| {
        if is_behind(a, known) {
            return behind();
        }
        match a.find(&id, cause.origin, cause.seq) {
            Ok(Some(rec)) => {
                if let Some(v) = view(&rec, true) {
                    return Reply::json(200, render::to_json(&v));
                }
            }
            Ok(None) if a.expired().seq(cause.origin, cause.seq) => {
                return expired(&format!("transaction {id:?}"));
            }
            // A compensation id whose cause is archived: the cause caused none.
            Ok(None) if comp_sub.is_some() => {
                match a.find(&cause.to_string(), cause.origin, cause.seq) {
                    Ok(Some(_)) => return not_found(&id),
                    Ok(None) => {}
                    Err(e) => return archive_error(&e),
                }
            }
            Ok(None) => {}
            Err(e) => return archive_error(&e),
        }
        fallback
    }))
}

fn not_found(id: &str) -> Reply {
    Reply::error(
        404,
        "not_found",
        &format!("no transaction {id:?} in this region"),
    )
}

fn compacted(id: &str) -> Reply {
    Reply::error(
        410,
        "compacted",
        &format!(
            "transaction {id:?} is settled and was compacted into a snapshot that this region \
             did not archive (it started from a peer's snapshot, or its archive was removed): \
             its effect is in the balances, its record is not served here"
        ),
    )
}

/// `GET /v1/accounts/{a}/transactions`: the archive's entries (at or below its mark), then
/// the replica's (above it), `limit` at a time after the cursor.
pub fn transactions(
    r: &Replica,
    archive: Option<Archived>,
    account: &wallet_core::AccountId,
    after: Option<EntryKey>,
    limit: usize,
) -> Read {
    let want = limit.saturating_add(1);
    let boundary = archive.and_then(|a| a.at());
    // The live part: entries above the boundary (compensations of folded events stay in
    // the replica's memory until a restart; the archive serves them). Every archived entry
    // precedes them.
    let mut live: Vec<(EntryKey, EntryView)> = Vec::new();
    let mut cursor = after;
    while live.len() < want {
        let asked = want - live.len();
        let got = r.entries(account, cursor, asked);
        let Some((last, _)) = got.last() else {
            break;
        };
        let (last, n) = (*last, got.len());
        live.extend(
            got.iter()
                .filter(|(k, _)| boundary.is_none_or(|b| k.0 .0 > b))
                .map(|(k, e)| (*k, render::entry_view(r, e, false))),
        );
        cursor = Some(last);
        if n < asked {
            break;
        }
    }
    let account = account.to_string();
    // The archive is read when the page starts at or below its mark.
    let (Some(known), Some(b)) = (archive, boundary) else {
        return Read::Now(page_reply(account, live, limit));
    };
    if after.is_some_and(|k| k.0 .0 > b) {
        return Read::Now(page_reply(account, live, limit));
    }
    Read::Archive(Box::new(move |a| {
        if is_behind(a, known) {
            return behind();
        }
        if let (Some(k), Some(top)) = (after, a.expired().key) {
            if k < top {
                return expired("the history before this cursor");
            }
        }
        let mut page: Vec<(EntryKey, EntryView)> = match a.account_page(&account, after, want) {
            Ok(recs) => recs
                .iter()
                .filter_map(|(k, rec)| Some((*k, view(rec, false)?)))
                .collect(),
            Err(e) => return archive_error(&e),
        };
        page.extend(live);
        page_reply(account, page, limit)
    }))
}

/// One page of an account's history: `limit` entries and the cursor after them (if more).
fn page_reply(account: String, mut page: Vec<(EntryKey, EntryView)>, limit: usize) -> Reply {
    let more = page.len() > limit;
    page.truncate(limit);
    let next = if more {
        page.last().map(|(k, _)| render::entry_cursor(k))
    } else {
        None
    };
    Reply::json(
        200,
        render::to_json(&render::TransactionsPage {
            account,
            transactions: page.into_iter().map(|(_, v)| v).collect(),
            next,
        }),
    )
}

/// `GET /v1/compensations`: the archive's feed below the replica's first held position,
/// then the replica's.
pub fn compensations(r: &Replica, archive: Option<Archived>, after: u64, limit: usize) -> Read {
    // The replica holds the feed from `base` (a restart from a snapshot starts it there).
    let base = r.feed_len() - r.feed(0, usize::MAX).len() as u64;
    let live: Vec<Compensation> = r.feed(after.max(base), limit).to_vec();
    let Some(known) = archive.filter(|_| after < base) else {
        return Read::Now(feed_reply(Vec::new(), live, after, limit));
    };
    Read::Archive(Box::new(move |a| {
        if is_behind(a, known) {
            return behind();
        }
        if after < a.expired().feed_end {
            return expired("the compensation feed before this cursor");
        }
        match a.feed_page(after, limit) {
            Ok(v) => {
                let list = v.into_iter().filter(|c| c.position < base).collect();
                feed_reply(list, live, after, limit)
            }
            Err(e) => archive_error(&e),
        }
    }))
}

/// A page of the feed: the archived part, then the live part, `limit` in all.
fn feed_reply(
    mut list: Vec<Compensation>,
    live: Vec<Compensation>,
    after: u64,
    limit: usize,
) -> Reply {
    let room = limit.saturating_sub(list.len());
    list.extend(live.into_iter().take(room));
    let next = list.last().map_or(after, |c| c.position + 1);
    Reply::json(
        200,
        render::to_json(&render::CompensationsPage {
            compensations: list.iter().map(|c| render::comp_view(c, true)).collect(),
            next: render::feed_cursor(next),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transactions_body(
        r: &Replica,
        archive: Option<&Archive>,
        account: &wallet_core::AccountId,
        after: Option<EntryKey>,
        limit: usize,
    ) -> Reply {
        transactions(r, archive.map(Archived::of), account, after, limit).answer(archive)
    }

    fn tx_read(r: &Replica, archive: Option<&Archive>, id: &str) -> Reply {
        transaction(r, archive.map(Archived::of), id).answer(archive)
    }

    fn compensations_body(
        r: &Replica,
        archive: Option<&Archive>,
        after: u64,
        limit: usize,
    ) -> Reply {
        compensations(r, archive.map(Archived::of), after, limit).answer(archive)
    }
    use proptest::prelude::*;
    use wallet_core::{
        AccountId, Amount, Config, Currency, Kind, Message, Output, Policy, RegionId, TxRequest,
    };

    const POLICY: &str = "[default]\naction = \"reverse\"\noverdraft_line = \"0\"\n\
        reversible = [\"purchase\"]\n\
        fee = { flat = \"1.00\", percent = \"0\", minimum = \"0\", grace = \"0\", per = \"debit\" }\n";

    /// Two regions on a hand-driven network; `archive` (on eu) set: eu compacts into it.
    struct Pair {
        reps: [Replica; 2],
        queue: Vec<(usize, RegionId, Message)>,
        now: u64,
        archive: Option<Archive>,
    }

    fn regions() -> [RegionId; 2] {
        [RegionId::new("eu").unwrap(), RegionId::new("us").unwrap()]
    }

    impl Pair {
        fn new(archive: Option<Archive>) -> Pair {
            let policy = Policy::from_toml(POLICY).unwrap();
            let r = regions();
            let mk =
                |i: usize| Replica::new(Config::new(r[i], r.to_vec(), policy.clone()), Hlc::ZERO);
            let mut p = Pair {
                reps: [mk(0), mk(1)],
                queue: Vec::new(),
                now: 1_000,
                archive,
            };
            p.reps[0].handle_connected(p.now, r[1]);
            p.reps[1].handle_connected(p.now, r[0]);
            p.pump(true);
            p
        }

        /// Persists every record at once, queues the messages, and delivers them if `deliver`.
        fn pump(&mut self, deliver: bool) {
            let r = regions();
            loop {
                for (i, region) in r.iter().enumerate() {
                    while let Some(o) = self.reps[i].poll_output() {
                        match o {
                            Output::Persist { index, .. } => self.reps[i].handle_persisted(index),
                            Output::Broadcast(m) => self.queue.push((1 - i, *region, m)),
                            Output::Send { msg, .. } => self.queue.push((1 - i, *region, msg)),
                            _ => {}
                        }
                    }
                }
                if !deliver || self.queue.is_empty() {
                    return;
                }
                for (to, from, m) in std::mem::take(&mut self.queue) {
                    self.reps[to].handle_message(self.now, from, m);
                }
            }
        }

        /// `n` deposits alternating between the two regions, a tick after every ten, then
        /// four more ticks: eu compacts (into its archive, if any) along the way.
        fn fill(&mut self, n: u32) {
            for i in 0..n {
                self.submit((i % 2) as usize, 0, false, 100 + i);
                self.pump(true);
                if i % 10 == 9 {
                    self.tick(true);
                }
            }
            for _ in 0..4 {
                self.tick(true);
            }
        }

        fn tick(&mut self, deliver: bool) {
            self.now += 700;
            // The archiver's two steps (`crate::archiver`): a batch ahead now, more settles
            // meanwhile, then the rest up to the point of the fold, and the fold.
            if let Some(a) = self.archive.as_mut() {
                if let Some(b) = next_batch(&self.reps[0], Archived::of(a)) {
                    a.append(&b.records, b.at, b.feed_len).unwrap();
                }
            }
            for i in 0..2 {
                self.reps[i].handle_timeout(self.now);
            }
            self.pump(deliver);
            if let Some(a) = self.archive.as_mut() {
                archive_and_compact(&mut self.reps[0], Some(a), self.now).unwrap();
                self.pump(deliver);
            }
        }

        /// eu restarts as walletd does: from its last snapshot and the events after it
        /// when it compacted, else from every event; its clock floor is the newest HLC held.
        fn restart_eu(&mut self) {
            let old = &self.reps[0];
            let events: Vec<wallet_core::Event> = old
                .members()
                .iter()
                .flat_map(|m| old.origin_events(m.region, 0).iter().cloned())
                .collect();
            let snap = old.last_snapshot().cloned();
            let ceiling = events
                .iter()
                .map(|e| e.hlc)
                .chain(snap.as_ref().map(|s| s.body.at))
                .max()
                .unwrap_or(Hlc::ZERO);
            let watermark = old.watermark();
            let r = regions();
            let policy = Policy::from_toml(POLICY).unwrap();
            let mut z = Replica::new(Config::new(r[0], r.to_vec(), policy), ceiling);
            match &snap {
                Some(s) => z.restore(s, events).unwrap(),
                None => z.load(events),
            }
            z.restore_watermark(watermark);
            self.reps[0] = z;
            self.queue.clear();
            self.reps[0].handle_connected(self.now, r[1]);
            self.reps[1].handle_disconnected(self.now, r[0]);
            self.reps[1].handle_connected(self.now, r[0]);
            self.pump(true);
        }

        fn submit(&mut self, region: usize, account: u8, debit: bool, cents: u32) {
            self.submit_keyed(region, account, debit, cents, None);
        }

        fn submit_keyed(
            &mut self,
            region: usize,
            account: u8,
            debit: bool,
            cents: u32,
            key: Option<String>,
        ) {
            let amount = format!("{}.{:02}", cents / 100, cents % 100);
            let _ = self.reps[region].submit(
                self.now,
                TxRequest {
                    account: AccountId::new(&format!("a{account}")).unwrap(),
                    kind: if debit { Kind::Purchase } else { Kind::Deposit },
                    amount: Amount::parse(&amount, Currency::USD).unwrap(),
                    currency: Currency::USD,
                    idempotency_key: key,
                    reference: Some("ref".into()),
                },
            );
        }

        fn page(&self, account: u8, after: Option<EntryKey>, limit: usize) -> serde_json::Value {
            let a = AccountId::new(&format!("a{account}")).unwrap();
            let r = transactions_body(&self.reps[0], self.archive.as_ref(), &a, after, limit);
            assert_eq!(r.status, 200, "{:?}", r.body);
            serde_json::from_slice(&r.body).unwrap()
        }
    }

    /// (region, account, debit, cents, deliver now, keyed)
    type Op = (usize, u8, bool, u32, bool, bool);

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            (
                0..2usize,
                0..3u8,
                any::<bool>(),
                1..3_000u32,
                any::<bool>(),
                any::<bool>(),
            ),
            1..60,
        )
    }

    /// The archive's thread (`crate::archiver`): step 1's append and the reads queued behind
    /// a busy thread leave the caller free; a read runs after the appends sent before it;
    /// the fold's writes are held until its last batch is durable.
    #[test]
    fn the_archive_thread_appends_and_reads_in_order_off_the_caller_and_holds_the_fold() {
        use crate::archiver::Archiver;
        use tokio::sync::oneshot;
        let (mut x, mut y) = (Pair::new(None), Pair::new(None));
        x.fill(60);
        y.fill(60);
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), 4_096, None, 0).unwrap();
        let (mut ar, mut done) = Archiver::spawn(archive).unwrap();
        // The thread is busy with a read that waits for the gate.
        let (gate, gate_rx) = std::sync::mpsc::channel::<()>();
        let (busy_tx, busy_rx) = oneshot::channel();
        let wait = move |_: &Archive| {
            let _ = gate_rx.recv();
            Reply::json(200, "{}")
        };
        ar.read(Box::new(wait), busy_tx);
        // Step 1 is queued behind it and the caller goes on (here it would wait for ever if
        // the archive ran on the caller's thread).
        assert!(ar.start(&x.reps[0], x.now));
        assert!(ar.busy() && !ar.holds_writes());
        assert!(done.try_recv().is_err());
        // A read queued now runs after step 1's append: it joins at the mark the caller knows.
        let a0 = AccountId::new("a0").unwrap();
        let read = |x: &Pair, ar: &Archiver| {
            let (tx, rx) = oneshot::channel();
            match transactions(&x.reps[0], Some(ar.known()), &a0, None, 1000) {
                Read::Archive(f) => ar.read(f, tx),
                Read::Now(_) => panic!("below the mark, the archive is read"),
            }
            rx
        };
        let mut early = read(&x, &ar);
        let want_early = y.page(0, None, 1000);
        assert!(early.try_recv().is_err());
        // More settles at the replica meanwhile.
        for p in [&mut x, &mut y] {
            for i in 0..10 {
                p.submit(i % 2, 0, false, 300 + i as u32);
                p.pump(true);
            }
            p.tick(true);
            p.tick(true);
        }
        gate.send(()).unwrap();
        assert_eq!(busy_rx.blocking_recv().unwrap().status, 200);
        // Step 1 is durable: step 2 (the rest) goes and the replica folds; its writes are
        // held until that batch is durable too.
        let d = done.blocking_recv().unwrap();
        let snap = ar.on_done(d, &mut x.reps[0], x.now).unwrap();
        assert!(snap.is_some(), "the replica folds");
        assert!(
            ar.holds_writes(),
            "the fold's writes wait for its last batch"
        );
        let d = done.blocking_recv().unwrap();
        assert!(ar.on_done(d, &mut x.reps[0], x.now).unwrap().is_none());
        assert!(!ar.holds_writes() && !ar.busy() && !ar.failed());
        x.pump(true);
        let page = |r: Reply| -> serde_json::Value { serde_json::from_slice(&r.body).unwrap() };
        assert_eq!(page(early.blocking_recv().unwrap()), want_early);
        // After the fold, a read through the thread pages like a never-compacted region.
        assert!(x.reps[0].events_in_memory() < y.reps[0].events_in_memory());
        let late = read(&x, &ar).blocking_recv().unwrap();
        assert_eq!(page(late), y.page(0, None, 1000));
    }

    #[test]
    fn reads_below_the_retention_answer_410_archived_expired() {
        let dir = tempfile::tempdir().unwrap();
        let day = 86_400_000;
        let archive = Archive::open(dir.path(), 4_096, Some(day), 0).unwrap();
        let mut x = Pair::new(Some(archive));
        x.fill(200);
        let first = x.page(0, None, 3);
        let cursor = render::parse_entry_cursor(first["next"].as_str().unwrap());
        assert_eq!(tx_read(&x.reps[0], x.archive.as_ref(), "eu:1").status, 200);
        let a = x.archive.as_mut().unwrap();
        assert!(a.segments() > 2, "{}", a.segments());
        // Ten days later every sealed segment is past the retention.
        assert!(a.expire(10 * day).unwrap() > 0);
        let r = tx_read(&x.reps[0], x.archive.as_ref(), "eu:1");
        assert_eq!(r.status, 410, "{:?}", r.body);
        assert!(std::str::from_utf8(&r.body)
            .unwrap()
            .contains("archived_expired"));
        let a = AccountId::new("a0").unwrap();
        let r = transactions_body(&x.reps[0], x.archive.as_ref(), &a, cursor, 3);
        assert_eq!(r.status, 410, "{:?}", r.body);
        // A listing from the start begins at the oldest entry kept (here: all expired but
        // the active segment's).
        let kept = x.page(0, None, 1000);
        let n = kept["transactions"].as_array().unwrap().len();
        assert!(n < 100, "{n}");
        // The live part is untouched.
        x.submit(0, 0, false, 1);
        x.pump(true);
        assert_eq!(
            tx_read(&x.reps[0], x.archive.as_ref(), "eu:101").status,
            200
        );
    }

    #[test]
    fn a_region_started_from_a_peer_snapshot_answers_410_compacted_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), 4_096, None, 0).unwrap();
        let mut x = Pair::new(Some(archive));
        x.fill(40);
        let snap = x.reps[0].last_snapshot().expect("compacted").clone();
        // A rebuilt eu: the peer's snapshot, an empty archive.
        let policy = Policy::from_toml(POLICY).unwrap();
        let r = regions();
        let mut z = Replica::new(Config::new(r[0], r.to_vec(), policy), Hlc::ZERO);
        z.restore(&snap, Vec::new()).unwrap();
        let empty_dir = tempfile::tempdir().unwrap();
        let empty = Archive::open(empty_dir.path(), 4_096, None, 0).unwrap();
        for a in [Some(&empty), None] {
            let got = tx_read(&z, a, "eu:1");
            assert_eq!(got.status, 410, "{:?}", got.body);
            assert!(std::str::from_utf8(&got.body)
                .unwrap()
                .contains("\"compacted\""));
        }
        // The region that compacted it serves it from its archive.
        assert_eq!(tx_read(&x.reps[0], x.archive.as_ref(), "eu:1").status, 200);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Paging archive + live equals paging a region that never compacted: every page,
        /// the cursors, every transaction and compensation by id, and the feed; with
        /// compactions between two pages, and restarts (from the snapshot and the archive).
        #[test]
        fn archive_and_live_page_like_a_never_compacted_region(ops in ops(), limit in 1..7usize) {
            let dir = tempfile::tempdir().unwrap();
            let archive = Archive::open(dir.path(), 4_096, None, 0).unwrap();
            let mut x = Pair::new(Some(archive));
            let mut y = Pair::new(None);
            for (i, (region, account, debit, cents, deliver, keyed)) in ops.iter().enumerate() {
                let key = keyed.then(|| format!("k{i}"));
                for p in [&mut x, &mut y] {
                    p.submit_keyed(*region, *account, *debit, *cents, key.clone());
                    p.pump(*deliver);
                    if i % 4 == 3 {
                        p.tick(*deliver);
                    }
                    // A restart (x from its snapshot and archive, y from every event).
                    if i % 8 == 7 {
                        p.tick(true);
                        p.restart_eu();
                    }
                }
            }
            for p in [&mut x, &mut y] {
                for _ in 0..4 {
                    p.tick(true);
                }
            }
            prop_assert!(x.reps[0].stats().compactions > 0 || x.reps[0].stats().settled < 2);
            for account in 0..3u8 {
                let mut after = None;
                let mut pages = 0;
                loop {
                    let (px, py) = (x.page(account, after, limit), y.page(account, after, limit));
                    prop_assert_eq!(&px, &py);
                    let Some(next) = px["next"].as_str() else { break };
                    after = render::parse_entry_cursor(next);
                    prop_assert!(after.is_some());
                    // A compaction between two pages keeps the cursor valid (a few times:
                    // each adds an entry).
                    pages += 1;
                    if pages > 3 {
                        continue;
                    }
                    x.submit(0, account, false, 100);
                    y.submit(0, account, false, 100);
                    for p in [&mut x, &mut y] {
                        p.pump(true);
                        p.tick(true);
                        p.tick(true);
                    }
                }
            }
            let ids: Vec<EventId> = y.reps[0]
                .members()
                .iter()
                .flat_map(|m| y.reps[0].origin_events(m.region, 0).iter().map(|e| e.id))
                .collect();
            for id in ids {
                let a = tx_read(&x.reps[0], x.archive.as_ref(), &id.to_string());
                let b = tx_read(&y.reps[0], None, &id.to_string());
                prop_assert_eq!((a.status, &a.body), (b.status, &b.body));
            }
            for c in y.reps[0].feed(0, usize::MAX) {
                let a = tx_read(&x.reps[0], x.archive.as_ref(), &c.id());
                let b = tx_read(&y.reps[0], None, &c.id());
                prop_assert_eq!((a.status, &a.body), (b.status, &b.body));
            }
            let mut from = 0;
            loop {
                let a = compensations_body(&x.reps[0], x.archive.as_ref(), from, limit);
                let b = compensations_body(&y.reps[0], None, from, limit);
                prop_assert_eq!(&a.body, &b.body);
                let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
                let next = render::parse_feed_cursor(v["next"].as_str().unwrap()).unwrap();
                if next == from {
                    break;
                }
                from = next;
            }
        }
    }
}
