//! The queue payload: `{"text": "Hello World"}`, byte for byte what the original ASP.NET sample sent,
//! so either half can be swapped with the original's; the binding operation that enqueues it, and
//! the metadata key that names it.

use serde::{Deserialize, Serialize};

/// The output binding operation that enqueues a message (the queue bindings support only this).
pub const OPERATION_CREATE: &str = "create";

/// The binding metadata key that sets the Service Bus message's `MessageId` (components-contrib
/// `common/component/azure/servicebus/message.go`), the one property duplicate detection compares.
pub const MESSAGE_ID_METADATA: &str = "MessageId";

/// Text of a message when the caller gives none, as in the original sample.
pub const DEFAULT_TEXT: &str = "Hello World";

/// One queue message: the original's `Message` class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Free text; required on decode. Unknown sibling fields are ignored, as System.Text.Json does.
    pub text: String,
}

/// Why a binding payload is not a [`Message`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Valid or not, the payload's top level is not a JSON object.
    #[error("payload is not a message {{\"text\": string}}: expected a JSON object")]
    NotAnObject,
    /// The object is malformed, lacks `text`, or `text` is not a string.
    #[error("payload is not a message {{\"text\": string}}: {0}")]
    Json(#[from] serde_json::Error),
}

impl Message {
    /// Builds a message with the given text.
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into() }
    }

    /// The JSON bytes sent as the binding's `data`.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct with one String field cannot fail.
        serde_json::to_vec(self).expect("a Message always serializes")
    }

    /// Decodes a binding event's `data`.
    pub fn from_json(data: &[u8]) -> Result<Self, DecodeError> {
        // serde's derived struct visitor also accepts a JSON array (`["hi"]`); the original's
        // System.Text.Json does not, and neither do we.
        if data.trim_ascii_start().first() != Some(&b'{') {
            return Err(DecodeError::NotAnObject);
        }
        Ok(serde_json::from_slice(data)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_exactly_as_the_original() {
        assert_eq!(
            Message::new(DEFAULT_TEXT).to_json(),
            br#"{"text":"Hello World"}"#
        );
    }

    #[test]
    fn encodes_json_escapes() {
        assert_eq!(
            Message::new("a \"b\"\n").to_json(),
            br#"{"text":"a \"b\"\n"}"#
        );
    }

    #[test]
    fn decodes_and_ignores_unknown_fields() {
        let m = Message::from_json(br#"{"text":"hi","extra":1}"#).unwrap();
        assert_eq!(m.text, "hi");
    }

    #[test]
    fn rejects_missing_text_wrong_type_and_garbage() {
        for bad in [
            &br#"{}"#[..],
            br#"{"text":5}"#,
            br#"{"text":null}"#,
            b"not json",
            b"",
            br#"["text"]"#,
        ] {
            let err = Message::from_json(bad).unwrap_err().to_string();
            assert!(err.starts_with("payload is not a message"), "{err}");
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let nest = |open: &str, close: &str| {
            let depth = 100_000;
            format!("{}1{}", open.repeat(depth), close.repeat(depth))
        };
        let no_text = format!("{{\"a\":{}}}", nest("[", "]"));
        assert!(matches!(
            Message::from_json(no_text.as_bytes()),
            Err(DecodeError::Json(_))
        ));
        // An unknown field is skipped however deep it goes, without recursing.
        let deep_extra = format!("{{\"text\":\"x\",\"a\":{}}}", nest(r#"{"a":"#, "}"));
        assert_eq!(Message::from_json(deep_extra.as_bytes()).unwrap().text, "x");
    }

    /// Property tests: whatever a binding event carries, decoding answers, and never panics.
    mod properties {
        use proptest::prelude::*;
        use serde_json::{Map, Value, json};

        use super::*;

        /// Any JSON value, nested a few levels, with `text` a likely key so that near-messages
        /// (text of the wrong type, text beside other fields) come up often.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                any::<String>().prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                let key = prop_oneof![Just("text".to_owned()), any::<String>()];
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    prop::collection::btree_map(key, inner, 0..8)
                        .prop_map(|fields| Value::Object(fields.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_decode_or_give_a_decode_error(data in any::<Vec<u8>>()) {
                match Message::from_json(&data) {
                    // Only a JSON object with a string `text` is a message.
                    Ok(message) => {
                        let value: Value = serde_json::from_slice(&data).unwrap();
                        prop_assert_eq!(&value["text"], &Value::from(message.text));
                    }
                    Err(error) => {
                        prop_assert!(error.to_string().starts_with("payload is not a message"));
                    }
                }
            }

            #[test]
            fn a_json_value_is_a_message_exactly_when_an_object_with_string_text(
                value in json_value(),
                pretty in any::<bool>(),
            ) {
                let data = if pretty {
                    serde_json::to_vec_pretty(&value).unwrap()
                } else {
                    serde_json::to_vec(&value).unwrap()
                };
                match (Message::from_json(&data), value.get("text")) {
                    (Ok(message), Some(Value::String(text))) if value.is_object() => {
                        prop_assert_eq!(&message.text, text);
                    }
                    (Err(_), text) => {
                        prop_assert!(!value.is_object() || !matches!(text, Some(Value::String(_))));
                    }
                    (Ok(message), _) => prop_assert!(false, "{value} decoded to {message:?}"),
                }
            }

            #[test]
            fn text_beside_any_other_fields_decodes_to_the_text(
                text in any::<String>(),
                extra in prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..6),
            ) {
                let mut fields: Map<String, Value> = extra.into_iter().collect();
                fields.insert("text".to_owned(), json!(text));
                let data = serde_json::to_vec(&fields).unwrap();
                prop_assert_eq!(Message::from_json(&data).unwrap().text, text);
            }

            #[test]
            fn what_is_encoded_decodes(text in any::<String>()) {
                let message = Message::new(text);
                prop_assert_eq!(Message::from_json(&message.to_json()).unwrap(), message);
            }
        }
    }
}
