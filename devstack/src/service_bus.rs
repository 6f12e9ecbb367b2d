//! How daprd's Azure Service Bus queue binding (`bindings.azure.servicebusqueues`) maps metadata,
//! in both directions, so apps see locally exactly what they see in production:
//!
//! - out (InvokeBinding's `metadata`): components-contrib `common/component/azure/servicebus`
//!   `addMetadataToMessage`: `MessageId`/`id` set the message id, `CorrelationId`/`correlationID`
//!   the correlation id, `Label` the subject, `ScheduledEnqueueTimeUtc` when the message becomes
//!   active, `ttl`/`ttlInSeconds` its time-to-live; Service Bus's other system properties are
//!   taken and not delivered; empty values are dropped; every other key is an application
//!   property. A scheduled time in neither of its formats, or a session id and a partition key
//!   that differ, fail the send with the binding's error.
//! - in (the binding event's `metadata`): `bindings/azure/servicebusqueues` `getHandlerFn`: `id`
//!   always, `correlationID` and `label` when set, then each application property with key and
//!   value query-escaped (Go's `url.QueryEscape`). Nothing else: no delivery count, sequence
//!   number, enqueued time or session id.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, NaiveDateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use pipeline::message::MESSAGE_ID_METADATA;

/// Keys the binding's event metadata has besides the application properties.
pub const EVENT_ID: &str = "id";
pub const EVENT_CORRELATION_ID: &str = "correlationID";
pub const EVENT_LABEL: &str = "label";

/// Output keys that set Service Bus system properties the queue has no use for (replies,
/// forwarding, the content type); like daprd, they never become application properties, so the
/// consumer does not see them.
const UNUSED_SYSTEM_KEYS: [&str; 3] = ["ReplyTo", "To", "ContentType"];

/// The binding's time-to-live keys, in the order its lookup tries them (components-contrib
/// `metadata.TryGetTTL`, case-insensitive).
const TTL_KEYS: [&str; 2] = ["ttl", "ttlInSeconds"];

/// Why the binding refuses to build a message; worded as the binding words it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error(
        "invalid time format for ScheduledEnqueueTimeUtc; expected HTTP time format or RFC3339"
    )]
    ScheduledEnqueueTime,
    #[error(
        "session id {session_id} and partition key {partition_key} should be equal when both present"
    )]
    SessionPartitionKey {
        session_id: String,
        partition_key: String,
    },
}

/// What a sent message carries besides its body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Set by the sender (`MessageId` or `id`); the sidecar gives one otherwise.
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    /// Service Bus's `Subject` (the binding's `Label`).
    pub subject: Option<String>,
    pub properties: HashMap<String, String>,
    /// `ScheduledEnqueueTimeUtc`: the message is not active before.
    pub scheduled_enqueue_time: Option<DateTime<Utc>>,
    /// `ttl` or `ttlInSeconds`: how long the message lives once enqueued.
    pub time_to_live: Option<Duration>,
}

impl Envelope {
    /// An InvokeBinding request's metadata as the binding maps it onto a message.
    ///
    /// daprd walks a Go map, so when a request has both `MessageId` and `id` (or both correlation
    /// keys) which one wins is random there; here the Service Bus spelling always wins.
    ///
    /// `SessionId` is taken as the binding takes it, and then has no effect: the queue is not
    /// session-enabled (the guide's is not, and the binding reads no sessions from a queue), and
    /// Service Bus neither checks a session id there nor delivers it through the binding. Only
    /// its agreement with `PartitionKey` is checked, by the binding.
    pub fn from_invoke_metadata(metadata: HashMap<String, String>) -> Result<Self, MessageError> {
        let time_to_live = time_to_live(&metadata);
        let mut envelope = Self::default();
        let (mut message_id_alias, mut correlation_id_alias) = (None, None);
        let (mut session_id, mut partition_key) = (None, None);
        for (key, value) in metadata {
            // "blank session ID is valid"; other empty values are dropped.
            if value.is_empty() && key != "SessionId" {
                continue;
            }
            match key.as_str() {
                MESSAGE_ID_METADATA => envelope.message_id = Some(value),
                "id" => message_id_alias = Some(value),
                "CorrelationId" => envelope.correlation_id = Some(value),
                "correlationID" => correlation_id_alias = Some(value),
                "Label" => envelope.subject = Some(value),
                "SessionId" => session_id = Some(value),
                "PartitionKey" => partition_key = Some(value),
                "ScheduledEnqueueTimeUtc" => {
                    envelope.scheduled_enqueue_time = Some(scheduled_enqueue_time(&value)?);
                }
                k if TTL_KEYS.contains(&k) => envelope.time_to_live = time_to_live,
                k if UNUSED_SYSTEM_KEYS.contains(&k) => {}
                _ => {
                    envelope.properties.insert(key, value);
                }
            }
        }
        if let (Some(session_id), Some(partition_key)) = (session_id, partition_key)
            && session_id != partition_key
        {
            return Err(MessageError::SessionPartitionKey {
                session_id,
                partition_key,
            });
        }
        envelope.message_id = envelope.message_id.or(message_id_alias);
        envelope.correlation_id = envelope.correlation_id.or(correlation_id_alias);
        Ok(envelope)
    }
}

