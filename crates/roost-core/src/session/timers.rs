//! Time in a session: keep-alive while a connection is attached, will delay and session
//! expiry while none is ([MQTT-3.1.2-22], MQTT 5.0 §3.1.2.11.2, §3.1.3.2.2).
//!
//! ```text
//!   attach(&n, now) ──▶ connected: clock = last packet (handle(_, now) moves it)
//!        ▲                  │ poll_timeout = clock + 1.5 × keep_alive (keep_alive 0: none)
//!        │                  │ handle_timeout ─▶ Timeout::KeepAlive (node closes with 0x8D)
//!        │            detach(now, will)
//!        │                  ▼
//!        └──────────── detached: clock = now + expiry (u32::MAX: none)
//!       (cancels a          │        pending will due = now + min(delay, expiry)
//!        pending will)      │ poll_timeout = min(will due, clock)
//!                           │ handle_timeout ─▶ Timeout::Will(w)         (delay passed)
//!                           │                 ─▶ Timeout::Expired(Ended) (session over; a will
//!                           ▼                    still pending goes with it)
//!                         ended: no timer (expiry 0 at detach, expired, clean-start attach)
//! ```
//!
//! The session only decides *when*; the node does what needs the whole broker: publishing a
//! will ([`Message::from_will`](crate::message::Message::from_will)), removing an ended session
//! from the registry and index, handing orphans to other members of their shared groups.

use super::{ClientParams, Orphan, Session};
use crate::connect::Negotiated;
use crate::topic::TopicFilter;
use roost_codec::LastWill;
use std::time::{Duration, Instant};

/// A will waiting for its delay.
#[derive(Debug)]
pub(super) struct PendingWill {
    will: LastWill,
    due: Instant,
}

/// What the node must do when the session's timer fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timeout {
    /// No packet for 1.5 × keep-alive ([MQTT-3.1.2-22]): close the connection with 0x8D
    /// ([`Close::keep_alive`](super::Close::keep_alive)) and publish its will.
    KeepAlive,
    /// The will delay passed with no reconnect: publish this will now.
    Will(LastWill),
    /// The Session Expiry Interval passed: the session is over (already emptied). A will that
    /// was still waiting goes out with it (MQTT 5.0 §3.1.3.2.2, [MQTT-3.1.3-9]).
    Expired(Ended),
}

/// A session that just ended: what is left to do outside it. The session itself is already
/// empty (no subscriptions, messages, or timers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ended {
    /// A will that became due because the session ended: publish it.
    pub will: Option<LastWill>,
    /// Shared-subscription messages it still held: hand them to another group member.
    pub orphans: Vec<Orphan>,
    /// Its subscriptions: remove them from the index (and the cluster's route table).
    pub filters: Vec<TopicFilter>,
}

/// What [`Session::detach`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detached {
    /// Publish now: the will had no delay, or the session ends now.
    pub will_now: Option<LastWill>,
    /// Queued messages of shared subscriptions: another member of the group must have them
    /// (a member that is gone must not strand its group's messages).
    pub orphans: Vec<Orphan>,
    /// Session Expiry Interval 0: the session ended with the connection.
    pub ended: Option<Ended>,
}

/// The Will Delay Interval of a will, in seconds (0 when absent).
pub fn will_delay(w: &LastWill) -> u32 {
    w.properties.will_delay_interval.unwrap_or(0)
}

/// A connection that was taken over by another one closed with `will`: it goes out now unless
/// it has a delay and the session continued (the new connection did not start clean) —
/// MQTT 5.0 §3.1.4, §3.1.3.2.2.
pub fn takeover_will(will: LastWill, taken_over_by_clean_start: bool) -> Option<LastWill> {
    (will_delay(&will) == 0 || taken_over_by_clean_start).then_some(will)
}

fn secs(n: u32) -> Duration {
    Duration::from_secs(u64::from(n))
}

impl Session {
    /// Attaches the connection `n` negotiated: its parameters, keep-alive and the session
    /// expiry. A clean start ends whatever the session held first ([MQTT-3.1.2-4]) and returns
    /// it, with a will that was waiting for its delay, now due (MQTT 5.0 §3.1.3.2.2). A resumed
    /// session cancels such a will (the client came back in time) and resends what was in
    /// flight (see [`connect`](Self::connect)). Whether the CONNACK says Session Present is the
    /// node's to know (it knows whether it found or created this session).
    pub fn attach(&mut self, n: &Negotiated, now: Instant) -> Option<Ended> {
        let ended = n.clean_start.then(|| self.end_now());
        self.connect_with(n.params, n.keep_alive, now);
        self.expiry_interval = n.expiry_interval;
        ended
    }

