//! Dapr's API tokens: the shared secrets sent as `dapr-api-token` metadata. `DAPR_API_TOKEN` is
//! what an app presents to its sidecar; `APP_API_TOKEN` is what the sidecar presents to its app.

use std::fmt;

use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};

/// gRPC metadata key daprd puts the app API token under.
pub const API_TOKEN_METADATA: &str = "dapr-api-token";

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

    /// Whether the request carries this token in its `dapr-api-token` metadata.
    pub fn authorizes(&self, metadata: &MetadataMap) -> bool {
        metadata
            .get(API_TOKEN_METADATA)
            .is_some_and(|value| self.matches(value.as_bytes()))
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
