//! `cargo bench -p devstack --bench plan`: `devstack plan` for a day of traffic at 1 message a
//! second (86,400 messages) through the committed ScaledObject, against its budget of a second:
//! the plan in-process, and the release binary from start to exit as a user runs it. Exits 1 past
//! the budget. A benchmark, not a test: a loaded machine may be slow without anything being wrong.

use std::{
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use devstack::scaling::{
    plan::{Arrival, Scenario, plan},
    spec::ScalingSpec,
};

/// What `devstack plan` must answer within.
const BUDGET: Duration = Duration::from_secs(1);
/// Runs of each measure; the figure is their median.
const RUNS: usize = 7;
/// The day, as `devstack plan --rate` writes it.
const DAY: &str = "1/s:24h";

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() -> ExitCode {
    let spec = ScalingSpec::committed().expect("the committed ScaledObject");
    let scenario = Scenario {
        arrivals: vec![DAY.parse::<Arrival>().expect("a rate")],
        ..Scenario::default()
    };
    let in_process = median(
        (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                let workload = scenario.workload().expect("a workload");
                let planned = plan(&spec, &scenario, &workload);
                let took = start.elapsed();
                assert_eq!(planned.summary.completed, 86_400);
                took
            })
            .collect(),
    );
    let binary = env!("CARGO_BIN_EXE_devstack");
    let end_to_end = median(
        (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                let output = Command::new(binary)
                    .args(["plan", "--rate", DAY])
                    .env_clear()
                    .output()
                    .expect("devstack plan runs");
                let took = start.elapsed();
                assert!(output.status.success(), "{output:?}");
                let text = String::from_utf8_lossy(&output.stdout);
                assert!(text.contains("(86400 messages)"), "{text}");
                took
            })
            .collect(),
    );
    let within = end_to_end <= BUDGET;
    println!(
        "devstack plan --rate {DAY} (86400 messages, the committed ScaledObject): the plan in-process {:.0} ms, the binary start to exit {:.0} ms (medians of {RUNS}); budget {} ms: {}",
        in_process.as_secs_f64() * 1e3,
        end_to_end.as_secs_f64() * 1e3,
        BUDGET.as_millis(),
        if within { "met" } else { "MISSED" }
    );
    match within {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}
