//! In-memory queues with Azure Service Bus peek-lock semantics.
//!
//! - A receive locks a message for the queue's lock duration (`LOCK_DURATION`, Service Bus's
//!   default 60 s) and raises its delivery count. The holder renews the lock (the binding does,
//!   every `lockRenewalInSec`, while daprd holds the message), completes the message (gone) or
//!   abandons it (available again at once, at the head of the queue, as Service Bus does).
//! - A lock that runs out makes the message available again, as an abandon does; the next
//!   receive raises its delivery count. A complete, abandon or renewal on a lock that ran out
//!   fails with [`LockLost`], as Service Bus's `MessageLockLost` does, and settles nothing.
//! - Past the max delivery count an abandoned or expired message moves to the dead-letter queue,
//!   which keeps every dead letter until it is replayed (sent back with a fresh delivery count)
//!   or purged.
//! - A lock dropped without being settled (a consumer's delivery that vanished) abandons it.
//! - Duplicate detection (`dedup`) judges each send first; scheduled messages and time-to-live
//!   (`schedule`) decide when a sent message is active and until when.
//!
//! Locks run out lazily: whatever reads or changes the queue first moves the messages whose lock
//! ran out, as of when it ran out, and a receiver waiting for a message wakes when the next lock
//! runs out. Service Bus behaves the same to every observer.
//!
//! Invariant: produced = scheduled + active + locked + completed + dead-lettered + expired +
//! purged. It holds by construction: each message sent is in exactly one place (waiting for its
//! time in the schedule, waiting in `ready`, held in `held` under its lock token, in the
//! dead-letter queue, or only counted once completed, expired or purged; a dropped duplicate is
//! never produced),
//! every move happens under the queue's one lock, and [`Queue::counts`] reads them all under it.
//! A replayed dead letter moves back to `ready`; a message is never copied. The tests check the
//! invariant on every read.
//!
//! Each move is recorded in the message's [`journey`](crate::journey), after the lock is released.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::{sync::Notify, time::Instant};
use tracing::debug;

use crate::{
    changes::Changes,
    dedup::{DetectionSettings, DuplicateDetection, Verdict},
    ids,
    journey::{At, Journeys, Step, Via},
    scaling::rfc3339,
    schedule::{self, Schedule},
    service_bus::Envelope,
};

/// How many dead letters the status lists (the peek API pages through all of them).
pub const DEAD_LETTERS_LISTED: usize = 100;
/// The application property a replayed dead letter carries: where it came from.
pub const REPLAYED_FROM: &str = "devstack-replayed-from";

/// Queue behaviour, shared by every queue of a sidecar.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// Deliveries before a message is dead-lettered (Service Bus default: 10).
    pub max_delivery_count: u32,
    /// How long a receive locks a message (Service Bus default: 60 s).
    pub lock_duration: Duration,
    /// `requiresDuplicateDetection` and its window.
    pub duplicate_detection: DetectionSettings,
    /// `deadLetteringOnMessageExpiration`: an expired message is dead-lettered, not removed.
    pub dead_letter_on_expiration: bool,
}

impl Default for QueueSettings {
    /// The deployment guide's queue.
    fn default() -> Self {
        Self {
            max_delivery_count: 10,
            lock_duration: Duration::from_secs(60),
            duplicate_detection: DetectionSettings::default(),
            dead_letter_on_expiration: false,
        }
    }
}

/// One message as the queue stores it, with what Service Bus keeps about it.
#[derive(Debug, Clone, Default)]
pub struct QueuedMessage {
    pub sequence: u64,
    pub id: String,
    pub data: Vec<u8>,
    /// Correlation id, subject and application properties given on send.
    pub envelope: Envelope,
    /// The trace the message was produced in, or one of its own if it came untraced (32 hex
    /// digits): every delivery of it carries the same.
    pub trace_id: String,
    /// Deliveries so far, the current one included (1 on the first delivery).
    pub delivery_count: u32,
    /// When it expires, from its time-to-live; never without one.
    pub expires_at: Option<Instant>,
}

/// A dead-lettered message, whole, and why.
#[derive(Debug, Clone)]
struct Dead {
    message: QueuedMessage,
    reason: String,
    at: DateTime<Utc>,
}

/// A dead letter as the status lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: String,
    pub delivery_count: u32,
    /// The last error.
    pub reason: String,
    /// The payload, as text where it is UTF-8.
    pub data: String,
    pub dead_lettered_at: String,
}

/// A dead letter as the peek API shows it: everything the queue keeps of it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeekedDeadLetter {
    pub sequence: u64,
    pub id: String,
    pub delivery_count: u32,
    /// The last error.
    pub reason: String,
    pub dead_lettered_at: String,
    /// The body as text (lossy where it is not UTF-8).
    pub data: String,
    /// Whether `data` is the body byte for byte.
    pub data_is_utf8: bool,
    pub correlation_id: Option<String>,
    pub subject: Option<String>,
    pub properties: BTreeMap<String, String>,
    pub trace_id: String,
}

