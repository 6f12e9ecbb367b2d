//! End-to-end tests of `devstack --autoscale`: the real sidecar, producer and consumers, the
//! consumers scaled by KEDA's and the HPA's loops from a ScaledObject, with the control plane's
//! periods shortened by `--time-scale`. Every wait is bounded and ends on the status or a log event.

use test_support as support;
use test_support::devstack::Settled as _;

use std::{collections::HashMap, path::Path, time::Duration};

use ::devstack::scaling::{
    plan::{Arrival, Distribution, Scenario, plan},
    spec::Manifest,
};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    WAIT,
    consumer::is_original_line,
    devstack::{self, Devstack, EPHEMERAL, counts, part_event, part_events},
    files::Files,
    process::{Service, event_addr, run_to_end},
};

const QUEUE: &str = "message-queue";

/// The committed ScaledObject, which `--autoscale` reads by default.
const COMMITTED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/base/consumer-scaling.yaml"
);
/// The replica counts the committed ScaledObject goes through with 50 messages, before it
/// returns to 0. KEDA activates 0 -> 1 (metric 50 > activationMessageCount 0). The HPA proposes
/// ceil(50 / messageCount 5) = 10, and its `behavior`'s scaleUp policy (10 pods per 15 s) lets
/// it take all of them at its first sync: 1 -> 10 (maxReplicaCount). Once the queue is empty for
/// cooldownPeriod, KEDA takes it to 0 in one step. Re-tuning the ScaledObject (its scaleUp
/// `behavior`, messageCount or maxReplicaCount) changes this sequence.
const COMMITTED_SCALE_UP: [u32; 3] = [0, 1, 10];
/// The same ScaledObject without `advanced` takes the HPA's legacy path: it proposes 10 too, and
/// its 300 s window holds that peak while it rises by at most max(2 x current, 4) a sync:
/// 1 -> 4 -> 8 -> 10.
const LEGACY_SCALE_UP: [u32; 5] = [0, 1, 4, 8, 10];
/// 20 ms of real time per cluster second: the committed 2 s poll takes 40 ms, the HPA's 15 s
/// sync 0.3 s, the 60 s cooldown 1.2 s.
const TIME_SCALE: &str = "0.02";
/// The fifty-message walk-throughs' scale: 50 ms of real time per cluster second, so that their
/// consumers' 250 ms of work is the original's 5 s, and a 2 s poll (the tolerance the comparison
/// with `devstack plan` allows) is 100 ms.
const PLANNED_TIME_SCALE: f64 = 0.05;
/// The consumers' work at that scale: 5 s.
const PLANNED_WORK: &str = "250ms";

/// `devstack --autoscale` running, with the producer's port.
struct Stack {
    devstack: Devstack,
    producer_port: u16,
}

impl Stack {
    /// Starts `devstack` with `args` and `env` on ephemeral ports; returns once the banner is out.
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut all = EPHEMERAL.to_vec();
        all.extend_from_slice(env);
        let mut service = Service::spawn_with_args(devstack::bin(), args, &all);
        let listening = part_event(&mut service, "sidecar", "sidecar listening").await;
        let producer = part_event(&mut service, "producer", "listening").await;
        service
            .wait_for_line("the banner", |l| l.contains("Local stack is up"))
            .await;
        Self {
            devstack: Devstack::attach(service, &listening),
            producer_port: event_addr(&producer, "addr").port(),
        }
    }

    /// Sends `count` messages through the producer's REST API, as the original sample does.
    async fn produce(&self, count: u32) {
        let response = self
            .devstack
            .http
            .post(format!(
                "http://127.0.0.1:{}/MessageProducer",
                self.producer_port
            ))
            .json(&json!({"count": count, "intervalMilliseconds": 0}))
            .send()
            .await
            .expect("the producer answers");
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// The scaling events so far, as (by, from, to).
    async fn steps(&self) -> Vec<(String, u64, u64)> {
        steps(&self.devstack.status().await)
    }

    /// SIGTERM; expects exit code 0 and returns the whole output.
    async fn stop(mut self) -> Vec<String> {
        let service = &mut self.devstack.service;
        service.terminate();
        assert_eq!(service.exit_code(WAIT).await, Some(0));
        service
            .wait_for_lines("the whole output", |lines| {
                lines
                    .iter()
                    .any(|l| l.contains("sidecar stopped"))
                    .then(|| lines.to_vec())
            })
            .await
    }
}

