//! Replies held until a commit is durable.
//!
//! Every write the actor queues gets a sequence number; the storage writer reports the highest
//! one it made durable. An answer that depends on writes up to `seq` waits here until then, and
//! answers leave in the order they were held (a later write is never durable before an earlier
//! one, and a replayed answer must not overtake the original).

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
}

/// The held replies and the highest durable write sequence number.
pub struct Waiters {
    queue: VecDeque<Waiter>,
    durable_seq: u64,
    metrics: Arc<Metrics>,
}

impl Waiters {
    /// None held, nothing durable yet.
    pub fn new(metrics: Arc<Metrics>) -> Waiters {
        Waiters {
            queue: VecDeque::new(),
            durable_seq: 0,
            metrics,
        }
    }

    /// The highest write sequence number reported durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Replies held.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no reply is held.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
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
            self.send(reply, answer, accepted);
        } else {
            self.queue.push_back(Waiter {
                seq,
                reply,
                answer,
                accepted,
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
                self.send(w.reply, w.answer, w.accepted);
            }
        }
    }

    /// Storage failed: every held reply gets `answer` instead (nothing it waited for will
    /// become durable).
    pub fn fail_all(&mut self, answer: &Reply) {
        for w in self.queue.drain(..) {
            let _ = w.reply.send(answer.clone());
        }
    }

    fn send(&self, reply: oneshot::Sender<Reply>, answer: Reply, accepted: bool) {
        if accepted {
            self.metrics.accepted();
        }
        // The client may have gone away: nothing to do then.
        let _ = reply.send(answer);
    }
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
    fn a_storage_failure_answers_every_held_reply() {
        let mut w = Waiters::new(Arc::new(Metrics::new()));
        let mut a = hold(&mut w, 5, 201);
        w.fail_all(&Reply::error(503, "storage_unavailable", "x"));
        assert_eq!(a.try_recv().map(|r| r.status).ok(), Some(503));
        assert!(w.is_empty());
    }
}