/// Counts of one queue, as `GET /devstack/status` shows them (and its readers read them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub produced: u64,
    /// Waiting for their scheduled enqueue time: not yet active.
    pub scheduled: u64,
    /// Waiting for delivery, abandoned ones and those whose lock ran out included.
    pub active: u64,
    pub locked: u64,
    pub completed: u64,
    /// In the dead-letter queue now.
    pub dead_lettered: u64,
    /// Dead letters purged.
    pub purged: u64,
    /// Dead letters sent back to the queue (each is counted again where it is now).
    pub replayed: u64,
    /// Locks that ran out before their message was settled.
    pub locks_expired: u64,
    /// Past their time-to-live, and removed (not dead-lettered).
    pub expired: u64,
    /// Sends of a message id accepted within the detection window, answered with success and
    /// dropped (duplicate detection on): never produced.
    pub duplicates_dropped: u64,
    /// The same with duplicate detection off: enqueued again, and produced.
    pub duplicates_enqueued: u64,
}

/// The dead-letter operations done on one queue, each counted once per call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterOps {
    pub peeks: u64,
    pub replays: u64,
    pub purges: u64,
}

/// Which dead letters an operation takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    /// These message ids; every one must be in the dead-letter queue.
    Ids(Vec<String>),
}

/// A complete, abandon or renewal on a lock that had already run out, or a message already
/// settled: Service Bus's `MessageLockLost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the lock supplied is invalid: either the lock expired, or the message has already been \
     removed from the queue (MessageLockLost)"
)]
pub struct LockLost;

/// Dead letters that an operation named and the queue does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no dead letter with id {}", .0.join(", "))]
pub struct NotDeadLettered(pub Vec<String>);

/// A lock on a message that a delivery holds now, as [`Queue::held`] lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub token: u64,
    pub id: String,
    pub locked_until: Instant,
}

/// A message held under a lock.
#[derive(Debug)]
struct Locked {
    message: QueuedMessage,
    locked_until: Instant,
}

/// What a change did, recorded in the journeys once the queue's lock is released.
type Journal = Vec<(String, Option<Instant>, Step)>;

#[derive(Debug)]
struct State {
    next_sequence: u64,
    next_token: u64,
    ready: VecDeque<QueuedMessage>,
    held: HashMap<u64, Locked>,
    completed: u64,
    dead: VecDeque<Dead>,
    purged: u64,
    replayed: u64,
    locks_expired: u64,
    operations: DeadLetterOps,
    duplicates: DuplicateDetection,
    schedule: Schedule,
    /// A message with an expiry joined the active ones since the schedule's keeper last looked.
    timing_changed: bool,
}

impl State {
    fn new(settings: &QueueSettings) -> Self {
        Self {
            next_sequence: 0,
            next_token: 0,
            ready: VecDeque::new(),
            held: HashMap::new(),
            completed: 0,
            dead: VecDeque::new(),
            purged: 0,
            replayed: 0,
            locks_expired: 0,
            operations: DeadLetterOps::default(),
            duplicates: DuplicateDetection::new(settings.duplicate_detection),
            schedule: Schedule::new(settings.dead_letter_on_expiration),
            timing_changed: false,
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            produced: self.next_sequence,
            scheduled: self.schedule.scheduled(),
            active: self.ready.len() as u64,
            locked: self.held.len() as u64,
            completed: self.completed,
            dead_lettered: self.dead.len() as u64,
            purged: self.purged,
            replayed: self.replayed,
            locks_expired: self.locks_expired,
            expired: self.schedule.expired(),
            duplicates_dropped: self.duplicates.dropped(),
            duplicates_enqueued: self.duplicates.enqueued(),
        }
    }

    /// Puts `message` back among the active ones at the head, where Service Bus keeps an
    /// abandoned message's place; its expiry, which its lock held off, takes effect again.
    fn requeue(&mut self, message: QueuedMessage) {
        self.entered_queue(&message);
        self.ready.push_front(message);
    }

    fn entered_queue(&mut self, message: &QueuedMessage) {
        self.schedule.entered_queue(message);
        self.timing_changed |= message.expires_at.is_some();
    }

    /// Brings the schedule up to `now`: due messages become active, expired ones leave (or are
    /// dead-lettered). Returns how many became available.
    fn advance(&mut self, now: Instant, journal: &mut Journal) -> usize {
        if self.schedule.is_idle() {
            return 0;
        }
        let advanced = self.schedule.advance(now, &mut self.ready);
        for id in &advanced.activated {
            journal.push((id.clone(), None, Step::Activated));
        }
        for id in advanced.expired {
            journal.push((id, None, Step::Expired));
        }
        for message in advanced.dead_letters {
            journal.push((message.id.clone(), None, Step::Expired));
            self.dead_letter(message, schedule::EXPIRED_REASON.to_owned(), journal);
        }
        advanced.activated.len()
    }