fn steps(status: &Value) -> Vec<(String, u64, u64)> {
    status["scaling"]["events"]
        .as_array()
        .expect("scaling events")
        .iter()
        .map(|e| {
            (
                e["by"].as_str().expect("by").to_owned(),
                e["from"].as_u64().expect("from"),
                e["to"].as_u64().expect("to"),
            )
        })
        .collect()
}

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap_or_else(|| panic!("a time: {value}")))
        .unwrap_or_else(|e| panic!("{value} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// The labels of the consumers that got SIGTERM to scale in, with what they had in flight.
fn scaled_in(lines: &[String]) -> Vec<(String, u64)> {
    part_events(lines, "sidecar")
        .into_iter()
        .filter(|e| e["message"] == "scaling in: delivery stopped, sending SIGTERM")
        .map(|e| {
            (
                e["part"].as_str().expect("part").to_owned(),
                e["in_flight"].as_u64().expect("in_flight"),
            )
        })
        .collect()
}

/// The `stopped` status devstack logged for `part`, once it exited.
fn stopped_status(lines: &[String], part: &str) -> Option<String> {
    part_events(lines, "sidecar")
        .into_iter()
        .find(|e| e["message"] == "stopped" && e["part"] == part)
        .map(|e| e["status"].as_str().expect("status").to_owned())
}

/// Every message id a consumer logged the original line for, with the consumer's label.
fn processed(lines: &[String], consumers: u64) -> Vec<(String, String)> {
    (1..=consumers)
        .flat_map(|n| {
            let part = format!("consumer-{n}");
            part_events(lines, &part)
                .into_iter()
                .filter(is_original_line)
                .map(move |e| (part.clone(), e["id"].as_str().expect("id").to_owned()))
        })
        .collect()
}

/// The ids the sidecar abandoned for redelivery, with the app that had them.
fn abandoned(lines: &[String]) -> Vec<(String, String)> {
    part_events(lines, "sidecar")
        .into_iter()
        .filter(|e| e["message"] == "message abandoned; will be redelivered")
        .map(|e| {
            (
                e["app"].as_str().expect("app").to_owned(),
                e["id"].as_str().expect("id").to_owned(),
            )
        })
        .collect()
}

/// The original walk-through: 50 messages, the committed ScaledObject. The consumers go
/// 0 -> 1 -> 10, the queue drains with nothing lost or dead-lettered, and after the cooldown KEDA
/// takes them back to 0, each consumer exiting cleanly; `devstack plan` takes the same decisions.
#[tokio::test]
async fn the_committed_scaled_object_takes_fifty_messages_from_zero_to_ten_consumers_and_back() {
    let committed = std::fs::read_to_string(COMMITTED).unwrap();
    assert!(committed.contains("\n  advanced:\n"), "{committed}");
    let manifest = Manifest::committed().unwrap();
    fifty_messages_from_zero_to_the_peak_and_back(&["--autoscale"], &COMMITTED_SCALE_UP, &manifest)
        .await;
}

/// The same walk-through on the HPA's legacy path, which a ScaledObject without `advanced` gets:
/// a copy of the committed one without it climbs 0 -> 1 -> 4 -> 8 -> 10, and `devstack plan` of
/// that copy with it.
#[tokio::test]
async fn without_a_behavior_the_committed_scaled_object_climbs_the_legacy_way() {
    let committed = std::fs::read_to_string(COMMITTED).unwrap();
    let legacy = without_advanced(&committed);
    assert!(
        !legacy.contains("advanced") && legacy.contains("triggers:"),
        "{legacy}"
    );
    let deployment = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/base/consumer-deployment.yaml"
    ))
    .unwrap();
    let manifests = Files::new(
        "legacy",
        &[
            ("consumer-scaling.yaml", &legacy),
            ("consumer-deployment.yaml", &deployment),
        ],
    );
    let path = manifests.path("consumer-scaling.yaml");
    let manifest = Manifest::load(Path::new(&path)).unwrap();
    assert!(manifest.spec().unwrap().behavior.is_none());
    fifty_messages_from_zero_to_the_peak_and_back(
        &["--autoscale", &path],
        &LEGACY_SCALE_UP,
        &manifest,
    )
    .await;
}

