//! Black-box tests of the `devstack` binary, where the process is what is tested: its command
//! line (help, bad values, a Resiliency it cannot honour, exit codes), `devstack up` (every part
//! started, labelled, found on port 0, stopped on SIGTERM), and `devstack sidecar` with its
//! settings from the environment, the original ASP.NET call reaching the real consumer. The
//! sidecar's logic is tested in process, in `tests/sidecar/`.
//! All on 127.0.0.1 with ephemeral ports; every wait is bounded and ends on an event or a status.

use test_support as support;
use test_support::devstack::Settled as _;

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    WAIT,
    consumer::{Consumer, is_original_line},
    devstack::{
        self, ASPNET_BODY, Devstack, EPHEMERAL, consumer_status, labelled, part_event, part_events,
    },
    process::{HTTP_LIMITS, Service, TRACING, event_addr, help, is_running, run_to_end},
    slow_client,
};

const QUEUE: &str = "message-queue";

fn id_of(event: &Value) -> String {
    event["id"].as_str().expect("event has an id").to_owned()
}

/// SIGTERM to `devstack up`; expects exit code 0 and returns its whole output.
async fn stop_up(stack: &mut Devstack) -> Vec<String> {
    stack.service.terminate();
    assert_eq!(stack.service.exit_code(WAIT).await, Some(0));
    stack
        .service
        .wait_for_lines("the whole output", |lines| {
            lines
                .iter()
                .any(|l| l.contains("sidecar stopped"))
                .then(|| lines.to_vec())
        })
        .await
}

// --- Command line -----------------------------------------------------------------------------

#[tokio::test]
async fn help_documents_the_settings_and_bad_values_exit_2() {
    let settings = [
        "CONSUMERS",
        "PORT",
        "APP_PORT",
        "MAX_CONCURRENCY",
        "DAPR_GRPC_PORT",
        "DAPR_HTTP_PORT",
        "BINDING_NAME",
        "MAX_DELIVERY_COUNT",
        "LOCK_DURATION",
        "LOCK_RENEWAL_INTERVAL",
        "JOURNEY_MESSAGES",
        "DEVSTACK_ALLOWED_HOSTS",
        "CHAOS",
        "STOP_ON_CRASH",
        "MAX_RETRIABLE_ERRORS_PER_SEC",
        "RESILIENCY",
        "APP_HEALTH_INTERVAL",
        "STATUS_INTERVAL",
        "DAPR_API_TOKEN",
        "APP_API_TOKEN",
        "RUST_LOG",
        "LOG_FORMAT",
    ];
    let help = help(
        devstack::bin(),
        &[("DAPR_API_TOKEN", "s3cret")],
        &[&settings[..], HTTP_LIMITS, TRACING].concat(),
    )
    .await;
    for text in ["sidecar", "Azure Service Bus", "WORK_DURATION"] {
        assert!(help.contains(text), "--help lacks {text:?}:\n{help}");
    }
    assert!(!help.contains("s3cret"), "--help shows the token:\n{help}");

    let (code, help) = run_to_end(devstack::bin(), &["sidecar", "--help"], &[]).await;
    assert_eq!(code, Some(0), "{help}");
    for text in [
        "--app",
        "HOST:PORT=CONCURRENCY",
        "http://",
        "[env: DEVSTACK_APPS",
        "[env: MAX_DELIVERY_COUNT",
    ] {
        assert!(
            help.contains(text),
            "sidecar --help lacks {text:?}:\n{help}"
        );
    }

    // Should a value be accepted by mistake, the sidecar would serve on free ports until
    // run_to_end's bound, and the test would fail there.
    for (args, env, expected) in [
        (
            &["sidecar", "--app", "nonsense"][..],
            None,
            "is not HOST:PORT",
        ),
        (&["sidecar", "--app", "127.0.0.1:1=0"], None, "concurrency"),
        (
            &["sidecar", "--app", "grpc://127.0.0.1:1"],
            None,
            "is not an app protocol",
        ),
        (
            &["sidecar", "--max-delivery-count", "0"],
            None,
            "--max-delivery-count",
        ),
        (
            &["sidecar", "--lock-duration", "soon"],
            None,
            "--lock-duration",
        ),
        (&["sidecar", "--bindings", "a b"], None, "binding name"),
        (&["sidecar", "--no-such-flag"], None, "unexpected argument"),
        (
            &["sidecar"],
            Some(("MAX_DELIVERY_COUNT", "many")),
            "--max-delivery-count",
        ),
        (&["--consumers", "0"], None, "--consumers"),
    ] {
        let mut all = EPHEMERAL.to_vec();
        all.extend(env);
        let (code, output) = run_to_end(devstack::bin(), args, &all).await;
        assert_eq!(code, Some(2), "{args:?}: {output}");
        assert!(output.contains(expected), "{args:?}: {output}");
    }
}

