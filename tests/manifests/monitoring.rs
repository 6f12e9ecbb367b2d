//! Operations as code (overlays/monitoring): the alerting rules name metrics that exist, as the
//! real binaries serve them on `/metrics` and as daprd's source registers them, with labels and
//! values they really carry; their thresholds follow the manifests; the PodMonitor scrapes ports
//! and paths the pods serve.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};
use test_support::{
    consumer::Consumer,
    exposition::Exposition,
    producer::Producer,
    sidecar::{Behaviour, FakeSidecar},
    with_token,
};
use tonic::Code;

use crate::{
    admission::InjectorSettings,
    binaries::{Defaults, effective},
    exposure::selects,
    render::{Render, array, duration, renders, str_at, u64_at},
};

const MONITORING: &str = "deploy/overlays/monitoring";

/// daprd's metrics the rules may name, with their labels. daprd registers OpenCensus views
/// (dapr/dapr v1.17.5 pkg/diagnostics/component_monitoring.go: `component/input_binding/count`
/// and `component/output_binding/count`, counts tagged app_id, component, namespace, success and,
/// for output, operation) and exports them with the `dapr` namespace (pkg/metrics/exporter.go)
/// through contrib.go.opencensus.io/exporter/prometheus v0.4.2, which names a metric
/// `<namespace>_<view name, sanitized>` and serves a count as a counter with no `_total`, in the
/// plain text format. `success` is `strconv.FormatBool` of the call's outcome.
const DAPRD_METRICS: [(&str, &[&str]); 2] = [
    (
        "dapr_component_input_binding_count",
        &["app_id", "component", "namespace", "success"],
    ),
    (
        "dapr_component_output_binding_count",
        &["app_id", "component", "namespace", "operation", "success"],
    ),
];

/// PromQL's aggregation operators and keywords: names that are never a metric's.
const NOT_METRICS: [&str; 27] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// One metric selector of a PromQL expression: the name and its label matchers.
#[derive(Debug, PartialEq)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// The metric selectors of `expr`: every name that is not a function (followed by `(`), an
/// aggregation or a keyword, with the matchers in the braces after it. Label lists after `by`,
/// `without`, `on` and `ignoring`, ranges in brackets and numbers are skipped.
fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut at = 0;
    let mut label_list = false;
    while at < chars.len() {
        let c = chars[at];
        if c == '[' {
            at += chars[at..].iter().position(|c| *c == ']').unwrap_or(0) + 1;
            continue;
        }
        if c == '(' && label_list {
            at += chars[at..].iter().position(|c| *c == ')').unwrap_or(0) + 1;
            label_list = false;
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            while at < chars.len() && (chars[at].is_ascii_alphanumeric() || chars[at] == '.') {
                at += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            at += 1;
            continue;
        }
        let start = at;
        while at < chars.len()
            && (chars[at].is_ascii_alphanumeric() || matches!(chars[at], '_' | ':'))
        {
            at += 1;
        }
        let word: String = chars[start..at].iter().collect();
        let next = chars[at..].iter().find(|c| !c.is_whitespace());
        if matches!(word.as_str(), "by" | "without" | "on" | "ignoring") {
            label_list = true;
            continue;
        }
        if next == Some(&'(') || NOT_METRICS.contains(&word.to_lowercase().as_str()) {
            continue;
        }
        let mut matchers = Vec::new();
        if next == Some(&'{') {
            let open = at + chars[at..].iter().position(|c| *c == '{').unwrap();
            let close = open
                + chars[open..]
                    .iter()
                    .position(|c| *c == '}')
                    .expect("a closing }");
            let inside: String = chars[open + 1..close].iter().collect();
            for matcher in inside.split(',').filter(|m| !m.trim().is_empty()) {
                let op_at = matcher.find(['=', '!']).expect("a matcher operator");
                let label = matcher[..op_at].trim().to_owned();
                let rest = &matcher[op_at..];
                let op_len =
                    if rest.starts_with("!=") || rest.starts_with("=~") || rest.starts_with("!~") {
                        2
                    } else {
                        1
                    };
                let value = rest[op_len..].trim().trim_matches('"').to_owned();
                matchers.push((label, rest[..op_len].to_owned(), value));
            }
            at = close + 1;
        }
        found.push(Selector {
            name: word,
            matchers,
        });
    }
    found
}

#[test]
fn the_selector_reader_finds_metrics_not_functions_keywords_or_labels() {
    let expr = "histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{x=\"1\", y!=\"2\"}[5m]))) > 4 \
                and on (pod) max without (instance) (b) >= 1e3 unless count(c_total offset 5m)";
    assert_eq!(
        selectors(expr),
        [
            Selector {
                name: "a_bucket".to_owned(),
                matchers: vec![
                    ("x".to_owned(), "=".to_owned(), "1".to_owned()),
                    ("y".to_owned(), "!=".to_owned(), "2".to_owned()),
                ],
            },
            Selector {
                name: "b".to_owned(),
                matchers: vec![]
            },
            Selector {
                name: "c_total".to_owned(),
                matchers: vec![]
            },
        ]
    );
}