/// `yaml` without the ScaledObject's `advanced` block (the line `  advanced:` and every line
/// indented deeper below it).
fn without_advanced(yaml: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in yaml.lines() {
        if line == "  advanced:" {
            skipping = true;
            continue;
        }
        if skipping && (line.starts_with("   ") || line.trim().is_empty()) {
            continue;
        }
        skipping = false;
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// 50 messages of 5 s work through `devstack` started with `autoscale` (the `--autoscale` flag and
/// maybe a path to `manifest`): the scaling steps are exactly `scale_up`, the queue drains with
/// nothing lost or dead-lettered, and after the cooldown KEDA takes the consumers back to 0, each
/// exiting cleanly. `devstack plan`, given the burst's time, the HPA's phase and the consumers'
/// start-up the live run had, takes the same decisions in the same order, each within a polling
/// period of the live one: counted from the burst for those the burst sets off, from the moment
/// the queue emptied for those that follow it (KEDA's N -> 0). When real processes on a loaded
/// machine finish their last message is theirs to say, not the plan's; what the rules make of it
/// is what must agree.
///
/// The burst is sent just after an HPA sync, so the next sync, the first to see a replica, comes
/// 14 s (700 ms) after the whole burst is in the queue: sent at a random point, a sync could read a
/// burst still being produced and ask for fewer replicas (1 -> 7 -> 10).
async fn fifty_messages_from_zero_to_the_peak_and_back(
    autoscale: &[&str],
    scale_up: &[u32],
    manifest: &Manifest,
) {
    let mut args = autoscale.to_vec();
    let scale = PLANNED_TIME_SCALE.to_string();
    args.extend(["--time-scale", &scale]);
    // 50 messages of 5 s over 10 consumers drain in about 25 s (1.25 s): the peak is held well
    // before the drain ends, and the first HPA sync after the burst finds at most two done.
    let stack = Stack::start(&args, &[("WORK_DURATION", PLANNED_WORK)]).await;
    let status = stack.devstack.status().await;
    let scaling = &status["scaling"];
    assert_eq!(scaling["replicas"], 0, "{scaling}");
    assert_eq!(scaling["settings"]["timeScale"], PLANNED_TIME_SCALE);
    assert_eq!(scaling["settings"]["hpaSyncPeriod"], 15.0);
    assert_eq!(scaling["settings"]["maxReplicaCount"], 10);
    assert_eq!(status["consumers"], json!([]));

    let clock = ClusterClock::of(&status);
    let burst_at = clock.after_next_sync().await;
    stack.produce(50).await;
    let peak = *scale_up.last().unwrap();
    let up: Vec<(u64, u64)> = scale_up
        .windows(2)
        .map(|w| (u64::from(w[0]), u64::from(w[1])))
        .collect();
    let status = stack
        .devstack
        .wait_status("the scale-up to the peak", |s| {
            steps(s).len() >= up.len() && s["scaling"]["ready"] == peak
        })
        .await;
    let events = status["scaling"]["events"].as_array().unwrap().clone();
    let made: Vec<(u64, u64)> = steps(&status)
        .into_iter()
        .map(|(_, from, to)| (from, to))
        .collect();
    assert_eq!(made, up, "{events:?}");
    // KEDA activates; the HPA takes it from there, each step with its inputs.
    assert_eq!(events[0]["by"], "keda");
    assert!(
        events[0]["reason"]
            .as_str()
            .unwrap()
            .ends_with("> activation 0"),
        "{}",
        events[0]
    );
    for event in &events[1..] {
        assert_eq!(event["by"], "hpa", "{event}");
        for field in ["proposal", "recommendation", "limit", "metric"] {
            assert!(event[field].is_u64(), "{field} in {event}");
        }
    }
    let times: Vec<DateTime<Utc>> = events.iter().map(|e| time(&e["at"])).collect();
    assert!(times.is_sorted(), "{events:?}");
    let labels: Vec<&str> = status["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels.len(), 10, "{labels:?}");

    let status = stack
        .devstack
        .wait_status("the queue drained and the consumers back to 0", |s| {
            counts(s, QUEUE).settled()
                && s["scaling"]["replicas"] == 0
                && s["consumers"] == json!([])
                && s["scaling"]["terminating"] == 0
        })
        .await;
    let c = counts(&status, QUEUE);
    assert_eq!((c.produced, c.completed, c.dead_lettered), (50, 50, 0));
    let last = status["scaling"]["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (&last["by"], &last["from"], &last["to"]),
        (&json!("keda"), &json!(peak), &json!(0)),
        "{last}"
    );
    // The one-step N -> 0 came no sooner than the cooldown after the trigger was last active.
    let cooldown = Duration::from_secs(60).mul_f64(PLANNED_TIME_SCALE);
    let last_active = time(&status["scaling"]["lastActiveTime"]);
    assert!(
        time(&last["at"]) >= last_active + cooldown,
        "{last} {status}"
    );
    assert_eq!(status["scaling"]["active"], false);
    assert_eq!(status["scaling"]["metric"], 0);
    let page = stack.devstack.metrics().await;
    assert_eq!(
        page.get(r#"devstack_scaling_replicas{state="desired"}"#),
        0.0
    );
    assert_eq!(page.get(r#"devstack_scaling_replicas{state="ready"}"#), 0.0);
    assert_eq!(page.get("devstack_scaling_metric"), 0.0);

    let output = stack.stop().await;
    // Each message was completed once, or redelivered after an abandon: none is missing.
    let done = processed(&output, u64::from(peak));
    let redelivered: Vec<String> = abandoned(&output).into_iter().map(|(_, id)| id).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (_, id) in &done {
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), 50, "{done:?}");
    for (id, n) in seen {
        assert!(n == 1 || redelivered.iter().any(|r| r == id), "{id} x{n}");
    }
    // Every consumer was scaled in, and exited 0 after its drain.
    let victims = scaled_in(&output);
    assert_eq!(victims.len(), 10, "{victims:?}");
    for n in 1..=peak {
        let part = format!("consumer-{n}");
        assert!(
            victims.iter().any(|(p, _)| *p == part),
            "{part} not scaled in"
        );
        assert_eq!(
            stopped_status(&output, &part).as_deref(),
            Some("exit status: 0"),
            "{part}"
        );
    }
    // The log line of each change, as the issue words them.
    let lines: Vec<String> = part_events(&output, "sidecar")
        .into_iter()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("keda: metric ") && l.ends_with(", scaling consumer 0 -> 1")),
        "{lines:?}"
    );
    let first_hpa_step = format!(", scaling consumer 1 -> {}", scale_up[2]);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("hpa: ") && l.ends_with(&first_hpa_step)),
        "{lines:?}"
    );

    // `devstack plan` with what the live run had.
    let live: Vec<(String, u64, u64, f64)> = status["scaling"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let (by, from, to) = (e["by"].as_str().unwrap(), &e["from"], &e["to"]);
            let at = e["clusterTime"].as_f64().expect("clusterTime");
            (
                by.to_owned(),
                from.as_u64().unwrap(),
                to.as_u64().unwrap(),
                at,
            )
        })
        .collect();
    let startup = clock.mean_startup(&output, &live);
    let spec = manifest.spec().unwrap();
    let scenario = Scenario {
        arrivals: vec![Arrival::Burst {
            count: 50,
            at: burst_at,
        }],
        pod_startup: Distribution::Fixed(startup),
        hpa_first_sync: clock.hpa_first_sync,
        // 5 s of work, one message at a time, as the consumers had.
        ..Scenario::default()
    };
    let planned = plan(&spec, &scenario, &scenario.workload().unwrap());
    let plan_drained = planned
        .run
        .last_completion
        .expect("the plan drains")
        .as_secs_f64();
    let live_drained = clock.drained(&output, u64::from(peak)).as_secs_f64();
    let planned: Vec<(String, u64, u64, f64)> = planned
        .run
        .decisions
        .iter()
        .map(|t| {
            let d = &t.decision;
            let by = serde_json::to_value(d.by).unwrap();
            let by = by.as_str().unwrap().to_owned();
            (by, u64::from(d.from), u64::from(d.to), t.at.as_secs_f64())
        })
        .collect();
    let why = format!(
        "live {live:?}, drained at {live_drained}\nplanned {planned:?}, drained at {plan_drained}\nburst at {burst_at:?}, HPA phase {:?}, start-up {startup:?}",
        clock.hpa_first_sync
    );
    let order = |steps: &[(String, u64, u64, f64)]| {
        steps
            .iter()
            .map(|(by, from, to, _)| (by.clone(), *from, *to))
            .collect::<Vec<_>>()
    };
    assert_eq!(order(&planned), order(&live), "{why}");
    let polling = spec.polling_interval.as_secs_f64();
    for (p, l) in planned.iter().zip(&live) {
        let (p_at, l_at) = match l.3 > live_drained {
            true => (p.3 - plan_drained, l.3 - live_drained),
            false => (p.3, l.3),
        };
        assert!((p_at - l_at).abs() <= polling, "{p:?} against {l:?}: {why}");
    }
}

