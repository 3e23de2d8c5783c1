//! Replies held until a commit is durable.
//!
//! Every write the actor queues gets a sequence number; the storage writer reports the highest
//! one it made durable. An answer that depends on writes up to `seq` waits here until then, and
//! answers leave in the order they were held (a later write is never durable before an earlier
//! one, and a replayed answer must not overtake the original).
//!
//! With `ack = "peer"` (docs/protocol.md §12) a new event's answer then waits a second time,
//! until the core reports the event durable at another member too
//! (`Replica::peer_durable_seq`), or its deadline passes: then `503 peer_ack_timeout`.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::command::Reply;
use crate::metrics::Metrics;

struct Waiter {
    seq: u64,
    reply: oneshot::Sender<Reply>,
    answer: Reply,
    accepted: bool,
    /// `ack = "peer"`: the own event seq that must be durable at another member, and until
    /// when (ms); `None`: answered once local.
    peer: Option<(u64, u64)>,
}

/// Answer of a reply whose event was not durable at another member in time.
pub fn peer_ack_timeout() -> Reply {
    Reply::error(
        503,
        "peer_ack_timeout",
        "the transaction is durable in this region but no other region confirmed it in time; \
         it stays accepted: retry with the same Idempotency-Key to get it",
    )
}

/// The held replies and the highest durable write sequence number.
pub struct Waiters {
    queue: VecDeque<Waiter>,
    /// Durable here, waiting for another member (`ack = "peer"`).
    peer_queue: VecDeque<Waiter>,
    peer_durable: u64,
    durable_seq: u64,
    metrics: Arc<Metrics>,
}

impl Waiters {
    /// None held, nothing durable yet.
    pub fn new(metrics: Arc<Metrics>) -> Waiters {
        Waiters {
            queue: VecDeque::new(),
            peer_queue: VecDeque::new(),
            peer_durable: 0,
            durable_seq: 0,
            metrics,
        }
    }

    /// The highest write sequence number reported durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Replies held (for local durability, then for a peer's).
    pub fn len(&self) -> usize {
        self.queue.len() + self.peer_queue.len()
    }

    /// True when no reply is held.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.peer_queue.is_empty()
    }

    /// Like [`Waiters::answer_after`], then (`ack = "peer"`) until own event `event_seq` is
    /// durable at another member, or `deadline_ms`, whichever comes first.
    pub fn answer_after_peer(
        &mut self,
        seq: u64,
        (event_seq, deadline_ms): (u64, u64),
        reply: oneshot::Sender<Reply>,
        answer: Reply,
    ) {
        self.queue.push_back(Waiter {
            seq,
            reply,
            answer,
            accepted: true,
            peer: Some((event_seq, deadline_ms)),
        });
        self.durable(self.durable_seq);
    }

    /// Own events up to `seq` are durable at another member; replies past their deadline
    /// (`now_ms`) answer `503 peer_ack_timeout`.
    pub fn peer_durable(&mut self, seq: u64, now_ms: u64) {
        self.peer_durable = self.peer_durable.max(seq);
        if self.peer_queue.is_empty() {
            return;
        }
        let mut keep = VecDeque::with_capacity(self.peer_queue.len());
        for w in self.peer_queue.drain(..) {
            match w.peer {
                Some((s, _)) if s <= self.peer_durable => {
                    send(&self.metrics, w.reply, w.answer, w.accepted)
                }
                Some((_, deadline)) if deadline <= now_ms => {
                    let _ = w.reply.send(peer_ack_timeout());
                }
                _ => keep.push_back(w),
            }
        }
        self.peer_queue = keep;
    }

    /// Sends `answer` once every write up to `seq` is durable: at once when it already is and
    /// nothing is held before it. `accepted` counts a new transaction acknowledged.
    pub fn answer_after(
        &mut self,
        seq: u64,
        reply: oneshot::Sender<Reply>,
        answer: Reply,
        accepted: bool,
    ) {
        if seq <= self.durable_seq && self.queue.is_empty() {
            send(&self.metrics, reply, answer, accepted);
        } else {
            self.queue.push_back(Waiter {
                seq,
                reply,
                answer,
                accepted,
                peer: None,
            });
        }
    }

    /// The writer made every write up to `seq` durable: answer whoever waited for it.
    pub fn durable(&mut self, seq: u64) {
        self.durable_seq = self.durable_seq.max(seq);
        while self
            .queue
            .front()
            .is_some_and(|w| w.seq <= self.durable_seq)
        {
            if let Some(w) = self.queue.pop_front() {
                match w.peer {
                    Some((s, _)) if s > self.peer_durable => self.peer_queue.push_back(w),
                    _ => send(&self.metrics, w.reply, w.answer, w.accepted),
                }
            }
        }
    }

    /// Storage failed: every held reply gets `answer` instead (nothing it waited for will
    /// become durable).
    pub fn fail_all(&mut self, answer: &Reply) {
        for w in self.queue.drain(..).chain(self.peer_queue.drain(..)) {
            let _ = w.reply.send(answer.clone());
        }
    }
}