/// The metric families a page declares, as PromQL names them: a counter `x` as `x_total`, a
/// histogram as `x_bucket`, `x_sum` and `x_count`, a gauge as `x`.
fn promql_names(page: &Exposition) -> Vec<String> {
    page.types
        .iter()
        .flat_map(|(family, kind)| match kind.as_str() {
            "counter" => vec![format!("{family}_total")],
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{family}{suffix}"))
                .collect(),
            _ => vec![family.clone()],
        })
        .collect()
}

/// The labels and values of a page's series of metric `name`.
fn series_labels(page: &Exposition, name: &str) -> Vec<BTreeMap<String, String>> {
    page.samples
        .keys()
        .filter_map(|series| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            (metric == name).then(|| {
                rest.trim_end_matches('}')
                    .split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                    .collect()
            })
        })
        .collect()
}

/// The real producer and consumer, each driven through the outcomes the rules watch (a call
/// retried, a message sent, one given up on, an event refused for its token, a payload that is no
/// message), then scraped as Prometheus would.
async fn scrape_the_binaries() -> (Exposition, Exposition) {
    // A family with no series yet is not on the page: the first call is retried (UNAVAILABLE),
    // the first message then sent, the second given up on (INVALID_ARGUMENT is final).
    let sidecar = FakeSidecar::start(Behaviour {
        fail_first: Some((1, Code::Unavailable)),
        fail_after: Some((1, Code::InvalidArgument)),
        ..Behaviour::default()
    })
    .await;
    let producer = Producer::start(&sidecar.port(), &[]).await;
    let (status, answer) = producer
        .post(json!({"count": 2, "intervalMilliseconds": 0}))
        .await;
    assert!(!status.is_success(), "the second message fails: {answer}");
    let producer_page = producer.metrics().await;
    producer.stop().await;

    let mut consumer = Consumer::start(&[("APP_API_TOKEN", "s3cret")]).await;
    let event = |data: &[u8]| pipeline::dapr_v1::BindingEventRequest {
        name: "message-queue".to_owned(),
        data: data.to_vec(),
        metadata: Default::default(),
    };
    let refused = consumer
        .send(tonic::Request::new(event(b"{\"text\":\"a\"}")))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
    let poison = consumer
        .send(with_token(event(b"not json"), "s3cret"))
        .await;
    assert_eq!(poison.unwrap_err().code(), Code::InvalidArgument);
    let consumer_page = consumer.scrape().await;
    consumer.stop().await;
    (producer_page, consumer_page)
}

fn monitoring_render() -> &'static Render {
    renders()
        .iter()
        .find(|r| r.label == format!("deploy/base + {MONITORING}"))
        .expect("the base with overlays/monitoring")
}

/// Every alerting rule of a render: (alert, rule).
fn rules(render: &Render) -> Vec<(&str, &Value)> {
    render
        .all("PrometheusRule")
        .flat_map(|r| array(&r["spec"]["groups"]))
        .flat_map(|g| array(&g["rules"]))
        .map(|rule| (str_at(rule, "/alert"), rule))
        .collect()
}

#[tokio::test]
async fn the_alert_rules_name_metrics_the_binaries_and_daprd_export() {
    let (producer_page, consumer_page) = scrape_the_binaries().await;
    let render = monitoring_render();
    let app_ids: Vec<&str> = ["producer", "consumer"]
        .into_iter()
        .map(|app| render.annotation(app, "dapr.io/app-id"))
        .collect();
    let rules = rules(render);
    assert!(rules.len() >= 8, "only {} rules", rules.len());
    let mut names = 0;
    for (alert, rule) in rules {
        let expr = str_at(rule, "/expr");
        let found = selectors(expr);
        assert!(!found.is_empty(), "{alert}: no metric in {expr}");
        for selector in found {
            names += 1;
            let name = selector.name.as_str();
            let page = if name.starts_with("producer_") {
                Some(&producer_page)
            } else if name.starts_with("consumer_") {
                Some(&consumer_page)
            } else {
                None
            };
            let Some(page) = page else {
                let (_, labels) = DAPRD_METRICS
                    .iter()
                    .find(|(metric, _)| *metric == name)
                    .unwrap_or_else(|| panic!("{alert}: {name} is neither the apps' nor daprd's"));
                for (label, op, value) in &selector.matchers {
                    assert!(
                        labels.contains(&label.as_str()),
                        "{alert}: daprd's {name} has no {label}"
                    );
                    if op == "=" {
                        let known = match label.as_str() {
                            "success" => ["true", "false"].contains(&value.as_str()),
                            "app_id" => app_ids.contains(&value.as_str()),
                            _ => true,
                        };
                        assert!(known, "{alert}: {name}{{{label}=\"{value}\"}} never exists");
                    }
                }
                continue;
            };
            assert!(
                promql_names(page).iter().any(|n| n == name),
                "{alert}: {name} is not on the binary's /metrics: {:?}",
                promql_names(page)
            );
            let series = series_labels(page, name);
            for (label, op, value) in &selector.matchers {
                assert!(
                    series.iter().any(|s| s.contains_key(label)),
                    "{alert}: {name} has no label {label}: {series:?}"
                );
                if op == "=" || op == "!=" {
                    assert!(
                        series.iter().any(|s| s.get(label) == Some(value)),
                        "{alert}: {name}{{{label}=\"{value}\"}} never appears, so the matcher \
                         is vacuous: {series:?}"
                    );
                }
            }
        }
    }
    assert!(names >= 10, "only {names} metric names checked");
}

