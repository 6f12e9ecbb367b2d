//! The queue payload: `{"text": "Hello World"}`, byte for byte what the original ASP.NET sample sent,
//! so either half can be swapped with the original's.

use serde::{Deserialize, Serialize};

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
}
