//! The stand-in's queues, one per configured binding name, and what the status endpoints show.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use serde::Serialize;

use crate::queue::{Counts, DeadLetter, Queue, Settings};

/// Every queue, plus what the delivery side reports about each consumer app.
#[derive(Debug)]
pub struct Broker {
    queues: BTreeMap<String, Arc<Queue>>,
    apps: Mutex<Vec<Arc<AppStatus>>>,
}

/// Live state of one consumer app, as the delivery side sees it.
#[derive(Debug)]
pub struct AppStatus {
    pub address: String,
    pub max_concurrency: usize,
    /// Bindings the app listed, once it answered ListInputBindings.
    pub bindings: Mutex<Option<Vec<String>>>,
    pub healthy: AtomicBool,
    pub in_flight: AtomicUsize,
}

/// JSON status: counts per queue, consumers, recent dead letters.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub queues: BTreeMap<String, Counts>,
    pub consumers_connected: usize,
    pub consumers: Vec<ConsumerStatus>,
    pub dead_letters: BTreeMap<String, Vec<DeadLetter>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    pub address: String,
    pub bindings: Option<Vec<String>>,
    pub healthy: bool,
    pub in_flight: usize,
    pub max_concurrency: usize,
}

impl Broker {
    pub fn new(bindings: &[String], settings: Settings) -> Arc<Self> {
        let queues = bindings
            .iter()
            .map(|name| (name.clone(), Queue::new(name.clone(), settings)))
            .collect();
        Arc::new(Self {
            queues,
            apps: Mutex::default(),
        })
    }

    pub fn queue(&self, binding: &str) -> Option<&Arc<Queue>> {
        self.queues.get(binding)
    }

    pub fn register_app(&self, address: String, max_concurrency: usize) -> Arc<AppStatus> {
        let app = Arc::new(AppStatus {
            address,
            max_concurrency,
            bindings: Mutex::new(None),
            healthy: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        });
        self.apps.lock().expect("apps lock").push(Arc::clone(&app));
        app
    }

    pub fn status(&self) -> Status {
        let consumers: Vec<_> = self
            .apps
            .lock()
            .expect("apps lock")
            .iter()
            .map(|app| ConsumerStatus {
                address: app.address.clone(),
                bindings: app.bindings.lock().expect("bindings lock").clone(),
                healthy: app.healthy.load(Ordering::Relaxed),
                in_flight: app.in_flight.load(Ordering::Relaxed),
                max_concurrency: app.max_concurrency,
            })
            .collect();
        Status {
            queues: self
                .queues
                .iter()
                .map(|(name, q)| (name.clone(), q.counts()))
                .collect(),
            consumers_connected: consumers
                .iter()
                .filter(|c| c.healthy && c.bindings.as_ref().is_some_and(|b| !b.is_empty()))
                .count(),
            consumers,
            dead_letters: self
                .queues
                .iter()
                .map(|(name, q)| (name.clone(), q.dead_letters()))
                .collect(),
        }
    }

    /// The status in Prometheus text exposition format.
    pub fn metrics(&self) -> String {
        let status = self.status();
        let mut out = String::from(
            "# HELP devstack_queue_messages Messages in each state of the stand-in queue.\n\
             # TYPE devstack_queue_messages gauge\n",
        );
        for (queue, c) in &status.queues {
            for (state, value) in [
                ("active", c.active),
                ("locked", c.locked),
                ("completed", c.completed),
                ("dead_lettered", c.dead_lettered),
            ] {
                out += &format!(
                    "devstack_queue_messages{{queue=\"{queue}\",state=\"{state}\"}} {value}\n"
                );
            }
        }
        out += "# HELP devstack_queue_produced_total Messages ever sent to the queue.\n\
                # TYPE devstack_queue_produced_total counter\n";
        for (queue, c) in &status.queues {
            out += &format!(
                "devstack_queue_produced_total{{queue=\"{queue}\"}} {}\n",
                c.produced
            );
        }
        out += "# HELP devstack_consumers_connected Consumer apps that listed their bindings and are healthy.\n\
                # TYPE devstack_consumers_connected gauge\n";
        out += &format!(
            "devstack_consumers_connected {}\n",
            status.consumers_connected
        );
        out
    }
}
