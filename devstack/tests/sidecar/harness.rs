//! devstack's sidecar in the test process, as `devstack sidecar` runs it: its library's
//! `Sidecar` on bound 127.0.0.1 listeners, configured from a command line parsed without the
//! environment, stopped by cancelling its shutdown token; and its log events, read as the
//! process's JSON log would show them.

use std::{net::SocketAddr, ops::Deref, sync::Arc};

use clap::{CommandFactory, FromArgMatches};
use devstack::{
    config::{Cli, Command, SidecarOnlyArgs},
    sidecar::{Listeners, Sidecar},
};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use test_support::{WAIT, devstack::SidecarClient};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{
    Event, Level,
    field::{Field, Visit},
    subscriber::DefaultGuard,
};
use tracing_subscriber::{Layer, filter::filter_fn, layer::Context, prelude::*};

/// A running in-process sidecar; its [`SidecarClient`]'s methods are its own.
pub struct InProcess {
    client: SidecarClient,
    /// Its log events.
    pub logs: Logs,
    shutdown: CancellationToken,
    served: JoinHandle<anyhow::Result<()>>,
    /// Keeps [`Logs`] the test thread's subscriber until the sidecar is stopped.
    _capturing: DefaultGuard,
}

impl Deref for InProcess {
    type Target = SidecarClient;

    fn deref(&self) -> &SidecarClient {
        &self.client
    }
}

impl InProcess {
    /// Starts the sidecar on ephemeral ports with `args` (those of `devstack sidecar`), its INFO
    /// events and up captured.
    ///
    /// No Resiliency unless the test gives one (`--resiliency PATH`): these tests are about the
    /// queue and the delivery, where a failed call abandons at once.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_at(0, 0, args, Level::INFO).await
    }

    /// Like [`start`](Self::start), capturing its events down to `level`.
    pub async fn start_logging(args: &[&str], level: Level) -> Self {
        Self::start_at(0, 0, args, level).await
    }

    /// Starts delivering to these gRPC apps, with extra arguments.
    pub async fn for_apps(apps: &[SocketAddr], args: &[&str]) -> Self {
        let apps: Vec<String> = apps.iter().map(|a| format!("--app={a}")).collect();
        let mut all: Vec<&str> = apps.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        Self::start(&all).await
    }

    /// Like [`start`](Self::start), on the ports given (0: a free one): where a client started
    /// first dials.
    pub async fn start_at(grpc_port: u16, http_port: u16, args: &[&str], level: Level) -> Self {
        // Before anything starts: its first events are the test's too.
        let (logs, capturing) = Logs::capture(level);
        let args = sidecar_args(grpc_port, http_port, args);
        let listeners = Listeners::bind(&args.sidecar)
            .await
            .expect("binding the sidecar's ports");
        let shutdown = CancellationToken::new();
        let mut sidecar =
            Sidecar::start(listeners, &args.sidecar, shutdown.clone()).expect("the sidecar starts");
        for target in args.targets() {
            sidecar.add_app(target, target.address.to_string());
        }
        let client = SidecarClient::new(sidecar.grpc_addr, sidecar.http_addr);
        Self {
            client,
            logs,
            shutdown,
            served: tokio::spawn(sidecar.wait()),
            _capturing: capturing,
        }
    }

    /// Shuts it down as a signal would, and expects every part of it to stop cleanly (in-flight
    /// deliveries finish first).
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.served)
            .await
            .expect("the sidecar stops within the wait")
            .expect("no sidecar task panicked")
            .expect("the sidecar stops cleanly");
    }
}

/// `devstack sidecar`'s arguments, on these ports and without a Resiliency unless `args` name
/// one, parsed as its command line is but with no environment variable read: the test's
/// environment is not the sidecar's.
fn sidecar_args(grpc_port: u16, http_port: u16, args: &[&str]) -> SidecarOnlyArgs {
    let (grpc_port, http_port) = (grpc_port.to_string(), http_port.to_string());
    let mut all = vec![
        "devstack",
        "sidecar",
        "--grpc-port",
        &grpc_port,
        "--http-port",
        &http_port,
    ];
    if !args.contains(&"--resiliency") {
        all.extend(["--resiliency", "none"]);
    }
    all.extend_from_slice(args);
    let command = Cli::command().mut_subcommand("sidecar", |sidecar| {
        sidecar.mut_args(|arg| arg.env(None::<&'static str>))
    });
    let matches = command
        .try_get_matches_from(all)
        .unwrap_or_else(|e| panic!("devstack sidecar {args:?}: {e}"));
    let cli = Cli::from_arg_matches(&matches).expect("the arguments of devstack sidecar");
    let Some(Command::Sidecar(args)) = cli.command else {
        panic!("not parsed as `devstack sidecar`: {:?}", cli.command);
    };
    args
}

/// The log events of the sidecar in this test, each as the JSON log has it: `message` and the
/// event's fields. Captured on the test's thread, where a current-thread runtime runs every task
/// of the test, so tests running side by side see only their own.
#[derive(Clone)]
pub struct Logs {
    events: Arc<Mutex<Vec<Value>>>,
    seen: watch::Sender<usize>,
}

impl Logs {
    /// Captures devstack's events down to `level` until the guard is dropped.
    fn capture(level: Level) -> (Self, DefaultGuard) {
        let logs = Self {
            events: Arc::default(),
            seen: watch::Sender::new(0),
        };
        let events_only = filter_fn(move |metadata| {
            metadata.is_event()
                && metadata.target().starts_with("devstack")
                && *metadata.level() <= level
        });
        let subscriber = tracing_subscriber::registry().with(logs.clone().with_filter(events_only));
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().clone()
    }

    /// Waits, at most [`WAIT`], until `n` events match `pred`; returns them.
    pub async fn wait_for_events(
        &self,
        what: &str,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let mut seen = self.seen.subscribe();
        let matching = || -> Vec<Value> {
            self.events
                .lock()
                .iter()
                .filter(|e| pred(e))
                .cloned()
                .collect()
        };
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let found = matching();
                if found.len() >= n {
                    return found;
                }
                seen.changed().await.expect("the logs outlive the wait");
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "no {what:?} from the sidecar; its events:\n{}",
                self.events()
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    }

    /// Waits for the first event matching `pred`.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut found = self.wait_for_events(what, 1, pred).await;
        found.swap_remove(0)
    }

    /// Waits for an event whose message is `message`.
    pub async fn wait_for_message(&self, message: &str) -> Value {
        self.wait_for(message, |e| e["message"] == message).await
    }
}

impl<S: tracing::Subscriber> Layer<S> for Logs {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let mut events = self.events.lock();
        events.push(Value::Object(fields.0));
        self.seen.send_replace(events.len());
    }
}

/// An event's fields as JSON values: numbers and booleans as such, everything else as the text
/// the log shows.
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
}
