//! In-memory queues with Azure Service Bus peek-lock semantics: a receive locks a message; the
//! holder completes it (gone) or abandons it (available again at once, at the head of the queue,
//! with its delivery count up by one, as Service Bus does), and past the max delivery count it
//! moves to the dead-letter list.
//! A lock dropped without either (a consumer that vanished, a cancelled task) abandons it.
//! Duplicate detection (`dedup`) judges each send first; scheduled messages and time-to-live
//! (`schedule`) decide when a sent message is active and until when.
//!
//! Invariant: produced = scheduled + active + locked + completed + dead-lettered + expired. It
//! holds by construction, not by a check: each message sent is in exactly one place (waiting for
//! its time in the schedule; waiting in `ready`; held by the one [`Lock`] that `locked` counts; or
//! only counted, once completed, dead-lettered or expired; a dropped duplicate is never produced),
//! a lock
//! settles exactly once (completing and abandoning take it by value, and dropping settles only
//! one that was not), every move between them happens under the queue's one lock, and
//! [`Queue::counts`] reads them all under it, so every snapshot adds up. The tests check it on
//! every read.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use chrono::Utc;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::{sync::Notify, time::Instant};
use tracing::debug;

use crate::{
    changes::Changes,
    dedup::{DetectionSettings, DuplicateDetection, Verdict},
    ids,
    schedule::{self, Schedule},
    service_bus::Envelope,
};

/// How many dead letters the status keeps in full (the count is always exact).
const DEAD_LETTERS_KEPT: usize = 100;

/// Queue behaviour, shared by every queue of a sidecar.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// Deliveries before a message is dead-lettered (Service Bus default: 10).
    pub max_delivery_count: u32,
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

/// A dead-lettered message and why.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: String,
    pub delivery_count: u32,
    pub reason: String,
    /// The payload, as text where it is UTF-8.
    pub data: String,
}

/// Counts of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub produced: u64,
    /// Waiting for their scheduled enqueue time: not yet active.
    pub scheduled: u64,
    /// Waiting for delivery, abandoned ones included.
    pub active: u64,
    pub locked: u64,
    pub completed: u64,
    pub dead_lettered: u64,
    /// Past their time-to-live, and removed (not dead-lettered).
    pub expired: u64,
    /// Sends of a message id accepted within the detection window, answered with success and
    /// dropped (duplicate detection on): never produced.
    pub duplicates_dropped: u64,
    /// The same with duplicate detection off: enqueued again, and produced.
    pub duplicates_enqueued: u64,
}

#[derive(Debug)]
struct State {
    next_sequence: u64,
    ready: VecDeque<QueuedMessage>,
    /// Messages held by a [`Lock`]; each lock has its message, so only the count is kept here.
    locked: u64,
    completed: u64,
    dead_lettered: u64,
    dead_letters: VecDeque<DeadLetter>,
    duplicates: DuplicateDetection,
    schedule: Schedule,
}

impl State {
    fn new(settings: &QueueSettings) -> Self {
        Self {
            next_sequence: 0,
            ready: VecDeque::new(),
            locked: 0,
            completed: 0,
            dead_lettered: 0,
            dead_letters: VecDeque::new(),
            duplicates: DuplicateDetection::new(settings.duplicate_detection),
            schedule: Schedule::new(settings.dead_letter_on_expiration),
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            produced: self.next_sequence,
            scheduled: self.schedule.scheduled(),
            active: self.ready.len() as u64,
            locked: self.locked,
            completed: self.completed,
            dead_lettered: self.dead_lettered,
            expired: self.schedule.expired(),
            duplicates_dropped: self.duplicates.dropped(),
            duplicates_enqueued: self.duplicates.enqueued(),
        }
    }

    fn dead_letter(&mut self, message: QueuedMessage, reason: &str) {
        self.dead_lettered += 1;
        if self.dead_letters.len() == DEAD_LETTERS_KEPT {
            self.dead_letters.pop_front();
        }
        self.dead_letters.push_back(DeadLetter {
            id: message.id,
            delivery_count: message.delivery_count,
            reason: reason.to_owned(),
            data: String::from_utf8_lossy(&message.data).into_owned(),
        });
    }