    /// Moves every message whose lock ran out by `now` back to `ready` (or to the dead-letter
    /// queue, past `max_delivery_count`); returns how many became available.
    fn expire(&mut self, now: Instant, max_delivery_count: u32, journal: &mut Journal) -> usize {
        let mut expired: Vec<(u64, Instant)> = self
            .held
            .iter()
            .filter(|(_, l)| l.locked_until <= now)
            .map(|(token, l)| (*token, l.locked_until))
            .collect();
        if expired.is_empty() {
            return 0;
        }
        // Back at the head in sequence order, as each keeps its place in Service Bus.
        expired.sort_by_key(|(token, _)| std::cmp::Reverse(self.held[token].message.sequence));
        let mut available = 0;
        for (token, until) in expired {
            let Some(Locked { message, .. }) = self.held.remove(&token) else {
                continue;
            };
            self.locks_expired += 1;
            journal.push((
                message.id.clone(),
                Some(until),
                Step::LockExpired {
                    delivery_count: message.delivery_count,
                },
            ));
            if message.delivery_count >= max_delivery_count {
                let reason = format!(
                    "MaxDeliveryCountExceeded: the lock of delivery {} ran out",
                    message.delivery_count
                );
                self.dead_letter(message, reason, journal);
            } else {
                self.requeue(message);
                available += 1;
            }
        }
        available
    }

    fn dead_letter(&mut self, message: QueuedMessage, reason: String, journal: &mut Journal) {
        journal.push((
            message.id.clone(),
            None,
            Step::DeadLettered {
                reason: reason.clone(),
            },
        ));
        self.dead.push_back(Dead {
            message,
            reason,
            at: Utc::now(),
        });
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.held.values().map(|l| l.locked_until).min()
    }

    /// The lock `token`, if it is still held and has not run out.
    fn live(&mut self, token: u64, now: Instant) -> Option<&mut Locked> {
        self.held.get_mut(&token).filter(|l| l.locked_until > now)
    }

    /// The indices of the dead letters `selection` names, or the ids it names that are not there.
    fn select(&self, selection: &Selection) -> Result<Vec<usize>, NotDeadLettered> {
        match selection {
            Selection::All => Ok((0..self.dead.len()).collect()),
            Selection::Ids(ids) => {
                let missing: Vec<String> = ids
                    .iter()
                    .filter(|id| !self.dead.iter().any(|d| d.message.id == **id))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    return Err(NotDeadLettered(missing));
                }
                Ok((0..self.dead.len())
                    .filter(|&i| ids.contains(&self.dead[i].message.id))
                    .collect())
            }
        }
    }

    /// Removes the dead letters at `indices` (ascending), in order.
    fn take_dead(&mut self, indices: &[usize]) -> Vec<Dead> {
        let mut taken: Vec<Dead> = indices
            .iter()
            .rev()
            .filter_map(|&i| self.dead.remove(i))
            .collect();
        taken.reverse();
        taken
    }
}

/// One named queue.
#[derive(Debug)]
pub struct Queue {
    name: String,
    settings: QueueSettings,
    state: Mutex<State>,
    available: Notify,
    /// Told after every move between states, after the lock is released.
    changes: Changes,
    journeys: Journeys,
    /// Told when a message is timed, for [`schedule::keep_time`].
    timing: Notify,
}

/// What happened to an abandoned message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abandoned {
    Redelivered,
    DeadLettered,
}

