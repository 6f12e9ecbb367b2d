//! Row 8: the promise of at-least-once delivery, under fire. A batch of messages goes through
//! `devstack --autoscale` while a seeded `--chaos` schedule kills, SIGTERMs and pauses consumers,
//! loses completes and locks, and makes the sidecar unavailable. The row counts what the queue
//! says (produced, completed, dead-lettered) and checks it against what the parts logged: every
//! message the sidecar enqueued must have been processed by a consumer or be in the dead-letter
//! queue. One that is neither is lost, and a run that loses one is an error. Duplicates
//! (processed more than once) are counted and shown: at-least-once delivery allows them.
//!
//! A consumer's line is the proof that it processed a message, with one exception the row
//! accounts for: a consumer SIGKILLed just after it answered OK has not written the line yet
//! (lines are written in batches; a SIGKILL leaves no exit to flush them). Such a message counts
//! as processed only if its journey in the sidecar shows the app's OK, and a `kill` fault on that
//! same consumer came after it; it is counted apart, as a line lost to SIGKILL.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use test_support::consumer::is_original_line;

use super::{
    POLL,
    burst::{EPHEMERAL, part_event, shown, wait_part},
    get_json, load,
    process::{Service, event_addr},
    produce,
    report::round,
};

/// Generous producer retries: an outage of the sidecar is ridden out, as `SIDECAR_RETRIES` lets
/// a producer ride out daprd's.
const SIDECAR_RETRIES: &str = "20";

/// What row 8 runs.
#[derive(Debug, Clone)]
pub struct Chaos {
    pub messages: u32,
    /// devstack's `--chaos` SPEC.
    pub spec: String,
    /// The ScaledObject `devstack --autoscale` reads.
    pub scaled_object: PathBuf,
    /// `--time-scale`: the control plane's periods and the consumers' back-off.
    pub time_scale: f64,
    /// Each message's work (WORK_DURATION).
    pub work: Duration,
    /// How long a lock runs before it must be renewed (LOCK_DURATION): short, so that a lost
    /// complete or a lost lock comes back within the run. The binding renews every quarter of it.
    pub lock_duration: Duration,
}

/// What one chaos run came to.
#[derive(Debug, Clone)]
pub struct ChaosRun {
    pub produced: u64,
    pub completed: u64,
    pub dead_lettered: u64,
    /// Enqueued, and neither processed nor dead-lettered: 0, or the run fails.
    pub lost: u64,
    /// Processed (the app answered OK, its journey says) by a consumer SIGKILLed before its
    /// batched line reached stdout.
    pub lines_lost_to_sigkill: u64,
    /// Messages the consumers processed more than once, from their own log lines.
    pub duplicates: u64,
    /// The same, as the sidecar's journeys flagged them (an app that died after its log line but
    /// before its answer is in the first count only).
    pub flagged: u64,
    pub restarts: u64,
    pub locks_expired: u64,
    /// Faults provoked, by kind.
    pub faults: BTreeMap<String, u64>,
    /// From the batch's POST to the queue settled.
    pub wall: Duration,
}

impl ChaosRun {
    pub fn json(&self, chaos: &Chaos) -> Value {
        json!({
            "messages": chaos.messages,
            "spec": chaos.spec,
            "scaled_object": shown(&chaos.scaled_object),
            "time_scale": chaos.time_scale,
            "work_ms": chaos.work.as_millis(),
            "lock_duration_s": chaos.lock_duration.as_secs_f64(),
            "produced": self.produced,
            "completed": self.completed,
            "dead_lettered": self.dead_lettered,
            "lost": self.lost,
            "lines_lost_to_sigkill": self.lines_lost_to_sigkill,
            "duplicates": self.duplicates,
            "duplicates_flagged_by_the_sidecar": self.flagged,
            "restarts": self.restarts,
            "locks_expired": self.locks_expired,
            "faults": self.faults,
            "wall_s": round(self.wall.as_secs_f64(), 2),
        })
    }

    /// The row, for the table.
    pub fn table(&self, chaos: &Chaos) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        format!(
            "row 8: {} messages through devstack --autoscale {} under --chaos '{}' (time scale {}, \
             WORK_DURATION {} ms, LOCK_DURATION {} ms)\n\
             8   produced {}, completed {}, dead-lettered {}, lost {}, duplicates {} (the sidecar \
             flagged {}), restarts {}, locks expired {}, in {:.1} s\n    \
             {} faults: {}; lines lost to SIGKILL: {}\n",
            chaos.messages,
            shown(&chaos.scaled_object),
            chaos.spec,
            chaos.time_scale,
            chaos.work.as_millis(),
            chaos.lock_duration.as_millis(),
            self.produced,
            self.completed,
            self.dead_lettered,
            self.lost,
            self.duplicates,
            self.flagged,
            self.restarts,
            self.locks_expired,
            self.wall.as_secs_f64(),
            self.faults.values().sum::<u64>(),
            faults.join(", "),
            self.lines_lost_to_sigkill,
        )
    }
}

