//! A bounded load test: thousands of messages through competing apps that fail one call in ten,
//! with nothing lost and nothing completed twice.

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};
use test_support::devstack::Settled as _;

use futures::StreamExt;
use test_support::{
    app::{Behaviour, Delivery, FakeApp},
    devstack::counts,
};

use crate::{QUEUE, harness::InProcess, invoke};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_nothing_lost_or_completed_twice_with_ten_percent_failures() {
    const MESSAGES: usize = 5_000;
    const APPS: usize = 4;
    const FAIL_EVERY: u64 = 10;
    const SEND_CONCURRENCY: usize = 32;
    let started = Instant::now();

    let mut apps = Vec::new();
    for _ in 0..APPS {
        apps.push(
            FakeApp::start(Behaviour {
                fail_every: Some(FAIL_EVERY),
                ..Default::default()
            })
            .await,
        );
    }
    let addrs: Vec<_> = apps.iter().map(|a| a.addr).collect();
    // No retriable-error pacing: ~500 failures at 10/s per app would take seconds.
    let sidecar = InProcess::for_apps(&addrs, &["--max-retriable-errors-per-sec", "0"]).await;
    sidecar.wait_consumers(APPS as u64).await;

    let client = sidecar.dapr_client().await;
    let failures: Vec<_> = futures::stream::iter(0..MESSAGES)
        .map(|i| {
            let mut client = client.clone();
            async move {
                let mut request = invoke(QUEUE, "create", None);
                request.get_mut().data = format!(r#"{{"text":"load-{i}"}}"#).into_bytes();
                client.invoke_binding(request).await
            }
        })
        .buffer_unordered(SEND_CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    assert!(failures.is_empty(), "sends failed: {:?}", &failures[..1]);
    let sent_in = started.elapsed();

    let status = sidecar
        .wait_status("every message completed or dead-lettered", |s| {
            let c = counts(s, QUEUE);
            c.settled() && c.completed + c.dead_lettered == MESSAGES as u64
        })
        .await;
    let c = counts(&status, QUEUE);
    assert_eq!(c.produced, MESSAGES as u64, "{c:?}");
    assert_eq!(
        c.dead_lettered, 0,
        "10% independent failures never reach 10 deliveries"
    );

    // What the apps answered: every id OK'd once, every payload OK'd once.
    let mut by_id: HashMap<String, Vec<Delivery>> = HashMap::new();
    for app in &apps {
        let deliveries = app.deliveries();
        assert!(deliveries.iter().any(|d| d.ok), "an app got no share");
        for d in deliveries {
            by_id.entry(d.metadata["id"].clone()).or_default().push(d);
        }
    }
    let mut texts = HashSet::new();
    let mut injected = 0;
    for (id, deliveries) in &by_id {
        let ok: Vec<_> = deliveries.iter().filter(|d| d.ok).collect();
        assert_eq!(ok.len(), 1, "{id} answered OK {} times", ok.len());
        let failed = deliveries.len() - 1;
        injected += failed;
        // The event carries no delivery count (daprd's binding sends none); every delivery of
        // an id carries the same `id` and `traceparent`, and nothing else.
        assert!(
            failed < 10,
            "{id}: {failed} failures, yet not dead-lettered"
        );
        for d in deliveries {
            assert_eq!(d.metadata, ok[0].metadata, "{id}: the same event metadata");
        }
        assert_eq!(ok[0].metadata.len(), 2, "{id}: {:?}", ok[0].metadata);
        assert!(texts.insert(ok[0].data.clone()), "payload completed twice");
    }
    assert_eq!(by_id.len() as u64, c.completed, "OK'd ids == completed");
    let expected: HashSet<Vec<u8>> = (0..MESSAGES)
        .map(|i| format!(r#"{{"text":"load-{i}"}}"#).into_bytes())
        .collect();
    assert_eq!(texts, expected, "every payload completed");
    assert!(
        injected + APPS >= MESSAGES / FAIL_EVERY as usize,
        "about 10% failed: {injected}"
    );

    let elapsed = started.elapsed();
    println!(
        "load: {MESSAGES} messages, {APPS} apps, {injected} injected failures; \
         sent in {sent_in:?}, all settled in {elapsed:?}"
    );
    // How long it took is reported, not asserted: every wait above is bounded, and speed is the
    // pipeline benchmark's business.

    drop(client);
    sidecar.stop().await;
    for app in apps {
        app.stop().await;
    }
}
