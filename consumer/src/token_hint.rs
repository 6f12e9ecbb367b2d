//! The one-time hint for a daprd that sends no app token. daprd sends `APP_API_TOKEN` as
//! `dapr-api-token` on gRPC input-binding events only from 1.16.2 and 1.17.0 (dapr/dapr#9142); an
//! older sidecar, or a lagging AKS Dapr extension, sends none, so the consumer refuses every event,
//! Service Bus dead-letters each message after its deliveries, and KEDA meanwhile scales to the
//! maximum. The per-event warning alone says only "missing or wrong": this says why, once.

use std::sync::atomic::{AtomicBool, Ordering};

use pipeline::api_token::API_TOKEN_METADATA;
use tonic::metadata::MetadataMap;
use tracing::warn;

/// The first daprd release that sends the app token to gRPC apps.
pub const DAPRD_SENDS_APP_TOKEN_FROM: &str = "1.16.2";

/// Whether the hint was logged; one per consumer, so a process logs it at most once.
#[derive(Debug, Default)]
pub struct MissingTokenHint {
    logged: AtomicBool,
}

impl MissingTokenHint {
    /// Called with the metadata of each event refused for its token. The first time the token is
    /// missing (not merely wrong, which is a mismatch of values, not an old sidecar), logs at WARN
    /// what is likely wrong and how to fix it; returns whether it logged.
    pub fn refused(&self, metadata: &MetadataMap) -> bool {
        if metadata.get(API_TOKEN_METADATA).is_some() || self.logged.swap(true, Ordering::Relaxed) {
            return false;
        }
        // A root event, outside the refused event's span: it is about the sidecar, not one message.
        warn!(
            parent: None,
            daprd_minimum = DAPRD_SENDS_APP_TOKEN_FROM,
            "binding events arrive without dapr-api-token although APP_API_TOKEN is set: daprd \
             older than 1.16.2 does not send APP_API_TOKEN to gRPC apps (dapr/dapr#9142), so every \
             event is refused and each message ends in the dead-letter queue. Fix: upgrade the \
             Dapr control plane (its sidecar injector) to 1.16.2 or later and restart this \
             Deployment; logged once"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(token: Option<&str>) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        if let Some(token) = token {
            metadata.insert(API_TOKEN_METADATA, token.parse().unwrap());
        }
        metadata
    }

    #[test]
    fn logs_once_for_a_missing_token_and_never_for_a_wrong_one() {
        let hint = MissingTokenHint::default();
        assert!(!hint.refused(&metadata(Some("wrong"))), "a wrong token");
        assert!(hint.refused(&metadata(None)), "the first missing token");
        assert!(!hint.refused(&metadata(None)), "the second");
        assert!(!hint.refused(&metadata(Some("wrong"))));
        // Another consumer (another process, in production) logs its own.
        assert!(MissingTokenHint::default().refused(&metadata(None)));
    }
}