/// One run: a fresh stack with the schedule, the batch, the drain, then the accounts.
pub async fn run(
    devstack: &Path,
    chaos: &Chaos,
    http: &reqwest::Client,
    progress: &(dyn Fn(String) + Sync),
) -> anyhow::Result<ChaosRun> {
    ensure!(chaos.messages > 0, "the chaos row needs at least 1 message");
    progress(format!(
        "row 8: {} messages under --chaos '{}'",
        chaos.messages, chaos.spec
    ));
    let work = format!("{}ms", chaos.work.as_millis());
    let count = chaos.messages.to_string();
    let mut env = EPHEMERAL.to_vec();
    env.extend([
        ("WORK_DURATION", work.as_str()),
        ("MAX_COUNT", count.as_str()),
        ("SIDECAR_RETRIES", SIDECAR_RETRIES),
        ("MAX_RETRY_BACKOFF", "1s"),
        // The sidecar logs each message it enqueues (with its id) at debug.
        ("RUST_LOG", "info,devstack::runtime=debug"),
    ]);
    let path = chaos.scaled_object.to_string_lossy();
    let (scale, lock, renewal) = (
        chaos.time_scale.to_string(),
        format!("{}ms", chaos.lock_duration.as_millis()),
        format!("{}ms", (chaos.lock_duration.as_millis() / 4).max(1)),
    );
    let args = [
        "--autoscale",
        &path,
        "--time-scale",
        &scale,
        "--chaos",
        &chaos.spec,
        "--lock-duration",
        &lock,
        "--lock-renewal-interval",
        &renewal,
        "--journey-messages",
        &count,
    ];
    let mut service = Service::spawn_recorded(devstack, &args, &env);
    let listening = wait_part(&mut service, "sidecar", "sidecar listening").await;
    let http_addr = event_addr(&listening, "http_addr");
    let status_url = format!("http://{http_addr}/devstack/status");
    let producer = event_addr(
        &wait_part(&mut service, "producer", "listening").await,
        "addr",
    );
    service
        .wait_for_line("the banner", |l| l.contains("Local stack is up"))
        .await;

    let start = Instant::now();
    produce(http, producer, chaos.messages).await?;
    let limit = super::run_limit(chaos.messages) * 3;
    let status = loop {
        let status: Value = get_json(http, &status_url).await?;
        let q = &status["queues"][load::BINDING];
        let count = |field: &str| q[field].as_u64().unwrap_or(0);
        if count("produced") >= u64::from(chaos.messages) && count("active") + count("locked") == 0
        {
            break status;
        }
        ensure!(
            start.elapsed() < limit,
            "(8): the queue did not settle within {limit:?}: {q}"
        );
        tokio::time::sleep(POLL * 20).await;
    };
    let wall = start.elapsed();
    let dead = dead_letter_ids(http, &http_addr.to_string()).await?;
    // The journeys of the messages with no line yet, while the sidecar still has them: a few,
    // those whose consumer was SIGKILLed, and those whose line is still on its way.
    let (enqueued, processed) = ids(&service.lines().await);
    let mut journeys = HashMap::new();
    for id in enqueued.iter().filter(|id| !processed.contains_key(*id)) {
        let url = format!("http://{http_addr}/devstack/messages/{id}");
        journeys.insert(id.clone(), get_json(http, &url).await?);
    }
    service.terminate();
    ensure!(
        service.exit_code(super::WAIT).await == Some(0),
        "(8): devstack did not exit 0 after SIGTERM"
    );
    let lines = service.lines().await;
    account(&status, &lines, &dead, &journeys, wall)
}

/// The ids the sidecar logged as enqueued, and how many times the consumers' lines say each was
/// processed.
fn ids(lines: &[String]) -> (HashSet<String>, HashMap<String, u64>) {
    let mut enqueued = HashSet::new();
    let mut processed: HashMap<String, u64> = HashMap::new();
    for (label, event) in lines.iter().filter_map(|l| part_event(l)) {
        let Some(id) = event["id"].as_str() else {
            continue;
        };
        if label == "sidecar" && event["message"] == "message enqueued" {
            enqueued.insert(id.to_owned());
        } else if label.starts_with("consumer") && is_original_line(&event) {
            *processed.entry(id.to_owned()).or_default() += 1;
        }
    }
    (enqueued, processed)
}