    /// Brings the schedule up to now: due messages become active, expired ones leave. True when
    /// a message moved.
    fn advance(&mut self) -> bool {
        if self.schedule.is_idle() {
            return false;
        }
        let advanced = self.schedule.advance(Instant::now(), &mut self.ready);
        let moved = advanced.any();
        for message in advanced.dead_letters {
            self.dead_letter(message, schedule::EXPIRED_REASON);
        }
        moved
    }
}

/// One named queue.
#[derive(Debug)]
pub struct Queue {
    name: String,
    settings: QueueSettings,
    state: Mutex<State>,
    available: Notify,
    /// Told when a message is timed, for [`schedule::keep_time`].
    timing: Notify,
    /// Told after every move between states, after the lock is released.
    changes: Changes,
}

/// What happened to an abandoned message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abandoned {
    Redelivered,
    DeadLettered,
}

impl Queue {
    /// A queue that tells `changes` after each send, receive, complete and abandon.
    pub fn new(name: impl Into<String>, settings: QueueSettings, changes: Changes) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            settings,
            state: Mutex::new(State::new(&settings)),
            available: Notify::new(),
            timing: Notify::new(),
            changes,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Enqueues a message, or schedules it, or drops it as a duplicate of one accepted within
    /// the detection window; returns its id. All three are a success to the sender.
    pub fn send(&self, data: Vec<u8>, envelope: Envelope, trace_id: Option<String>) -> String {
        let now = Instant::now();
        let timed = envelope.scheduled_enqueue_time.is_some() || envelope.time_to_live.is_some();
        let mut state = self.state.lock();
        if let Some(id) = &envelope.message_id
            && state.duplicates.check(id, now) == Verdict::Dropped
        {
            let id = id.clone();
            drop(state);
            debug!(queue = %self.name, id, "duplicate dropped: a message with this id was accepted within the detection window");
            self.changes.notify();
            return id;
        }
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        // Service Bus keeps the sender's id; the sidecar gives one to a message sent without.
        let id = envelope.message_id.clone().unwrap_or_else(ids::message_id);
        let message = QueuedMessage {
            sequence,
            id: id.clone(),
            data,
            envelope,
            // A message sent untraced gets a trace of its own here, so its deliveries share one.
            trace_id: trace_id.unwrap_or_else(ids::trace_id),
            delivery_count: 0,
            expires_at: None,
        };
        let active = state.schedule.admit(message, now, Utc::now());
        let enqueued = active.is_some();
        state.ready.extend(active);
        drop(state);
        if enqueued {
            self.available.notify_one();
        }
        if timed {
            self.timing.notify_one();
        }
        self.changes.notify();
        id
    }

    /// Waits for a message and locks it.
    pub async fn receive(self: &Arc<Self>) -> Lock {
        loop {
            let notified = self.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock();
                let moved = state.advance();
                if let Some(mut message) = state.ready.pop_front() {
                    message.delivery_count += 1;
                    state.locked += 1;
                    let more = !state.ready.is_empty();
                    drop(state);
                    self.changes.notify();
                    if more {
                        // Pass the wake-up on: a single notify_one may have covered several sends.
                        self.available.notify_one();
                    }
                    return Lock {
                        queue: Arc::clone(self),
                        message,
                        settled: false,
                    };
                }
                drop(state);
                if moved {
                    // Expired ones left, nothing is due: only the status changed.
                    self.changes.notify();
                }
            }
            notified.await;
        }
    }

    fn complete(&self) {
        let mut state = self.state.lock();
        state.locked -= 1;
        state.completed += 1;
        drop(state);
        self.changes.notify();
    }

    fn abandon(&self, message: QueuedMessage, reason: &str) -> Abandoned {
        let mut state = self.state.lock();
        state.locked -= 1;
        if message.delivery_count >= self.settings.max_delivery_count {
            state.dead_letter(message, reason);
            drop(state);
            self.changes.notify();
            return Abandoned::DeadLettered;
        }
        // Its expiry, which its lock held off, takes effect again.
        let timed = message.expires_at.is_some();
        state.schedule.entered_queue(&message);
        // Service Bus keeps an abandoned message's place (its sequence number): it is next.
        state.ready.push_front(message);
        drop(state);
        self.available.notify_one();
        if timed {
            self.timing.notify_one();
        }
        self.changes.notify();
        Abandoned::Redelivered
    }

    /// The counts now, the schedule brought up to date first.
    pub fn counts(&self) -> Counts {
        let mut state = self.state.lock();
        let moved = state.advance();
        let counts = state.counts();
        drop(state);
        if moved {
            self.moved();
        }
        counts
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

    /// Brings the schedule up to now (see [`schedule::keep_time`]).
    pub fn advance(&self) {
        let moved = self.state.lock().advance();
        if moved {
            self.moved();
        }
    }

    /// After messages moved in the schedule: receivers may have one, and the status changed.
    fn moved(&self) {
        self.available.notify_one();
        self.changes.notify();
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.state.lock().dead_letters.iter().cloned().collect()
    }
}

