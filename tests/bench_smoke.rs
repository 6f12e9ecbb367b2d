//! The pipeline benchmark (`cargo bench --bench pipeline`) at a tiny size, so it cannot rot: it
//! must run every stage and account for every message. It asserts nothing about speed.

#[allow(dead_code)] // the table and JSON are the bench's; this test reads the figures
#[path = "../benches/pipeline/mod.rs"]
mod pipeline;

#[test]
fn the_benchmark_runs_and_accounts_for_every_message() {
    let sizes = pipeline::Sizes {
        messages: 200,
        concurrency: 8,
        original_messages: 20,
        rounds: 1,
        starts: 1,
        consumers: 2,
    };
    // `run` fails when a stage loses or duplicates a message, or a binary misbehaves.
    let report = pipeline::run(&sizes, &pipeline::Binaries::from_cargo(), &|_| {})
        .unwrap_or_else(|e| panic!("the benchmark failed: {e:#}"));
    for (row, runs) in [
        ("transport", &report.transport),
        ("producer", &report.producer),
        ("consumer", &report.consumer),
        ("null app", &report.null_app),
        ("end to end", &report.end_to_end),
        ("original", &report.original),
    ] {
        assert_eq!(runs.len(), 1, "{row}: one figure per round");
        assert!(runs[0].is_finite() && runs[0] > 0.0, "{row}: {runs:?}");
    }
    let json = report.json();
    assert!(
        json["targets"].as_object().is_some_and(|t| t.len() == 10),
        "{json}"
    );
    assert!(!report.table().is_empty());
}
