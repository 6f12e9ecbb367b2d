//! Random identifiers for messages and trace spans (unique, not unpredictable).

/// A GUID-shaped message id, like Service Bus's: a random (version 4) UUID.
pub fn message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A new 32-hex-digit W3C trace id (never all zeros, which W3C reserves as invalid).
pub fn trace_id() -> String {
    format!("{:032x}", fastrand::u128(1..))
}

/// A `traceparent` for a new span of `trace_id`, sampled; the span id is never all zeros either.
pub fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-{:016x}-01", fastrand::u64(1..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::trace_context::TraceParent;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| message_id()).collect();
        assert_eq!(ids.len(), 1000);
        let id = message_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        let tp = traceparent(&trace_id());
        assert!(TraceParent::parse(&tp).is_some(), "{tp}");
    }
}
