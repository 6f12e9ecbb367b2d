//! The dashboard in a real browser: headless Chromium loads `devstack up`'s page while the test
//! sends messages, through the producer and through the page's own form and poison button, and
//! reads the rendered DOM over the DevTools protocol until it matches `/devstack/status`. Then a
//! second page, opened once the burst is over, shows the past; the consumers in replica order
//! and a clock-time axis; the buttons that break things (a consumer killed and restarted, a
//! fault on the sidecar), the dead-letter operations and a message's timeline. Then the page at a
//! narrow width, devstack stopping, and the scaling parts rendered from a status that has them. Saves screenshots in the target dir (`DASHBOARD_SCREENSHOT=PATH` writes the wide one
//! there too, e.g. `docs/dashboard.png`; `DASHBOARD_DEVSTACK_ARGS` adds devstack arguments, e.g.
//! `--autoscale --time-scale 0.05`).
//!
//! Without Chromium the test says it is SKIPPED, with the install command; with
//! `REQUIRE_BROWSER=1` (as `.ci/run` sets) or `CI`, a missing Chromium fails it.

use test_support as support;
use test_support::devstack::Settled as _;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::{
    WAIT,
    browser::{self, Browser, Page},
    devstack::{self, Devstack, EPHEMERAL, counts, part_event},
    process::{Service, event_addr},
};

const QUEUE: &str = "message-queue";
/// The README's screenshot size.
const WIDE: (u32, u32) = (1280, 800);
/// A phone held upright.
const NARROW: u32 = 400;

/// The DOM's numbers and rows, read in one evaluation.
const READ_DOM: &str = r##"(() => {
  const text = (id) => document.getElementById(id).textContent.trim();
  const column = (tbody, cls) => [...document.querySelectorAll(`#${tbody} td.${cls}`)].map((td) => td.textContent);
  return {
    connection: text("connection"),
    produced: text("produced"),
    completed: text("completed"),
    deadLettered: text("dead-lettered"),
    processed: column("consumers", "processed"),
    failed: column("consumers", "failed"),
    deadBodies: column("dead-letters", "body"),
    consumerRows: document.querySelectorAll("#consumers tr").length,
  };
})()"##;

