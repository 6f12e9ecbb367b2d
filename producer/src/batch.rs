//! A batch: `count` messages, paced by an interval or sent with bounded concurrency. Validating,
//! reserving a place and running are the same for the REST and gRPC fronts, so they live here;
//! running is detached from the caller, so a caller that goes away stops the batch cleanly
//! (in-flight calls complete) instead of leaving it half-known.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use futures::{StreamExt, stream::FuturesUnordered};
use pipeline::message::{DEFAULT_TEXT, Message};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::MissedTickBehavior,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, info, warn};

use crate::{
    message_id::{IdempotencyKey, MessageIds},
    metrics::Metrics,
    publisher::{PublishError, Publisher, Trace},
};

/// Longest pause one may ask for between two messages.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Longest message text, in characters (Unicode code points), the unit JSON Schema's `maxLength`
/// counts, so the OpenAPI document states the very limit enforced here. Service Bus standard tier
/// caps a whole message at 256 KiB: the worst case, control characters escaped as `\u001f` in
/// the message's JSON, is 6 bytes a character, 96 KiB here. Below 32 Ki characters, the
/// contract test (`.ci/api-contract`) also sends texts of exactly this length.
pub const MAX_TEXT_CHARS: usize = 16 * 1024;

/// Why a batch request was refused before anything was sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidBatch {
    #[error("count must be between 1 and {max}, got {got}")]
    Count { got: i64, max: u32 },
    #[error("intervalMilliseconds must be between 0 and {}, got {got}", MAX_INTERVAL.as_millis())]
    Interval { got: i64 },
    #[error("text must be at most {MAX_TEXT_CHARS} characters, got {got}")]
    TextTooLong { got: usize },
}

/// A validated batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub count: u32,
    pub interval: Duration,
    pub text: String,
}

impl Batch {
    /// Checks a request's fields against the limits. Wide integer types let negative and huge
    /// values reach this check, so they get a message naming the field and its range.
    pub fn validate(
        count: i64,
        interval_ms: i64,
        text: Option<String>,
        max_count: NonZeroU32,
    ) -> Result<Self, InvalidBatch> {
        let max = max_count.get();
        let count = u32::try_from(count)
            .ok()
            .filter(|c| (1..=max).contains(c))
            .ok_or(InvalidBatch::Count { got: count, max })?;
        let interval = u64::try_from(interval_ms)
            .ok()
            .map(Duration::from_millis)
            .filter(|i| *i <= MAX_INTERVAL)
            .ok_or(InvalidBatch::Interval { got: interval_ms })?;
        let text = text.unwrap_or_else(|| DEFAULT_TEXT.to_owned());
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(InvalidBatch::TextTooLong { got: chars });
        }
        Ok(Self {
            count,
            interval,
            text,
        })
    }
}

/// How a batch that did not send everything ended.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A sidecar call failed; nothing more was started after it.
    #[error("{source}; {sent} of {count} messages were sent")]
    Sidecar {
        sent: u32,
        count: u32,
        source: PublishError,
    },
    /// The producer is shutting down and its drain time ran out.
    #[error("producer is shutting down; {sent} of {count} messages were sent")]
    Stopped { sent: u32, count: u32 },
    /// MAX_BATCHES batches are already running; nothing was sent.
    #[error("too many batches in progress (at most {limit}); retry later")]
    Busy { limit: usize },
}

impl BatchError {
    /// Messages the sidecar accepted before the batch ended.
    pub fn sent(&self) -> u32 {
        match self {
            Self::Sidecar { sent, .. } | Self::Stopped { sent, .. } => *sent,
            Self::Busy { .. } => 0,
        }
    }
}

/// A batch as either front receives it: the request's fields, not yet checked, and the trace
/// context its messages carry.
#[derive(Debug)]
pub struct BatchRequest {
    /// Messages to send; wide, so out-of-range values reach validation and get its message.
    pub count: i64,
    /// Pause between two messages in milliseconds; 0 sends with bounded concurrency.
    pub interval_ms: i64,
    /// Message text; the default text when absent.
    pub text: Option<String>,
    /// The caller's idempotency key, from which the messages' ids are derived; random ids
    /// without one.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Forwarded on each sidecar call.
    pub trace: Trace,
}

