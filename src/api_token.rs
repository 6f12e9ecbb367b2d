//! Shared-secret tokens, compared in constant time. Dapr's API tokens travel as `dapr-api-token`
//! metadata: `DAPR_API_TOKEN` is what an app presents to its sidecar, `APP_API_TOKEN` what the
//! sidecar presents to its app. The producer's own token (`PRODUCER_API_TOKEN`) travels as
//! `Authorization: Bearer <token>`, the same header over REST and as gRPC metadata.

use std::{ffi::OsStr, fmt};

use clap::{Arg, Command, builder::TypedValueParser, error::ErrorKind};

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

/// Why a request was refused by [`ApiToken::check_bearer`]. The messages name the header to send
/// and never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// No `Authorization` header, or one of another scheme (Basic, ...).
    #[error("missing token: send `authorization: Bearer <token>`")]
    Missing,
    /// A bearer token that is not the expected one.
    #[error("invalid token: the bearer token does not match")]
    Mismatch,
}

impl BearerError {
    /// The `WWW-Authenticate` challenge of a 401 answer (RFC 6750 section 3): a bare `Bearer` for
    /// a request without a token, with `error="invalid_token"` for a wrong one.
    pub fn challenge(self) -> &'static str {
        match self {
            Self::Missing => "Bearer",
            Self::Mismatch => "Bearer error=\"invalid_token\"",
        }
    }
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

    /// Clap value parser for a token callers present as `Authorization: Bearer <token>`: not
    /// empty (an empty Secret must not turn authentication off), and made of the characters of
    /// RFC 6750's `b64token`, which every client sends unchanged (e.g. `openssl rand -hex 32`).
    pub fn bearer_from_config(value: &str) -> Result<Self, String> {
        let body = value.trim_end_matches('=');
        let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~+/".contains(c);
        if body.is_empty() || !body.chars().all(allowed) {
            return Err(
                "must be a non-empty bearer token: letters, digits and -._~+/, then optional = \
                 (unset it to serve without a token)"
                    .to_owned(),
            );
        }
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

    /// Checks the `dapr-api-token` of a request's HTTP headers (or gRPC metadata, through
    /// `MetadataMap::as_ref`) against this token.
    pub fn check(&self, headers: &http::HeaderMap) -> Result<(), TokenError> {
        match headers.get(API_TOKEN_METADATA) {
            None => Err(TokenError::Missing),
            Some(value) if self.matches(value.as_bytes()) => Ok(()),
            Some(_) => Err(TokenError::Mismatch),
        }
    }

    /// Checks the `Authorization: Bearer <token>` of a request's HTTP headers (or gRPC metadata,
    /// whose keys are the same lower-case headers) against this token, in constant time. The
    /// scheme is case-insensitive (RFC 9110 section 11.1).
    pub fn check_bearer(&self, headers: &http::HeaderMap) -> Result<(), BearerError> {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| bearer_token(value.as_bytes()))
            .ok_or(BearerError::Missing)?;
        if self.matches(presented) {
            Ok(())
        } else {
            Err(BearerError::Mismatch)
        }
    }

    /// Whether the request carries this token in its `dapr-api-token` metadata.
    pub fn authorizes(&self, metadata: &MetadataMap) -> bool {
        self.check(metadata.as_ref()).is_ok()
    }
}

/// A clap value parser for a token that keeps the value out of its error: clap's own message
/// quotes the invalid value, and a token that is wrong only by a trailing newline is still a
/// secret. E.g. `value_parser = Secret(ApiToken::bearer_from_config)`.
#[derive(Debug, Clone, Copy)]
pub struct Secret(pub fn(&str) -> Result<ApiToken, String>);

impl TypedValueParser for Secret {
    type Value = ApiToken;

    fn parse_ref(
        &self,
        cmd: &Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<ApiToken, clap::Error> {
        let reason = match value.to_str() {
            Some(value) => match (self.0)(value) {
                Ok(token) => return Ok(token),
                Err(reason) => reason,
            },
            None => "must be visible ASCII".to_owned(),
        };
        let arg = arg.map_or_else(|| "the token".to_owned(), ToString::to_string);
        let message = format!("invalid value (not shown) for '{arg}': {reason}\n");
        Err(clap::Error::raw(ErrorKind::ValueValidation, message).with_cmd(cmd))
    }
}

/// The token of an `Authorization` value of the Bearer scheme: `Bearer`, spaces, the token.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"Bearer";
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii_start()).filter(|token| !token.is_empty())
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
    fn bearer_check_reads_the_authorization_header() {
        let t = ApiToken::bearer_from_config("s3cret").unwrap();
        let check = |value: Option<&str>| {
            let mut headers = http::HeaderMap::new();
            if let Some(value) = value {
                headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            }
            t.check_bearer(&headers)
        };
        assert_eq!(check(None), Err(BearerError::Missing));
        for missing in [
            "s3cret",
            "Basic s3cret",
            "Bearer",
            "Bearer ",
            "Bearers3cret",
            "Bearer\ts3cret",
        ] {
            assert_eq!(
                check(Some(missing)),
                Err(BearerError::Missing),
                "{missing:?}"
            );
        }
        for wrong in [
            "Bearer s3cre",
            "Bearer s3crets",
            "Bearer S3CRET",
            "Bearer s3cret x",
        ] {
            assert_eq!(check(Some(wrong)), Err(BearerError::Mismatch), "{wrong:?}");
        }
        for right in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret"] {
            assert_eq!(check(Some(right)), Ok(()), "{right:?}");
        }
        // The Dapr header is another token's.
        let mut headers = http::HeaderMap::new();
        headers.insert(API_TOKEN_METADATA, "s3cret".parse().unwrap());
        assert_eq!(t.check_bearer(&headers), Err(BearerError::Missing));
    }

    #[test]
    fn bearer_tokens_are_b64tokens_and_never_empty() {
        for good in ["s3cret", "a-b.c_d~e+f/g", "YWJj==", "0123456789abcdef"] {
            assert!(ApiToken::bearer_from_config(good).is_ok(), "{good:?}");
        }
        for bad in ["", "=", "a b", "tok\n", "tok=en", "é", "a:b"] {
            let err = ApiToken::bearer_from_config(bad).unwrap_err();
            assert!(err.contains("unset it"), "{bad:?}: {err}");
        }
        assert_eq!(BearerError::Missing.challenge(), "Bearer");
        assert_eq!(
            BearerError::Mismatch.challenge(),
            r#"Bearer error="invalid_token""#
        );
        assert!(!BearerError::Mismatch.to_string().contains("s3cret"));
    }

    #[test]
    fn secret_parser_errors_do_not_quote_the_value() {
        use clap::Parser;

        #[derive(Debug, Parser)]
        struct Cli {
            #[arg(long, env = "T", value_parser = Secret(ApiToken::bearer_from_config))]
            token: Option<ApiToken>,
        }
        let cli = Cli::try_parse_from(["cli", "--token", "s3cret"]).unwrap();
        assert!(cli.token.unwrap().matches(b"s3cret"));
        let error = Cli::try_parse_from(["cli", "--token", "s3cret\n"])
            .unwrap_err()
            .to_string();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.contains("--token <TOKEN>"), "{error}");
        assert!(error.contains("unset it"), "{error}");
    }

    #[test]
    fn debug_hides_the_value() {
        assert_eq!(format!("{:?}", token("s3cret")), "ApiToken(<redacted>)");
    }
}
