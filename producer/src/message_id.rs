//! The `MessageId` each message carries: made once per message and sent on every attempt at it,
//! so a queue with duplicate detection drops the copies that retries make. A random (v4) UUID by
//! default; with an idempotency key (the `Idempotency-Key` header, IETF draft
//! draft-ietf-httpapi-idempotency-key-header, or the `idempotency-key` gRPC metadata), a
//! name-based (v5) UUID of the key, the request and the message's index, so a client that resends
//! a request gets the very same ids again.

use http::HeaderMap;
use uuid::Uuid;

use crate::batch::Batch;

/// The header (REST) and metadata key (gRPC) that carries the idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Shortest key accepted. A key names one request for every client of the queue, and the ids of a
/// reused key with the same request are dropped as duplicates: 16 characters refuse the keys
/// likely to be picked twice by accident (`1`, `retry`) and take any random one (a UUID is 36, a
/// ULID 26, 64 random bits in hex 16).
pub const MIN_KEY_CHARS: usize = 16;
/// Longest key accepted: room for a UUID inside a business key (`order-1234.payment-...`), and the
/// limit the draft's best-known implementers (Stripe) set.
pub const MAX_KEY_CHARS: usize = 255;

/// The namespace of every derived id, fixed so that the ids of a request are the same from any
/// producer replica and release (docs/api.md gives the derivation).
pub const NAMESPACE: Uuid = Uuid::from_u128(0x407d95f7_a63c_4d83_b9ac_d2615599b0ef);

/// Why an idempotency key was refused; nothing was sent.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum InvalidKey {
    /// The draft: "Clients MUST NOT include more than one Idempotency-Key header field".
    #[error("Idempotency-Key is given more than once")]
    Repeated,
    #[error("Idempotency-Key opens a quoted string it does not close")]
    Unterminated,
    #[error("Idempotency-Key must be {MIN_KEY_CHARS} to {MAX_KEY_CHARS} characters, got {got}")]
    Length { got: usize },
    #[error(
        "Idempotency-Key may hold only ASCII letters, digits, '-', '.', '_' and '~' (a UUID, for \
         one); character {at} is {found}"
    )]
    Character { at: usize, found: String },
}

