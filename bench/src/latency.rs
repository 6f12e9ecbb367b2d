//! Latency, not only throughput: how long a message waits from its send to the start of the
//! `OnBindingEvent` that delivers it, at shares of row 4's rate, along three paths at the same
//! rate: through the release producer (gRPC `Produce` of one message) and `devstack sidecar`, as
//! a user's message goes; from the bench's client straight to the sidecar (`InvokeBinding`),
//! what the sidecar and its queue add; and the transport's own, the same sends straight to the
//! app, one gRPC hop. Percentiles come from an HDR histogram (3 significant digits).
//!
//! Arrivals are open-loop: message `i` is sent at `i / rate` after the start whether or not the
//! replies before it have come, so a slow reply cannot hold the next send back and hide the
//! queueing it causes. A thread of its own keeps the schedule on the kernel's timer (tokio's
//! ticks are a millisecond, longer than the gaps); each send is timed from when it was made,
//! and how late that was against the schedule is reported too.
//!
//! Sender and app are in this process, so both ends read one monotonic clock: the app is a
//! null one that notes when each event's call starts, before anything else. Each message's text
//! names its run and number (the producer's `Produce` takes a text), so the app knows which it is.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;
use parking_lot::{Mutex, RwLock};
use pipeline::{
    dapr_v1::{
        BindingEventRequest, InvokeBindingRequest, app_callback_client::AppCallbackClient,
        dapr_client::DaprClient,
    },
    message::Message,
    proto::{ProduceRequest, producer_client::ProducerClient},
};
use serde_json::{Value, json};
use tonic::{Request, transport::Channel};

use super::{
    Bench, POLL, load,
    null::{self, OnEvent},
    report::round,
    sidecar::Sidecar,
};

/// One share of row 4's rate: the same schedule through the sidecar and straight to the app.
#[derive(Debug, Clone)]
pub struct Point {
    /// Of row 4's median rate.
    pub share: f64,
    /// Messages a second.
    pub rate: f64,
    pub messages: u32,
    /// Send to `OnBindingEvent` start, through the producer and the sidecar.
    pub producer: Percentiles,
    /// The same from the bench's client, through the sidecar alone.
    pub sidecar: Percentiles,
    /// The same, straight to the app.
    pub transport: Percentiles,
    /// How late each send was against the schedule, in the three runs.
    pub lag: Percentiles,
}

impl Point {
    /// Each percentile of `path` over the transport's.
    pub fn over_transport(&self, path: &Percentiles) -> [f64; 3] {
        let t = &self.transport;
        [path.p50 / t.p50, path.p99 / t.p99, path.p999 / t.p999]
    }

    pub fn json(&self) -> Value {
        // No target: the issue asks for the figures beside the transport's, not a bound on them.
        let ratios = |path: &Percentiles| {
            let [p50, p99, p999] = self.over_transport(path);
            json!({
                "p50": round(p50, 2), "p99": round(p99, 2), "p99_9": round(p999, 2),
                "target": null, "met": null,
            })
        };
        json!({
            "share_of_end_to_end": self.share,
            "msgs_per_s": self.rate.round(),
            "messages": self.messages,
            "through_producer_and_sidecar_us": self.producer.json(),
            "through_sidecar_us": self.sidecar.json(),
            "transport_us": self.transport.json(),
            "producer_and_sidecar_over_transport": ratios(&self.producer),
            "sidecar_over_transport": ratios(&self.sidecar),
            "send_lag_us": self.lag.json(),
        })
    }
}

/// Percentiles of one run, in µs.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1e3;
        Self {
            p50: us(histogram.value_at_quantile(0.5)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            max: us(histogram.max()),
        }
    }

    fn json(&self) -> Value {
        json!({
            "p50": round(self.p50, 1),
            "p99": round(self.p99, 1),
            "p99_9": round(self.p999, 1),
            "max": round(self.max, 1),
        })
    }
}