fn send(metrics: &Metrics, reply: oneshot::Sender<Reply>, answer: Reply, accepted: bool) {
    if accepted {
        metrics.accepted();
    }
    // The client may have gone away: nothing to do then.
    let _ = reply.send(answer);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(w: &mut Waiters, seq: u64, status: u16) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        w.answer_after(seq, tx, Reply::json(status, "{}"), status == 201);
        rx
    }

    #[test]
    fn replies_wait_for_their_write_and_leave_in_order() {
        let mut w = Waiters::new(Arc::new(Metrics::new()));
        let mut a = hold(&mut w, 2, 201);
        let mut b = hold(&mut w, 1, 200); // held behind `a`, although its write is earlier
        assert_eq!(w.len(), 2);
        w.durable(1);
        assert!(a.try_recv().is_err());
        assert!(b.try_recv().is_err(), "overtook an earlier held reply");
        w.durable(2);
        assert_eq!(a.try_recv().map(|r| r.status).ok(), Some(201));
        assert_eq!(b.try_recv().map(|r| r.status).ok(), Some(200));
        assert!(w.is_empty());
        // Already durable and nothing held: answered at once.
        let mut c = hold(&mut w, 2, 200);
        assert_eq!(c.try_recv().map(|r| r.status).ok(), Some(200));
        assert_eq!(w.durable_seq(), 2);
    }

    #[test]
    fn with_ack_peer_a_reply_waits_for_a_peer_or_times_out() {
        let mut w = Waiters::new(Arc::new(Metrics::new()));
        let peer = |w: &mut Waiters, seq, event, deadline| {
            let (tx, rx) = oneshot::channel();
            w.answer_after_peer(seq, (event, deadline), tx, Reply::json(201, "{}"));
            rx
        };
        let mut a = peer(&mut w, 1, 7, 1_000);
        let mut b = peer(&mut w, 2, 8, 1_000);
        w.durable(2);
        assert!(a.try_recv().is_err(), "answered before a peer held it");
        w.peer_durable(7, 10);
        assert_eq!(a.try_recv().map(|r| r.status).ok(), Some(201));
        assert!(b.try_recv().is_err());
        w.peer_durable(7, 1_000);
        assert_eq!(b.try_recv().map(|r| r.status).ok(), Some(503));
        assert!(w.is_empty());
        // Already durable at a peer: answered once local.
        let mut c = peer(&mut w, 3, 7, 5_000);
        w.durable(3);
        assert_eq!(c.try_recv().map(|r| r.status).ok(), Some(201));
    }

    #[test]
    fn a_storage_failure_answers_every_held_reply() {
        let mut w = Waiters::new(Arc::new(Metrics::new()));
        let mut a = hold(&mut w, 5, 201);
        w.fail_all(&Reply::error(503, "storage_unavailable", "x"));
        assert_eq!(a.try_recv().map(|r| r.status).ok(), Some(503));
        assert!(w.is_empty());
    }
}
