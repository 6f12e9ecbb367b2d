//! How daprd's Azure Service Bus queue binding (`bindings.azure.servicebusqueues`) maps metadata,
//! in both directions, so apps see locally exactly what they see in production:
//!
//! - out (InvokeBinding's `metadata`): components-contrib `common/component/azure/servicebus`
//!   `addMetadataToMessage`: `MessageId`/`id` set the message id, `CorrelationId`/`correlationID`
//!   the correlation id, `Label` the subject; Service Bus's other system properties are taken and
//!   not delivered; empty values are dropped; every other key is an application property.
//! - in (the binding event's `metadata`): `bindings/azure/servicebusqueues` `getHandlerFn`: `id`
//!   always, `correlationID` and `label` when set, then each application property with key and
//!   value query-escaped (Go's `url.QueryEscape`). Nothing else: no delivery count, sequence
//!   number or enqueued time.

use std::collections::HashMap;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Keys the binding's event metadata has besides the application properties.
pub const EVENT_ID: &str = "id";
pub const EVENT_CORRELATION_ID: &str = "correlationID";
pub const EVENT_LABEL: &str = "label";

/// Output keys that set Service Bus system properties the sidecar keeps no record of (sessions,
/// routing, TTL and scheduling are not emulated); like daprd, they never become application
/// properties, so the consumer does not see them.
const SYSTEM_KEYS: [&str; 8] = [
    "SessionId",
    "ReplyTo",
    "To",
    "PartitionKey",
    "ContentType",
    "ScheduledEnqueueTimeUtc",
    "ttl",
    "ttlInSeconds",
];

/// What a sent message carries besides its body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Set by the sender (`MessageId` or `id`); the sidecar gives one otherwise.
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    /// Service Bus's `Subject` (the binding's `Label`).
    pub subject: Option<String>,
    pub properties: HashMap<String, String>,
}

impl Envelope {
    /// An InvokeBinding request's metadata as the binding maps it onto a message.
    ///
    /// daprd walks a Go map, so when a request has both `MessageId` and `id` (or both correlation
    /// keys) which one wins is random there; here the Service Bus spelling always wins.
    pub fn from_invoke_metadata(metadata: HashMap<String, String>) -> Self {
        let mut envelope = Self::default();
        let mut message_id_alias = None;
        let mut correlation_id_alias = None;
        for (key, value) in metadata {
            if value.is_empty() {
                continue;
            }
            match key.as_str() {
                "MessageId" => envelope.message_id = Some(value),
                "id" => message_id_alias = Some(value),
                "CorrelationId" => envelope.correlation_id = Some(value),
                "correlationID" => correlation_id_alias = Some(value),
                "Label" => envelope.subject = Some(value),
                k if SYSTEM_KEYS.contains(&k) => {}
                _ => {
                    envelope.properties.insert(key, value);
                }
            }
        }
        envelope.message_id = envelope.message_id.or(message_id_alias);
        envelope.correlation_id = envelope.correlation_id.or(correlation_id_alias);
        envelope
    }
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
            ("ttlInSeconds", "60"),
            ("empty", ""),
            ("tenant", "a b"),
        ]));
        assert_eq!(
            envelope,
            Envelope {
                message_id: Some("m-1".into()),
                correlation_id: Some("c-1".into()),
                subject: Some("greeting".into()),
                properties: map(&[("tenant", "a b")]),
            }
        );
        let both = Envelope::from_invoke_metadata(map(&[
            ("id", "alias"),
            ("MessageId", "canonical"),
            ("CorrelationId", "c"),
            ("correlationID", "alias"),
        ]));
        assert_eq!(
            (both.message_id.as_deref(), both.correlation_id.as_deref()),
            (Some("canonical"), Some("c"))
        );
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
