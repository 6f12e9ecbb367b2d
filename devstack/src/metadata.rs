//! The metadata API, `GET /v1.0/metadata` and `Dapr/GetMetadata`, answered as daprd answers it
//! once it is up (dapr/dapr `pkg/api/universal/metadata.go`), so SDKs that wait on it start.
//!
//! What differs from daprd, on purpose: the runtime version names devstack's sidecar, and each
//! binding is listed as the component it stands in for in production (`deploy/base`).

use std::{sync::Arc, time::Duration};

use pipeline::{
    dapr_runtime::MetadataHandler,
    dapr_v1::{
        ActorRuntime, AppConnectionHealthProperties, AppConnectionProperties, GetMetadataRequest,
        GetMetadataResponse, RegisteredComponents, actor_runtime::ActorRuntimeStatus,
    },
};
use serde_json::{Map, Value, json};
use tonic::{Request, Response, Status};

use crate::{app::AppProtocol, http_app::HEALTH_CHECK_PATH, registry::AppRegistry};

/// The component type each binding stands in for, as in `deploy/base/binding-deployment.yaml`.
pub const COMPONENT_TYPE: &str = "bindings.azure.servicebusqueues";
/// The component's `spec.version`.
pub const COMPONENT_VERSION: &str = "v1";
/// daprd lists a binding's directions as capabilities (`pkg/runtime/runtime.go`); every binding
/// here is both an input and an output binding.
const CAPABILITIES: [&str; 2] = ["INPUT_BINDING", "OUTPUT_BINDING"];
/// daprd's deprecated copy of the runtime version in the extended metadata.
const RUNTIME_VERSION_KEY: &str = "daprRuntimeVersion";
/// daprd's `--app-channel-address` default.
const CHANNEL_ADDRESS: &str = "127.0.0.1";
/// daprd's `--app-protocol` default, reported while no app is connected.
const DEFAULT_PROTOCOL: &str = "http";

/// What the sidecar says about itself. daprd requires the API token here too: the API's token
/// layer checks it (`api::token`).
#[derive(Debug)]
pub struct Metadata {
    app_id: String,
    bindings: Vec<String>,
    health_interval: Duration,
    /// The apps delivered to: daprd has one app, devstack's sidecar may have several competing
    /// consumers, and reports the oldest still there as daprd would report its only one.
    apps: Arc<AppRegistry>,
}

impl Metadata {
    pub fn new(
        app_id: String,
        bindings: Vec<String>,
        health_interval: Duration,
        apps: Arc<AppRegistry>,
    ) -> Self {
        Self {
            app_id,
            bindings,
            health_interval,
            apps,
        }
    }

    /// The answer, in daprd's protobuf form.
    pub fn response(&self) -> GetMetadataResponse {
        let version = runtime_version();
        let app_connection = match self.apps.oldest() {
            Some(app) => AppConnectionProperties {
                port: app.address.port().into(),
                protocol: app.protocol.as_str().to_owned(),
                channel_address: app.address.ip().to_string(),
                max_concurrency: i32::try_from(app.max_concurrency).unwrap_or(i32::MAX),
                // The sidecar always probes its apps (AppCallbackHealthCheck, or GET /healthz
                // for an HTTP app), one failure marking an app unhealthy.
                health: Some(AppConnectionHealthProperties {
                    health_check_path: match app.protocol {
                        AppProtocol::Grpc => String::new(),
                        AppProtocol::Http => HEALTH_CHECK_PATH.to_owned(),
                    },
                    health_probe_interval: go_duration(self.health_interval),
                    health_probe_timeout: go_duration(
                        self.health_interval.max(Duration::from_millis(500)),
                    ),
                    health_threshold: 1,
                }),
            },
            None => AppConnectionProperties {
                protocol: DEFAULT_PROTOCOL.to_owned(),
                channel_address: CHANNEL_ADDRESS.to_owned(),
                ..Default::default()
            },
        };
        GetMetadataResponse {
            id: self.app_id.clone(),
            registered_components: self
                .bindings
                .iter()
                .map(|name| RegisteredComponents {
                    name: name.clone(),
                    r#type: COMPONENT_TYPE.to_owned(),
                    version: COMPONENT_VERSION.to_owned(),
                    capabilities: CAPABILITIES.map(str::to_owned).to_vec(),
                })
                .collect(),
            extended_metadata: [(RUNTIME_VERSION_KEY.to_owned(), version.clone())].into(),
            app_connection_properties: Some(app_connection),
            runtime_version: version,
            // No placement service: daprd reports its actor runtime as disabled.
            actor_runtime: Some(ActorRuntime {
                runtime_status: ActorRuntimeStatus::Disabled.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// "devstack-<version>": says which sidecar answers, where daprd says its own version.
pub fn runtime_version() -> String {
    format!("devstack-{}", env!("CARGO_PKG_VERSION"))
}

#[tonic::async_trait]
impl MetadataHandler for Metadata {
    async fn get_metadata(
        &self,
        _request: Request<GetMetadataRequest>,
    ) -> Result<Response<GetMetadataResponse>, Status> {
        Ok(Response::new(self.response()))
    }
}

/// The HTTP form, as daprd's `pkg/api/http/metadata.go` writes it: its own JSON keys, empty
/// fields left out (`omitempty`), the actor runtime status as its enum name.
pub fn to_json(response: &GetMetadataResponse) -> Value {
    let mut out = Map::new();
    let mut put = |key: &str, value: Value| {
        let empty = match &value {
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            Value::Number(n) => n.as_i64() == Some(0),
            Value::Null => true,
            Value::Bool(_) => false,
        };
        if !empty {
            out.insert(key.to_owned(), value);
        }
    };
    put("id", json!(response.id));
    put("runtimeVersion", json!(response.runtime_version));
    put("enabledFeatures", json!(response.enabled_features));
    put(
        "components",
        response
            .registered_components
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.r#type,
                    "version": c.version,
                    "capabilities": c.capabilities,
                })
            })
            .collect(),
    );
    put("extended", json!(response.extended_metadata));
    if let Some(app) = &response.app_connection_properties {
        put("appConnectionProperties", app_connection_json(app));
    }
    if let Some(actors) = &response.actor_runtime {
        let status = ActorRuntimeStatus::try_from(actors.runtime_status)
            .unwrap_or(ActorRuntimeStatus::Initializing);
        put(
            "actorRuntime",
            json!({ "runtimeStatus": status.as_str_name(), "hostReady": actors.host_ready }),
        );
    }
    Value::Object(out)
}

fn app_connection_json(app: &AppConnectionProperties) -> Value {
    let mut out = Map::new();
    let fields = [
        ("port", json!(app.port)),
        ("protocol", json!(app.protocol)),
        ("channelAddress", json!(app.channel_address)),
        ("maxConcurrency", json!(app.max_concurrency)),
    ];
    for (key, value) in fields {
        if value != json!(0) && value != json!("") {
            out.insert(key.to_owned(), value);
        }
    }
    if let Some(health) = &app.health {
        let mut h = Map::new();
        let fields = [
            ("healthCheckPath", json!(health.health_check_path)),
            ("healthProbeInterval", json!(health.health_probe_interval)),
            ("healthProbeTimeout", json!(health.health_probe_timeout)),
            ("healthThreshold", json!(health.health_threshold)),
        ];
        for (key, value) in fields {
            if value != json!(0) && value != json!("") {
                h.insert(key.to_owned(), value);
            }
        }
        out.insert("health".to_owned(), Value::Object(h));
    }
    Value::Object(out)
}

/// A duration as Go's `time.Duration.String` writes it ("1s", "500ms", "1m30s"), as daprd
/// reports the health probe settings. Whole milliseconds are enough for the sidecar's settings.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&s.to_string());
    if frac > 0 {
        out.push_str(format!(".{frac:03}").trim_end_matches('0'));
    }
    out.push('s');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{app::AppTarget, changes::Changes};

