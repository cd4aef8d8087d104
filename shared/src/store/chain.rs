//! Which queue message may act for a run (submit, then poll) or for one command (collect).
//!
//! SQS delivers at least once, duplicate alerts send more submit jobs, and a stage re-sends its
//! next job after a crash, so several messages can name the same run. Each record names the one
//! message that holds its chain; any other is a duplicate and is dropped. A holder hands the chain
//! on in two steps, so that a crash at any point leaves exactly one message able to go on:
//! `pending:<me>` is written first, then the next message is sent (carrying `prev: <me>`), then the
//! record names the next message's id. A redelivery of the holder (same message id) finds itself
//! named, or named as pending, and does the step again. The next message, arriving while the
//! record still says `pending:<its prev>`, takes the chain itself (its sender may have died before
//! naming it). Whichever of the two names the chain first wins; any other message is dropped. A
//! chain silent for longer than [`CHAIN_TTL`] (its holder went to a dead-letter queue) can be taken
//! over by any message for the run, such as a re-drive.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A chain whose holder has not acted for this long is taken over by the next message: longer than
/// the longest delay between two steps (900 s) plus five redeliveries at the longest visibility.
pub const CHAIN_TTL: Duration = Duration::from_secs(3600);

const PENDING: &str = "pending:";

/// Which message may act on a record: at most one at a time, handed on from message to message
/// as the run moves through the stages, so that a duplicate delivery finds it taken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// The message id that holds the chain, or `pending:<id>` while that message hands it on.
    pub holder: Option<String>,
    /// When the holder last changed.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
}

/// Where a message stands against a record's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// It holds the chain (or may take it).
    Mine,
    /// Another message holds the chain.
    Duplicate,
}

impl Chain {
    /// Where message `me`, sent by `prev` (if a chain's holder sent it), stands.
    pub fn standing(&self, me: &str, prev: Option<&str>, now: OffsetDateTime) -> Standing {
        let Some(holder) = &self.holder else {
            return Standing::Mine;
        };
        let pending = holder.strip_prefix(PENDING);
        if holder == me || pending == Some(me) || (pending.is_some() && pending == prev) {
            return Standing::Mine;
        }
        let ttl = time::Duration::try_from(CHAIN_TTL).unwrap_or_default();
        if self.since.is_none_or(|since| now - since > ttl) {
            Standing::Mine
        } else {
            Standing::Duplicate
        }
    }

    /// `me` holds the chain from now on.
    pub fn hold(&mut self, me: &str, now: OffsetDateTime) {
        self.holder = Some(me.to_string());
        self.since = Some(now);
    }

    /// `me` is about to send the next message.
    pub fn begin_handoff(&mut self, me: &str, now: OffsetDateTime) {
        self.holder = Some(format!("{PENDING}{me}"));
        self.since = Some(now);
    }

    /// Whether `me` holds the chain: it is the holder, or it is handing the chain on (it sent the
    /// next message and may still finish writing for it).
    pub fn held_by(&self, me: &str) -> bool {
        self.holder.as_deref() == Some(me) || self.is_handing_off(me)
    }

    /// Whether `me` is the one handing the chain on.
    pub fn is_handing_off(&self, me: &str) -> bool {
        self.holder.as_deref().and_then(|h| h.strip_prefix(PENDING)) == Some(me)
    }

    /// The chain ends (the record reached a state no message acts on).
    pub fn end(&mut self, now: OffsetDateTime) {
        self.holder = Some("ended".to_string());
        self.since = Some(now);
    }
}

/// A record that carries a chain.
pub trait Chained {
    /// The record's chain.
    fn chain(&self) -> &Chain;
    /// The record's chain, to change it.
    fn chain_mut(&mut self) -> &mut Chain;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_its_redeliveries_and_stale_chains() {
        let t = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let mut c = Chain::default();
        assert_eq!(
            c.standing("a", None, t),
            Standing::Mine,
            "nobody holds it yet"
        );
        c.hold("a", t);
        assert_eq!(
            c.standing("a", None, t),
            Standing::Mine,
            "a redelivery of the holder"
        );
        assert_eq!(c.standing("b", None, t), Standing::Duplicate);
        c.begin_handoff("a", t);
        assert_eq!(
            c.standing("a", None, t),
            Standing::Mine,
            "the holder died mid-handoff"
        );
        assert_eq!(
            c.standing("n", Some("a"), t),
            Standing::Mine,
            "the message a sent"
        );
        assert_eq!(c.standing("x", Some("z"), t), Standing::Duplicate);
        assert_eq!(c.standing("y", None, t), Standing::Duplicate);
        c.hold("n", t);
        assert_eq!(c.standing("a", None, t), Standing::Duplicate, "handed on");
        assert_eq!(
            c.standing("n2", Some("a"), t),
            Standing::Duplicate,
            "a's second send"
        );
        let later = t + time::Duration::seconds(3601);
        assert_eq!(
            c.standing("redrive", None, later),
            Standing::Mine,
            "silent for an hour"
        );
        c.end(t);
        assert_eq!(c.standing("n", None, t), Standing::Duplicate);
    }
}