impl Queue {
    /// A queue that tells `changes` after each move, and records each in `journeys`.
    pub fn new(
        name: impl Into<String>,
        settings: QueueSettings,
        changes: Changes,
        journeys: Journeys,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            settings,
            state: Mutex::new(State::new(&settings)),
            available: Notify::new(),
            changes,
            journeys,
            timing: Notify::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn settings(&self) -> QueueSettings {
        self.settings
    }

    /// Records what a change did, then tells the watchers and, for each message made
    /// available, one waiting receiver.
    fn after(&self, journal: Journal, available: usize) {
        for (id, at, step) in journal {
            match at {
                Some(at) => self.journeys.record_since(&id, at, step),
                None => self.journeys.record(&id, step),
            }
        }
        for _ in 0..available {
            self.available.notify_one();
        }
        self.changes.notify();
    }

    /// Runs `f` on the state after moving the messages whose lock ran out and bringing the
    /// schedule up to now.
    fn with_state<T>(&self, f: impl FnOnce(&mut State, &mut Journal) -> T) -> T {
        let mut journal = Journal::new();
        let mut state = self.state.lock();
        let now = Instant::now();
        let mut available = state.expire(now, self.settings.max_delivery_count, &mut journal);
        available += state.advance(now, &mut journal);
        let out = f(&mut state, &mut journal);
        let timing_changed = std::mem::take(&mut state.timing_changed);
        drop(state);
        if timing_changed {
            self.timing.notify_one();
        }
        if !journal.is_empty() || available > 0 {
            self.after(journal, available);
        }
        out
    }

    /// Enqueues a message that came `via` a call, or schedules it, or drops it as a duplicate
    /// of one accepted within the detection window; returns its id. All three are a success to
    /// the sender.
    pub fn send(
        &self,
        data: Vec<u8>,
        envelope: Envelope,
        trace_id: Option<String>,
        via: Via,
    ) -> String {
        if let Some(id) = &envelope.message_id {
            let verdict = self.state.lock().duplicates.check(id, Instant::now());
            if verdict == Verdict::Dropped {
                debug!(queue = %self.name, id, "duplicate dropped: a message with this id was accepted within the detection window");
                self.journeys.record(
                    id,
                    Step::DuplicateDropped {
                        queue: self.name.clone(),
                        via,
                    },
                );
                self.changes.notify();
                return id.clone();
            }
        }
        // Service Bus keeps the sender's id; the sidecar gives one to a message sent without.
        let id = envelope.message_id.clone().unwrap_or_else(ids::message_id);
        // A message sent untraced gets a trace of its own here, so its deliveries share one.
        let trace_id = trace_id.unwrap_or_else(ids::trace_id);
        // Before the message can be received, so that its journey starts with how it came.
        self.journeys.record(
            &id,
            Step::Enqueued {
                queue: self.name.clone(),
                via,
                trace_id: trace_id.clone(),
            },
        );
        let timed = envelope.scheduled_enqueue_time.is_some() || envelope.time_to_live.is_some();
        let scheduled_at = envelope.scheduled_enqueue_time;
        let enqueued = self.with_state(|state, journal| {
            let sequence = state.next_sequence;
            state.next_sequence += 1;
            let message = QueuedMessage {
                sequence,
                id: id.clone(),
                data,
                envelope,
                trace_id,
                delivery_count: 0,
                expires_at: None,
            };
            let active = state.schedule.admit(message, Instant::now(), Utc::now());
            let enqueued = active.is_some();
            state.ready.extend(active);
            if !enqueued && let Some(at) = scheduled_at {
                journal.push((id.clone(), None, Step::Scheduled { active_at: At(at) }));
            }
            enqueued
        });
        if enqueued {
            self.available.notify_one();
        }
        if timed {
            self.timing.notify_one();
        }
        self.changes.notify();
        id
    }

    /// Waits for a message and locks it for the lock duration.
    pub async fn receive(self: &Arc<Self>) -> Lock {
        loop {
            let notified = self.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let taken = self.with_state(|state, _| {
                let now = Instant::now();
                let Some(mut message) = state.ready.pop_front() else {
                    // A lock taken from now on runs out no sooner than a lock duration away; a
                    // scheduled message becomes active at its time.
                    let soonest = now + self.settings.lock_duration;
                    let wake_at = [state.next_expiry(), state.schedule.next_due()]
                        .into_iter()
                        .flatten()
                        .fold(soonest, Instant::min);
                    return Err(wake_at);
                };
                message.delivery_count += 1;
                let token = state.next_token;
                state.next_token += 1;
                state.held.insert(
                    token,
                    Locked {
                        message: message.clone(),
                        locked_until: now + self.settings.lock_duration,
                    },
                );
                Ok((token, message, !state.ready.is_empty()))
            });
            match taken {
                Ok((token, message, more)) => {
                    self.changes.notify();
                    if more {
                        // Pass the wake-up on: a single notify_one may have covered several sends.
                        self.available.notify_one();
                    }
                    return Lock {
                        queue: Arc::clone(self),
                        token,
                        message,
                        settled: false,
                    };
                }
                Err(wake_at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(wake_at) => {}
                    }
                }
            }
        }
    }

    /// Renews lock `token` for another lock duration, as the binding's renewal loop does;
    /// returns when it now runs out.
    pub fn renew(&self, token: u64) -> Result<Instant, LockLost> {
        self.with_state(|state, journal| {
            let until = Instant::now() + self.settings.lock_duration;
            let locked = state.live(token, Instant::now()).ok_or(LockLost)?;
            locked.locked_until = until;
            journal.push((
                locked.message.id.clone(),
                None,
                Step::LockRenewed {
                    locked_until: At(Utc::now() + self.settings.lock_duration),
                },
            ));
            Ok(until)
        })
    }

    fn complete(&self, token: u64) -> Result<(), LockLost> {
        self.with_state(|state, journal| {
            let now = Instant::now();
            if state.live(token, now).is_none() {
                return Err(LockLost);
            }
            let locked = state.held.remove(&token).expect("live above");
            state.completed += 1;
            journal.push((locked.message.id, None, Step::Completed));
            Ok(())
        })
    }

