//! The pipeline benchmark (`cargo bench --bench pipeline`) at a tiny size, so it cannot rot: it
//! must run every stage and account for every message. It asserts nothing about speed.
//!
//! A `harness = false` test (see Cargo.toml): the benchmark starts its null servers by running
//! its own executable again, so this one needs a `main` that can serve them too.

use pipeline_bench as pipeline;

use std::process::ExitCode;

fn main() -> ExitCode {
    if let Some(code) = pipeline::null_servers_main_if_asked() {
        return code;
    }
    let sizes = pipeline::Sizes {
        messages: 200,
        concurrency: 8,
        original_messages: 20,
        rounds: 1,
        starts: 1,
        consumers: 2,
        sidecar_latency: std::time::Duration::from_millis(2),
        latency_run: std::time::Duration::from_millis(40),
        sweep_concurrency: vec![2, 4],
        sweep_latencies: vec![std::time::Duration::from_millis(2)],
        // The peers too: the SDKs are installed on first use, as the Python SDK's tests do. Where
        // CI runs it (REQUIRE_PEERS=1, as `.ci/run` sets, or CI), a missing tool or registry fails
        // this test; elsewhere (a fresh machine has no Node.js) the rows are skipped, loudly.
        peer_messages: 50,
        peers: peer_policy(),
        latency_shares: vec![0.1, 0.5],
        latency_duration: std::time::Duration::from_millis(100),
        // Row 7 once, small and fast: 20 messages, 10 ms of real time per cluster second.
        bursts: pipeline::burst::Bursts {
            scaled_object: concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/base/consumer-scaling.yaml"
            )
            .into(),
            time_scale: 0.01,
            sizes: vec![20],
            runs: vec![1],
            chart: Some(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("burst-drain.svg")),
        },
        // Row 8 small: 200 messages under eight faults, one every 300 ms or so, at 10 ms of real
        // time per cluster second.
        chaos: Some(pipeline::chaos::Chaos {
            messages: 200,
            spec: "seed=5,every=300ms,count=8,kill,sigterm,pause=300ms,unavailable=300ms,lost-complete,lost-lock".to_owned(),
            scaled_object: concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/base/consumer-scaling.yaml"
            )
            .into(),
            time_scale: 0.01,
            work: std::time::Duration::from_millis(30),
            lock_duration: std::time::Duration::from_secs(1),
        }),
    };
    // `run` fails when a stage loses or duplicates a message, or a binary misbehaves.
    let report = pipeline::run(&sizes, &pipeline::Binaries::from_cargo(), &|_| {})
        .unwrap_or_else(|e| panic!("the benchmark failed: {e:#}"));
    for (row, runs) in report.rows() {
        assert_eq!(runs.len(), 1, "{row}: one sample per round");
        let rate = runs[0].rate;
        assert!(rate.is_finite() && rate > 0.0, "{row}: {rate}");
    }
    // Ours and both SDKs on each side (but those skipped), the JavaScript producer twice, each
    // run once.
    for skipped in &report.peers.skipped {
        eprintln!("SKIPPED, NOT TESTED: {skipped}. REQUIRE_PEERS=1 makes this a failure.");
    }
    let sdks: Vec<&str> = [("python", "Python"), ("javascript", "JavaScript")]
        .into_iter()
        .filter(|(_, name)| !report.peers.skipped.iter().any(|s| s.contains(name)))
        .map(|(key, _)| key)
        .collect();
    for side in ["consumers", "producers"] {
        let rows = report.peers.rows.iter().filter(|r| r.side.key() == side);
        let keys: Vec<&str> = rows.clone().map(|r| r.key).collect();
        assert!(
            keys.contains(&"ours") && sdks.iter().all(|sdk| keys.contains(sdk)),
            "{side}: {keys:?}"
        );
        for row in rows {
            assert_eq!(row.runs.len(), 1, "{side} {}", row.key);
            assert!(
                row.runs[0].rate > 0.0 && row.peak_kib > 0,
                "{side} {}: {row:?}",
                row.key
            );
        }
    }
    if peer_policy() == pipeline::PeerPolicy::Required {
        assert!(
            report.peers.skipped.is_empty(),
            "{:?}",
            report.peers.skipped
        );
    }
    // Both loads, each with a latency through the producer and the sidecar, the sidecar alone,
    // and straight to the app.
    assert_eq!(report.open_loop.len(), 2);
    for point in &report.open_loop {
        assert!(
            point.messages > 0
                && point.producer.p50 > 0.0
                && point.sidecar.p50 > 0.0
                && point.transport.p50 > 0.0,
            "{point:?}"
        );
    }
    let json = report.json();
    // Eleven targets of the rows, and ours over each peer row that ran (five with both SDKs).
    let peer_rows = report.peers.rows.iter().filter(|r| r.key != "ours").count();
    assert!(
        json["targets"]
            .as_object()
            .is_some_and(|t| t.len() == 11 + peer_rows),
        "{json}"
    );
    if sdks.len() == 2 {
        assert_eq!(peer_rows, 5);
    }
    assert!(!report.table().is_empty());
    // Row 7 ran once, drained its burst, and drew it.
    let burst = &report.bursts[0];
    assert_eq!(burst.runs.len(), 1);
    assert!(
        burst.median() > 0.0 && !burst.runs[0].steps.is_empty(),
        "{burst:?}"
    );
    // Row 8 ran under faults, and every message was accounted for (`run` fails otherwise).
    let chaos = report.chaos.as_ref().expect("row 8 ran");
    assert_eq!(chaos.lost, 0, "{chaos:?}");
    assert_eq!(
        chaos.completed + chaos.dead_lettered,
        chaos.produced,
        "{chaos:?}"
    );
    assert!(chaos.produced >= 200, "{chaos:?}");
    assert!(chaos.faults.values().sum::<u64>() > 0, "{chaos:?}");
    assert!(json["chaos"]["wall_s"].is_number(), "{json}");
    let chart = std::fs::read_to_string(sizes.bursts.chart.as_ref().unwrap()).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.contains("<polyline"),
        "{chart}"
    );
    println!("test the_benchmark_runs_and_accounts_for_every_message ... ok");
    ExitCode::SUCCESS
}

/// The peer rows must run where CI runs this (`REQUIRE_PEERS=1`, as `.ci/run` sets, or `CI`);
/// elsewhere an SDK whose tool is missing is skipped, and said so.
fn peer_policy() -> pipeline::PeerPolicy {
    let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0");
    if set("REQUIRE_PEERS") || set("CI") {
        pipeline::PeerPolicy::Required
    } else {
        pipeline::PeerPolicy::WhenAvailable
    }
}