    fn metadata() -> Metadata {
        Metadata::new(
            "devstack".to_owned(),
            vec!["message-queue".to_owned()],
            Duration::from_secs(1),
            Arc::new(AppRegistry::new(Changes::default())),
        )
    }

    fn add_app(metadata: &Metadata, protocol: AppProtocol, address: &str, max_concurrency: usize) {
        let target = AppTarget {
            protocol,
            address: address.parse().unwrap(),
            max_concurrency,
        };
        metadata.apps.register(address.to_owned(), target);
    }

    #[test]
    fn json_has_daprd_keys_and_leaves_out_empty_ones() {
        let metadata = metadata();
        let before = to_json(&metadata.response());
        assert_eq!(
            before["appConnectionProperties"],
            json!({ "protocol": "http", "channelAddress": "127.0.0.1" })
        );
        add_app(&metadata, AppProtocol::Grpc, "127.0.0.1:50051", 4);
        add_app(&metadata, AppProtocol::Http, "127.0.0.1:50052", 1);
        let version = format!("devstack-{}", env!("CARGO_PKG_VERSION"));
        assert_eq!(
            to_json(&metadata.response()),
            json!({
                "id": "devstack",
                "runtimeVersion": version,
                "components": [{
                    "name": "message-queue",
                    "type": "bindings.azure.servicebusqueues",
                    "version": "v1",
                    "capabilities": ["INPUT_BINDING", "OUTPUT_BINDING"],
                }],
                "extended": { "daprRuntimeVersion": version },
                "appConnectionProperties": {
                    "port": 50051,
                    "protocol": "grpc",
                    "channelAddress": "127.0.0.1",
                    "maxConcurrency": 4,
                    "health": { "healthProbeInterval": "1s", "healthProbeTimeout": "1s", "healthThreshold": 1 },
                },
                "actorRuntime": { "runtimeStatus": "DISABLED", "hostReady": false },
            })
        );
    }

    #[test]
    fn an_http_app_is_reported_with_its_health_check_path() {
        let metadata = metadata();
        add_app(&metadata, AppProtocol::Http, "127.0.0.1:5000", 1);
        let app = &to_json(&metadata.response())["appConnectionProperties"];
        assert_eq!(app["protocol"], "http");
        assert_eq!(app["port"], 5000);
        assert_eq!(app["health"]["healthCheckPath"], "/healthz");
    }

    #[test]
    fn protobuf_fields_say_what_the_sidecar_is() {
        let response = metadata().response();
        assert_eq!(response.id, "devstack");
        assert!(response.runtime_version.starts_with("devstack-"));
        assert!(response.enabled_features.is_empty());
        assert_eq!(
            response.registered_components[0].r#type,
            "bindings.azure.servicebusqueues"
        );
        assert_eq!(
            response.extended_metadata[RUNTIME_VERSION_KEY],
            response.runtime_version
        );
    }

    #[test]
    fn durations_as_go_writes_them() {
        for (ms, text) in [
            (0, "0s"),
            (500, "500ms"),
            (1000, "1s"),
            (1500, "1.5s"),
            (90_000, "1m30s"),
            (3_600_000, "1h0m0s"),
        ] {
            assert_eq!(go_duration(Duration::from_millis(ms)), text);
        }
    }
}