/// A Resiliency file that is missing, or asks for what the sidecar does not emulate, stops it at
/// start with a message naming the file or the field.
#[tokio::test]
async fn a_resiliency_the_sidecar_cannot_honour_stops_it_at_once() {
    let path = std::env::temp_dir().join(format!(
        "devstack-test-resiliency-{}.yaml",
        std::process::id()
    ));
    std::fs::write(
        &path,
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    timeouts:\n      quick: 1s\n  targets:\n    components:\n      message-queue:\n        inbound:\n          timeout: quick\n",
    )
    .unwrap();
    let written = path.to_str().unwrap();
    let missing = "/nonexistent/resiliency.yaml";
    for (file, expected) in [
        (
            written,
            "spec.targets.components.message-queue.inbound.timeout",
        ),
        (missing, missing),
    ] {
        let (code, output) = run_to_end(
            devstack::bin(),
            &["sidecar", "--resiliency", file],
            &EPHEMERAL,
        )
        .await;
        assert_eq!(code, Some(1), "{file}: {output}");
        assert!(output.contains(expected), "{file}: {output}");
        assert!(!output.contains("sidecar listening"), "{output}");
    }
    std::fs::remove_file(&path).unwrap();
}

// --- The one command ------------------------------------------------------------------------

#[tokio::test]
async fn up_runs_the_whole_stack_labels_each_part_and_stops_on_sigterm() {
    let mut env = EPHEMERAL.to_vec();
    // WORK_DURATION passes through to the consumers, as docs/local-stack.md says.
    env.extend([("CONSUMERS", "2"), ("WORK_DURATION", "300ms")]);
    // Service::spawn sets LOG_FORMAT=json, which every part inherits: each line is `label | {json}`.
    let mut service = Service::spawn(devstack::bin(), &env);
    let listening = part_event(&mut service, "sidecar", "sidecar listening").await;
    let mut stack = Devstack::attach(service, &listening);
    stack
        .service
        .wait_for_line("the banner", |l| l.contains("Local stack is up"))
        .await;
    let listening = part_event(&mut stack.service, "producer", "listening").await;
    let port = event_addr(&listening, "addr").port();
    let curl = format!("localhost:{port}/MessageProducer");
    stack
        .service
        .wait_for_line("the banner's curl command", |l| l.contains(&curl))
        .await;
    stack.wait_consumers(2).await;
    // Each consumer's address, as the stack logged it, is the one the consumer bound and the one
    // the status shows.
    let mut apps = HashSet::new();
    for part in ["consumer-1", "consumer-2"] {
        let listening = part_event(&mut stack.service, part, "listening").await;
        let added = stack
            .service
            .wait_for_lines(&format!("{part} added"), |lines| {
                part_events(lines, "sidecar")
                    .into_iter()
                    .find(|e| e["message"] == "delivering to consumer" && e["part"] == part)
            })
            .await;
        assert_eq!(added["app"], listening["addr"], "{part}");
        let addr = event_addr(&listening, "addr");
        assert_ne!(addr.port(), 0);
        assert_eq!(
            consumer_status(&stack.status().await, addr)["healthy"],
            true
        );
        apps.insert(addr);
    }
    assert_eq!(apps.len(), 2, "two consumers, two addresses: {apps:?}");

    let response = stack
        .http
        .post(format!("http://127.0.0.1:{port}/MessageProducer"))
        .json(&json!({"count": 4, "intervalMilliseconds": 0}))
        .send()
        .await
        .expect("the producer answers");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"sent": 4}));

    let lines = stack
        .service
        .wait_for_lines("4 consumer lines", |lines| {
            let found: Vec<(String, Value)> = ["consumer-1", "consumer-2"]
                .into_iter()
                .flat_map(|part| {
                    part_events(lines, part)
                        .into_iter()
                        .filter(is_original_line)
                        .map(move |e| (part.to_owned(), e))
                })
                .collect();
            (found.len() >= 4).then_some(found)
        })
        .await;
    assert_eq!(lines.len(), 4);
    for part in ["consumer-1", "consumer-2"] {
        assert!(lines.iter().any(|(p, _)| p == part), "{part} got no share");
    }
    for (_, line) in &lines {
        assert!(line["duration_ms"].as_u64().unwrap() >= 300, "{line}");
    }
    stack.wait_completed(QUEUE, 4).await;

    let output = stack.service.lines().await;
    let pids: Vec<(String, u32)> = part_events(&output, "sidecar")
        .into_iter()
        .filter(|e| e["message"] == "started")
        .map(|e| {
            (
                e["part"].as_str().unwrap().to_owned(),
                u32::try_from(e["pid"].as_u64().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(pids.len(), 3, "{pids:?}");

    let output = stop_up(&mut stack).await;
    let own = part_events(&output, "sidecar");
    for (part, pid) in &pids {
        assert!(
            own.iter().any(|e| e["message"] == "stopped"
                && e["part"] == part.as_str()
                && e["status"] == "exit status: 0"),
            "{part} did not stop cleanly"
        );
        assert!(
            part_events(&output, part)
                .iter()
                .any(|e| e["message"] == "stopped"),
            "{part} did not log its own stop"
        );
        let alive = is_running(*pid);
        assert!(!alive, "{part} (pid {pid}) still runs");
    }
}

/// Text logs, and a filter that would hide the parts' `listening` events: devstack still learns
/// where the parts on port 0 are (it lets that one event through).
#[tokio::test]
async fn up_learns_the_addresses_from_text_logs_under_a_warn_filter() {
    let mut env = EPHEMERAL.to_vec();
    env.extend([("LOG_FORMAT", "text"), ("RUST_LOG", "warn,devstack=info")]);
    let mut service = Service::spawn(devstack::bin(), &env);
    let bound = service
        .wait_for_line("the consumer's listening line", |l| {
            labelled(l).is_some_and(|(label, line)| {
                label == "consumer" && line.contains(": listening addr=")
            })
        })
        .await;
    let addr = bound.split("addr=").nth(1).expect("addr=").trim();
    let added = format!("delivering to consumer part=consumer app={addr}");
    service
        .wait_for_line("the consumer added at its address", |l| l.contains(&added))
        .await;
    // The banner comes once every address is known and the producer is ready.
    service
        .wait_for_line("the banner", |l| l.contains("Local stack is up"))
        .await;
    service.terminate();
    assert_eq!(service.exit_code(WAIT).await, Some(0));
}

// --- `devstack sidecar` as a process -----------------------------------------------------------

#[tokio::test]
async fn original_aspnet_post_reaches_the_real_consumer() {
    let mut consumer = Consumer::start(&[]).await;
    let sidecar = Devstack::for_apps(&[consumer.addr], &[], &[]).await;

    // The Dapr SDKs wait for this before their first call.
    let response = sidecar
        .http
        .get(sidecar.url("/v1.0/healthz/outbound"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        sidecar
            .post_binding(QUEUE, ASPNET_BODY, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    let line = consumer
        .service
        .wait_for("the consumer's line", is_original_line)
        .await;
    let message = line["message"].as_str().unwrap();
    assert!(
        message.starts_with("Hello World -- Received at: "),
        "{message}"
    );
    assert_eq!(line["binding"], QUEUE);
    assert!(!id_of(&line).is_empty());
    let c = sidecar.wait_completed(QUEUE, 1).await;
    assert_eq!(c.produced, 1);

    sidecar.stop().await;
    assert_eq!(consumer.stop_with_lines().await.len(), 1);
}

/// The sidecar's HTTP port is served with the shared HTTP limits: stalled clients are closed
/// after the header timeout, counted in `/devstack/metrics`, and requests still work.
#[tokio::test]
async fn stalled_connections_to_the_sidecar_http_port_are_closed_and_counted() {
    let timeout = std::time::Duration::from_millis(500);
    let sidecar = Devstack::start(&[], &[("HTTP_HEADER_READ_TIMEOUT", "500ms")]).await;

    let stalled = slow_client::stall(sidecar.http_addr, 20).await;
    let closed = slow_client::closed_after(stalled, WAIT).await;
    slow_client::assert_closed_between(&closed, timeout, timeout + WAIT / 4);

    let answer = sidecar.post_binding(QUEUE, ASPNET_BODY, None).await;
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    let page = sidecar.metrics().await;
    assert_eq!(
        slow_client::closed_total(&page, "devstack", "header_timeout"),
        20.0
    );
    sidecar.stop().await;
}

// --- Breaking it on purpose -------------------------------------------------------------------

/// The consumer rows of a status, by label.
fn consumer_row(status: &Value, label: &str) -> Value {
    status["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .find(|c| c["label"] == label)
        .cloned()
        .unwrap_or_default()
}

/// `kill -9` of a busy consumer under `--consumers 2` leaves the stack up: the consumer is
/// restarted at once (its first exit), what it held is redelivered, and every message is
/// completed, none lost. The process faults of the API act on the consumers too: a pause, then a
/// SIGTERM, after which the consumer, having drained and exited 0, is restarted like any container.
#[tokio::test]
async fn kill_9_of_a_consumer_leaves_the_stack_up_and_the_faults_api_signals_consumers() {
    let mut env = EPHEMERAL.to_vec();
    env.extend([
        ("CONSUMERS", "2"),
        ("WORK_DURATION", "400ms"),
        ("RESILIENCY", "none"),
    ]);
    let mut service = Service::spawn(devstack::bin(), &env);
    let listening = part_event(&mut service, "sidecar", "sidecar listening").await;
    let mut stack = Devstack::attach(service, &listening);
    let producer = event_addr(
        &part_event(&mut stack.service, "producer", "listening").await,
        "addr",
    );
    stack.wait_consumers(2).await;
    let started = part_events(&stack.service.lines().await, "sidecar")
        .into_iter()
        .find(|e| e["message"] == "started" && e["part"] == "consumer-1")
        .expect("consumer-1 started");
    let pid = i32::try_from(started["pid"].as_u64().unwrap()).unwrap();

    let response = stack
        .http
        .post(format!("http://{producer}/MessageProducer"))
        .json(&json!({"count": 8, "intervalMilliseconds": 0}))
        .send()
        .await
        .expect("the producer answers");
    assert_eq!(response.status(), StatusCode::OK);
    stack
        .wait_status("consumer-1 busy", |s| {
            consumer_row(s, "consumer-1")["inFlight"] == 1
        })
        .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = stack
        .wait_status("8 completed, consumer-1 back", |s| {
            let c = devstack::counts(s, QUEUE);
            let row = consumer_row(s, "consumer-1");
            c.completed == 8 && c.settled() && row["state"] == "ready" && row["restarts"] == 1
        })
        .await;
    assert_eq!(devstack::counts(&status, QUEUE).dead_lettered, 0);
    let row = consumer_row(&status, "consumer-1");
    assert_eq!(row["lastExit"], "signal: 9 (SIGKILL)", "{row}");
    assert!(is_running(stack.service.pid()), "the stack is up");

    // A pause, through the API: the consumer stops answering for a second, then goes on.
    let record = stack
        .fault(json!({"kind": "pause", "consumer": "consumer-2", "seconds": 1}))
        .await;
    assert!(
        record["detail"]
            .as_str()
            .unwrap()
            .starts_with("SIGSTOP to pid "),
        "{record}"
    );
    // SIGTERM, through the API: it drains, exits 0, and is restarted as a container is.
    stack
        .fault(json!({"kind": "sigterm", "consumer": "consumer-2"}))
        .await;
    let status = stack
        .wait_status("consumer-2 restarted", |s| {
            let row = consumer_row(s, "consumer-2");
            row["restarts"] == 1 && row["state"] == "ready"
        })
        .await;
    assert_eq!(
        consumer_row(&status, "consumer-2")["lastExit"],
        "exit status: 0"
    );
    assert_eq!(status["consumerRestarts"], 2);
    let (code, answer) = stack
        .post_json(
            "/devstack/faults",
            &json!({"kind": "kill", "consumer": "consumer-9"}),
        )
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("consumer-1, consumer-2"),
        "{answer}"
    );

    let output = stop_up(&mut stack).await;
    // Every message processed at least once, by one consumer or the other: none lost.
    let done: HashSet<String> = ["consumer-1", "consumer-2"]
        .into_iter()
        .flat_map(|part| part_events(&output, part))
        .filter(is_original_line)
        .map(|e| id_of(&e))
        .collect();
    assert_eq!(done.len(), 8, "{done:?}");
}