/// A validated idempotency key: 16 to 255 of RFC 3986's unreserved characters, which every random
/// or composite key fits, and which no header or metadata syntax needs escaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of a request's headers (REST) or metadata (gRPC, which are HTTP/2 headers), if it
    /// has one.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, InvalidKey> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(InvalidKey::Repeated);
        }
        Self::parse(value.as_bytes()).map(Some)
    }

    /// A key as sent: the draft's form, an RFC 8941 String (`"8e03978e-..."`), or the bare value
    /// most clients send. Neither form can hold a quote or a backslash, so no escape is possible
    /// and the quotes are simply taken off.
    pub fn parse(value: &[u8]) -> Result<Self, InvalidKey> {
        let key = match value.strip_prefix(b"\"") {
            Some(quoted) => quoted.strip_suffix(b"\"").ok_or(InvalidKey::Unterminated)?,
            None => value,
        };
        if let Some(at) = key.iter().position(|b| !unreserved(*b)) {
            let byte = key[at];
            let found = if byte.is_ascii_graphic() || byte == b' ' {
                format!("{:?}", char::from(byte))
            } else {
                format!("byte {byte:#04x}")
            };
            return Err(InvalidKey::Character { at: at + 1, found });
        }
        if !(MIN_KEY_CHARS..=MAX_KEY_CHARS).contains(&key.len()) {
            return Err(InvalidKey::Length { got: key.len() });
        }
        // Checked above: every byte is ASCII.
        Ok(Self(String::from_utf8_lossy(key).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// RFC 3986 `unreserved`: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Where a batch's message ids come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageIds {
    /// A random (v4) UUID per message.
    Random,
    /// `uuid5(batch, index)`, `batch` being the request's own namespace.
    Derived { batch: Uuid },
}

impl MessageIds {
    /// The ids of `batch`'s messages: derived when the request has a key, random otherwise.
    ///
    /// The request is part of the name, as the draft's "idempotency fingerprint" (a checksum of
    /// the payload) would have it: a key reused with another body yields other ids, so a misused
    /// key sends messages twice rather than dropping a different request's messages as duplicates.
    pub fn new(key: Option<&IdempotencyKey>, batch: &Batch) -> Self {
        let Some(key) = key else {
            return Self::Random;
        };
        let name = format!(
            "{}\n{}\n{}\n{}",
            key.as_str(),
            batch.count,
            batch.interval.as_millis(),
            batch.text
        );
        Self::Derived {
            batch: Uuid::new_v5(&NAMESPACE, name.as_bytes()),
        }
    }

    /// The id of the batch's message number `index` (from 0), in Service Bus's usual form, a
    /// hyphenated lower-case UUID. A random id is new at each call: call it once per message.
    pub fn id(&self, index: u32) -> String {
        let id = match self {
            Self::Random => Uuid::new_v4(),
            Self::Derived { batch } => Uuid::new_v5(batch, index.to_string().as_bytes()),
        };
        id.hyphenated().to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, time::Duration};

    use super::*;

    const KEY: &str = "0123456789abcdef";

    fn batch(count: u32, text: &str) -> Batch {
        Batch {
            count,
            interval: Duration::ZERO,
            text: text.to_owned(),
        }
    }

    fn key(value: &str) -> IdempotencyKey {
        IdempotencyKey::parse(value.as_bytes()).unwrap()
    }

    #[test]
    fn derived_ids_are_the_documented_uuid5s() {
        // From Python's uuid module, following docs/api.md:
        // uuid5(uuid5(NAMESPACE, f"{key}\n{count}\n{interval}\n{text}"), str(index)).
        let ids = MessageIds::new(Some(&key(KEY)), &batch(3, "Hello World"));
        let all: Vec<_> = (0..3).map(|i| ids.id(i)).collect();
        assert_eq!(
            all,
            [
                "bd07088e-6d2f-5d87-8fdc-ca6453e6ae9c",
                "423fdd9c-80b2-5e2e-a570-601f8a1101e0",
                "0f0028fe-5e93-5a6e-906a-2f11db22aa46",
            ]
        );
        // The text as UTF-8, and the same again at every call.
        let ids = MessageIds::new(Some(&key(KEY)), &batch(3, "Grüße"));
        assert_eq!(ids.id(0), "9f572070-99c0-5f88-b847-832d0ce1bc3b");
        assert_eq!(ids.id(0), ids.id(0));
    }

    #[test]
    fn another_key_or_body_gives_other_ids() {
        let base = MessageIds::new(Some(&key(KEY)), &batch(3, "x")).id(0);
        let others = [
            MessageIds::new(Some(&key("0123456789abcdeF")), &batch(3, "x")),
            MessageIds::new(Some(&key(KEY)), &batch(4, "x")),
            MessageIds::new(Some(&key(KEY)), &batch(3, "y")),
            MessageIds::new(
                Some(&key(KEY)),
                &Batch {
                    interval: Duration::from_millis(1),
                    ..batch(3, "x")
                },
            ),
        ];
        for ids in others {
            assert_ne!(ids.id(0), base, "{ids:?}");
        }
    }

    #[test]
    fn random_ids_are_new_v4s_at_each_call() {
        let ids = MessageIds::new(None, &batch(1, "x"));
        let all: HashSet<_> = (0..1000).map(|_| ids.id(0)).collect();
        assert_eq!(all.len(), 1000);
        let one = ids.id(0);
        assert_eq!(Uuid::parse_str(&one).unwrap().get_version_num(), 4);
        assert_eq!(one, one.to_lowercase());
    }

    #[test]
    fn keys_are_taken_bare_or_as_the_drafts_string() {
        assert_eq!(key(KEY).as_str(), KEY);
        assert_eq!(key(&format!("\"{KEY}\"")).as_str(), KEY);
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(key(&format!("\"{uuid}\"")).as_str(), uuid);
        let every_kind = "Az09-._~Az09-._~";
        assert_eq!(key(every_kind).as_str(), every_kind);
    }

    #[test]
    fn bad_keys_are_refused_naming_the_problem() {
        let long = "k".repeat(MAX_KEY_CHARS + 1);
        let cases: &[(&[u8], InvalidKey)] = &[
            (b"", InvalidKey::Length { got: 0 }),
            (b"\"\"", InvalidKey::Length { got: 0 }),
            (b"short", InvalidKey::Length { got: 5 }),
            (long.as_bytes(), InvalidKey::Length { got: 256 }),
            (b"\"0123456789abcdef", InvalidKey::Unterminated),
            (
                b"0123456789 abcdef",
                InvalidKey::Character {
                    at: 11,
                    found: "' '".into(),
                },
            ),
            (
                b"\"0123456789\\\"abcdef\"",
                InvalidKey::Character {
                    at: 11,
                    found: "'\\\\'".into(),
                },
            ),
            (
                "0123456789abcdé".as_bytes(),
                InvalidKey::Character {
                    at: 15,
                    found: "byte 0xc3".into(),
                },
            ),
        ];
        for (value, error) in cases {
            assert_eq!(
                IdempotencyKey::parse(value).as_ref(),
                Err(error),
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        let text = InvalidKey::Length { got: 5 }.to_string();
        assert_eq!(text, "Idempotency-Key must be 16 to 255 characters, got 5");
    }

    #[test]
    fn one_key_header_at_most() {
        let mut headers = HeaderMap::new();
        assert_eq!(IdempotencyKey::from_headers(&headers), Ok(None));
        headers.append(IDEMPOTENCY_KEY, KEY.parse().unwrap());
        assert_eq!(IdempotencyKey::from_headers(&headers), Ok(Some(key(KEY))));
        headers.append(IDEMPOTENCY_KEY, KEY.parse().unwrap());
        assert_eq!(
            IdempotencyKey::from_headers(&headers),
            Err(InvalidKey::Repeated)
        );
    }
}
