//! Each message's journey through the sidecar, kept in bounded memory for
//! `GET /devstack/messages/{id}` and the dashboard's timeline: how it was enqueued (which call, which
//! trace), every delivery (which consumer, start and end, outcome and error, the Resiliency
//! attempt), each lock renewed or expired, the abandons, the completion or the dead-lettering,
//! what the dead-letter operations did to it, and the faults that touched it. A message processed
//! more than once (the app answered OK twice: at-least-once delivery allows it) is flagged.
//!
//! Bounds: at most `capacity` messages (the oldest journey is forgotten first; `--journey-messages`,
//! 0 keeps none) and [`EVENTS_KEPT`] events a message (past it, the oldest but the first are
//! dropped, and counted). A message is flagged, and counted among the duplicates, when its journey
//! was kept from one processing to the next.
//!
//! Recording an event about a message is one call, whoever makes it: the queue records what
//! happens to the message there, the delivery what the app did with it, the faults what they did
//! to it. A new kind of event is a new [`Step`] variant passed to [`Journeys::record`]: a send
//! that duplicate detection dropped, a scheduled message's wait and activation, and an expiry are
//! such steps.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Serialize, Serializer};
use tokio::time::Instant;

use crate::scaling::rfc3339;

/// A time as the status writes it, formatted only when a journey is read: recording stays cheap
/// on the queue's hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At(pub DateTime<Utc>);

impl Serialize for At {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&rfc3339(self.0))
    }
}

/// Events kept per message: a poison message's ten deliveries, their abandons and renewals fit.
pub const EVENTS_KEPT: usize = 64;
/// The default of `--journey-messages`: a whole 10,000-message run, at a few MiB.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// How a message reached the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Via {
    /// `dapr.proto.runtime.v1.Dapr/InvokeBinding`, as the producer calls it.
    #[serde(rename = "gRPC InvokeBinding")]
    Grpc,
    /// `POST /v1.0/bindings/{name}` on the HTTP port.
    #[serde(rename = "HTTP POST /v1.0/bindings")]
    Http,
    /// Sent back from the dead-letter queue.
    #[serde(rename = "dead-letter replay")]
    Replay,
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// The app answered OK.
    Ok,
    /// The app answered with an error.
    Error,
    /// The call failed on the way: the app was not there, or went away.
    NoAnswer,
    /// The sidecar stopped before the app answered.
    Cancelled,
}

/// One thing that happened to a message.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum Step {
    #[serde(rename_all = "camelCase")]
    Enqueued {
        queue: String,
        via: Via,
        trace_id: String,
    },
    /// A send of this message id that duplicate detection dropped: the message it duplicates
    /// was accepted within the detection window. The sender was answered with success.
    #[serde(rename_all = "camelCase")]
    DuplicateDropped {
        queue: String,
        via: Via,
    },
    /// Sent with a scheduled enqueue time: it waits, not active, until `active_at`.
    #[serde(rename_all = "camelCase")]
    Scheduled {
        active_at: At,
    },
    /// Its scheduled time came: it joined the active messages.
    Activated,
    /// Its time-to-live ran out while it waited: removed, or dead-lettered when the queue
    /// dead-letters on expiration.
    Expired,
    /// One call to an app; `ended_at` and `outcome` once it ended.
    #[serde(rename_all = "camelCase")]
    Delivery {
        consumer: String,
        /// The queue's delivery count (1 on the first delivery).
        delivery_count: u32,
        /// The Resiliency attempt within this delivery (1, then each retry).
        attempt: u32,
        /// The delivery's own number in this journey, from 1.
        number: u32,
        ended_at: Option<At>,
        outcome: Option<Outcome>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    LockRenewed {
        locked_until: At,
    },
    /// The lock ran out: the message is available again (or dead-lettered, past the max
    /// delivery count). `at` is when it ran out.
    #[serde(rename_all = "camelCase")]
    LockExpired {
        delivery_count: u32,
    },
    #[serde(rename_all = "camelCase")]
    Abandoned {
        reason: String,
    },
    Completed,
    /// A complete the queue refused: the lock had already been lost.
    #[serde(rename_all = "camelCase")]
    CompleteFailed {
        reason: String,
    },
    #[serde(rename_all = "camelCase")]
    DeadLettered {
        reason: String,
    },
    #[serde(rename_all = "camelCase")]
    Replayed {
        from: String,
    },
    Purged,
    /// A fault that touched this message (`lost-complete`, `lost-lock`).
    #[serde(rename_all = "camelCase")]
    Fault {
        fault: String,
        detail: String,
    },
}