/// The live run's cluster time, from its status: when it started, its scale and the HPA's phase.
struct ClusterClock {
    started_at: DateTime<Utc>,
    scale: f64,
    hpa_first_sync: Duration,
}

impl ClusterClock {
    fn of(status: &Value) -> Self {
        let settings = &status["scaling"]["settings"];
        Self {
            started_at: time(&settings["startedAt"]),
            scale: settings["timeScale"].as_f64().expect("timeScale"),
            hpa_first_sync: Duration::from_secs_f64(
                settings["hpaFirstSync"].as_f64().expect("hpaFirstSync"),
            ),
        }
    }

    /// Cluster time at a wall-clock time.
    fn at(&self, wall: DateTime<Utc>) -> Duration {
        let real = (wall - self.started_at).to_std().unwrap_or_default();
        real.div_f64(self.scale)
    }

    /// Waits until 1 s (cluster time) after the HPA's next sync, at least 2 s from now; returns
    /// the cluster time then. A wait for a moment of the control plane's cadence, bounded by
    /// one sync period: not a readiness wait.
    async fn after_next_sync(&self) -> Duration {
        let now = self.at(Utc::now()) + Duration::from_secs(2);
        let period = Duration::from_secs(15);
        let mut sync = self.hpa_first_sync;
        while sync < now {
            sync += period;
        }
        let target = sync + Duration::from_secs(1);
        let wall = self.started_at
            + chrono::Duration::from_std(target.mul_f64(self.scale)).expect("a short time");
        let wait = (wall - Utc::now()).to_std().unwrap_or_default();
        assert!(wait <= period.mul_f64(self.scale) * 2, "{wait:?}");
        tokio::time::sleep(wait).await;
        self.at(Utc::now())
    }

