//! Random identifiers for messages and trace spans (unique, not unpredictable).

use bindings::backoff::random_u64;

/// A GUID-shaped message id, like Service Bus's.
pub fn message_id() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// A new 32-hex-digit W3C trace id (never all zeros).
pub fn trace_id() -> String {
    format!("{:016x}{:016x}", random_u64() | 1, random_u64())
}

/// A `traceparent` for a new span of `trace_id`, sampled.
pub fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-{:016x}-01", random_u64() | 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bindings::trace_context::TraceParent;

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