    fn abandon(&self, token: u64, reason: &str) -> Result<Abandoned, LockLost> {
        let abandoned = self.with_state(|state, journal| {
            let now = Instant::now();
            if state.live(token, now).is_none() {
                return Err(LockLost);
            }
            let Locked { message, .. } = state.held.remove(&token).expect("live above");
            journal.push((
                message.id.clone(),
                None,
                Step::Abandoned {
                    reason: reason.to_owned(),
                },
            ));
            if message.delivery_count >= self.settings.max_delivery_count {
                state.dead_letter(message, reason.to_owned(), journal);
                return Ok(Abandoned::DeadLettered);
            }
            // Service Bus keeps an abandoned message's place (its sequence number): it is next.
            state.requeue(message);
            Ok(Abandoned::Redelivered)
        });
        if abandoned == Ok(Abandoned::Redelivered) {
            self.available.notify_one();
        }
        abandoned
    }

    /// The counts now, locks and the schedule brought up to date first.
    pub fn counts(&self) -> Counts {
        self.with_state(|state, _| state.counts())
    }

    /// When the schedule next has something to do: a scheduled message's time, or an expiry.
    pub fn next_due(&self) -> Option<Instant> {
        self.state.lock().schedule.next_due()
    }

    /// Resolves when a message is timed after this was called; `enable` it before reading
    /// [`next_due`](Self::next_due).
    pub fn timing_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.timing.notified()
    }

    /// Brings locks and the schedule up to now (see [`schedule::keep_time`]).
    pub fn advance(&self) {
        self.with_state(|_, _| ());
    }

    /// The dead-letter operations done so far.
    pub fn dead_letter_ops(&self) -> DeadLetterOps {
        self.state.lock().operations
    }

    /// The locks held now, soonest to run out first.
    pub fn held(&self) -> Vec<Held> {
        let mut held: Vec<Held> = self.with_state(|state, _| {
            state
                .held
                .iter()
                .map(|(token, l)| Held {
                    token: *token,
                    id: l.message.id.clone(),
                    locked_until: l.locked_until,
                })
                .collect()
        });
        held.sort_by_key(|h| (h.locked_until, h.token));
        held
    }

    /// The last [`DEAD_LETTERS_LISTED`] dead letters, oldest first, as the status lists them.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.with_state(|state, _| {
            let skip = state.dead.len().saturating_sub(DEAD_LETTERS_LISTED);
            state
                .dead
                .iter()
                .skip(skip)
                .map(|d| DeadLetter {
                    id: d.message.id.clone(),
                    delivery_count: d.message.delivery_count,
                    reason: d.reason.clone(),
                    data: String::from_utf8_lossy(&d.message.data).into_owned(),
                    dead_lettered_at: rfc3339(d.at),
                })
                .collect()
        })
    }

    /// Up to `limit` dead letters from the `from`th (0: the oldest), whole, and how many there
    /// are in all.
    pub fn peek_dead_letters(&self, from: usize, limit: usize) -> (Vec<PeekedDeadLetter>, usize) {
        self.with_state(|state, _| {
            state.operations.peeks += 1;
            let page = state
                .dead
                .iter()
                .skip(from)
                .take(limit)
                .map(|d| {
                    let m = &d.message;
                    let text = String::from_utf8(m.data.clone());
                    PeekedDeadLetter {
                        sequence: m.sequence,
                        id: m.id.clone(),
                        delivery_count: m.delivery_count,
                        reason: d.reason.clone(),
                        dead_lettered_at: rfc3339(d.at),
                        data_is_utf8: text.is_ok(),
                        data: text
                            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                        correlation_id: m.envelope.correlation_id.clone(),
                        subject: m.envelope.subject.clone(),
                        properties: m.envelope.properties.clone().into_iter().collect(),
                        trace_id: m.trace_id.clone(),
                    }
                })
                .collect();
            (page, state.dead.len())
        })
    }

    /// Sends the selected dead letters back to the queue, as Service Bus Explorer's re-send
    /// does: the same id, body and application properties, a fresh delivery count, and
    /// [`REPLAYED_FROM`] saying where it came from. Returns how many; none when an id is missing.
    pub fn replay(&self, selection: &Selection) -> Result<usize, NotDeadLettered> {
        let from = format!("{}/$DeadLetterQueue", self.name);
        let replayed = self.with_state(|state, journal| {
            let indices = state.select(selection)?;
            let taken = state.take_dead(&indices);
            for Dead { mut message, .. } in taken.iter().cloned() {
                message.delivery_count = 0;
                // A re-send is a new message to Service Bus: its TTL would be the queue's
                // default, which devstack does not emulate (none).
                message.expires_at = None;
                message
                    .envelope
                    .properties
                    .insert(REPLAYED_FROM.to_owned(), from.clone());
                journal.push((
                    message.id.clone(),
                    None,
                    Step::Replayed { from: from.clone() },
                ));
                journal.push((
                    message.id.clone(),
                    None,
                    Step::Enqueued {
                        queue: self.name.clone(),
                        via: Via::Replay,
                        trace_id: message.trace_id.clone(),
                    },
                ));
                state.ready.push_back(message);
            }
            state.replayed += taken.len() as u64;
            state.operations.replays += 1;
            Ok(taken.len())
        })?;
        for _ in 0..replayed {
            self.available.notify_one();
        }
        Ok(replayed)
    }

    /// Deletes the selected dead letters for good. Returns how many; none when an id is missing.
    pub fn purge(&self, selection: &Selection) -> Result<usize, NotDeadLettered> {
        self.with_state(|state, journal| {
            let indices = state.select(selection)?;
            let taken = state.take_dead(&indices);
            for dead in &taken {
                journal.push((dead.message.id.clone(), None, Step::Purged));
            }
            state.purged += taken.len() as u64;
            state.operations.purges += 1;
            Ok(taken.len())
        })
    }
}