/// Why a batch request did not send all its messages.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// Refused before anything was sent.
    #[error(transparent)]
    Invalid(#[from] InvalidBatch),
    /// Refused for want of a place, or ended early.
    #[error(transparent)]
    Batch(#[from] BatchError),
}

/// How many messages and batches the producer takes on.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most messages in one batch (MAX_COUNT).
    pub max_count: NonZeroU32,
    /// Calls in flight for a batch without an interval (SEND_CONCURRENCY).
    pub concurrency: NonZeroU32,
    /// Batches running at once (MAX_BATCHES).
    pub max_batches: NonZeroU32,
}

/// Runs batches for both fronts: the one place a request is validated, given a place among
/// MAX_BATCHES, and run.
#[derive(Debug, Clone)]
pub struct Batches {
    inner: Arc<Inner>,
}

/// A place among the MAX_BATCHES that may run at once, held until the batch ends.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// A validated batch holding its place: nothing is sent until [`Accepted::run`].
#[derive(Debug)]
pub struct Accepted {
    batches: Batches,
    slot: Slot,
    batch: Batch,
    ids: MessageIds,
    trace: Trace,
}

#[derive(Debug)]
struct Inner {
    publisher: Publisher,
    metrics: Arc<Metrics>,
    max_count: NonZeroU32,
    concurrency: usize,
    slots: Arc<Semaphore>,
    max_batches: usize,
    /// Cancelled when the shutdown drain time runs out: running batches stop starting messages.
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Batches {
    /// Runs nothing yet; `publisher` sends every batch's messages.
    pub fn new(publisher: Publisher, metrics: Arc<Metrics>, limits: Limits) -> Self {
        let max_batches = limits.max_batches.get() as usize;
        Self {
            inner: Arc::new(Inner {
                publisher,
                metrics,
                max_count: limits.max_count,
                concurrency: limits.concurrency.get() as usize,
                slots: Arc::new(Semaphore::new(max_batches)),
                max_batches,
                stop: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// Validates `request` and takes one of the MAX_BATCHES places for it. An error here means
    /// nothing was sent, and nothing will be.
    pub fn accept(&self, request: BatchRequest) -> Result<Accepted, ProduceError> {
        let BatchRequest {
            count,
            interval_ms,
            text,
            idempotency_key,
            trace,
        } = request;
        let batch = Batch::validate(count, interval_ms, text, self.inner.max_count)?;
        let ids = MessageIds::new(idempotency_key.as_ref(), &batch);
        let slot = self.reserve()?;
        Ok(Accepted {
            batches: self.clone(),
            slot,
            batch,
            ids,
            trace,
        })
    }

    /// Accepts `request` and runs it to the end; `Ok` with the count once all were sent.
    pub async fn produce(&self, request: BatchRequest) -> Result<u32, ProduceError> {
        Ok(self.accept(request)?.run(|_| {}).await?)
    }

    /// Takes one of the MAX_BATCHES places, or refuses at once: a bounded number of batches,
    /// never a queue of waiting requests that grows without bound.
    fn reserve(&self) -> Result<Slot, BatchError> {
        match Arc::clone(&self.inner.slots).try_acquire_owned() {
            Ok(permit) => Ok(Slot { _permit: permit }),
            Err(_) => {
                self.inner.metrics.batch_refused();
                Err(BatchError::Busy {
                    limit: self.inner.max_batches,
                })
            }
        }
    }

    /// Stops starting new messages in every running batch; returns once their in-flight calls ended.
    pub async fn stop(&self) {
        self.inner.stop.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

impl Accepted {
    /// Messages the batch is to send.
    pub fn count(&self) -> u32 {
        self.batch.count
    }

    /// Runs the batch on its own task and waits for it. `on_sent` sees the running total after
    /// each accepted message. If this future is dropped (the client went away), the batch stops
    /// starting messages, lets in-flight calls finish, and logs how many were sent.
    pub async fn run(self, on_sent: impl FnMut(u32) + Send + 'static) -> Result<u32, BatchError> {
        let Self {
            batches,
            slot,
            batch,
            ids,
            trace,
        } = self;
        let cancel = batches.inner.stop.child_token();
        let client_gone = cancel.clone().drop_guard();
        let inner = Arc::clone(&batches.inner);
        // Every log event of the batch carries the caller's trace id, whatever the filter: the
        // batch runs on a task of its own, outside the request's span.
        let span = pipeline::context_span!("batch", trace_id = trace.trace_id());
        let task = batches.inner.tracker.spawn(
            async move {
                let _slot = slot;
                let _in_progress = inner.metrics.batch_started();
                inner.send_all(batch, ids, trace, cancel, on_sent).await
            }
            .instrument(span),
        );
        let result = task.await;
        client_gone.disarm();
        // send_all does not panic; if it ever did, the panic is the bug to see.
        result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

impl Inner {
    async fn send_all(
        &self,
        batch: Batch,
        ids: MessageIds,
        trace: Trace,
        cancel: CancellationToken,
        mut on_sent: impl FnMut(u32),
    ) -> Result<u32, BatchError> {
        let Batch {
            count,
            interval,
            text,
        } = batch;
        let data = Message::new(text).to_json();
        // Paced batches go one per interval; unpaced ones keep `concurrency` calls in flight.
        let (limit, mut pacer) = if interval.is_zero() {
            (self.concurrency, None)
        } else {
            let mut pacer = tokio::time::interval(interval);
            pacer.set_missed_tick_behavior(MissedTickBehavior::Delay);
            (1, Some(pacer))
        };

        let mut in_flight = FuturesUnordered::new();
        let (mut started, mut sent, mut failure) = (0u32, 0u32, None);
        loop {
            while failure.is_none() && started < count && in_flight.len() < limit {
                if let Some(pacer) = pacer.as_mut() {
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break,
                        _ = pacer.tick() => {}
                    }
                } else if cancel.is_cancelled() {
                    break;
                }
                // Made once, here: every retry of the message carries this id.
                in_flight.push(self.publisher.publish(&data, ids.id(started), &trace));
                started += 1;
            }
            match in_flight.next().await {
                None => break,
                Some(Ok(())) => {
                    sent += 1;
                    on_sent(sent);
                }
                Some(Err(error)) => {
                    failure.get_or_insert(error);
                }
            }
        }

        let binding = self.publisher.binding();
        match failure {
            Some(source) => {
                warn!(binding, sent, count, error = %source, "batch failed");
                Err(BatchError::Sidecar {
                    sent,
                    count,
                    source,
                })
            }
            None if sent < count && self.stop.is_cancelled() => {
                warn!(
                    binding,
                    sent, count, "batch stopped: shutdown drain time ran out"
                );
                Err(BatchError::Stopped { sent, count })
            }
            None if sent < count => {
                warn!(binding, sent, count, "batch stopped: the client went away");
                Err(BatchError::Stopped { sent, count })
            }
            None => {
                info!(binding, sent, "batch sent");
                Ok(sent)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: NonZeroU32 = NonZeroU32::new(100).unwrap();

    #[test]
    fn accepts_the_original_body_and_defaults_the_text() {
        let b = Batch::validate(1, 0, None, MAX).unwrap();
        assert_eq!(
            b,
            Batch {
                count: 1,
                interval: Duration::ZERO,
                text: "Hello World".into()
            }
        );
        let b = Batch::validate(100, 60_000, Some(String::new()), MAX).unwrap();
        assert_eq!(
            (b.count, b.interval, b.text.as_str()),
            (100, MAX_INTERVAL, "")
        );
    }

    #[test]
    fn refuses_out_of_range_values_naming_the_field() {
        for count in [0, -1, 101, i64::MAX] {
            let err = Batch::validate(count, 0, None, MAX).unwrap_err();
            assert_eq!(
                err,
                InvalidBatch::Count {
                    got: count,
                    max: 100
                }
            );
            assert!(
                err.to_string()
                    .starts_with("count must be between 1 and 100")
            );
        }
        for ms in [-1, 60_001, i64::MIN] {
            let err = Batch::validate(1, ms, None, MAX).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("intervalMilliseconds must be between 0 and 60000")
            );
        }
        let err = Batch::validate(1, 0, Some("x".repeat(MAX_TEXT_CHARS + 1)), MAX).unwrap_err();
        assert_eq!(
            err,
            InvalidBatch::TextTooLong {
                got: MAX_TEXT_CHARS + 1
            }
        );
        assert_eq!(
            err.to_string(),
            "text must be at most 16384 characters, got 16385"
        );
    }

    #[test]
    fn text_is_limited_in_characters_not_bytes() {
        // 4 bytes each in UTF-8: four times the limit in bytes, within it in characters.
        let emoji = "\u{1F600}".repeat(MAX_TEXT_CHARS);
        assert_eq!(emoji.len(), 4 * MAX_TEXT_CHARS);
        let b = Batch::validate(1, 0, Some(emoji.clone()), MAX).unwrap();
        assert_eq!(b.text, emoji);
        let err = Batch::validate(1, 0, Some(emoji + "é"), MAX).unwrap_err();
        assert_eq!(
            err,
            InvalidBatch::TextTooLong {
                got: MAX_TEXT_CHARS + 1
            }
        );
    }
}