/// Measures each of `shares` of `end_to_end` (row 4's median rate), each run lasting about
/// `duration`.
pub async fn run(
    bench: &Bench<'_>,
    end_to_end: f64,
    shares: &[f64],
    duration: Duration,
) -> anyhow::Result<Vec<Point>> {
    ensure!(
        end_to_end.is_finite() && end_to_end > 0.0,
        "latency: no rate from row 4 to take shares of"
    );
    let arrivals = Arrivals::default();
    let (app, server) = null::serve_app(arrivals.clone()).await?;
    let sidecar = Sidecar::start(
        &bench.bins.devstack,
        &[format!("{app}={}", bench.sizes.concurrency)],
        Some(Duration::from_millis(100)),
        &bench.http,
    )
    .await?;
    sidecar.wait_consumers(1).await?;
    // One batch a message: at 50% of row 4's rate more than MAX_BATCHES' default of 64 can be
    // running at once when the machine is busy, and those would be refused.
    let mut env = super::producer_env(bench.sizes, sidecar.grpc);
    env.push(("MAX_BATCHES", "10000".to_owned()));
    let (_, producer, producer_addr) = bench.start_producer_with(&env).await?;
    let paths = Paths {
        producer: load::channel(producer_addr).await?,
        sidecar: load::channel(sidecar.grpc).await?,
        app: load::channel(app).await?,
    };
    let mut points = Vec::new();
    for &share in shares {
        let rate = end_to_end * share;
        let messages = ((rate * duration.as_secs_f64()).ceil() as u32).max(1);
        bench.step(&format!(
            "latency: {messages} messages at {:.0}/s ({:.0}% of row 4), through the producer, the sidecar and straight",
            rate,
            share * 100.0
        ));
        // A short run first, unmeasured, so connections and buffers are warm on both paths.
        let warm_up = messages.min(200);
        for path in [Path::Producer, Path::Sidecar, Path::Transport] {
            paths.run(&arrivals, path, rate, warm_up).await?;
        }
        let mut lag = histogram()?;
        let mut through = Vec::new();
        for path in [Path::Producer, Path::Sidecar] {
            let before = sidecar.settled().await?;
            let (latency, late) = paths.run(&arrivals, path, rate, messages).await?;
            sidecar
                .completed("latency", before, messages, Instant::now())
                .await?;
            lag.add(&late).context("adding histograms")?;
            through.push(Percentiles::of(&latency));
        }
        let (straight, late) = paths
            .run(&arrivals, Path::Transport, rate, messages)
            .await?;
        lag.add(&late).context("adding histograms")?;
        points.push(Point {
            share,
            rate,
            messages,
            producer: through[0],
            sidecar: through[1],
            transport: Percentiles::of(&straight),
            lag: Percentiles::of(&lag),
        });
    }
    producer.stop().await;
    sidecar.stop().await;
    server.abort();
    Ok(points)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `Produce` of one message to the producer, which sends it to the sidecar, which delivers
    /// it to the app.
    Producer,
    /// `InvokeBinding` to the sidecar, which delivers to the app.
    Sidecar,
    /// `OnBindingEvent` to the app.
    Transport,
}

struct Paths {
    producer: Channel,
    sidecar: Channel,
    app: Channel,
}

