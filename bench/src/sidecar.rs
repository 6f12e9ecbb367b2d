//! `devstack sidecar` as the rows that pass through it run it (rows 4 and the peers, the
//! latency rows): on ephemeral ports, delivering to the apps given, its queue's counts read
//! from its status, and the wait for a run's last completion.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use super::{POLL, WAIT, get_json, load, process::Service, run_limit, start};

/// A running sidecar.
pub struct Sidecar {
    pub service: Service,
    /// Its gRPC port, for `InvokeBinding`.
    pub grpc: SocketAddr,
    /// Its HTTP port (the SDKs' health checks).
    pub http_addr: SocketAddr,
    status_url: String,
    http: reqwest::Client,
}

/// One queue's counts from the sidecar's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub produced: u64,
    pub completed: u64,
    pub dead_lettered: u64,
}

impl Sidecar {
    /// Starts `devstack sidecar` delivering to `apps` (`HOST:PORT=EVENTS_IN_FLIGHT`); with
    /// `probe`, apps' health is probed that often (the default is 1 s), so a sidecar started
    /// before its app delivers soon after the app is up.
    pub async fn start(
        devstack: &Path,
        apps: &[String],
        probe: Option<Duration>,
        http: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let mut args = vec!["sidecar", "--grpc-port", "0", "--http-port", "0"];
        for app in apps {
            args.extend(["--app", app]);
        }
        let probe = probe.map(|p| format!("{}ms", p.as_millis().max(1)));
        if let Some(probe) = &probe {
            args.extend(["--app-health-interval", probe]);
        }
        let (service, event) = start(devstack, &args, &[], "sidecar listening").await;
        let http_addr = super::event_addr(&event, "http_addr");
        Ok(Self {
            service,
            grpc: super::event_addr(&event, "grpc_addr"),
            http_addr,
            status_url: format!("http://{http_addr}/devstack/status"),
            http: http.clone(),
        })
    }

    pub async fn status(&self) -> anyhow::Result<Value> {
        get_json(&self.http, &self.status_url).await
    }

    pub async fn counts(&self) -> anyhow::Result<Counts> {
        let status = self.status().await?;
        let queue = &status["queues"][load::BINDING];
        let count = |field: &str| {
            queue[field]
                .as_u64()
                .with_context(|| format!("no {field} in the sidecar's status {status}"))
        };
        Ok(Counts {
            produced: count("produced")?,
            completed: count("completed")?,
            dead_lettered: count("deadLettered")?,
        })
    }

    /// Waits, at most [`WAIT`], until `n` apps are connected and healthy.
    pub async fn wait_consumers(&self, n: u32) -> anyhow::Result<()> {
        let begun = Instant::now();
        while self.status().await?["consumersConnected"] != n {
            ensure!(
                begun.elapsed() < WAIT,
                "the sidecar did not see {n} healthy consumers"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits until `m` more messages than `before` counted are completed, then checks that
    /// exactly `m` more were produced and none dead-lettered; returns the time since `start`.
    pub async fn completed(
        &self,
        row: &str,
        before: Counts,
        m: u32,
        start: Instant,
    ) -> anyhow::Result<Duration> {
        let target = before.completed + u64::from(m);
        loop {
            let now = self.counts().await?;
            if now.completed >= target {
                let elapsed = start.elapsed();
                let want = Counts {
                    produced: before.produced + u64::from(m),
                    completed: target,
                    dead_lettered: before.dead_lettered,
                };
                ensure!(
                    now == want,
                    "{row}: expected {m} more produced and completed, none dead-lettered: \
                     before {before:?}, after {now:?}"
                );
                return Ok(elapsed);
            }
            if start.elapsed() > run_limit(m) {
                bail!(
                    "{row}: {} of {m} messages completed in time",
                    now.completed - before.completed
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits, at most [`WAIT`], until every message produced is completed or dead-lettered;
    /// returns the counts then.
    pub async fn settled(&self) -> anyhow::Result<Counts> {
        let begun = Instant::now();
        loop {
            let counts = self.counts().await?;
            if counts.completed + counts.dead_lettered == counts.produced {
                return Ok(counts);
            }
            ensure!(
                begun.elapsed() < WAIT,
                "the sidecar's queue did not settle: {counts:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Checks that `m` more messages than `before` counted were produced, and nothing else
    /// happened to the queue (a sidecar without apps).
    pub async fn produced(&self, row: &str, before: Counts, m: u32) -> anyhow::Result<()> {
        let now = self.counts().await?;
        let want = Counts {
            produced: before.produced + u64::from(m),
            ..before
        };
        ensure!(
            now == want,
            "{row}: expected {m} more produced: before {before:?}, after {now:?}"
        );
        Ok(())
    }

    /// Stops it (SIGTERM, exit 0); returns its peak RSS in KiB.
    pub async fn stop(self) -> u64 {
        let peak = self.service.memory().peak_kib;
        self.service.stop().await;
        peak
    }
}