/// `ScheduledEnqueueTimeUtc` as the binding parses it: Go's `http.TimeFormat` (`Mon, 02 Jan 2006
/// 15:04:05 GMT`), else `time.RFC3339` (fractional seconds allowed, as Go's parser allows them).
fn scheduled_enqueue_time(value: &str) -> Result<DateTime<Utc>, MessageError> {
    http_time(value)
        .or_else(|| rfc3339(value))
        .ok_or(MessageError::ScheduledEnqueueTime)
}

/// Go reads the day name in the HTTP format but does not check it against the date.
fn http_time(value: &str) -> Option<DateTime<Utc>> {
    let (day, rest) = value.split_once(", ")?;
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    DAYS.iter()
        .any(|d| d.eq_ignore_ascii_case(day))
        .then_some(())?;
    let time = NaiveDateTime::parse_from_str(rest, "%d %b %Y %H:%M:%S GMT").ok()?;
    Some(time.and_utc())
}

/// Go's RFC 3339 layout has an upper-case `T` and `Z`, which chrono's reader does not insist on.
fn rfc3339(value: &str) -> Option<DateTime<Utc>> {
    (value.as_bytes().get(10) == Some(&b'T') && !value.ends_with('z')).then_some(())?;
    Some(DateTime::parse_from_rfc3339(value).ok()?.to_utc())
}

/// The time-to-live the binding gives a message sent with this metadata (components-contrib
/// `metadata.TryGetTTL`): the first of `ttl`, `ttlInSeconds` present (any case); a Go duration
/// (`90s`, `1h30m`), else whole seconds above 0; anything else sets none. A zero TTL (a negative
/// duration becomes one) sets none either: go-amqp leaves a zero TTL out of the message header.
fn time_to_live(metadata: &HashMap<String, String>) -> Option<Duration> {
    let value = TTL_KEYS.iter().find_map(|key| {
        metadata
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    })?;
    let ttl = match go_duration(value) {
        Some(duration) => duration,
        None => Duration::from_secs(value.parse::<u64>().ok().filter(|s| *s > 0)?),
    };
    (!ttl.is_zero()).then_some(ttl)
}

/// Go's `time.ParseDuration`: an optionally signed sequence of decimal numbers with units (`ns`,
/// `us`, `µs`, `ms`, `s`, `m`, `h`), or `0`; `None` where Go returns an error (no unit, an
/// unknown unit, beyond ±2^63 ns). A negative duration is zero here, as `TryGetTTL` makes it.
/// By hand: no crate in the tree reads Go's syntax, and it is short.
fn go_duration(value: &str) -> Option<Duration> {
    let (negative, mut rest) = match value.as_bytes().first() {
        Some(b'-') => (true, &value[1..]),
        Some(b'+') => (false, &value[1..]),
        _ => (false, value),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return None;
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        // Go keeps the fraction's digits as far as they matter, and truncates.
        let mut part = whole.checked_mul(scale)?;
        let mut place = scale;
        for digit in fraction.bytes() {
            place /= 10;
            part += u128::from(digit - b'0') * place;
        }
        nanos = nanos.checked_add(part)?;
        if nanos > i64::MAX as u128 {
            return None;
        }
        rest = next;
    }
    if negative {
        return Some(Duration::ZERO);
    }
    Some(Duration::from_nanos(nanos as u64))
}

