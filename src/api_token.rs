//! Dapr's API tokens: the shared secrets sent as `dapr-api-token` metadata. `DAPR_API_TOKEN` is
//! what an app presents to its sidecar; `APP_API_TOKEN` is what the sidecar presents to its app.

use std::fmt;

use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};

/// gRPC metadata key (and HTTP header) the API token travels under, both ways.
pub const API_TOKEN_METADATA: &str = "dapr-api-token";

/// Why a request was refused by [`ApiToken::check`]; worded as daprd words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The request has no `dapr-api-token`.
    #[error("authentication error: missing api token")]
    Missing,
    /// The request's `dapr-api-token` is not the expected one.
    #[error("authentication error: api token mismatch")]
    Mismatch,
}

/// An API token. Its `Debug` output never shows the value.
#[derive(Clone)]
pub struct ApiToken(String);

impl ApiToken {
    /// Clap value parser: any visible-ASCII string, since it travels as gRPC metadata; empty
    /// included (the caller decides what empty means).
    pub fn from_config(value: &str) -> Result<Self, String> {
        MetadataValue::<Ascii>::try_from(value)
            .map(|_| Self(value.to_owned()))
            .map_err(|_| "must be visible ASCII (it is sent as gRPC metadata)".to_owned())
    }

    /// The token as `dapr-api-token` metadata, marked sensitive so it stays out of debug output.
    pub fn metadata_value(&self) -> MetadataValue<Ascii> {
        let mut value = MetadataValue::try_from(self.0.as_str()).expect("checked by from_config");
        value.set_sensitive(true);
        value
    }

    /// Whether no token was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares a presented token in constant time, so response timing does not reveal how many
    /// leading bytes were right. (A length mismatch returns early; the length is not the secret.)
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }

    /// Checks the `dapr-api-token` of a request's HTTP headers (or gRPC metadata, through
    /// `MetadataMap::as_ref`) against this token.
    pub fn check(&self, headers: &http::HeaderMap) -> Result<(), TokenError> {
        match headers.get(API_TOKEN_METADATA) {
            None => Err(TokenError::Missing),
            Some(value) if self.matches(value.as_bytes()) => Ok(()),
            Some(_) => Err(TokenError::Mismatch),
        }
    }

    /// Whether the request carries this token in its `dapr-api-token` metadata.
    pub fn authorizes(&self, metadata: &MetadataMap) -> bool {
        self.check(metadata.as_ref()).is_ok()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(value: &str) -> ApiToken {
        ApiToken::from_config(value).unwrap()
    }

    #[test]
    fn matches_only_the_exact_token() {
        let t = token("s3cret");
        assert!(t.matches(b"s3cret"));
        for wrong in [&b""[..], b"s3cre", b"s3crets", b"S3cret", b"s3cres"] {
            assert!(!t.matches(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn reads_the_dapr_api_token_metadata() {
        let t = token("s3cret");
        let mut metadata = MetadataMap::new();
        assert!(!t.authorizes(&metadata));
        metadata.insert("authorization", "s3cret".parse().unwrap());
        assert!(!t.authorizes(&metadata));
        metadata.insert(API_TOKEN_METADATA, "wrong".parse().unwrap());
        assert!(!t.authorizes(&metadata));
        metadata.insert(API_TOKEN_METADATA, "s3cret".parse().unwrap());
        assert!(t.authorizes(&metadata));
    }

    #[test]
    fn check_tells_a_missing_token_from_a_wrong_one() {
        let t = token("s3cret");
        let mut headers = http::HeaderMap::new();
        assert_eq!(t.check(&headers), Err(TokenError::Missing));
        assert_eq!(
            TokenError::Missing.to_string(),
            "authentication error: missing api token"
        );
        headers.insert(API_TOKEN_METADATA, "wrong".parse().unwrap());
        assert_eq!(t.check(&headers), Err(TokenError::Mismatch));
        assert_eq!(
            TokenError::Mismatch.to_string(),
            "authentication error: api token mismatch"
        );
        headers.insert(API_TOKEN_METADATA, "s3cret".parse().unwrap());
        assert_eq!(t.check(&headers), Ok(()));
    }

    #[test]
    fn refuses_what_cannot_be_metadata_and_keeps_the_value_sensitive() {
        assert!(ApiToken::from_config("bad\ntoken").is_err());
        assert!(ApiToken::from_config("").unwrap().is_empty());
        let value = token("s3cret").metadata_value();
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().unwrap(), "s3cret");
    }

    #[test]
    fn debug_hides_the_value() {
        assert_eq!(format!("{:?}", token("s3cret")), "ApiToken(<redacted>)");
    }
}