    /// The mean time, in cluster time, from a replica's creation (the decision that asked for it)
    /// to its readiness (the sidecar's `app listed its input bindings`, right before its first
    /// health check), over the replicas of `decisions`' scale-ups.
    fn mean_startup(&self, output: &[String], decisions: &[(String, u64, u64, f64)]) -> Duration {
        let events = part_events(output, "sidecar");
        let address = |label: &str| {
            events
                .iter()
                .find(|e| e["message"] == "delivering to consumer" && e["part"] == label)
                .map(|e| e["app"].as_str().unwrap().to_owned())
        };
        let ready = |app: &str| {
            events
                .iter()
                .find(|e| e["message"] == "app listed its input bindings" && e["app"] == app)
                .map(|e| self.at(time(&e["timestamp"])))
        };
        let mut startups = Vec::new();
        for (_, from, to, at) in decisions.iter().filter(|(_, from, to, _)| to > from) {
            for n in from + 1..=*to {
                let label = format!("consumer-{n}");
                let app = address(&label).unwrap_or_else(|| panic!("{label} never listened"));
                let ready =
                    ready(&app).unwrap_or_else(|| panic!("{label} never listed its bindings"));
                startups.push(ready.saturating_sub(Duration::from_secs_f64(*at)));
            }
        }
        assert!(!startups.is_empty());
        startups.iter().sum::<Duration>() / u32::try_from(startups.len()).unwrap()
    }

    /// When the last message was done, in cluster time: the latest line a consumer logged for one
    /// of the `consumers`.
    fn drained(&self, output: &[String], consumers: u64) -> Duration {
        (1..=consumers)
            .flat_map(|n| part_events(output, &format!("consumer-{n}")))
            .filter(is_original_line)
            .map(|e| self.at(time(&e["timestamp"])))
            .max()
            .expect("the consumers logged their messages")
    }
}

/// Scales 1 -> 4 at once, and back down as soon as the metric falls: the HPA's `behavior`
/// without a scale-down stabilisation window. Each consumer holds its message 1.5 s, longer than
/// the 1 s grace period and the HPA's sync period (0.15 s at [`BUSY_TIME_SCALE`]) together, so
/// a victim is busy, and killed.
const BUSY_SCALED_OBJECT: &str = r#"apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: consumer
spec:
  scaleTargetRef:
    name: consumer
  minReplicaCount: 0
  maxReplicaCount: 4
  pollingInterval: 5
  cooldownPeriod: 0
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          stabilizationWindowSeconds: 0
          policies:
            - type: Percent
              value: 100
              periodSeconds: 15
  triggers:
    - type: azure-servicebus
      metadata:
        queueName: msgqueue
        messageCount: "2"
        activationMessageCount: "0"
"#;

/// 10 ms of real time per cluster second: the 5 s poll takes 50 ms, the HPA's sync 150 ms.
const BUSY_TIME_SCALE: &str = "0.01";

const BUSY_DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: consumer
spec:
  selector:
    matchLabels:
      app: consumer
  template:
    metadata:
      labels:
        app: consumer
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: consumer
          image: consumer
"#;