    fn connect_with(&mut self, params: ClientParams, keep_alive: u16, now: Instant) {
        self.connect(params, now);
        self.keep_alive = keep_alive;
    }

    /// Ends the session now (the node removes it: a stale copy, a copy replaced by one handed
    /// back from another node) and says what is left to do. A will still waiting for its delay
    /// is in the result: the caller decides whether it is due.
    pub fn terminate(&mut self) -> Ended {
        self.end_now()
    }

    /// Takes the will waiting for its delay, if any (it moves with the session to the node
    /// that takes the client over).
    pub fn take_pending_will(&mut self) -> Option<LastWill> {
        self.pending_will.take().map(|p| p.will)
    }

    /// Ends the session now and says what is left to do; the session is fresh afterwards.
    fn end_now(&mut self) -> Ended {
        let will = self.pending_will.take().map(|p| p.will);
        let filters = self.subscriptions.keys().cloned().collect();
        let orphans = self.end();
        let fresh = Session::new(self.client_id.clone(), self.limits.clone());
        let drops = self.drops;
        *self = fresh;
        self.drops = drops;
        Ended {
            will,
            orphans,
            filters,
        }
    }

    /// The Session Expiry Interval in effect, seconds (u32::MAX = never).
    pub fn expiry_interval(&self) -> u32 {
        self.expiry_interval
    }

    /// Sets the Session Expiry Interval (for a caller that attaches with
    /// [`connect`](Self::connect)).
    pub fn set_expiry_interval(&mut self, secs: u32) {
        self.expiry_interval = secs;
    }

    /// The connection closed; `will` is its will if it must be published (an abnormal close,
    /// or DISCONNECT 0x04). The will goes out now if it has no delay or the session ends now,
    /// else when `now + min(delay, expiry)` passes; the session ends now if its expiry interval
    /// is 0, else at `now + expiry` (never for u32::MAX) unless a connection attaches first.
    ///
    /// Only the connection still attached calls this. One that was taken over (a newer
    /// connection attached to this session meanwhile) leaves the session alone and settles its
    /// will with [`takeover_will`].
    pub fn detach(&mut self, now: Instant, will: Option<LastWill>) -> Detached {
        let orphans = self.take_shared_queued();
        let mut out = self.park(now, will);
        out.orphans = orphans;
        out
    }

    /// Like [`detach`](Self::detach), for a session that arrives without a connection (moved
    /// here by a node that stopped, or restored): its expiry and a pending will run from
    /// `now`, and the messages of shared subscriptions it holds stay queued for its client
    /// (they were the group's when they were given to this member; handing them to another
    /// member now could find none, the group's other members moving too). `orphans` is
    /// always empty.
    pub fn park(&mut self, now: Instant, will: Option<LastWill>) -> Detached {
        self.disconnect();
        let expiry = self.expiry_interval;
        let mut out = Detached::default();
        if let Some(w) = will {
            let delay = will_delay(&w);
            if delay == 0 || expiry == 0 {
                out.will_now = Some(w);
            } else {
                let due = now + secs(delay.min(expiry));
                self.pending_will = Some(Box::new(PendingWill { will: w, due }));
            }
        }
        if expiry == 0 {
            out.ended = Some(self.end_now());
            return out;
        }
        self.clock = (expiry != u32::MAX).then(|| now + secs(expiry));
        out
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called; `None`: no timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.client.is_some() {
            let keep_alive = Duration::from_millis(u64::from(self.keep_alive) * 1500);
            return self
                .clock
                .filter(|_| self.keep_alive > 0)
                .map(|t| t + keep_alive);
        }
        let will = self.pending_will.as_ref().map(|p| p.due);
        match (will, self.clock) {
            (Some(w), Some(e)) => Some(w.min(e)),
            (w, e) => w.or(e),
        }
    }

    /// The timer fired (or the caller checks): what is due at `now`, if anything. Expiry wins
    /// when both are due, and carries the will with it.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Timeout> {
        if self.client.is_some() {
            let due = self.poll_timeout()?;
            return (now >= due).then_some(Timeout::KeepAlive);
        }
        if self.clock.is_some_and(|e| now >= e) {
            return Some(Timeout::Expired(self.end_now()));
        }
        if self.pending_will.as_ref().is_some_and(|p| now >= p.due) {
            return self.pending_will.take().map(|p| Timeout::Will(p.will));
        }
        None
    }

    /// Records that a packet arrived (keep-alive, [MQTT-3.1.2-22]).
    pub(super) fn touch(&mut self, now: Instant) {
        if self.client.is_some() {
            self.clock = Some(now);
        }
    }
}