/// Where a message is, as its journey last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Place {
    /// Waiting for its scheduled enqueue time.
    Scheduled,
    /// Waiting to be delivered.
    Active,
    /// Held by a consumer's delivery.
    Locked,
    Completed,
    DeadLettered,
    /// Its time-to-live ran out: removed.
    Expired,
    Purged,
}

/// One event of a journey, when it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at: At,
    #[serde(flatten)]
    pub step: Step,
}

/// One message's journey, as `GET /devstack/messages/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Journey {
    pub id: String,
    pub place: Place,
    /// Deliveries the app answered OK.
    pub processed: u32,
    /// Processed more than once: at-least-once delivery allows it.
    pub duplicate: bool,
    pub deliveries: u32,
    /// Events left out past [`EVENTS_KEPT`] (the first, the enqueue, is always kept).
    pub events_dropped: u64,
    pub events: VecDeque<Event>,
}

/// A journey's line in the list of recent ones.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub id: String,
    pub place: Place,
    pub processed: u32,
    pub duplicate: bool,
    pub deliveries: u32,
    pub first_at: Option<At>,
    pub last_at: Option<At>,
    pub last_event: Option<Step>,
}

/// What the status says of the journeys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JourneyCounts {
    pub capacity: usize,
    pub kept: usize,
    /// Journeys forgotten to stay within the capacity.
    pub forgotten: u64,
    /// Messages flagged as processed more than once, ever (their journeys kept or not since).
    pub duplicates: u64,
}

/// A started delivery, to end with [`Journeys::delivery_ended`].
#[derive(Debug, Clone)]
pub struct DeliveryRef {
    id: String,
    number: u32,
}

/// The journeys of every message, bounded. Clones share one store.
#[derive(Debug, Clone)]
pub struct Journeys(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    capacity: usize,
    store: Mutex<Store>,
}

#[derive(Debug, Default)]
struct Store {
    by_id: HashMap<String, Journey>,
    /// Ids, oldest first: the next to forget.
    order: VecDeque<String>,
    forgotten: u64,
    duplicates: u64,
}

impl Journeys {
    /// A store of at most `capacity` journeys (0: none kept, counters only).
    pub fn new(capacity: usize) -> Self {
        Self(Arc::new(Inner {
            capacity,
            store: Mutex::default(),
        }))
    }

    /// Records `step` about message `id`, now.
    pub fn record(&self, id: &str, step: Step) {
        if self.0.capacity > 0 {
            self.record_at(id, Utc::now(), step);
        }
    }

    /// Records `step` about message `id`, at `instant` on the runtime's clock (a lock that ran
    /// out before anyone looked ran out then, not when it was noticed).
    pub fn record_since(&self, id: &str, instant: Instant, step: Step) {
        let ago = Instant::now().saturating_duration_since(instant);
        let at = Utc::now() - chrono::Duration::from_std(ago).unwrap_or_default();
        self.record_at(id, at, step);
    }

    fn record_at(&self, id: &str, at: DateTime<Utc>, step: Step) {
        if self.0.capacity == 0 {
            return;
        }
        let mut store = self.0.store.lock();
        Self::push(&mut store, self.0.capacity, id, at, step);
    }