type Time = chrono::DateTime<chrono::FixedOffset>;

fn time(value: &Value) -> Option<Time> {
    value
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
}

/// Every `kill` fault in `lines`: the consumer it SIGKILLed, and when.
fn kills(lines: &[String]) -> Vec<(String, Time)> {
    lines
        .iter()
        .filter_map(|l| part_event(l))
        .filter(|(_, e)| e["message"] == "fault provoked" && e["kind"] == "kill")
        .filter_map(|(_, e)| Some((e["target"].as_str()?.to_owned(), time(&e["timestamp"])?)))
        .collect()
}

/// Whether `journey` shows an app's OK whose consumer was then SIGKILLed: one of `kills` on it at
/// or after the delivery's end.
fn ok_then_killed(journey: &Value, kills: &[(String, Time)]) -> bool {
    let events = journey["events"].as_array().map_or(&[][..], Vec::as_slice);
    events
        .iter()
        .filter(|e| e["event"] == "delivery" && e["outcome"] == "ok")
        .any(|delivery| {
            let (Some(consumer), Some(ended)) =
                (delivery["consumer"].as_str(), time(&delivery["endedAt"]))
            else {
                return false;
            };
            // The journey keeps milliseconds; the log, microseconds.
            let ended = ended - chrono::Duration::milliseconds(1);
            kills
                .iter()
                .any(|(target, at)| target == consumer && *at >= ended)
        })
}

/// Every id in the dead-letter queue, read a page at a time.
async fn dead_letter_ids(
    http: &reqwest::Client,
    http_addr: &str,
) -> anyhow::Result<HashSet<String>> {
    let mut ids = HashSet::new();
    let mut from = 0;
    loop {
        let url = format!(
            "http://{http_addr}/devstack/dead-letters/{}?from={from}&limit=1000",
            load::BINDING
        );
        let page: Value = get_json(http, &url).await?;
        let letters = page["deadLetters"].as_array().context("no deadLetters")?;
        ids.extend(
            letters
                .iter()
                .filter_map(|d| d["id"].as_str().map(str::to_owned)),
        );
        from += letters.len();
        if letters.is_empty() || from as u64 >= page["total"].as_u64().unwrap_or(0) {
            return Ok(ids);
        }
    }
}