impl Paths {
    /// Sends `messages` on the schedule of `rate` along `path`; returns each message's time from
    /// its send to its event's start, and each send's lateness, in ns.
    async fn run(
        &self,
        arrivals: &Arrivals,
        path: Path,
        rate: f64,
        messages: u32,
    ) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
        let recording = arrivals.start(messages);
        let calls = Arc::new(Calls::default());
        let interval = Duration::from_secs_f64(1.0 / rate);
        let handle = tokio::runtime::Handle::current();
        let (producer, sidecar, app) = (
            ProducerClient::new(self.producer.clone()),
            DaprClient::new(self.sidecar.clone()),
            AppCallbackClient::new(self.app.clone()),
        );
        let run = recording.run;
        let sender_calls = Arc::clone(&calls);
        let sent = tokio::task::spawn_blocking(move || {
            let base = Instant::now();
            let mut sent = Vec::with_capacity(messages as usize);
            for seq in 0..messages {
                let due = base + interval * seq;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let at = Instant::now();
                sent.push((due, at));
                let text = format!("{run} {seq}");
                let data = serde_json::to_vec(&json!({ "text": text })).unwrap_or_default();
                let calls = Arc::clone(&sender_calls);
                let (mut producer, mut sidecar, mut app) =
                    (producer.clone(), sidecar.clone(), app.clone());
                handle.spawn(async move {
                    let result = match path {
                        Path::Producer => producer
                            .produce(Request::new(ProduceRequest {
                                count: 1,
                                interval_milliseconds: 0,
                                text: Some(text),
                            }))
                            .await
                            .map(drop),
                        Path::Sidecar => sidecar
                            .invoke_binding(Request::new(InvokeBindingRequest {
                                name: load::BINDING.to_owned(),
                                data,
                                metadata: Default::default(),
                                operation: pipeline::message::OPERATION_CREATE.to_owned(),
                            }))
                            .await
                            .map(drop),
                        Path::Transport => app
                            .on_binding_event(Request::new(BindingEventRequest {
                                name: load::BINDING.to_owned(),
                                data,
                                metadata: Default::default(),
                            }))
                            .await
                            .map(drop),
                    };
                    calls.ended(result.err());
                });
            }
            sent
        })
        .await?;
        let limit = super::run_limit(messages) + interval * messages;
        let begun = Instant::now();
        while calls.done.load(Ordering::Acquire) < messages as usize
            || recording.arrived.load(Ordering::Acquire) < messages as usize
        {
            // A refused call never arrives: say why at once.
            if let Some(error) = calls.error.lock().take() {
                anyhow::bail!("latency ({path:?}): a call failed: {error}");
            }
            ensure!(
                begun.elapsed() < limit,
                "latency ({path:?}): {} of {messages} calls ended and {} events arrived in time",
                calls.done.load(Ordering::Acquire),
                recording.arrived.load(Ordering::Acquire)
            );
            tokio::time::sleep(POLL).await;
        }
        if let Some(error) = calls.error.lock().take() {
            anyhow::bail!("latency ({path:?}): a call failed: {error}");
        }
        ensure!(
            recording.duplicates.load(Ordering::Acquire) == 0,
            "latency: an event arrived twice"
        );
        let mut latency = histogram()?;
        let mut lag = histogram()?;
        for (seq, (due, at)) in sent.iter().enumerate() {
            let arrived = recording.at(seq).context("an arrival")?;
            let waited = arrived.saturating_duration_since(*at);
            latency.record(nanos(waited).max(1))?;
            lag.record(nanos(at.saturating_duration_since(*due)).max(1))?;
        }
        Ok((latency, lag))
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 ns to a minute, three significant digits.
    Ok(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How the open loop's calls ended.
#[derive(Default)]
struct Calls {
    done: AtomicUsize,
    error: Mutex<Option<tonic::Status>>,
}

impl Calls {
    fn ended(&self, error: Option<tonic::Status>) {
        if let Some(error) = error {
            self.error.lock().get_or_insert(error);
        }
        self.done.fetch_add(1, Ordering::AcqRel);
    }
}

/// The app's notes: when each message of the current run started its `OnBindingEvent`.
#[derive(Clone, Default)]
struct Arrivals {
    current: Arc<RwLock<Arc<Recording>>>,
    runs: Arc<AtomicU64>,
}

#[derive(Default)]
struct Recording {
    run: u64,
    base: Option<Instant>,
    /// ns after `base` plus one, by message number; 0 until it arrives.
    at: Vec<AtomicU64>,
    arrived: AtomicUsize,
    duplicates: AtomicUsize,
}

impl Arrivals {
    /// A new run of `messages`; events of earlier runs are ignored from now on.
    fn start(&self, messages: u32) -> Arc<Recording> {
        let recording = Arc::new(Recording {
            run: self.runs.fetch_add(1, Ordering::AcqRel) + 1,
            base: Some(Instant::now()),
            at: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            ..Recording::default()
        });
        *self.current.write() = Arc::clone(&recording);
        recording
    }
}

impl Recording {
    fn at(&self, seq: usize) -> Option<Instant> {
        let ns = self.at.get(seq)?.load(Ordering::Acquire);
        (ns > 0).then(|| self.base.map(|b| b + Duration::from_nanos(ns - 1)))?
    }
}

impl OnEvent for Arrivals {
    fn on_event(&self, event: &BindingEventRequest) {
        let now = Instant::now();
        let recording = Arc::clone(&self.current.read());
        let Some(base) = recording.base else { return };
        let numbers = Message::from_json(&event.data).ok().and_then(|m| {
            let (run, seq) = m.text.split_once(' ')?;
            Some((run.parse::<u64>().ok()?, seq.parse::<usize>().ok()?))
        });
        let Some((run, seq)) = numbers else { return };
        if run != recording.run {
            return;
        }
        let Some(slot) = recording.at.get(seq) else {
            return;
        };
        let ns = nanos(now.saturating_duration_since(base)).saturating_add(1);
        if slot
            .compare_exchange(0, ns, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            recording.arrived.fetch_add(1, Ordering::AcqRel);
        } else {
            recording.duplicates.fetch_add(1, Ordering::AcqRel);
        }
    }
}
