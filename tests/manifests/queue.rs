//! The queue: what the guide creates is what the Component leaves to it and what devstack
//! emulates, so a retry the producer makes is dropped in both places, within the same window, and
//! every other queue property the guide sets is devstack's default.

use std::time::Duration;

use crate::{
    binaries::Defaults,
    guide::{guide_commands, option},
    render::{component_value, renders},
};

/// An ISO 8601 duration of hours, minutes and seconds (`PT1M`, `PT10M`, `PT1H30M`), as the guide
/// passes them to `az`.
fn iso8601(value: &str) -> Duration {
    let mut rest = value
        .strip_prefix("PT")
        .unwrap_or_else(|| panic!("{value}: not PT..."));
    let mut seconds = 0;
    for (unit, scale) in [('H', 3600), ('M', 60), ('S', 1)] {
        if let Some((number, tail)) = rest.split_once(unit) {
            let number: u64 = number.parse().unwrap_or_else(|_| panic!("{value}"));
            seconds += number * scale;
            rest = tail;
        }
    }
    assert!(rest.is_empty(), "{value}: left over {rest:?}");
    Duration::from_secs(seconds)
}

fn command(prefix: &str) -> String {
    let commands = guide_commands();
    let mut found = commands.iter().filter(|c| c.starts_with(prefix));
    let first = found
        .next()
        .unwrap_or_else(|| panic!("the guide never runs {prefix}"));
    assert!(found.next().is_none(), "the guide runs {prefix} once");
    first.clone()
}

#[test]
fn the_guides_queue_detects_duplicates_on_a_tier_that_has_it() {
    let namespace = command("az servicebus namespace create");
    // The Basic tier has no duplicate detection (Microsoft Learn, "Duplicate detection").
    let sku = option(&namespace, "--sku");
    assert!(matches!(sku, Some("Standard" | "Premium")), "{namespace}");

    let queue = command("az servicebus queue create");
    assert_eq!(
        option(&queue, "--enable-duplicate-detection"),
        Some("true"),
        "{queue}"
    );
    let window = option(&queue, "--duplicate-detection-history-time-window")
        .map(iso8601)
        .expect("the window, stated");
    let (min, max) = (Duration::from_secs(20), Duration::from_secs(7 * 24 * 3600));
    assert!((min..=max).contains(&window), "{window:?}");

    // devstack's queue is this one.
    let devstack = Defaults::of("devstack");
    let default = |env: &str| devstack.get(env).to_owned();
    let duration = |env: &str| humantime::parse_duration(&default(env)).unwrap();
    assert_eq!(default("DUPLICATE_DETECTION"), "true");
    assert_eq!(duration("DUPLICATE_DETECTION_WINDOW"), window);
    assert_eq!(
        option(&queue, "--max-delivery-count").map(str::to_owned),
        Some(default("MAX_DELIVERY_COUNT"))
    );
    let lock = option(&queue, "--lock-duration").map(iso8601);
    assert_eq!(lock, Some(duration("LOCK_DURATION")));
    // Expired messages are removed, not dead-lettered, in both.
    assert!(!queue.contains("--enable-dead-lettering-on-message-expiration"));
    assert!(!queue.contains("--message-expiration"));
    assert_eq!(default("DEAD_LETTER_ON_EXPIRATION"), "false");
}

#[test]
fn every_service_bus_component_leaves_the_queue_to_the_guide() {
    let service_bus = renders()
        .iter()
        .filter(|r| r.component()["spec"]["type"] == "bindings.azure.servicebusqueues");
    let mut checked = 0;
    for render in service_bus {
        checked += 1;
        let component = render.component();
        assert_eq!(
            component_value(component, "disableEntityManagement"),
            "true",
            "{}: the binding would create the queue without duplicate detection, and need Manage",
            render.label
        );
    }
    assert!(checked > 0, "no Service Bus Component rendered");
}