    /// Adds `step` to message `id`'s journey in `store`, starting one (and forgetting the oldest,
    /// past `capacity`) when there is none.
    fn push(store: &mut Store, capacity: usize, id: &str, at: DateTime<Utc>, step: Step) {
        if !store.by_id.contains_key(id) {
            if store.order.len() >= capacity
                && let Some(oldest) = store.order.pop_front()
            {
                store.by_id.remove(&oldest);
                store.forgotten += 1;
            }
            store.order.push_back(id.to_owned());
            store.by_id.insert(
                id.to_owned(),
                Journey {
                    id: id.to_owned(),
                    place: Place::Active,
                    processed: 0,
                    duplicate: false,
                    deliveries: 0,
                    events_dropped: 0,
                    events: VecDeque::new(),
                },
            );
        }
        let journey = store.by_id.get_mut(id).expect("inserted above");
        journey.place = match &step {
            Step::Enqueued { .. }
            | Step::Abandoned { .. }
            | Step::Replayed { .. }
            | Step::Activated => Place::Active,
            Step::Scheduled { .. } => Place::Scheduled,
            Step::Expired => Place::Expired,
            Step::Delivery { .. } => Place::Locked,
            Step::LockExpired { .. } if journey.place == Place::Locked => Place::Active,
            Step::Completed => Place::Completed,
            Step::DeadLettered { .. } => Place::DeadLettered,
            Step::Purged => Place::Purged,
            _ => journey.place,
        };
        if let Step::Delivery { .. } = step {
            journey.deliveries += 1;
        }
        if journey.events.len() == EVENTS_KEPT {
            // The first event (the enqueue) says where the message came from: keep it.
            journey.events.remove(1);
            journey.events_dropped += 1;
        }
        journey.events.push_back(Event { at: At(at), step });
    }

    /// Records the start of one call to an app: attempt `attempt` of delivery `delivery_count`
    /// of message `id`, by `consumer`.
    pub fn delivery_started(
        &self,
        id: &str,
        consumer: &str,
        delivery_count: u32,
        attempt: u32,
    ) -> DeliveryRef {
        let mut number = 0;
        if self.0.capacity > 0 {
            let mut store = self.0.store.lock();
            number = store.by_id.get(id).map_or(0, |j| j.deliveries) + 1;
            let step = Step::Delivery {
                consumer: consumer.to_owned(),
                delivery_count,
                attempt,
                number,
                ended_at: None,
                outcome: None,
                error: None,
            };
            Self::push(&mut store, self.0.capacity, id, Utc::now(), step);
        }
        DeliveryRef {
            id: id.to_owned(),
            number,
        }
    }

    /// Records how the call `delivery` ended.
    pub fn delivery_ended(&self, delivery: &DeliveryRef, outcome: Outcome, error: Option<String>) {
        let mut store = self.0.store.lock();
        let store = &mut *store;
        let Some(journey) = store.by_id.get_mut(&delivery.id) else {
            return;
        };
        if outcome == Outcome::Ok {
            journey.processed += 1;
            if journey.processed == 2 {
                journey.duplicate = true;
                store.duplicates += 1;
            }
        }
        let now = At(Utc::now());
        let found = journey
            .events
            .iter_mut()
            .rev()
            .find_map(|e| match &mut e.step {
                Step::Delivery {
                    number,
                    ended_at,
                    outcome: o,
                    error: err,
                    ..
                } if *number == delivery.number => Some((ended_at, o, err)),
                _ => None,
            });
        if let Some((ended_at, o, err)) = found {
            *ended_at = Some(now);
            *o = Some(outcome);
            *err = error;
        }
    }

    /// The journey of message `id`, if kept.
    pub fn get(&self, id: &str) -> Option<Journey> {
        self.0.store.lock().by_id.get(id).cloned()
    }