/// The binding event's metadata for a received message. Application properties come last, so
/// one named `label` overrides the subject, as in the binding.
pub fn event_metadata(message_id: &str, envelope: &Envelope) -> HashMap<String, String> {
    let mut metadata = HashMap::from([(EVENT_ID.to_owned(), message_id.to_owned())]);
    if let Some(correlation_id) = &envelope.correlation_id {
        metadata.insert(EVENT_CORRELATION_ID.to_owned(), correlation_id.clone());
    }
    if let Some(subject) = &envelope.subject {
        metadata.insert(EVENT_LABEL.to_owned(), subject.clone());
    }
    for (key, value) in &envelope.properties {
        metadata.insert(query_escape(key), query_escape(value));
    }
    metadata
}

/// What Go's `url.QueryEscape` leaves as it is: ASCII letters, digits and `-_.~`.
const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Go's `url.QueryEscape`: UTF-8 bytes outside the unreserved set as `%XX` (upper-case hex), and a
/// space as `+`. (A literal `%20` in the input is escaped to `%2520`, so the replace is exact.)
pub fn query_escape(value: &str) -> String {
    utf8_percent_encode(value, QUERY_COMPONENT)
        .to_string()
        .replace("%20", "+")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn query_escape_matches_go() {
        // Expected values from Go 1.22's url.QueryEscape.
        for (raw, escaped) in [
            ("plain-_.~09AZaz", "plain-_.~09AZaz"),
            ("a b", "a+b"),
            ("a+b", "a%2Bb"),
            (
                "k=v&x/y?z:@$,;*'!()",
                "k%3Dv%26x%2Fy%3Fz%3A%40%24%2C%3B%2A%27%21%28%29",
            ),
            ("100%20", "100%2520"),
            ("é", "%C3%A9"),
            ("", ""),
        ] {
            assert_eq!(query_escape(raw), escaped, "{raw:?}");
        }
    }

    #[test]
    fn invoke_metadata_maps_as_the_binding_maps_it() {
        let envelope = Envelope::from_invoke_metadata(map(&[
            ("id", "m-1"),
            ("correlationID", "c-1"),
            ("Label", "greeting"),
            ("SessionId", "s"),
            ("ReplyTo", "r"),
            ("ttlInSeconds", "60"),
            ("ScheduledEnqueueTimeUtc", "2030-01-02T03:04:05Z"),
            ("empty", ""),
            ("tenant", "a b"),
        ]))
        .unwrap();
        assert_eq!(
            envelope,
            Envelope {
                message_id: Some("m-1".into()),
                correlation_id: Some("c-1".into()),
                subject: Some("greeting".into()),
                properties: map(&[("tenant", "a b")]),
                scheduled_enqueue_time: DateTime::from_timestamp(1_893_553_445, 0),
                time_to_live: Some(Duration::from_secs(60)),
            }
        );
        let both = Envelope::from_invoke_metadata(map(&[
            ("id", "alias"),
            ("MessageId", "canonical"),
            ("CorrelationId", "c"),
            ("correlationID", "alias"),
        ]))
        .unwrap();
        assert_eq!(
            (both.message_id.as_deref(), both.correlation_id.as_deref()),
            (Some("canonical"), Some("c"))
        );
    }

    #[test]
    fn the_scheduled_time_is_http_time_or_rfc3339_and_anything_else_fails_the_send() {
        let at = |value: &str| {
            Envelope::from_invoke_metadata(map(&[("ScheduledEnqueueTimeUtc", value)]))
                .map(|e| e.scheduled_enqueue_time.unwrap().timestamp())
        };
        let expected = 1_893_553_445;
        for value in [
            "Wed, 02 Jan 2030 03:04:05 GMT",
            // Go reads the day's name without checking it.
            "Mon, 02 Jan 2030 03:04:05 GMT",
            "2030-01-02T03:04:05Z",
            "2030-01-02T04:04:05+01:00",
            "2030-01-02T03:04:05.999Z",
        ] {
            assert_eq!(at(value), Ok(expected), "{value}");
        }
        for value in [
            "2030-01-02 03:04:05Z",
            "2030-01-02t03:04:05z",
            "2030-01-02T03:04:05",
            "Wed, 02 Jan 2030 03:04:05 UTC",
            "Wed, 02 Jan 2030 03:04:05 +0000",
            "1893553445",
            "tomorrow",
        ] {
            assert_eq!(
                at(value),
                Err(MessageError::ScheduledEnqueueTime),
                "{value}"
            );
        }
        assert_eq!(
            MessageError::ScheduledEnqueueTime.to_string(),
            "invalid time format for ScheduledEnqueueTimeUtc; expected HTTP time format or RFC3339"
        );
        // An empty value is dropped before it is read.
        assert_eq!(
            Envelope::from_invoke_metadata(map(&[("ScheduledEnqueueTimeUtc", "")])),
            Ok(Envelope::default())
        );
    }

    #[test]
    fn the_ttl_is_read_as_the_binding_reads_it() {
        let ttl = |pairs: &[(&str, &str)]| {
            Envelope::from_invoke_metadata(map(pairs))
                .unwrap()
                .time_to_live
        };
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(ttl(&[("ttlInSeconds", "60")]), secs(60));
        assert_eq!(ttl(&[("ttl", "90s")]), secs(90));
        assert_eq!(ttl(&[("ttl", "1h30m")]), secs(5400));
        assert_eq!(ttl(&[("ttl", "1.5s")]), Some(Duration::from_millis(1500)));
        assert_eq!(ttl(&[("ttl", "250ms")]), Some(Duration::from_millis(250)));
        // `ttl` is looked up before `ttlInSeconds`, in any case, once either key is there.
        assert_eq!(ttl(&[("ttlInSeconds", "60"), ("TTL", "5")]), secs(5));
        assert_eq!(ttl(&[("ttl", "5"), ("ttlInSeconds", "60")]), secs(5));
        // Without an exact key there is no TTL: `TTL` alone is an application property.
        let envelope = Envelope::from_invoke_metadata(map(&[("TTL", "5")])).unwrap();
        assert_eq!(
            (envelope.time_to_live, envelope.properties),
            (None, map(&[("TTL", "5")]))
        );
        // Refused values, zero and negative ones set none.
        for value in ["0", "0s", "-5s", "-5", "soon", "5 s", "5x", "1.2.3s", ".s"] {
            assert_eq!(ttl(&[("ttl", value)]), None, "{value}");
        }
        // `ttl` present but empty hides `ttlInSeconds`, as in the binding.
        assert_eq!(ttl(&[("ttl", ""), ("ttlInSeconds", "60")]), None);
    }

    #[test]
    fn go_durations_parse_as_go_parses_them() {
        let ns = |v: &str| go_duration(v).map(|d| d.as_nanos());
        for (value, nanos) in [
            ("0", 0),
            ("+5s", 5_000_000_000),
            ("1h2m3s4ms5us6ns", 3_723_004_005_006),
            ("1.s", 1_000_000_000),
            (".5m", 30_000_000_000),
            ("2\u{b5}s", 2_000),
            ("2\u{3bc}s", 2_000),
            ("1.0000000015s", 1_000_000_001),
            ("9223372036854775807ns", 9_223_372_036_854_775_807),
        ] {
            assert_eq!(ns(value), Some(nanos), "{value}");
        }
        for value in [
            "",
            "5",
            "s",
            "5S",
            "1e3s",
            "9223372036854775808ns",
            "2562048h",
            "-",
        ] {
            assert_eq!(ns(value), None, "{value}");
        }
        assert_eq!(ns("-1h"), Some(0));
    }

    #[test]
    fn a_session_id_is_taken_and_must_agree_with_a_partition_key() {
        // On a queue without sessions it changes nothing, and is never delivered.
        let envelope =
            Envelope::from_invoke_metadata(map(&[("SessionId", "s"), ("PartitionKey", "s")]))
                .unwrap();
        assert_eq!(envelope, Envelope::default());
        for (session, partition) in [("s", "p"), ("", "p")] {
            let error = Envelope::from_invoke_metadata(map(&[
                ("SessionId", session),
                ("PartitionKey", partition),
            ]))
            .unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "session id {session} and partition key {partition} should be equal when both present"
                )
            );
        }
        // An empty partition key is dropped, so it cannot disagree.
        let ok = Envelope::from_invoke_metadata(map(&[("SessionId", "s"), ("PartitionKey", "")]));
        assert!(ok.is_ok());
    }

    #[test]
    fn event_metadata_is_id_correlation_label_and_escaped_properties_only() {
        let plain = event_metadata("m-1", &Envelope::default());
        assert_eq!(plain, map(&[("id", "m-1")]));

        let envelope = Envelope {
            message_id: None,
            correlation_id: Some("c-1".into()),
            subject: Some("greeting".into()),
            properties: map(&[("my key", "a&b"), ("label", "from a property")]),
            ..Envelope::default()
        };
        assert_eq!(
            event_metadata("m-1", &envelope),
            map(&[
                ("id", "m-1"),
                ("correlationID", "c-1"),
                ("label", "from+a+property"),
                ("my+key", "a%26b"),
            ])
        );
    }
}