/// The accounts of a run: the queue's counts, checked against the ids the sidecar enqueued and
/// the consumers processed (from `lines`, `devstack up`'s output) and `dead` (dead-lettered).
fn account(
    status: &Value,
    lines: &[String],
    dead: &HashSet<String>,
    journeys: &HashMap<String, Value>,
    wall: Duration,
) -> anyhow::Result<ChaosRun> {
    let (enqueued, processed) = ids(lines);
    let q = &status["queues"][load::BINDING];
    let count = |field: &str| {
        q[field]
            .as_u64()
            .with_context(|| format!("no {field} in the status: {q}"))
    };
    let produced = count("produced")?;
    ensure!(
        enqueued.len() as u64 == produced,
        "(8): the sidecar logged {} messages enqueued, its status counts {produced}",
        enqueued.len()
    );
    let kills = kills(lines);
    let (killed, lost): (Vec<&String>, Vec<&String>) = enqueued
        .iter()
        .filter(|id| !processed.contains_key(*id) && !dead.contains(*id))
        .partition(|id| journeys.get(*id).is_some_and(|j| ok_then_killed(j, &kills)));
    let faults = status["faults"]["counts"]
        .as_object()
        .map(|counts| {
            counts
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let run = ChaosRun {
        produced,
        completed: count("completed")?,
        dead_lettered: count("deadLettered")?,
        lost: lost.len() as u64,
        lines_lost_to_sigkill: killed.len() as u64,
        duplicates: processed.values().filter(|n| **n > 1).count() as u64,
        flagged: status["journeys"]["duplicates"].as_u64().unwrap_or(0),
        restarts: status["consumerRestarts"].as_u64().unwrap_or(0),
        locks_expired: count("locksExpired")?,
        faults,
        wall,
    };
    ensure!(
        lost.is_empty(),
        "(8): {} messages lost (enqueued, never processed nor dead-lettered), e.g. {:?}; {run:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    ensure!(
        run.completed + run.dead_lettered == produced,
        "(8): completed + dead-lettered is not produced: {run:?}"
    );
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(label: &str, event: Value) -> String {
        format!("{label:<10} | {event}")
    }

    fn status(produced: u64, completed: u64, dead: u64) -> Value {
        json!({
            "queues": {"message-queue": {"produced": produced, "completed": completed,
                "deadLettered": dead, "locksExpired": 1, "active": 0, "locked": 0}},
            "consumerRestarts": 2,
            "journeys": {"duplicates": 1},
            "faults": {"counts": {"kill": 2, "lost-lock": 1}},
        })
    }

    fn original(id: &str) -> Value {
        json!({"message": "Hello World -- Received at: 12/06/2026 10:00:00 -- Finished at: 12/06/2026 10:00:01", "id": id})
    }

    #[test]
    fn the_scaled_object_is_named_from_the_repository() {
        let default = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/base/consumer-scaling.yaml"
        );
        assert_eq!(
            shown(Path::new(default)),
            "deploy/base/consumer-scaling.yaml"
        );
        assert_eq!(shown(Path::new("/tmp/so.yaml")), "/tmp/so.yaml");
    }

    #[test]
    fn every_message_enqueued_is_processed_or_dead_lettered_and_duplicates_are_counted() {
        let lines = vec![
            line("sidecar", json!({"message": "message enqueued", "id": "a"})),
            line("sidecar", json!({"message": "message enqueued", "id": "b"})),
            line("sidecar", json!({"message": "message enqueued", "id": "c"})),
            line("consumer-1", original("a")),
            line("consumer-2", original("a")),
            line("consumer-2", original("b")),
        ];
        let dead = HashSet::from(["c".to_owned()]);
        let none = HashMap::new();
        let run = account(
            &status(3, 2, 1),
            &lines,
            &dead,
            &none,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            (run.lost, run.duplicates, run.flagged, run.restarts),
            (0, 1, 1, 2)
        );
        assert_eq!(run.faults["kill"], 2);

        let error = account(
            &status(3, 2, 1),
            &lines,
            &HashSet::new(),
            &none,
            Duration::ZERO,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("1 messages lost"), "{error}");
        let error = account(&status(4, 3, 1), &lines, &dead, &none, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(error.contains("logged 3 messages enqueued"), "{error}");
    }

    #[test]
    fn a_line_lost_to_sigkill_counts_only_with_the_ok_and_a_later_kill_of_that_consumer() {
        let enqueued = |id: &str| line("sidecar", json!({"message": "message enqueued", "id": id}));
        let kill = |target: &str, at: &str| {
            line(
                "sidecar",
                json!({"message": "fault provoked", "kind": "kill", "target": target, "timestamp": at}),
            )
        };
        let journey = |consumer: &str, outcome: &str| {
            json!({"id": "a", "processed": 1, "events": [
                {"event": "enqueued", "at": "2026-12-07T10:00:00.000Z"},
                {"event": "delivery", "consumer": consumer, "number": 1,
                 "at": "2026-12-07T10:00:00.100Z", "endedAt": "2026-12-07T10:00:00.120Z",
                 "outcome": outcome},
                {"event": "completed", "at": "2026-12-07T10:00:00.121Z"},
            ]})
        };
        let dead = HashSet::new();
        let account_of = |lines: &[String], journey: Value| {
            let journeys = HashMap::from([("a".to_owned(), journey)]);
            account(&status(1, 1, 0), lines, &dead, &journeys, Duration::ZERO)
        };
        // Answered OK by consumer-3, which was killed 0.4 ms later: processed, its line lost.
        let lines = [
            enqueued("a"),
            kill("consumer-3", "2026-12-07T10:00:00.120400Z"),
        ];
        let run = account_of(&lines, journey("consumer-3", "ok")).unwrap();
        assert_eq!((run.lost, run.lines_lost_to_sigkill), (0, 1));
        // Killed before it answered, another consumer killed, or no OK at all: lost.
        let before = [
            enqueued("a"),
            kill("consumer-3", "2026-12-07T10:00:00.050Z"),
        ];
        let other = [
            enqueued("a"),
            kill("consumer-1", "2026-12-07T10:00:00.200Z"),
        ];
        for (lines, outcome) in [(&before, "ok"), (&other, "ok"), (&lines, "error")] {
            let error = account_of(lines, journey("consumer-3", outcome))
                .unwrap_err()
                .to_string();
            assert!(error.contains("1 messages lost"), "{error}");
        }
    }
}
