//! Dapr's app API token: the shared secret daprd presents as `dapr-api-token` metadata when it
//! calls the app, so only the sidecar can deliver events.

use std::fmt;

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

/// gRPC metadata key daprd puts the app API token under.
pub const API_TOKEN_METADATA: &str = "dapr-api-token";

/// The expected app API token. Its `Debug` output never shows the value.
#[derive(Clone)]
pub struct ApiToken(String);

impl ApiToken {
    /// Clap value parser: any string, empty included (the caller decides what empty means).
    pub fn from_config(value: &str) -> Result<Self, String> {
        Ok(Self(value.to_owned()))
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
    fn debug_hides_the_value() {
        assert_eq!(format!("{:?}", token("s3cret")), "ApiToken(<redacted>)");
    }
}