/// Scale-in while every consumer is busy (the KEDA pitfall of busy pods removed): delivery to
/// each victim stops first, then SIGTERM, then SIGKILL after the grace period. Every message a
/// victim held is completed by it or redelivered to another; none is lost.
#[tokio::test]
async fn scaling_in_busy_consumers_loses_no_message() {
    let manifests = Files::new(
        "busy",
        &[
            ("scaling.yaml", BUSY_SCALED_OBJECT),
            ("deployment.yaml", BUSY_DEPLOYMENT),
        ],
    );
    let scaled_object = manifests.path("scaling.yaml");
    let stack = Stack::start(
        &[
            "--autoscale",
            &scaled_object,
            "--time-scale",
            BUSY_TIME_SCALE,
        ],
        // The consumers log each event they take (`event received`, with its id). No Resiliency:
        // its retries of a killed victim's call would only delay the abandon.
        &[
            ("WORK_DURATION", "1500ms"),
            ("RUST_LOG", "info,consumer::callback=debug"),
            ("RESILIENCY", "none"),
        ],
    )
    .await;
    let settings = &stack.devstack.status().await["scaling"]["settings"];
    assert_eq!(settings["terminationGracePeriod"], 1.0, "{settings}");
    stack.produce(8).await;

    // While a victim terminates, the status shows it so, with when it is killed.
    let status = stack
        .devstack
        .wait_status("a consumer terminating", |s| {
            s["consumers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["state"] == "terminating")
        })
        .await;
    let victim = status["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["state"] == "terminating")
        .unwrap()
        .clone();
    assert_eq!(
        time(&victim["killAt"]) - time(&victim["terminatingAt"]),
        chrono::Duration::seconds(1),
        "{victim}"
    );
    assert!(status["scaling"]["terminating"].as_u64().unwrap() >= 1);
    assert!(
        steps(&status)
            .iter()
            .any(|(by, from, to)| by == "hpa" && to < from && *to > 0),
        "{status}"
    );

    let status = stack
        .devstack
        .wait_status("the queue drained and the consumers back to 0", |s| {
            counts(s, QUEUE).settled()
                && s["scaling"]["replicas"] == 0
                && s["consumers"] == json!([])
        })
        .await;
    let c = counts(&status, QUEUE);
    assert_eq!((c.produced, c.completed, c.dead_lettered), (8, 8, 0));
    let started = stack.steps().await;
    let output = stack.stop().await;

    let addresses: HashMap<String, String> = part_events(&output, "sidecar")
        .into_iter()
        .filter(|e| e["message"] == "delivering to consumer")
        .map(|e| {
            (
                e["part"].as_str().unwrap().to_owned(),
                e["app"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let consumers = u64::try_from(addresses.len()).unwrap();
    let done = processed(&output, consumers);
    let redelivered = abandoned(&output);
    // Scaled in while busy: the victims had messages in flight.
    let victims: Vec<(String, u64)> = scaled_in(&output)
        .into_iter()
        .filter(|(_, in_flight)| *in_flight > 0)
        .collect();
    assert!(!victims.is_empty(), "{started:?}");
    let mut killed = 0;
    for (victim, _) in &victims {
        let address = &addresses[victim];
        let held: Vec<String> = part_events(&output, victim)
            .into_iter()
            .filter(|e| e["message"] == "event received")
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(!held.is_empty(), "{victim} took no event");
        for id in held {
            let completed_by_it = done.iter().any(|(p, i)| p == victim && *i == id);
            let abandoned_by_it = redelivered.iter().any(|(a, i)| a == address && *i == id);
            let completed_by_another = done.iter().any(|(p, i)| p != victim && *i == id);
            assert!(
                completed_by_it || (abandoned_by_it && completed_by_another),
                "{victim} held {id}: neither completed by it nor redelivered and completed"
            );
            killed += usize::from(abandoned_by_it);
        }
        assert_ne!(
            stopped_status(&output, victim).as_deref(),
            None,
            "{victim} never stopped"
        );
    }
    // With a 1 s grace period and 1.5 s of work, the kill path ran.
    assert!(killed > 0, "no victim's message was redelivered");
}

/// A ScaledObject devstack cannot honour stops it at start, before any part starts, with a
/// message naming the field (or the file).
#[tokio::test]
async fn a_scaled_object_devstack_cannot_honour_stops_it_at_once() {
    let base = BUSY_SCALED_OBJECT;
    let cases = [
        (
            "kafka",
            base.replace("type: azure-servicebus", "type: kafka"),
            "type",
        ),
        (
            "count",
            base.replace(r#"messageCount: "2""#, r#"messageCount: "two""#),
            "messageCount",
        ),
        (
            "modifiers",
            base.replace(
                "  advanced:\n",
                "  advanced:\n    scalingModifiers:\n      formula: \"a + b\"\n",
            ),
            "scalingModifiers",
        ),
        (
            "triggers",
            format!(
                "{base}    - type: azure-servicebus\n      metadata:\n        queueName: other\n        messageCount: \"2\"\n"
            ),
            "triggers",
        ),
    ];
    for (name, text, field) in cases {
        let manifests = Files::new(name, &[("scaling.yaml", &text)]);
        let path = manifests.path("scaling.yaml");
        let (code, output) = run_to_end(devstack::bin(), &["--autoscale", &path], &EPHEMERAL).await;
        assert_eq!(code, Some(1), "{name}: {output}");
        assert!(output.contains(field), "{name}: no {field:?} in {output}");
        assert!(!output.contains("\"started\""), "{name}: {output}");
    }
    let missing = "/nonexistent/consumer-scaling.yaml";
    let (code, output) = run_to_end(devstack::bin(), &["--autoscale", missing], &EPHEMERAL).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains(missing), "{output}");
}

/// `--autoscale` decides the number of consumers: with `--consumers` it is a usage error, as is
/// a time scale that is not a positive number.
#[tokio::test]
async fn autoscale_with_consumers_or_a_bad_time_scale_is_a_usage_error() {
    for args in [
        &["--autoscale", "--consumers", "2"][..],
        &["--consumers", "2", "--autoscale"],
        &["--autoscale", "--time-scale", "0"],
        &["--autoscale", "--time-scale=-0.5"],
    ] {
        let (code, output) = run_to_end(devstack::bin(), args, &EPHEMERAL).await;
        assert_eq!(code, Some(2), "{args:?}: {output}");
        assert!(
            output.contains("cannot be used with") || output.contains("positive number"),
            "{args:?}: {output}"
        );
    }
}

/// Without `--autoscale` the consumers are fixed (`CONSUMERS`), and the status shows them with
/// the fields it shows replicas with (label, state); there is no `scaling` object.
#[tokio::test]
async fn fixed_consumers_show_their_label_and_state() {
    let stack = Stack::start(&[], &[("CONSUMERS", "2")]).await;
    stack.devstack.wait_consumers(2).await;
    let status = stack.devstack.status().await;
    assert!(status.get("scaling").is_none(), "{status}");
    let mut labels: Vec<&str> = Vec::new();
    for consumer in status["consumers"].as_array().unwrap() {
        assert_eq!(consumer["state"], "ready", "{consumer}");
        assert_eq!(consumer["terminatingAt"], Value::Null);
        assert_eq!(consumer["killAt"], Value::Null);
        labels.push(consumer["label"].as_str().unwrap());
    }
    labels.sort_unstable();
    assert_eq!(labels, ["consumer-1", "consumer-2"]);
    let page = stack.devstack.metrics().await;
    for family in ["devstack_scaling_replicas", "devstack_scaling_metric"] {
        assert!(!page.types.contains_key(family), "{family}");
    }
    stack.stop().await;
}

/// The committed ScaledObject with `minReplicaCount` raised: the Deployment at rest.
fn at_rest(min: u32) -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/base/consumer-scaling.yaml"
    ))
    .unwrap()
    .replace("minReplicaCount: 0", &format!("minReplicaCount: {min}"))
}

/// `minReplicaCount` consumers run from the start, scaled by nobody while the queue is empty; the
/// stack stops them on SIGTERM as it stops everything, each exiting 0.
#[tokio::test]
async fn min_replicas_run_at_rest_and_stop_with_the_stack() {
    let text = at_rest(2);
    let manifests = Files::new("rest", &[("scaling.yaml", &text)]);
    let path = manifests.path("scaling.yaml");
    let stack = Stack::start(&["--autoscale", &path, "--time-scale", TIME_SCALE], &[]).await;
    let status = stack
        .devstack
        .wait_status("two consumers ready", |s| s["scaling"]["ready"] == 2)
        .await;
    assert_eq!(status["scaling"]["replicas"], 2, "{status}");
    assert_eq!(steps(&status), [], "no change at rest");
    let output = stack.stop().await;
    for part in ["consumer-1", "consumer-2"] {
        assert_eq!(
            stopped_status(&output, part).as_deref(),
            Some("exit status: 0"),
            "{part}"
        );
    }
    assert!(scaled_in(&output).is_empty());
}

/// The pid of `part`'s latest start, from devstack's `started` events.
async fn pid_of(stack: &mut Stack, part: &str, starts: usize) -> i32 {
    let started = stack
        .devstack
        .service
        .wait_for_lines(&format!("{part} started {starts} times"), |lines| {
            let pids: Vec<u64> = part_events(lines, "sidecar")
                .into_iter()
                .filter(|e| e["message"] == "started" && e["part"] == part)
                .filter_map(|e| e["pid"].as_u64())
                .collect();
            (pids.len() >= starts).then(|| pids[starts - 1])
        })
        .await;
    i32::try_from(started).unwrap()
}

fn kill_9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// With `--stop-on-crash`, a consumer that exits without being scaled in stops the stack, as any
/// part that stops on its own does.
#[tokio::test]
async fn with_stop_on_crash_a_replica_that_dies_on_its_own_stops_the_stack() {
    let text = at_rest(1);
    let manifests = Files::new("dies", &[("scaling.yaml", &text)]);
    let path = manifests.path("scaling.yaml");
    let mut stack = Stack::start(
        &[
            "--autoscale",
            &path,
            "--time-scale",
            TIME_SCALE,
            "--stop-on-crash",
        ],
        &[],
    )
    .await;
    stack
        .devstack
        .wait_status("one consumer ready", |s| s["scaling"]["ready"] == 1)
        .await;
    let pid = pid_of(&mut stack, "consumer-1", 1).await;
    kill_9(pid);
    let service = &mut stack.devstack.service;
    assert_eq!(service.exit_code(WAIT).await, Some(1));
    let stopped = part_event(
        service,
        "sidecar",
        "a part stopped on its own; stopping the stack",
    )
    .await;
    assert_eq!(stopped["part"], "consumer-1", "{stopped}");
}

/// `kill -9` of a busy replica under `--autoscale` leaves the stack up: the kubelet's rules
/// restart it at once the first time, after its CrashLoopBackOff (10 s, here at time scale
/// 0.05: 0.5 s) the second; the status and the metrics show its state, restarts and last exit;
/// what it held is redelivered, and every message is completed, none lost.
#[tokio::test]
async fn kill_9_of_a_replica_leaves_the_stack_up_and_it_comes_back_after_its_back_off() {
    let text = at_rest(1);
    let manifests = Files::new("restarts", &[("scaling.yaml", &text)]);
    let path = manifests.path("scaling.yaml");
    let mut stack = Stack::start(
        &["--autoscale", &path, "--time-scale", "0.05"],
        &[("WORK_DURATION", "300ms"), ("RESILIENCY", "none")],
    )
    .await;
    stack
        .devstack
        .wait_status("one consumer ready", |s| s["scaling"]["ready"] == 1)
        .await;
    stack.produce(6).await;
    stack
        .devstack
        .wait_status("consumer-1 busy", |s| {
            s["consumers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["label"] == "consumer-1" && c["inFlight"] == 1)
        })
        .await;
    kill_9(pid_of(&mut stack, "consumer-1", 1).await);
    // Restarted at once, on a new free port: the same row, its restart and last exit.
    let status =
        stack
            .devstack
            .wait_status("consumer-1 restarted and ready", |s| {
                s["consumers"].as_array().unwrap().iter().any(|c| {
                    c["label"] == "consumer-1" && c["restarts"] == 1 && c["state"] == "ready"
                })
            })
            .await;
    let row = status["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["label"] == "consumer-1")
        .unwrap()
        .clone();
    assert_eq!(row["lastExit"], "signal: 9 (SIGKILL)", "{row}");
    assert_eq!(status["consumerRestarts"], 1);
    let page = stack.devstack.metrics().await;
    assert_eq!(
        page.get(r#"devstack_consumer_restarts{consumer="consumer-1"}"#),
        1.0
    );
    assert_eq!(
        page.get(r#"devstack_consumer_state{consumer="consumer-1",state="ready"}"#),
        1.0
    );

    // Again, soon after: now it waits out its back-off.
    kill_9(pid_of(&mut stack, "consumer-1", 2).await);
    let backoff = part_event(
        &mut stack.devstack.service,
        "sidecar",
        "a consumer exited on its own again; waiting out its back-off (CrashLoopBackOff)",
    )
    .await;
    assert_eq!(
        (&backoff["backoff"], &backoff["restart_in"]),
        (&json!("10s"), &json!("500ms")),
        "{backoff}"
    );
    let status = stack
        .devstack
        .wait_status("the queue drained, consumer-1 back", |s| {
            counts(s, QUEUE).settled()
                && s["consumers"].as_array().unwrap().iter().any(|c| {
                    c["label"] == "consumer-1" && c["restarts"] == 2 && c["state"] == "ready"
                })
        })
        .await;
    let c = counts(&status, QUEUE);
    assert_eq!((c.produced, c.completed, c.dead_lettered), (6, 6, 0));
    let output = stack.stop().await;
    // Every message processed, at least once, by whichever replica: none lost.
    let done: std::collections::HashSet<String> = processed(&output, 10)
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(done.len(), 6, "{done:?}");
    assert!(
        part_events(&output, "sidecar")
            .iter()
            .any(|e| e["message"] == "back-off over: restarting" && e["part"] == "consumer-1"),
        "the restart after the back-off"
    );
}