/// The sidecar's queues, one per binding name, fixed at start.
#[derive(Debug)]
pub struct Queues(BTreeMap<String, Arc<Queue>>);

impl Queues {
    /// One queue per name in `bindings`, each telling `changes` of its moves and recording them
    /// in `journeys`.
    pub fn new(
        bindings: &[String],
        settings: QueueSettings,
        changes: &Changes,
        journeys: &Journeys,
    ) -> Self {
        let queues = bindings
            .iter()
            .map(|name| {
                let queue = Queue::new(name.clone(), settings, changes.clone(), journeys.clone());
                (name.clone(), queue)
            })
            .collect();
        Self(queues)
    }

    /// The queue of `binding`, if the sidecar serves it.
    pub fn get(&self, binding: &str) -> Option<&Arc<Queue>> {
        self.0.get(binding)
    }

    /// The bindings served, in name order.
    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    /// Every queue, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Queue>> {
        self.0.values()
    }
}

/// A locked message. Settle it with [`complete`](Lock::complete) or [`abandon`](Lock::abandon);
/// dropping it unsettled abandons it.
#[derive(Debug)]
pub struct Lock {
    queue: Arc<Queue>,
    token: u64,
    message: QueuedMessage,
    settled: bool,
}

impl Lock {
    /// The message this lock holds.
    pub fn message(&self) -> &QueuedMessage {
        &self.message
    }

    /// The lock's token, by which the queue renews it.
    pub fn token(&self) -> u64 {
        self.token
    }

    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    /// Renews the lock (see [`Queue::renew`]).
    pub fn renew(&self) -> Result<Instant, LockLost> {
        self.queue.renew(self.token)
    }

    pub fn complete(mut self) -> Result<(), LockLost> {
        self.settled = true;
        let completed = self.queue.complete(self.token);
        if completed.is_err() {
            self.queue.journeys.record(
                &self.message.id,
                Step::CompleteFailed {
                    reason: LockLost.to_string(),
                },
            );
        }
        completed
    }

    pub fn abandon(mut self, reason: &str) -> Result<Abandoned, LockLost> {
        self.settled = true;
        self.queue.abandon(self.token, reason)
    }