#[test]
fn the_alert_thresholds_follow_the_manifests() {
    let render = monitoring_render();
    let producer = Defaults::of("producer");
    let consumer = Defaults::of("consumer");
    let rules: BTreeMap<&str, &Value> = rules(render).into_iter().collect();
    let threshold = |alert: &str, op: &str| -> f64 {
        let expr = str_at(rules[alert], "/expr");
        expr.rsplit_once(op)
            .and_then(|(_, n)| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{alert}: no `{op} N` at the end of {expr}"))
    };

    let timeout = duration(&effective(
        render.app_container("producer"),
        &producer,
        "SIDECAR_TIMEOUT",
    ));
    let near = Duration::from_secs_f64(threshold("ProducerSendsNearTimeout", ">"));
    assert!(
        near < timeout && near * 2 >= timeout,
        "ProducerSendsNearTimeout at {near:?}, SIDECAR_TIMEOUT {timeout:?}"
    );

    let scaled = render.one("ScaledObject", "consumer");
    let concurrency: f64 = effective(
        render.app_container("consumer"),
        &consumer,
        "MAX_CONCURRENCY",
    )
    .parse()
    .unwrap();
    let capacity = u64_at(scaled, "/spec/maxReplicaCount", 100) as f64 * concurrency;
    assert_eq!(
        threshold("ConsumersAtCapacity", ">="),
        capacity,
        "ConsumersAtCapacity must be maxReplicaCount x MAX_CONCURRENCY"
    );

    let (grace, _, _) = render.shutdown("consumer");
    let stuck = duration(str_at(rules["ConsumerStuckDraining"], "/for"));
    assert!(
        stuck > grace,
        "ConsumerStuckDraining after {stuck:?}, grace {grace:?}"
    );

    // The silent total failure pages someone, and says what to do.
    let refused = rules["ConsumerRefusesEveryEvent"];
    assert_eq!(refused["labels"]["severity"], "critical");
    assert!(
        str_at(refused, "/annotations/description").contains("1.16.2"),
        "{refused}"
    );
}

#[test]
fn the_pod_monitor_scrapes_ports_and_paths_the_pods_serve() {
    let settings = InjectorSettings::from_guide();
    for render in renders().iter().filter(|r| r.has(MONITORING)) {
        let label = &render.label;
        let pods = render.admitted_pods(settings);
        for monitor in render.all("PodMonitor") {
            let selector = &monitor["spec"]["selector"];
            let scraped: Vec<&Value> = pods
                .iter()
                .filter(|(_, pod)| selects(selector, &pod["metadata"]["labels"]))
                .map(|(_, pod)| pod)
                .collect();
            assert_eq!(
                scraped.len(),
                2,
                "{label}: the PodMonitor selects both apps"
            );
            let endpoints = array(&monitor["spec"]["podMetricsEndpoints"]);
            for pod in &scraped {
                let app_path = pod["metadata"]["annotations"]["prometheus.io/path"].clone();
                let app_port = pod["metadata"]["annotations"]["prometheus.io/port"]
                    .as_str()
                    .and_then(|p| p.parse::<u64>().ok());
                let mut scraped_ports = Vec::new();
                for container in array(&pod["spec"]["containers"]) {
                    for port in array(&container["ports"]) {
                        let Some(endpoint) = endpoints.iter().find(|e| e["port"] == port["name"])
                        else {
                            continue;
                        };
                        let number = port["containerPort"].as_u64();
                        // daprd serves its metrics at / (pkg/metrics/exporter.go
                        // defaultMetricsPath), the apps where they announce them.
                        let path = if container["name"] == "daprd" {
                            json!("/")
                        } else {
                            assert_eq!(
                                number, app_port,
                                "{label}: scrapes a port the app does not announce"
                            );
                            app_path.clone()
                        };
                        assert_eq!(endpoint["path"], path, "{label}: {}", port["name"]);
                        scraped_ports.push(str_at(port, "/name").to_owned());
                    }
                }
                assert!(
                    scraped_ports.iter().any(|p| p == "dapr-metrics") && scraped_ports.len() == 2,
                    "{label}: each pod scraped on its app's and its daprd's metrics ports: \
                     {scraped_ports:?}"
                );
            }
        }
        assert_eq!(render.all("PodMonitor").count(), 1, "{label}");
    }
}
