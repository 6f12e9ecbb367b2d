//! `devstack plan` as a user runs it: the real binary, its output, its files and its exit codes.
//! What it decides is tested beside the code (`scaling::plan`); its agreement with the live
//! preview in `autoscale.rs`.

use test_support as support;

use serde_json::Value;
use support::{devstack, files::Files, process::run_to_end};

/// `devstack plan` with `args`; its exit code and everything it printed.
async fn plan(args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["plan"];
    all.extend_from_slice(args);
    run_to_end(devstack::bin(), &all, &[]).await
}

#[tokio::test]
async fn plan_prints_the_decisions_the_summary_and_the_warnings() {
    let (code, output) = plan(&[]).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.starts_with("devstack plan: deploy/base/consumer-scaling.yaml (built in)\n"),
        "{output}"
    );
    for line in [
        "  arrivals: burst of 50 at 0s (50 messages)\n",
        "         0s  keda: metric 50 > activation 0, scaling consumer 0 -> 1\n",
        "       7.5s  hpa: proposal ceil(50/5)=10, stabilised 10, scaling consumer 1 -> 10\n",
        "       104s  keda: metric 0 <= activation 0, last active at 42s, cooldownPeriod 60s over, scaling consumer 10 -> 0\n",
        "  drained in 42.5 s, 1.70x the ideal 25.0 s",
        "  peak 10 replicas, 972 pod-seconds, 10 cold starts\n",
        "\nwarnings:\n  none\n",
    ] {
        assert!(output.contains(line), "{line:?} in\n{output}");
    }
}

#[tokio::test]
async fn plan_writes_json_and_the_chart_and_reads_a_csv_of_arrivals() {
    let files = Files::new(
        "plan-outputs",
        &[("arrivals.csv", "time,count\n0,20\n30s,20\n")],
    );
    let svg = files.path("plan.svg");
    let csv = files.path("arrivals.csv");
    let (code, output) = plan(&[
        "--json",
        "--svg",
        &svg,
        "--arrivals",
        &csv,
        "--rate",
        "1/s:10s@1m",
        "--work",
        "uniform:2s..8s",
        "--seed",
        "7",
    ])
    .await;
    assert_eq!(code, Some(0), "{output}");
    let json: Value = serde_json::from_str(&output).expect("only JSON on stdout");
    assert_eq!(json["inputs"]["messages"], 50);
    assert_eq!(json["inputs"]["work"], "uniform 2s..8s");
    assert_eq!(json["inputs"]["seed"], 7);
    let arrivals = json["inputs"]["arrivals"].as_array().unwrap();
    assert_eq!(arrivals.len(), 2, "{arrivals:?}");
    assert_eq!(json["summary"]["completed"], 50);
    let decisions = json["decisions"].as_array().unwrap();
    assert_eq!(decisions[0]["by"], "keda");
    assert_eq!(decisions[0]["clusterTime"], 0.0);
    assert!(json["warnings"].is_array());
    let chart = std::fs::read_to_string(&svg).expect("the chart was written");
    assert!(
        chart.starts_with("<svg ") && chart.ends_with("</svg>\n"),
        "{chart}"
    );
    assert!(chart.contains("50 messages"), "{chart}");
}

#[tokio::test]
async fn a_sweep_prints_a_row_per_combination_and_marks_the_cheapest_that_meets_the_target() {
    let (code, output) = plan(&[
        "--burst",
        "50@1s",
        "--sweep",
        "pollingInterval=2,30",
        "--sweep",
        "cooldownPeriod=60,300",
        "--target-drain",
        "60s",
    ])
    .await;
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("sweep (4 combinations), target: drain within 60s\n"),
        "{output}"
    );
    let rows: Vec<&str> = output.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), 6, "a header, its rule and 4 rows: {output}");
    assert!(
        rows[0].starts_with("| pollingInterval | cooldownPeriod | drain "),
        "{}",
        rows[0]
    );
    assert_eq!(output.matches("<- cheapest").count(), 1, "{output}");
    assert!(rows[2].contains("<- cheapest"), "{}", rows[2]);
    assert!(
        output.contains("cheapest that meets the target: pollingInterval=2 cooldownPeriod=60 ("),
        "{output}"
    );
    let (code, output) = plan(&["--sweep", "maxReplicaCount=5,10", "--json"]).await;
    assert_eq!(code, Some(0), "{output}");
    let json: Value = serde_json::from_str(&output).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 2);
    assert_eq!(json["rows"][0]["values"]["maxReplicaCount"], "5");
    assert_eq!(json["rows"][0]["summary"]["peakReplicas"], 5);
}

const KAFKA: &str = "apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: consumer
spec:
  scaleTargetRef:
    name: consumer
  triggers:
    - type: kafka
      metadata:
        topic: t
";

/// Bad input stops it with an error naming what is wrong: a usage error (2) for a malformed
/// argument, 1 for a file or a ScaledObject devstack cannot honour, as `--autoscale` names it.
#[tokio::test]
async fn bad_input_is_an_error_naming_it() {
    let files = Files::new(
        "plan-errors",
        &[("kafka.yaml", KAFKA), ("bad.csv", "0,10\n5\n")],
    );
    let kafka = files.path("kafka.yaml");
    let csv = files.path("bad.csv");
    let missing = files.path("missing.yaml");
    let cases: [(&[&str], i32, &str); 12] = [
        (
            &["--sweep", "pollingIntervall=2"],
            2,
            "unknown field \"pollingIntervall\"",
        ),
        (&["--sweep", "pollingInterval"], 2, "is not FIELD=V1,V2,..."),
        (
            &["--burst", "fifty"],
            2,
            "\"fifty\" is not a number of messages",
        ),
        (&["--rate", "1/d:1h"], 2, "\"d\" is not a unit of time"),
        (&["--work=-5s"], 2, "\"-5s\" is negative"),
        (
            &["--pod-startup", "uniform:8s..2s"],
            2,
            "the low end is above the high end",
        ),
        (&["--hpa-phase", "20s"], 2, "within its 15s sync period"),
        (
            &["--arrivals", &csv],
            1,
            "bad.csv:2: \"5\" is not a time,count row",
        ),
        (
            &[&kafka],
            1,
            "spec.triggers[0].type: \"kafka\" is not supported by devstack",
        ),
        (&[&missing], 1, "missing.yaml: cannot read the file"),
        (
            &["--sweep", "pollingInterval=2,-5"],
            1,
            "--sweep pollingInterval=-5: deploy/base/consumer-scaling.yaml (built in): spec.pollingInterval: -5 must be 1 or more (seconds)",
        ),
        (
            &["--target-drain", "60s"],
            1,
            "--target-drain marks the cheapest combination of a --sweep",
        ),
    ];
    for (args, want, message) in cases {
        let (code, output) = plan(args).await;
        assert_eq!(code, Some(want), "{args:?}: {output}");
        assert!(
            output.contains(message),
            "{args:?}: no {message:?} in {output}"
        );
    }
}