    /// Lets go of the lock without telling the queue, as when a complete never reaches the
    /// broker: the lock runs out and the message comes back.
    pub fn forget(mut self) {
        self.settled = true;
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.settled {
            // A lock that already ran out has nothing left to settle.
            let _ = self
                .queue
                .abandon(self.token, "lock released without settlement");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: QueueSettings = QueueSettings {
        max_delivery_count: 3,
        lock_duration: Duration::from_secs(60),
        duplicate_detection: DetectionSettings {
            enabled: true,
            window: crate::dedup::DEFAULT_WINDOW,
        },
        dead_letter_on_expiration: false,
    };

    fn queue(settings: QueueSettings) -> Arc<Queue> {
        Queue::new("q", settings, Changes::default(), Journeys::new(100))
    }

    fn send(q: &Queue, data: &[u8]) -> String {
        q.send(data.to_vec(), Envelope::default(), None, Via::Grpc)
    }

    fn holds(counts: Counts) {
        assert_eq!(
            counts.produced,
            counts.scheduled
                + counts.active
                + counts.locked
                + counts.completed
                + counts.dead_lettered
                + counts.expired
                + counts.purged,
            "{counts:?}"
        );
    }

    fn events(q: &Queue, id: &str) -> Vec<String> {
        let journey = q.journeys.get(id).expect("a journey");
        let json = serde_json::to_value(journey).unwrap();
        json["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn complete_removes_the_message_once() {
        let q = queue(SETTINGS);
        let id = send(&q, b"a");
        let lock = q.receive().await;
        assert_eq!(
            (lock.message().id.as_str(), lock.message().delivery_count),
            (id.as_str(), 1)
        );
        assert_eq!(
            q.counts(),
            Counts {
                produced: 1,
                locked: 1,
                ..Default::default()
            }
        );
        lock.complete().unwrap();
        assert_eq!(
            q.counts(),
            Counts {
                produced: 1,
                completed: 1,
                ..Default::default()
            }
        );
        assert_eq!(events(&q, &id), ["enqueued", "completed"]);
    }

    #[tokio::test(start_paused = true)]
    async fn abandon_redelivers_at_once_ahead_of_the_rest_then_dead_letters() {
        let q = queue(SETTINGS);
        let poison = send(&q, b"poison");
        send(&q, b"next");

        let first = q.receive().await;
        assert_eq!(first.abandon("bad"), Ok(Abandoned::Redelivered));
        holds(q.counts());
        let before = Instant::now();
        let second = q.receive().await;
        assert_eq!(Instant::now(), before, "no backoff");
        assert_eq!(
            (
                second.message().data.as_slice(),
                second.message().delivery_count
            ),
            (&b"poison"[..], 2),
            "it keeps its place"
        );
        assert_eq!(second.abandon("bad"), Ok(Abandoned::Redelivered));
        let third = q.receive().await;
        assert_eq!(third.message().delivery_count, 3);
        assert_eq!(third.abandon("still bad"), Ok(Abandoned::DeadLettered));

        let counts = q.counts();
        assert_eq!(
            counts,
            Counts {
                produced: 2,
                active: 1,
                dead_lettered: 1,
                ..Default::default()
            }
        );
        let dead = q.dead_letters();
        assert_eq!(
            (
                dead[0].delivery_count,
                dead[0].reason.as_str(),
                dead[0].data.as_str()
            ),
            (3, "still bad", "poison")
        );
        assert_eq!(
            events(&q, &poison),
            [
                "enqueued",
                "abandoned",
                "abandoned",
                "abandoned",
                "deadLettered"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_lock_abandons_it() {
        let q = queue(SETTINGS);
        send(&q, b"a");
        drop(q.receive().await);
        assert_eq!(
            q.counts(),
            Counts {
                produced: 1,
                active: 1,
                ..Default::default()
            }
        );
        let again = q.receive().await;
        assert_eq!(again.message().delivery_count, 2);
    }

    /// A lock runs for the lock duration; past it, the message is available again (its next
    /// receive raises the delivery count), and the late complete fails as Service Bus's does.
    #[tokio::test(start_paused = true)]
    async fn an_expired_lock_makes_the_message_available_again_and_a_late_complete_fails() {
        let q = queue(SETTINGS);
        let id = send(&q, b"a");
        let held = q.receive().await;
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(q.counts().locked, 1, "still within the lock duration");

        // A second receiver waits, and wakes when the lock runs out: at 60 s, not before.
        let waiting = tokio::spawn({
            let q = Arc::clone(&q);
            async move {
                let lock = q.receive().await;
                (Instant::now(), lock.message().delivery_count, lock)
            }
        });
        let start = Instant::now();
        let (woke, delivery_count, again) = waiting.await.unwrap();
        assert_eq!(woke - start, Duration::from_secs(1));
        assert_eq!(delivery_count, 2);
        assert_eq!(q.counts().locks_expired, 1);

        assert_eq!(held.complete(), Err(LockLost), "the first holder lost it");
        holds(q.counts());
        assert_eq!(q.counts().locked, 1, "the second holder still has it");
        again.complete().unwrap();
        assert_eq!(q.counts().completed, 1);
        assert_eq!(
            events(&q, &id),
            ["enqueued", "lockExpired", "completeFailed", "completed"]
        );
    }

    /// Renewing every 20 s (the binding's lockRenewalInSec) keeps a 60 s lock for as long as the
    /// holder works; once renewals stop, the lock runs out a lock duration after the last one.
    #[tokio::test(start_paused = true)]
    async fn renewals_keep_the_lock_and_it_runs_out_a_lock_duration_after_the_last() {
        let q = queue(SETTINGS);
        send(&q, b"a");
        let lock = q.receive().await;
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(20)).await;
            assert_eq!(lock.renew(), Ok(Instant::now() + SETTINGS.lock_duration));
        }
        assert_eq!(q.counts().locked, 1, "held for 200 s");
        tokio::time::advance(Duration::from_millis(59_999)).await;
        assert_eq!(q.counts().locked, 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            (q.counts().locked, q.counts().active),
            (0, 1),
            "ran out 60 s after the last renewal"
        );
        assert_eq!(lock.renew(), Err(LockLost));
        assert_eq!(lock.abandon("late"), Err(LockLost));
        holds(q.counts());
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lock_on_the_last_delivery_dead_letters_the_message() {
        let q = queue(QueueSettings {
            max_delivery_count: 1,
            ..SETTINGS
        });
        send(&q, b"a");
        let lock = q.receive().await;
        lock.forget();
        tokio::time::advance(SETTINGS.lock_duration).await;
        let counts = q.counts();
        assert_eq!((counts.dead_lettered, counts.active), (1, 0));
        assert!(
            q.dead_letters()[0]
                .reason
                .starts_with("MaxDeliveryCountExceeded"),
            "{:?}",
            q.dead_letters()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dead_letters_are_peeked_whole_replayed_fresh_and_purged() {
        let q = queue(QueueSettings {
            max_delivery_count: 1,
            ..SETTINGS
        });
        let mut envelope = Envelope {
            correlation_id: Some("c-1".into()),
            ..Default::default()
        };
        envelope.properties.insert("tenant".into(), "a".into());
        let kept = q.send(b"one".to_vec(), envelope, None, Via::Http);
        let purged = send(&q, &[0xff, b'x']);
        for _ in 0..2 {
            q.receive().await.abandon("rejected").unwrap();
        }
        let (page, total) = q.peek_dead_letters(0, 10);
        assert_eq!(total, 2);
        assert_eq!(
            (
                page[0].data.as_str(),
                page[0].data_is_utf8,
                page[0].reason.as_str()
            ),
            ("one", true, "rejected")
        );
        assert_eq!(page[0].correlation_id.as_deref(), Some("c-1"));
        assert_eq!(page[0].properties["tenant"], "a");
        assert!(!page[1].data_is_utf8);
        assert_eq!(q.peek_dead_letters(1, 10).0.len(), 1);

        assert_eq!(
            q.replay(&Selection::Ids(vec!["nope".into(), kept.clone()])),
            Err(NotDeadLettered(vec!["nope".into()])),
            "nothing is replayed when an id is missing"
        );
        assert_eq!(q.replay(&Selection::Ids(vec![kept.clone()])), Ok(1));
        let counts = q.counts();
        holds(counts);
        assert_eq!(
            (counts.active, counts.dead_lettered, counts.replayed),
            (1, 1, 1)
        );
        let again = q.receive().await;
        let message = again.message();
        assert_eq!(
            (
                message.id.as_str(),
                message.data.as_slice(),
                message.delivery_count
            ),
            (kept.as_str(), &b"one"[..], 1),
            "the same message, a fresh delivery count"
        );
        assert_eq!(message.envelope.properties["tenant"], "a");
        assert_eq!(
            message.envelope.properties[REPLAYED_FROM],
            "q/$DeadLetterQueue"
        );
        again.complete().unwrap();

        assert_eq!(q.purge(&Selection::All), Ok(1));
        assert_eq!(
            q.dead_letter_ops(),
            DeadLetterOps {
                peeks: 2,
                replays: 1,
                purges: 1
            },
            "the failed replay counts for nothing"
        );
        let counts = q.counts();
        holds(counts);
        assert_eq!((counts.dead_lettered, counts.purged), (0, 1));
        assert_eq!(
            events(&q, &purged),
            ["enqueued", "abandoned", "deadLettered", "purged"]
        );
        assert_eq!(
            events(&q, &kept),
            [
                "enqueued",
                "abandoned",
                "deadLettered",
                "replayed",
                "enqueued",
                "completed"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn receive_waits_for_a_send_and_order_is_fifo() {
        let q = queue(SETTINGS);
        let waiting = tokio::spawn({
            let q = Arc::clone(&q);
            async move {
                let lock = q.receive().await;
                let data = lock.message().data.clone();
                // Settled: a dropped lock would put "1" back at the head.
                lock.complete().unwrap();
                data
            }
        });
        tokio::task::yield_now().await;
        send(&q, b"1");
        send(&q, b"2");
        assert_eq!(waiting.await.unwrap(), b"1");
        assert_eq!(q.receive().await.message().data, b"2");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_competing_receivers_keep_the_invariant() {
        let q = queue(QueueSettings {
            max_delivery_count: 5,
            ..SETTINGS
        });
        const N: u64 = 2_000;
        for i in 0..N {
            send(&q, i.to_string().as_bytes());
        }
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let q = Arc::clone(&q);
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    for turn in 0u64.. {
                        let Ok(lock) = tokio::time::timeout(
                            std::time::Duration::from_millis(200),
                            q.receive(),
                        )
                        .await
                        else {
                            break; // drained
                        };
                        assert!(turn < 10 * N, "bounded");
                        if (turn + w) % 7 == 0 {
                            lock.abandon("injected").unwrap();
                        } else {
                            done.push(lock.message().sequence);
                            lock.complete().unwrap();
                        }
                        holds(q.counts());
                    }
                    done
                })
            })
            .collect();
        let mut completed = Vec::new();
        for w in workers {
            completed.extend(w.await.unwrap());
        }
        let counts = q.counts();
        holds(counts);
        assert_eq!((counts.active, counts.locked), (0, 0));
        completed.sort_unstable();
        let unique = completed.len();
        completed.dedup();
        assert_eq!(unique, completed.len(), "no message completed twice");
        assert_eq!(counts.completed + counts.dead_lettered, N);
    }
}