    /// The `limit` most recently started journeys, newest first; only the duplicates with
    /// `duplicates_only`.
    pub fn recent(&self, limit: usize, duplicates_only: bool) -> Vec<Summary> {
        let store = self.0.store.lock();
        store
            .order
            .iter()
            .rev()
            .filter_map(|id| store.by_id.get(id))
            .filter(|j| !duplicates_only || j.duplicate)
            .take(limit)
            .map(|j| Summary {
                id: j.id.clone(),
                place: j.place,
                processed: j.processed,
                duplicate: j.duplicate,
                deliveries: j.deliveries,
                first_at: j.events.front().map(|e| e.at),
                last_at: j.events.back().map(|e| e.at),
                last_event: j.events.back().map(|e| e.step.clone()),
            })
            .collect()
    }

    pub fn counts(&self) -> JourneyCounts {
        let store = self.0.store.lock();
        JourneyCounts {
            capacity: self.0.capacity,
            kept: store.by_id.len(),
            forgotten: store.forgotten,
            duplicates: store.duplicates,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enqueued() -> Step {
        Step::Enqueued {
            queue: "q".into(),
            via: Via::Grpc,
            trace_id: "t".into(),
        }
    }

    #[test]
    fn a_journey_follows_its_message_and_flags_a_second_processing() {
        let journeys = Journeys::new(10);
        journeys.record("m", enqueued());
        let first = journeys.delivery_started("m", "consumer-1", 1, 1);
        assert_eq!(journeys.get("m").unwrap().place, Place::Locked);
        journeys.delivery_ended(&first, Outcome::Ok, None);
        journeys.record(
            "m",
            Step::Fault {
                fault: "lost-complete".into(),
                detail: "the complete never reached the queue".into(),
            },
        );
        journeys.record("m", Step::LockExpired { delivery_count: 1 });
        let second = journeys.delivery_started("m", "consumer-2", 2, 1);
        journeys.delivery_ended(&second, Outcome::Ok, None);
        journeys.record("m", Step::Completed);

        let journey = journeys.get("m").unwrap();
        assert_eq!(
            (journey.place, journey.processed, journey.duplicate),
            (Place::Completed, 2, true)
        );
        let json = serde_json::to_value(&journey).unwrap();
        let events: Vec<&str> = json["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(
            events,
            [
                "enqueued",
                "delivery",
                "fault",
                "lockExpired",
                "delivery",
                "completed"
            ]
        );
        assert_eq!(json["events"][0]["via"], "gRPC InvokeBinding");
        let delivery = &json["events"][4];
        assert_eq!(
            (
                &delivery["consumer"],
                &delivery["deliveryCount"],
                &delivery["number"],
                &delivery["outcome"]
            ),
            (
                &serde_json::json!("consumer-2"),
                &serde_json::json!(2),
                &serde_json::json!(2),
                &serde_json::json!("ok")
            )
        );
        assert!(delivery["endedAt"].is_string(), "{delivery}");
        assert_eq!(journeys.counts().duplicates, 1);
        assert_eq!(journeys.recent(10, true).len(), 1);
    }

    #[test]
    fn the_store_is_bounded_in_messages_and_in_events_a_message() {
        let journeys = Journeys::new(2);
        for id in ["a", "b", "c"] {
            journeys.record(id, enqueued());
        }
        assert!(journeys.get("a").is_none(), "the oldest is forgotten");
        let counts = journeys.counts();
        assert_eq!((counts.kept, counts.forgotten), (2, 1));
        let recent: Vec<String> = journeys
            .recent(5, false)
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(recent, ["c", "b"]);

        for n in 0..EVENTS_KEPT as u32 + 5 {
            journeys.record("c", Step::LockExpired { delivery_count: n });
        }
        let journey = journeys.get("c").unwrap();
        assert_eq!(journey.events.len(), EVENTS_KEPT);
        assert_eq!(journey.events_dropped, 6);
        assert!(matches!(journey.events[0].step, Step::Enqueued { .. }));

        let none = Journeys::new(0);
        none.record("x", enqueued());
        assert!(none.get("x").is_none());
        assert_eq!(none.counts().kept, 0);
    }
}