fn sum(cells: &Value) -> u64 {
    cells
        .as_array()
        .map(|cells| {
            cells
                .iter()
                .filter_map(|c| c.as_str()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// Whether the DOM read's `field` is the number `n`.
fn shows(dom: &Value, field: &str, n: u64) -> bool {
    dom[field].as_str().and_then(|t| t.parse::<u64>().ok()) == Some(n)
}

fn status_sum(status: &Value, field: &str) -> u64 {
    status["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .filter_map(|c| c[field].as_u64())
        .sum()
}

/// Reads `/devstack/status` and the DOM back to back until they agree (at most [`WAIT`]): the
/// queue's totals and the consumers' processed and failed counts. Returns the DOM read.
async fn agreed(stack: &Devstack, browser: &mut Browser) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = (Value::Null, Value::Null);
    while tokio::time::Instant::now() < deadline {
        let status = stack.status().await;
        let dom = browser.eval(READ_DOM).await;
        let c = counts(&status, QUEUE);
        if shows(&dom, "produced", c.produced)
            && shows(&dom, "completed", c.completed)
            && shows(&dom, "deadLettered", c.dead_lettered)
            && sum(&dom["processed"]) == status_sum(&status, "processed")
            && sum(&dom["failed"]) == status_sum(&status, "failed")
        {
            return dom;
        }
        last = (status, dom);
        browser.next_frame().await;
    }
    panic!(
        "the page never agreed with /devstack/status; last status {}, page {}",
        last.0, last.1
    );
}

/// The README's picture, the whole page at 1280 pixels wide, written to `path` (relative to the
/// repository): the original's 50 messages, sent from the page's form, taken while consumers
/// work on them (with `--autoscale`, once the scaler is at 4 replicas or more).
async fn readme_screenshot(browser: &mut Browser, path: &str) {
    browser
        .eval(
            "document.getElementById('count').value = '50';
             document.getElementById('interval').value = '0';
             document.getElementById('text').value = '';
             document.querySelector('#produce button[type=submit]').click(); true",
        )
        .await;
    browser
        .wait_for(
            "consumers busy on the 50 messages, and the scaler's last read of them",
            "[document.getElementById('locked').textContent, document.getElementById('scaling').hidden, document.getElementById('replicas').textContent, document.getElementById('metric').textContent]",
            |v| {
                let number = |i: usize| v[i].as_str().and_then(|t| t.parse::<u64>().ok());
                number(0).is_some_and(|locked| locked > 0)
                    && (v[1] == true
                        || (number(2).is_some_and(|replicas| replicas >= 4)
                            && number(3).is_some_and(|metric| metric > 0)))
            },
        )
        .await;
    // Relative to the workspace root, where the README runs the command.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    browser.screenshot_full(&path).await;
    println!("saved the README's screenshot to {}", path.display());
}

fn scratch() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

#[tokio::test]
async fn the_page_shows_the_live_stack_in_a_real_browser() {
    let Some(chromium) = browser::find() else {
        // Straight to stderr, past the test harness's capture: a skip is seen, not silent.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the_page_shows_the_live_stack_in_a_real_browser: no Chromium on PATH (nor \
             $CHROMIUM). Install it ({}) to run it; REQUIRE_BROWSER=1 makes this a failure.",
            browser::INSTALL
        );
        return;
    };
    let extra = std::env::var("DASHBOARD_DEVSTACK_ARGS").unwrap_or_default();
    let args: Vec<&str> = extra.split_whitespace().collect();
    let mut env = EPHEMERAL.to_vec();
    // A poison message is dead-lettered after 3 deliveries, each abandoned at once.
    let screenshot = std::env::var("DASHBOARD_SCREENSHOT").ok();
    // For the README's picture, work long enough for the scaling to show.
    let work = if screenshot.is_some() { "1s" } else { "200ms" };
    env.extend([
        ("WORK_DURATION", work),
        ("MAX_DELIVERY_COUNT", "3"),
        ("RESILIENCY", "none"),
    ]);
    // Two competing consumers, unless the scaler decides how many.
    if !args.contains(&"--autoscale") {
        env.push(("CONSUMERS", "2"));
    }
    let mut service = Service::spawn_with_args(devstack::bin(), &args, &env);
    let listening = part_event(&mut service, "sidecar", "sidecar listening").await;
    let mut stack = Devstack::attach(service, &listening);
    let page = format!("localhost:{}/devstack/", stack.http_addr.port());
    stack
        .service
        .wait_for_line("the banner's dashboard line", |l| l.contains(&page))
        .await;
    let producer = event_addr(
        &part_event(&mut stack.service, "producer", "listening").await,
        "addr",
    );

    let mut browser = Browser::start(&chromium, &scratch(), WIDE.0, WIDE.1).await;
    browser
        .navigate(&format!("http://{}/devstack/", stack.http_addr))
        .await;
    browser
        .wait_for(
            "the live connection",
            "document.getElementById('connection').textContent",
            |v| v.as_str().is_some_and(|t| t.starts_with("Live")),
        )
        .await;

    // Messages from outside the page, while it watches.
    let response = stack
        .http
        .post(format!("http://{producer}/MessageProducer"))
        .json(&json!({"count": 10, "intervalMilliseconds": 20}))
        .send()
        .await
        .expect("the producer answers");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    // The page's form, through devstack to the producer; its answer shown.
    browser
        .eval(
            "document.getElementById('count').value = '20';
             document.getElementById('interval').value = '10';
             document.getElementById('text').value = 'from the dashboard';
             document.querySelector('#produce button[type=submit]').click(); true",
        )
        .await;
    browser
        .wait_for(
            "the producer's answer",
            "document.getElementById('produce-result').textContent",
            |v| v.as_str().is_some_and(|t| t.contains(r#"{"sent":20}"#)),
        )
        .await;
    // The poison button, through the sidecar's HTTP bindings API.
    browser
        .eval("document.getElementById('poison').click(); true")
        .await;
    browser
        .wait_for(
            "the poison message sent",
            "document.getElementById('poison-result').textContent",
            |v| v.as_str().is_some_and(|t| t.starts_with("204")),
        )
        .await;

    let status = stack
        .wait_status("30 completed and 1 dead-lettered", |s| {
            let c = counts(s, QUEUE);
            c.completed == 30 && c.dead_lettered == 1 && c.settled()
        })
        .await;
    assert!(
        status_sum(&status, "processed") >= 30 && status_sum(&status, "failed") >= 3,
        "{status}"
    );
    let dom = agreed(&stack, &mut browser).await;
    let bodies = dom["deadBodies"].as_array().expect("dead letter bodies");
    assert_eq!(bodies.len(), 1, "{dom}");
    assert!(
        bodies[0]
            .as_str()
            .unwrap()
            .contains("poison sent from the dashboard"),
        "{dom}"
    );
    assert_eq!(
        (&dom["produced"], &dom["completed"], &dom["deadLettered"]),
        (&json!("31"), &json!("30"), &json!("1"))
    );

    // The two fixed consumers these act on; a scaled run (the README's picture) has its own.
    if !args.contains(&"--autoscale") {
        the_past_a_late_page_and_the_order_of_things(&stack, &mut browser).await;
        breaking_it_from_the_page(&stack, &mut browser).await;
    }

    let shot = scratch().join("dashboard.png");
    browser.screenshot(&shot).await;
    println!("screenshot: {}", shot.display());
    if let Some(path) = screenshot {
        readme_screenshot(&mut browser, &path).await;
    }

    // A narrow window: one column, nothing wider than the window.
    browser.resize(NARROW, 900).await;
    browser
        .wait_for(
            "a layout as narrow as the window",
            "document.documentElement.scrollWidth - window.innerWidth",
            |v| v.as_i64().is_some_and(|excess| excess <= 0),
        )
        .await;
    browser
        .screenshot(&scratch().join("dashboard-narrow.png"))
        .await;
    browser.resize(WIDE.0, WIDE.1).await;

    // devstack stops: the page says so.
    stack.service.terminate();
    assert_eq!(stack.service.exit_code(WAIT).await, Some(0));
    browser
        .wait_for(
            "that devstack stopped",
            "document.getElementById('connection').textContent",
            |v| {
                v.as_str()
                    .is_some_and(|t| t.starts_with("devstack stopped"))
            },
        )
        .await;

    scaling_parts_render_from_the_agreed_status(&mut browser).await;
    browser.close().await;
}

/// A second page, opened after the burst: it shows the samples from before it was opened (the
/// sidecar keeps them), on a clock-time axis; both pages list the consumers in replica order.
async fn the_past_a_late_page_and_the_order_of_things(stack: &Devstack, browser: &mut Browser) {
    let opened_at = chrono::Utc::now().timestamp_millis() as f64 / 1e3;
    let mut late = browser
        .open(&format!("http://{}/devstack/", stack.http_addr))
        .await;
    late.wait_for(
        "the late page live",
        "document.getElementById('connection').textContent",
        |v| v.as_str().is_some_and(|t| t.starts_with("Live")),
    )
    .await;
    let past = late
        .wait_for(
            "the late page's history",
            "devstackDashboard.samples.map((s) => [s.t, s.active + s.locked, s.completed])",
            |v| v.as_array().is_some_and(|s| s.len() >= 3),
        )
        .await;
    let samples = past.as_array().unwrap();
    let before: Vec<&Value> = samples
        .iter()
        .filter(|s| s[0].as_f64().unwrap() < opened_at)
        .collect();
    assert!(
        before.len() >= 3,
        "samples from before the page was opened: {past}"
    );
    assert!(
        before.iter().any(|s| s[1].as_u64().unwrap() > 0),
        "the burst, over before the page opened, is on its chart: {past}"
    );
    assert!(
        before.iter().any(|s| s[2].as_u64().unwrap() > 0),
        "completions before it opened: {past}"
    );
    check_order_and_axis(&mut late).await;
    late.close_page().await;
    browser.bring_to_front().await;
    check_order_and_axis(browser).await;
}

/// The consumers in replica order, and the time axis reading clock time.
async fn check_order_and_axis(page: &mut Page) {
    let labels = page
        .wait_for(
            "the consumers",
            "[...document.querySelectorAll('#consumers tr')].map((tr) => tr.dataset.consumer)",
            |v| v.as_array().is_some_and(|l| l.len() == 2),
        )
        .await;
    assert_eq!(labels, json!(["consumer-1", "consumer-2"]));
    let ticks = page
        .wait_for(
            "the time axis' ticks",
            "devstackDashboard.timeAxisLabels()",
            |v| v.as_array().is_some_and(|t| !t.is_empty()),
        )
        .await;
    for tick in ticks.as_array().unwrap() {
        let tick = tick.as_str().unwrap();
        let clock = tick.len() == 8
            && tick.bytes().enumerate().all(|(i, b)| {
                if i == 2 || i == 5 {
                    b == b':'
                } else {
                    b.is_ascii_digit()
                }
            });
        assert!(clock, "a clock time, not {tick:?}: {ticks}");
    }
}

/// Clicks the first button in `selector` whose text is `text`.
async fn click(page: &mut Browser, selector: &str, text: &str) {
    let script = format!(
        "(() => {{ const b = [...document.querySelectorAll({selector:?})].find((b) => b.textContent === {text:?}); if (!b) return false; b.click(); return true; }})()"
    );
    page.wait_for(&format!("a {text:?} button in {selector}"), &script, |v| {
        v == true
    })
    .await;
}

/// The buttons that break things, from the page: a consumer killed (and restarted), a fault on
/// the sidecar, the poison message's dead letter peeked, followed on its timeline, replayed
/// (delivered again), then purged.
async fn breaking_it_from_the_page(stack: &Devstack, browser: &mut Browser) {
    click(
        browser,
        "#consumers tr[data-consumer='consumer-1'] button",
        "Kill",
    )
    .await;
    stack
        .wait_status("consumer-1 killed and restarted", |s| {
            s["consumers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["label"] == "consumer-1" && c["restarts"] == 1 && c["state"] == "ready")
        })
        .await;
    let row = browser
        .wait_for(
            "consumer-1's restart on the page",
            r#"[...document.querySelectorAll('#consumers tr[data-consumer="consumer-1"] td')].map((td) => td.textContent)"#,
            |v| v[6] == "1",
        )
        .await;
    assert!(row[7].as_str().unwrap().contains("SIGKILL"), "{row}");
    click(browser, "[data-fault]", "Latency 500 ms for 10 s").await;
    browser
        .wait_for(
            "the faults listed",
            "[...document.querySelectorAll('#faults tr')].map((tr) => tr.textContent).join(' | ')",
            |v| {
                v.as_str()
                    .is_some_and(|t| t.contains("kill") && t.contains("latency"))
            },
        )
        .await;

    // The poison message's dead letter: peeked, its timeline, replayed, purged.
    click(browser, "#dead-letters button", "Peek").await;
    browser
        .wait_for(
            "the dead letter peeked",
            "document.getElementById('peek-fields').textContent",
            |v| {
                v.as_str()
                    .is_some_and(|t| t.contains("poison sent from the dashboard"))
            },
        )
        .await;
    browser
        .eval("document.querySelector('#dead-letters .message-link').click(); true")
        .await;
    let timeline = browser
        .wait_for(
            "the poison message's timeline",
            "[...document.querySelectorAll('#timeline-events li')].map((li) => li.textContent)",
            |v| {
                v.as_array().is_some_and(|e| {
                    e.iter()
                        .any(|e| e.as_str().unwrap().contains("dead-lettered"))
                })
            },
        )
        .await;
    let lines: Vec<&str> = timeline
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        lines[0].contains("enqueued on message-queue by HTTP POST"),
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("delivery ")).count(),
        3,
        "three deliveries, the max delivery count: {lines:?}"
    );
    click(browser, "#dead-letters button", "Replay").await;
    stack
        .wait_status("the dead letter replayed and dead-lettered again", |s| {
            let q = &s["queues"][QUEUE];
            q["replayed"] == 1 && q["deadLettered"] == 1 && q["active"] == 0 && q["locked"] == 0
        })
        .await;
    click(browser, "button", "Purge all").await;
    let status = stack
        .wait_status("the dead letters purged", |s| {
            s["queues"][QUEUE]["deadLettered"] == 0
        })
        .await;
    assert_eq!(status["queues"][QUEUE]["purged"], 1, "{status}");
    assert_eq!(
        status["deadLetterOperations"][QUEUE]["replays"], 1,
        "{status}"
    );
}

/// The scaling parts, from a status with `scaling` as the autoscaling runtime reports it: the
/// replica counts, the events table, a marker per event on the chart with its reason on hover,
/// the cooldown countdown; and hidden again without it.
async fn scaling_parts_render_from_the_agreed_status(browser: &mut Browser) {
    let fixture = r##"(() => {
  // Both events inside the chart's time range, which the samples so far span.
  const samples = devstackDashboard.samples;
  const first = samples[0].t * 1000;
  const last = samples[samples.length - 1].t * 1000;
  const third = (last - first) / 3;
  const at = (ms) => new Date(ms).toISOString();
  const status = {
    queues: { "message-queue": { produced: 50, active: 20, locked: 4, completed: 26, deadLettered: 0 } },
    consumersConnected: 4,
    consumers: [
      { label: "consumer-1", address: "127.0.0.1:50051", bindings: ["message-queue"], healthy: true, inFlight: 1, maxConcurrency: 1, processed: 9, failed: 0, state: "ready", terminatingAt: null, killAt: null },
      { label: "consumer-4", address: "127.0.0.1:50054", bindings: ["message-queue"], healthy: true, inFlight: 1, maxConcurrency: 1, processed: 2, failed: 0, state: "terminating", terminatingAt: at(Date.now()), killAt: at(Date.now() + 30000) },
    ],
    deadLetters: { "message-queue": [] },
    scaling: {
      settings: { name: "consumer-scaler", target: "consumer", minReplicaCount: 0, maxReplicaCount: 10, pollingInterval: 30, cooldownPeriod: 300, initialCooldownPeriod: 0, trigger: { type: "azure-servicebus", queueName: "message-queue", target: 5, activation: 0 }, behavior: null, terminationGracePeriod: 30, timeScale: 0.05, hpaSyncPeriod: 15 },
      replicas: 4, ready: 3, starting: 0, terminating: 1, metric: 24, active: false,
      lastActiveTime: at(last - third), cooldownEndsAt: at(Date.now() + 12000),
      events: [
        { at: at(first + third), by: "keda", from: 0, to: 1, metric: 50, reason: "metric 50 > activation 0" },
        { at: at(last - third), by: "hpa", from: 1, to: 4, metric: 50, reason: "proposal ceil(50/5)=10, capped by max(2*1,4)=4", proposal: 10, recommendation: 10, limit: 4 },
      ],
    },
  };
  devstackDashboard.apply(status);
  devstackDashboard.redraw();
  return true;
})()"##;
    browser.eval(fixture).await;
    let read = r##"(() => ({
  hidden: document.getElementById("scaling").hidden,
  replicas: document.getElementById("replicas").textContent,
  terminating: document.getElementById("terminating").textContent,
  cooldown: document.getElementById("cooldown").textContent,
  events: [...document.querySelectorAll("#events tr")].map((tr) => tr.textContent),
  markers: [...document.querySelectorAll("#chart .event-marker")].map((m) => m.title),
  legend: [...document.querySelectorAll("#chart .u-legend .u-label")].map((l) => l.textContent),
  killed: [...document.querySelectorAll("#consumers .countdown")].map((c) => c.textContent),
}))()"##;
    let shown = browser
        .wait_for("the scaling parts", read, |v| {
            v["markers"].as_array().is_some_and(|m| m.len() == 2)
                && v["killed"][0].as_str().is_some_and(|k| !k.is_empty())
        })
        .await;
    assert_eq!(shown["hidden"], false, "{shown}");
    assert_eq!(
        (&shown["replicas"], &shown["terminating"]),
        (&json!("4"), &json!("1"))
    );
    assert!(
        shown["cooldown"].as_str().unwrap().starts_with("to 0 in 1"),
        "{shown}"
    );
    let events = shown["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{shown}");
    assert!(
        events[0].as_str().unwrap().contains("1 → 4"),
        "newest first: {shown}"
    );
    let markers = shown["markers"].as_array().unwrap();
    assert!(
        markers[1]
            .as_str()
            .unwrap()
            .contains("capped by max(2*1,4)=4"),
        "the reason on hover: {shown}"
    );
    let legend = shown["legend"].as_array().unwrap();
    assert!(
        legend.iter().any(|l| l == "desired replicas"),
        "a second axis' series: {shown}"
    );
    assert!(
        shown["killed"][0]
            .as_str()
            .unwrap()
            .starts_with("(killed in "),
        "{shown}"
    );
    browser
        .screenshot(&scratch().join("dashboard-scaling-fixture.png"))
        .await;

    // Without `scaling` (no --autoscale): the parts are hidden, the rest renders.
    browser
        .eval(
            "devstackDashboard.apply({queues: {q: {produced: 1, active: 1, locked: 0, completed: 0, deadLettered: 0}}, consumersConnected: 0, consumers: [], deadLetters: {q: []}}); devstackDashboard.redraw(); true",
        )
        .await;
    let hidden = browser
        .wait_for(
            "the scaling parts hidden",
            "[document.getElementById('scaling').hidden, document.querySelectorAll('#chart .event-marker').length, document.getElementById('produced').textContent]",
            |v| v[0] == true && v[1] == 0,
        )
        .await;
    assert_eq!(hidden[2], "1");
}
