//! Service Bus message timing for one queue, as the binding's send metadata sets it
//! (`service_bus`):
//!
//! - a scheduled message (`ScheduledEnqueueTimeUtc`) is "not enqueued until then": it waits here,
//!   counted as scheduled, outside the active messages, so neither a consumer nor KEDA's active
//!   message count sees it before its time; then it joins the queue at the tail;
//! - a message with a time-to-live (`ttl`, `ttlInSeconds`) expires at its enqueued time (for a
//!   scheduled one, its scheduled time) plus its TTL: an active message is then removed, or
//!   dead-lettered with reason `TTLExpiredException` when the queue dead-letters on expiration. "The
//!   expiration doesn't affect messages that are currently locked for delivery": a locked message
//!   expires only once it is abandoned (Microsoft Learn, "Message expiration (Time to Live)").
//!
//! Service Bus purges expired messages lazily, when a receiver looks; here they leave at their
//! expiry, so the counts devstack shows are exact at every read.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, VecDeque},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::queue::{Queue, QueuedMessage};

/// The dead-letter reason Service Bus gives an expired message.
pub const EXPIRED_REASON: &str = "TTLExpiredException";

/// One queue's scheduled messages, and the expiry times of its active ones.
#[derive(Debug)]
pub struct Schedule {
    /// The queue's `deadLetteringOnMessageExpiration`.
    dead_letter_on_expiration: bool,
    /// Messages not yet active, by activation time, then by sequence number.
    waiting: BTreeMap<(Instant, u64), QueuedMessage>,
    /// When an active message with a TTL expires, earliest first. A message received before then
    /// leaves its entry behind; the pass it starts then just expires nothing.
    expiries: BinaryHeap<Reverse<Instant>>,
    /// Expired messages removed (not dead-lettered).
    expired: u64,
}

/// What [`Schedule::advance`] changed.
#[derive(Debug, Default)]
pub struct Advanced {
    /// The ids of the scheduled messages that became active.
    pub activated: Vec<String>,
    /// The ids of the expired messages removed.
    pub expired: Vec<String>,
    /// Expired messages to dead-letter, with [`EXPIRED_REASON`].
    pub dead_letters: Vec<QueuedMessage>,
}

impl Advanced {
    /// Whether anything moved.
    pub fn any(&self) -> bool {
        !(self.activated.is_empty() && self.expired.is_empty() && self.dead_letters.is_empty())
    }
}

impl Schedule {
    pub fn new(dead_letter_on_expiration: bool) -> Self {
        Self {
            dead_letter_on_expiration,
            waiting: BTreeMap::new(),
            expiries: BinaryHeap::new(),
            expired: 0,
        }
    }

    /// Takes a message sent at `now` (`wall`, on the UTC clock its scheduled time is read on):
    /// returns it when it is active at once, to be enqueued, or keeps it until its time. Sets its
    /// expiry from its TTL.
    pub fn admit(
        &mut self,
        mut message: QueuedMessage,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Option<QueuedMessage> {
        let envelope = &message.envelope;
        // A time in the past is due at once, as Service Bus enqueues it at once.
        let delay = envelope
            .scheduled_enqueue_time
            .and_then(|at| (at - wall).to_std().ok())
            .unwrap_or_default();
        let active_at = now + delay;
        message.expires_at = envelope
            .time_to_live
            .and_then(|ttl| active_at.checked_add(ttl));
        if delay.is_zero() {
            self.entered_queue(&message);
            return Some(message);
        }
        self.waiting.insert((active_at, message.sequence), message);
        None
    }

    /// Notes a message joining the active ones (sent, due, or abandoned back), so that it
    /// expires in time.
    pub fn entered_queue(&mut self, message: &QueuedMessage) {
        if let Some(at) = message.expires_at {
            self.expiries.push(Reverse(at));
        }
    }

    /// At `now`: moves the messages due into `active`, at its tail, and takes the expired ones
    /// out of it.
    pub fn advance(&mut self, now: Instant, active: &mut VecDeque<QueuedMessage>) -> Advanced {
        let mut advanced = Advanced::default();
        while let Some(entry) = self.waiting.first_entry()
            && entry.key().0 <= now
        {
            let message = entry.remove();
            self.entered_queue(&message);
            advanced.activated.push(message.id.clone());
            active.push_back(message);
        }
        let mut due = false;
        while self.expiries.peek().is_some_and(|Reverse(at)| *at <= now) {
            self.expiries.pop();
            due = true;
        }
        if due {
            let before = active.len();
            let mut kept = VecDeque::with_capacity(before);
            for message in active.drain(..) {
                if message.expires_at.is_some_and(|at| at <= now) {
                    if self.dead_letter_on_expiration {
                        advanced.dead_letters.push(message);
                    } else {
                        advanced.expired.push(message.id);
                    }
                } else {
                    kept.push_back(message);
                }
            }
            *active = kept;
            self.expired += advanced.expired.len() as u64;
        }
        advanced
    }

    /// When [`advance`](Self::advance) next has something to do.
    pub fn next_due(&self) -> Option<Instant> {
        let activation = self.waiting.keys().next().map(|(at, _)| *at);
        let expiry = self.expiries.peek().map(|Reverse(at)| *at);
        activation.into_iter().chain(expiry).min()
    }

    /// Whether no message is timed: then there is nothing to advance.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.expiries.is_empty()
    }

