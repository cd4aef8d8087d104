//! Budget updates from one process go out together (group commit). Every Defender call of the
//! tenant updates one object by compare-and-swap, twice (the grant, then the settlement); the ten
//! messages an invocation handles at once would otherwise race each other for it as well as every
//! other invocation, and under load most of their writes would lose and be tried again. A [`Lane`]
//! queues the updates of one process: while one write is in flight the others wait, and the next
//! write carries every update queued by then, each applied in turn to the same budget, each
//! answered as if it had been written alone. Contention is then between processes, not messages,
//! and a busy process makes one write for many calls and settlements.
//!
//! An update is answered only once the write that carried it is stored. A writer dropped mid-way
//! (its invocation cancelled) leaves what it carried queued for the next writer; an update whose
//! own caller was dropped may still be applied (a grant nobody uses counts, conservatively, until
//! its call limit).

use std::sync::{Arc, Mutex, MutexGuard};

use super::{Answer, Op, Updated};
use crate::ports::StoreError;

/// Answers kept for callers that have not taken theirs yet (more than any process waits for).
const MAX_ANSWERED: usize = 10_000;

type Outcome = Result<Updated<Answer>, StoreError>;

/// One process's queue of budget updates. Clones share the queue: build one per process (the
/// stage's configuration does, once) and every message of every batch goes through it.
#[derive(Clone, Default)]
pub struct Lane(Arc<Inner>);

#[derive(Default)]
struct Inner {
    queue: Mutex<Queue>,
    /// Held by the one caller writing for the lane.
    writer: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Queue {
    next: u64,
    /// Updates not yet written, oldest first.
    pending: Vec<(u64, Op)>,
    /// Answers of written updates, until their callers take them.
    answered: Vec<(u64, Outcome)>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lane")
    }
}

/// A lane is how a process writes, not what it is configured to do: any two are equal, so the
/// configurations holding them compare by their settings alone.
impl PartialEq for Lane {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Lane {}

impl Lane {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.0.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `op`, then waits for its answer: written by whoever holds the writer's turn, or by
    /// this caller when the turn comes to it with the update still queued. `write` applies a
    /// batch of updates with one compare-and-swap and answers each.
    pub(super) async fn update<W, Fut>(&self, op: Op, write: W) -> Outcome
    where
        W: FnOnce(Vec<Op>) -> Fut,
        Fut: std::future::Future<Output = Result<Updated<Vec<Answer>>, StoreError>>,
    {
        let id = {
            let mut q = self.queue();
            let id = q.next;
            q.next += 1;
            q.pending.push((id, op));
            id
        };
        let _turn = self.0.writer.lock().await;
        if let Some(answer) = self.take(id) {
            return answer;
        }
        let batch: Vec<(u64, Op)> = self.queue().pending.clone();
        let ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
        let written = write(batch.into_iter().map(|(_, op)| op).collect()).await;
        let mut q = self.queue();
        q.pending.retain(|(id, _)| !ids.contains(id));
        match written {
            Ok(Updated::Done(answers)) => {
                for (id, answer) in ids.iter().zip(answers) {
                    q.answered.push((*id, Ok(Updated::Done(answer))));
                }
            }
            Ok(Updated::Contended) => {
                for id in &ids {
                    q.answered.push((*id, Ok(Updated::Contended)));
                }
            }
            Err(e) => {
                for id in &ids {
                    q.answered.push((*id, Err(e.clone())));
                }
            }
        }
        // An answer whose caller was dropped is never taken: keep only the newest.
        let over = q.answered.len().saturating_sub(MAX_ANSWERED);
        q.answered.drain(..over);
        drop(q);
        // Its own update was in the batch it wrote; the rest wait for their turn to take theirs.
        self.take(id)
            .unwrap_or_else(|| Err(StoreError("budget: an update went unanswered".into())))
    }

    fn take(&self, id: u64) -> Option<Outcome> {
        let mut q = self.queue();
        let at = q.answered.iter().position(|(i, _)| *i == id)?;
        Some(q.answered.remove(at).1)
    }
}
