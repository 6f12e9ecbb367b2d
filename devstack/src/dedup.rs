//! Service Bus duplicate detection for one queue: a queue created with it remembers the
//! `MessageId` of every message it accepted within its detection window, and a send with one of
//! those ids is answered with success and dropped ("the message is reported as accepted, but the
//! newly sent message is instantly ignored and dropped. No other parts of the message other than
//! the MessageId are considered", Microsoft Learn, "Duplicate detection"). A dropped copy is not a
//! message: it is never produced, and it does not restart its id's window.
//!
//! With detection off the queue takes every copy, and this still counts the ones it would have
//! dropped, to show what detection is for.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use tokio::time::Instant;

/// A queue's duplicate detection: `requiresDuplicateDetection` and
/// `duplicateDetectionHistoryTimeWindow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectionSettings {
    /// Whether a duplicate is dropped; when off it is enqueued, and counted.
    pub enabled: bool,
    /// How long an accepted id is remembered.
    pub window: Duration,
}

impl Default for DetectionSettings {
    /// What the deployment guide creates: detection on, with Service Bus's default window.
    fn default() -> Self {
        Self {
            enabled: true,
            window: DEFAULT_WINDOW,
        }
    }
}

/// Service Bus's default `duplicateDetectionHistoryTimeWindow`, which the guide keeps: 10 minutes.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10 * 60);
/// The shortest window Service Bus takes: 20 seconds.
pub const MIN_WINDOW: Duration = Duration::from_secs(20);
/// The longest window Service Bus takes: 7 days.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// What became of a send whose message has an id given by its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The id is not in the window: the message is accepted, and its id remembered.
    New,
    /// A copy of a message accepted within the window, and detection is on: answered with
    /// success, and dropped.
    Dropped,
    /// A copy of a message accepted within the window, and detection is off: enqueued again.
    Enqueued,
}

/// The ids of one queue's accepted messages within the window, oldest first.
#[derive(Debug)]
pub struct DuplicateDetection {
    settings: DetectionSettings,
    /// Each remembered id and when it was (last) accepted.
    seen: HashMap<Arc<str>, Instant>,
    /// The same, in the order they were accepted, to forget them as the window moves on.
    order: VecDeque<(Instant, Arc<str>)>,
    dropped: u64,
    enqueued: u64,
}

impl DuplicateDetection {
    pub fn new(settings: DetectionSettings) -> Self {
        Self {
            settings,
            seen: HashMap::new(),
            order: VecDeque::new(),
            dropped: 0,
            enqueued: 0,
        }
    }

    /// Judges a send of a message whose sender gave it `id`, at `now`. Only a sender's id can
    /// repeat: the queue's own ids are new by construction, so they are neither judged nor
    /// remembered.
    pub fn check(&mut self, id: &str, now: Instant) -> Verdict {
        self.forget_before(now);
        let verdict = match (self.seen.contains_key(id), self.settings.enabled) {
            (false, _) => Verdict::New,
            (true, true) => {
                self.dropped += 1;
                return Verdict::Dropped;
            }
            (true, false) => {
                self.enqueued += 1;
                Verdict::Enqueued
            }
        };
        // Accepted: its window starts now (again, for a copy taken with detection off).
        let id: Arc<str> = Arc::from(id);
        self.seen.insert(Arc::clone(&id), now);
        self.order.push_back((now, id));
        verdict
    }

    /// Copies dropped (detection on).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Copies enqueued again (detection off).
    pub fn enqueued(&self) -> u64 {
        self.enqueued
    }