/// The sidecar's queues, one per binding name, fixed at start.
#[derive(Debug)]
pub struct Queues(BTreeMap<String, Arc<Queue>>);

impl Queues {
    /// One queue per name in `bindings`, each telling `changes` of its moves.
    pub fn new(bindings: &[String], settings: QueueSettings, changes: &Changes) -> Self {
        let queues = bindings
            .iter()
            .map(|name| {
                let queue = Queue::new(name.clone(), settings, changes.clone());
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
    message: QueuedMessage,
    settled: bool,
}

impl Lock {
    /// The message this lock holds.
    pub fn message(&self) -> &QueuedMessage {
        &self.message
    }

    pub fn complete(mut self) {
        self.settled = true;
        self.queue.complete();
    }

    pub fn abandon(mut self, reason: &str) -> Abandoned {
        self.settled = true;
        let message = std::mem::take(&mut self.message);
        self.queue.abandon(message, reason)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.settled {
            let message = std::mem::take(&mut self.message);
            self.queue
                .abandon(message, "lock released without settlement");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: QueueSettings = QueueSettings {
        max_delivery_count: 3,
        duplicate_detection: DetectionSettings {
            enabled: true,
            window: crate::dedup::DEFAULT_WINDOW,
        },
        dead_letter_on_expiration: false,
    };

    fn queue(settings: QueueSettings) -> Arc<Queue> {
        Queue::new("q", settings, Changes::default())
    }

    fn holds(counts: Counts) {
        assert_eq!(
            counts.produced,
            counts.scheduled
                + counts.active
                + counts.locked
                + counts.completed
                + counts.dead_lettered
                + counts.expired,
            "{counts:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn complete_removes_the_message_once() {
        let q = queue(SETTINGS);
        let id = q.send(b"a".to_vec(), Envelope::default(), None);
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
        lock.complete();
        assert_eq!(
            q.counts(),
            Counts {
                produced: 1,
                completed: 1,
                ..Default::default()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn abandon_redelivers_at_once_ahead_of_the_rest_then_dead_letters() {
        let q = queue(SETTINGS);
        q.send(b"poison".to_vec(), Envelope::default(), None);
        q.send(b"next".to_vec(), Envelope::default(), None);

        let first = q.receive().await;
        assert_eq!(first.abandon("bad"), Abandoned::Redelivered);
        holds(q.counts());
        let before = tokio::time::Instant::now();
        let second = q.receive().await;
        assert_eq!(tokio::time::Instant::now(), before, "no backoff");
        assert_eq!(
            (
                second.message().data.as_slice(),
                second.message().delivery_count
            ),
            (&b"poison"[..], 2),
            "it keeps its place"
        );
        assert_eq!(second.abandon("bad"), Abandoned::Redelivered);
        let third = q.receive().await;
        assert_eq!(third.message().delivery_count, 3);
        assert_eq!(third.abandon("still bad"), Abandoned::DeadLettered);

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
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_lock_abandons_it() {
        let q = queue(SETTINGS);
        q.send(b"a".to_vec(), Envelope::default(), None);
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

    #[tokio::test(start_paused = true)]
    async fn receive_waits_for_a_send_and_order_is_fifo() {
        let q = queue(SETTINGS);
        let waiting = tokio::spawn({
            let q = Arc::clone(&q);
            async move {
                let lock = q.receive().await;
                let data = lock.message().data.clone();
                // Settled: a dropped lock would put "1" back at the head.
                lock.complete();
                data
            }
        });
        tokio::task::yield_now().await;
        q.send(b"1".to_vec(), Envelope::default(), None);
        q.send(b"2".to_vec(), Envelope::default(), None);
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
            q.send(i.to_string().into_bytes(), Envelope::default(), None);
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
                            lock.abandon("injected");
                        } else {
                            done.push(lock.message().sequence);
                            lock.complete();
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