    /// Messages waiting for their scheduled time.
    pub fn scheduled(&self) -> u64 {
        self.waiting.len() as u64
    }

    /// Expired messages removed.
    pub fn expired(&self) -> u64 {
        self.expired
    }
}

/// Keeps `queue`'s time until `shutdown`: advances its schedule at each due time, so a
/// scheduled message reaches waiting consumers, and the status, at its time, and an expired one
/// leaves at its expiry, with nobody asking. Reads between two due times advance it too
/// ([`Queue::counts`], receives): this only makes sure something happens when nobody reads.
pub async fn keep_time(queue: Arc<Queue>, shutdown: CancellationToken) {
    loop {
        let changed = queue.timing_changed();
        tokio::pin!(changed);
        // Before reading the next due time: a message timed after the read still wakes us.
        changed.as_mut().enable();
        let next = queue.next_due();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed => continue,
            _ = sleep_until(next) => queue.advance(),
        }
    }
}

/// Sleeps until `at`, or for ever when nothing is due.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::service_bus::Envelope;

    fn message(sequence: u64, envelope: Envelope) -> QueuedMessage {
        QueuedMessage {
            sequence,
            id: sequence.to_string(),
            envelope,
            ..Default::default()
        }
    }

    fn timed(sequence: u64, in_secs: Option<i64>, ttl_secs: Option<u64>) -> QueuedMessage {
        let wall = wall();
        message(
            sequence,
            Envelope {
                scheduled_enqueue_time: in_secs.map(|s| wall + chrono::Duration::seconds(s)),
                time_to_live: ttl_secs.map(Duration::from_secs),
                ..Default::default()
            },
        )
    }

    fn wall() -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000, 0).unwrap()
    }

    fn ids(active: &VecDeque<QueuedMessage>) -> Vec<u64> {
        active.iter().map(|m| m.sequence).collect()
    }

    mod in_a_queue {
        use std::time::Duration;

        use chrono::Utc;
        use futures::FutureExt;

        use super::super::*;
        use crate::{
            changes::Changes,
            journey::{Journeys, Via},
            queue::{Counts, Queue, QueueSettings},
            service_bus::Envelope,
        };

        fn queue(settings: QueueSettings) -> (Arc<Queue>, CancellationToken) {
            queue_telling(settings, Changes::default())
        }

        fn queue_telling(
            settings: QueueSettings,
            changes: Changes,
        ) -> (Arc<Queue>, CancellationToken) {
            let queue = Queue::new("q", settings, changes, Journeys::new(100));
            let shutdown = CancellationToken::new();
            tokio::spawn(keep_time(Arc::clone(&queue), shutdown.clone()));
            (queue, shutdown)
        }

        fn in_secs(secs: i64) -> Envelope {
            Envelope {
                scheduled_enqueue_time: Some(Utc::now() + chrono::Duration::seconds(secs)),
                ..Envelope::default()
            }
        }

        fn living(secs: u64) -> Envelope {
            Envelope {
                time_to_live: Some(Duration::from_secs(secs)),
                ..Envelope::default()
            }
        }

        /// Lets the queue's timekeeper run at the current (paused) time.
        async fn settle() {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        }

        #[tokio::test(start_paused = true)]
        async fn a_scheduled_message_reaches_a_waiting_receiver_and_the_counts_at_its_time() {
            let (q, shutdown) = queue(QueueSettings::default());
            let start = tokio::time::Instant::now();
            q.send(b"later".to_vec(), in_secs(30), None, Via::Grpc);
            q.send(b"now".to_vec(), Envelope::default(), None, Via::Grpc);
            let counts = q.counts();
            assert_eq!(
                (counts.produced, counts.scheduled, counts.active),
                (2, 1, 1)
            );
            q.receive().await.complete().expect("the lock is held");

            let receiver = tokio::spawn({
                let q = Arc::clone(&q);
                async move {
                    let lock = q.receive().await;
                    let data = lock.message().data.clone();
                    lock.complete().expect("the lock is held");
                    (data, tokio::time::Instant::now())
                }
            });
            tokio::time::sleep(Duration::from_secs(28)).await;
            assert!(!receiver.is_finished(), "nothing before its time");
            assert_eq!(q.counts().active, 0, "KEDA counts nothing yet");
            let (data, at) = receiver.await.unwrap();
            assert_eq!(data, b"later");
            // 30 s after the send, less the (real) instants between the test's clock read and
            // the sidecar's.
            let after = at - start;
            assert!(
                (Duration::from_secs(29)..=Duration::from_secs(30)).contains(&after),
                "{after:?}"
            );
            let counts = q.counts();
            assert_eq!((counts.scheduled, counts.completed), (0, 2));
            shutdown.cancel();
        }

        #[tokio::test(start_paused = true)]
        async fn an_expired_message_is_removed_at_its_expiry_with_nobody_reading() {
            let changes = Changes::default();
            let (q, shutdown) = queue_telling(QueueSettings::default(), changes.clone());
            q.send(b"brief".to_vec(), living(10), None, Via::Grpc);
            q.send(b"lasting".to_vec(), Envelope::default(), None, Via::Grpc);
            tokio::time::sleep(Duration::from_secs(9)).await;
            assert_eq!(q.counts().active, 2);
            let start = tokio::time::Instant::now() - Duration::from_secs(9);
            assert_eq!(q.next_due(), Some(start + Duration::from_secs(10)));
            let mut watcher = changes.subscribe();
            tokio::time::sleep(Duration::from_secs(1)).await;
            settle().await;
            // The timekeeper moved it, unasked (a read would have too), and said so.
            assert_eq!(q.next_due(), None);
            assert!(
                watcher.changed().now_or_never().is_some(),
                "a change notice"
            );
            let counts = q.counts();
            assert_eq!((counts.active, counts.expired), (1, 1), "{counts:?}");
            assert_eq!(q.receive().await.message().data, b"lasting");
            shutdown.cancel();
        }

        #[tokio::test(start_paused = true)]
        async fn a_locked_message_outlives_its_ttl_until_abandoned() {
            let settings = QueueSettings {
                dead_letter_on_expiration: true,
                ..QueueSettings::default()
            };
            let (q, shutdown) = queue(settings);
            q.send(b"slow".to_vec(), living(5), None, Via::Grpc);
            let lock = q.receive().await;
            // Past its TTL, within its lock.
            tokio::time::sleep(Duration::from_secs(30)).await;
            assert_eq!(q.counts().locked, 1, "locked: not expired");
            lock.abandon("failed").expect("the lock is held");
            settle().await;
            let counts = q.counts();
            assert_eq!(
                counts,
                Counts {
                    produced: 1,
                    dead_lettered: 1,
                    ..Counts::default()
                }
            );
            let dead = q.dead_letters();
            assert_eq!(
                (dead[0].reason.as_str(), dead[0].delivery_count),
                (EXPIRED_REASON, 1)
            );
            shutdown.cancel();
        }

        /// A lock that runs out puts the message back as an abandon does: its expiry, which the
        /// lock held off, takes effect then.
        #[tokio::test(start_paused = true)]
        async fn a_message_whose_lock_runs_out_past_its_ttl_expires_then() {
            let settings = QueueSettings {
                dead_letter_on_expiration: true,
                ..QueueSettings::default()
            };
            let (q, shutdown) = queue(settings);
            q.send(b"slow".to_vec(), living(5), None, Via::Grpc);
            let lock = q.receive().await;
            lock.forget();
            tokio::time::sleep(settings.lock_duration).await;
            settle().await;
            let counts = q.counts();
            assert_eq!(
                (counts.active, counts.dead_lettered, counts.locks_expired),
                (0, 1, 1),
                "{counts:?}"
            );
            assert_eq!(q.dead_letters()[0].reason, EXPIRED_REASON);
            shutdown.cancel();
        }
    }

    #[test]
    fn scheduled_messages_wait_then_join_the_tail_in_time_order() {
        let start = Instant::now();
        let mut schedule = Schedule::new(false);
        let mut active = VecDeque::new();
        for m in [timed(0, Some(20), None), timed(1, Some(10), None)] {
            assert!(schedule.admit(m, start, wall()).is_none(), "waits");
        }
        // Past and present times are due at once.
        for m in [timed(2, Some(-5), None), timed(3, Some(0), None)] {
            active.push_back(schedule.admit(m, start, wall()).expect("active at once"));
        }
        assert_eq!((schedule.scheduled(), active.len()), (2, 2));
        assert_eq!(schedule.next_due(), Some(start + Duration::from_secs(10)));

        let advanced = schedule.advance(start + Duration::from_secs(9), &mut active);
        assert!(!advanced.any());
        let advanced = schedule.advance(start + Duration::from_secs(10), &mut active);
        assert_eq!(advanced.activated.len(), 1);
        assert_eq!(ids(&active), [2, 3, 1]);
        schedule.advance(start + Duration::from_secs(60), &mut active);
        assert_eq!(ids(&active), [2, 3, 1, 0]);
        assert!(schedule.is_idle() && schedule.next_due().is_none());
    }

    #[test]
    fn a_ttl_counts_from_the_enqueued_time_and_expired_messages_leave() {
        let start = Instant::now();
        let mut schedule = Schedule::new(false);
        let mut active = VecDeque::new();
        // Expires at 30 s; scheduled at 20 s with 15 s to live, so at 35 s; no TTL.
        active.extend(schedule.admit(timed(0, None, Some(30)), start, wall()));
        assert!(
            schedule
                .admit(timed(1, Some(20), Some(15)), start, wall())
                .is_none()
        );
        active.extend(schedule.admit(timed(2, None, None), start, wall()));

        schedule.advance(start + Duration::from_secs(29), &mut active);
        assert_eq!(ids(&active), [0, 2, 1], "1 active from 20 s");
        let advanced = schedule.advance(start + Duration::from_secs(30), &mut active);
        assert_eq!((advanced.expired.len(), schedule.expired()), (1, 1));
        schedule.advance(start + Duration::from_secs(34), &mut active);
        assert_eq!(ids(&active), [2, 1], "scheduled at 20 s, alive until 35 s");
        schedule.advance(start + Duration::from_secs(35), &mut active);
        assert_eq!(ids(&active), [2]);
        assert_eq!(schedule.expired(), 2);
    }

    #[test]
    fn expired_messages_are_dead_lettered_when_the_queue_says_so() {
        let start = Instant::now();
        let mut schedule = Schedule::new(true);
        let mut active: VecDeque<_> = schedule
            .admit(timed(0, None, Some(1)), start, wall())
            .into_iter()
            .collect();
        let advanced = schedule.advance(start + Duration::from_secs(1), &mut active);
        assert_eq!(advanced.dead_letters.len(), 1);
        assert_eq!((advanced.expired.len(), schedule.expired()), (0, 0));
        assert!(active.is_empty());
    }

    #[test]
    fn a_message_received_before_its_expiry_leaves_a_harmless_entry() {
        let start = Instant::now();
        let mut schedule = Schedule::new(false);
        let mut active: VecDeque<_> = schedule
            .admit(timed(0, None, Some(5)), start, wall())
            .into_iter()
            .collect();
        // Received (locked): no longer among the active ones.
        let locked = active.pop_front().unwrap();
        let advanced = schedule.advance(start + Duration::from_secs(10), &mut active);
        assert!(!advanced.any());
        // Abandoned after its expiry: it expires at the next advance.
        schedule.entered_queue(&locked);
        active.push_front(locked);
        let advanced = schedule.advance(start + Duration::from_secs(10), &mut active);
        assert_eq!(advanced.expired.len(), 1);
    }
}