    /// Forgets the ids accepted a whole window before `now` or earlier.
    fn forget_before(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front()
            && now.saturating_duration_since(*at) >= self.settings.window
        {
            let Some((at, id)) = self.order.pop_front() else {
                break;
            };
            // An id accepted again since (detection off) keeps its later time.
            if self.seen.get(&id) == Some(&at) {
                self.seen.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn detection(enabled: bool) -> DuplicateDetection {
        DuplicateDetection::new(DetectionSettings {
            enabled,
            window: WINDOW,
        })
    }

    #[test]
    fn a_copy_within_the_window_is_dropped_and_does_not_extend_it() {
        let start = Instant::now();
        let mut d = detection(true);
        assert_eq!(d.check("a", start), Verdict::New);
        assert_eq!(d.check("b", start), Verdict::New);
        let late = start + WINDOW - Duration::from_millis(1);
        assert_eq!(d.check("a", late), Verdict::Dropped);
        assert_eq!(d.check("b", late), Verdict::Dropped);
        // The dropped copy did not restart the window: at `start + WINDOW` "a" is new again.
        assert_eq!(d.check("a", start + WINDOW), Verdict::New);
        assert_eq!(d.check("a", start + WINDOW), Verdict::Dropped);
        assert_eq!((d.dropped(), d.enqueued()), (3, 0));
        // Only what is inside the window is kept.
        assert_eq!(d.seen.len(), 1);
        assert_eq!(d.order.len(), 1);
    }

    #[test]
    fn with_detection_off_copies_are_enqueued_and_counted() {
        let start = Instant::now();
        let mut d = detection(false);
        assert_eq!(d.check("a", start), Verdict::New);
        let later = start + WINDOW / 2;
        assert_eq!(d.check("a", later), Verdict::Enqueued);
        // The copy was accepted: its own window runs from `later`.
        assert_eq!(d.check("a", start + WINDOW), Verdict::Enqueued);
        assert_eq!(
            d.check("a", later + WINDOW + WINDOW),
            Verdict::New,
            "a window after the last copy"
        );
        assert_eq!((d.dropped(), d.enqueued()), (0, 2));
    }

    /// Through a queue: what a consumer receives and what the counts say.
    #[tokio::test(start_paused = true)]
    async fn a_queue_drops_copies_or_takes_them_and_counts_them() {
        use crate::{
            changes::Changes,
            journey::{Journeys, Via},
            queue::{Queue, QueueSettings},
            service_bus::Envelope,
        };

        let copy = || Envelope {
            message_id: Some("order-1".into()),
            ..Envelope::default()
        };
        for enabled in [true, false] {
            let settings = QueueSettings {
                duplicate_detection: DetectionSettings {
                    enabled,
                    window: WINDOW,
                },
                ..QueueSettings::default()
            };
            let journeys = Journeys::new(100);
            let q = Queue::new("q", settings, Changes::default(), journeys.clone());
            for _ in 0..3 {
                assert_eq!(q.send(b"x".to_vec(), copy(), None, Via::Grpc), "order-1");
            }
            // Messages without a sender's id are never duplicates.
            q.send(b"y".to_vec(), Envelope::default(), None, Via::Grpc);
            q.send(b"y".to_vec(), Envelope::default(), None, Via::Grpc);
            let counts = q.counts();
            let copies = if enabled { 1 } else { 3 };
            assert_eq!(counts.produced, copies + 2, "{enabled}: {counts:?}");
            assert_eq!(counts.active, copies + 2, "{enabled}: {counts:?}");
            let (dropped, enqueued) = if enabled { (2, 0) } else { (0, 2) };
            assert_eq!(
                (counts.duplicates_dropped, counts.duplicates_enqueued),
                (dropped, enqueued)
            );
            // The drops are in the message's journey, after its enqueue.
            let journey =
                serde_json::to_value(journeys.get("order-1").expect("a journey")).unwrap();
            let steps: Vec<&str> = journey["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event"].as_str().unwrap())
                .collect();
            let expected: &[&str] = if enabled {
                &["enqueued", "duplicateDropped", "duplicateDropped"]
            } else {
                &["enqueued", "enqueued", "enqueued"]
            };
            assert_eq!(steps, expected, "{enabled}");
            // A window later the id is new again.
            tokio::time::advance(WINDOW).await;
            q.send(b"x".to_vec(), copy(), None, Via::Grpc);
            assert_eq!(q.counts().produced, copies + 3);
        }
    }

    #[test]
    fn the_default_is_the_guides_queue() {
        let settings = DetectionSettings::default();
        assert!(settings.enabled);
        assert_eq!(settings.window, Duration::from_secs(600));
        assert!((MIN_WINDOW..=MAX_WINDOW).contains(&settings.window));
    }
}
