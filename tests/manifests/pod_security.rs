//! Pod Security admission's `restricted` profile, as kubernetes/pod-security-admission v0.34
//! defines it for Kubernetes 1.34 (`policy/check_*.go`), the baseline checks included: what a
//! namespace labelled `pod-security.kubernetes.io/enforce: restricted` admits. For pods that leave
//! `hostUsers` unset, as these do, the checks of every release from 1.30 to 1.36 are these or a
//! subset of them (1.34 added the probe and lifecycle `host` check; 1.35's changes relax the rules
//! for pods in a user namespace only), so an admitted pod here is admitted on any cluster the
//! guide targets.
//!
//! Each check visits init, app and ephemeral containers, as the library's `visitContainers`.

use serde_json::Value;

use crate::render::array;

/// Why the profile rejects the pod, one line per failed check; empty when it admits it.
pub(crate) fn restricted_violations(pod: &Value) -> Vec<String> {
    let spec = &pod["spec"];
    let pod_security = &spec["securityContext"];
    let containers: Vec<&Value> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|key| array(&spec[*key]))
        .collect();
    let name = |c: &Value| c["name"].as_str().unwrap_or("?").to_owned();
    let mut violations = Vec::new();
    let mut fail = |check: &str, detail: String| violations.push(format!("{check}: {detail}"));

    // Baseline.
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[field] == true {
            fail("hostNamespaces", format!("{field}=true"));
        }
    }
    let windows = spec["os"]["name"] == "windows";
    for c in &containers {
        let security = &c["securityContext"];
        if security["privileged"] == true {
            fail("privileged", name(c));
        }
        for port in array(&c["ports"]) {
            if port["hostPort"].as_u64().is_some_and(|p| p != 0) {
                fail(
                    "hostPorts",
                    format!("{} uses hostPort {}", name(c), port["hostPort"]),
                );
            }
        }
        if security["procMount"]
            .as_str()
            .is_some_and(|m| m != "Default")
        {
            fail("procMount", name(c));
        }
        if security["windowsOptions"]["hostProcess"] == true {
            fail("windowsHostProcess", name(c));
        }
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            for action in ["httpGet", "tcpSocket"] {
                if c[probe][action]["host"]
                    .as_str()
                    .is_some_and(|h| !h.is_empty())
                {
                    fail("hostProbesAndHostLifecycle", format!("{} {probe}", name(c)));
                }
            }
        }
        for hook in ["postStart", "preStop"] {
            for action in ["httpGet", "tcpSocket"] {
                if c["lifecycle"][hook][action]["host"]
                    .as_str()
                    .is_some_and(|h| !h.is_empty())
                {
                    fail("hostProbesAndHostLifecycle", format!("{} {hook}", name(c)));
                }
            }
        }
    }
    if pod_security["windowsOptions"]["hostProcess"] == true {
        fail("windowsHostProcess", "pod".to_owned());
    }
    let apparmor_ok = |profile: &Value| {
        profile.is_null()
            || matches!(
                profile["type"].as_str(),
                Some("RuntimeDefault" | "Localhost")
            )
    };
    if !apparmor_ok(&pod_security["appArmorProfile"]) {
        fail("appArmorProfile", "pod".to_owned());
    }
    for c in &containers {
        if !apparmor_ok(&c["securityContext"]["appArmorProfile"]) {
            fail("appArmorProfile", name(c));
        }
    }
    if let Some(annotations) = pod["metadata"]["annotations"].as_object() {
        for (key, value) in annotations {
            let value = value.as_str().unwrap_or_default();
            if key.starts_with("container.apparmor.security.beta.kubernetes.io/")
                && !(value.is_empty()
                    || value == "runtime/default"
                    || value.starts_with("localhost/"))
            {
                fail("appArmorProfile", format!("{key}={value}"));
            }
        }
    }
    let selinux_ok = |options: &Value| {
        options.is_null()
            || (matches!(
                options["type"].as_str().unwrap_or_default(),
                "" | "container_t" | "container_init_t" | "container_kvm_t" | "container_engine_t"
            ) && options["user"].as_str().unwrap_or_default().is_empty()
                && options["role"].as_str().unwrap_or_default().is_empty())
    };
    if !selinux_ok(&pod_security["seLinuxOptions"]) {
        fail("seLinuxOptions", "pod".to_owned());
    }
    for c in &containers {
        if !selinux_ok(&c["securityContext"]["seLinuxOptions"]) {
            fail("seLinuxOptions", name(c));
        }
    }
    const SAFE_SYSCTLS: [&str; 12] = [
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
    ];
    for sysctl in array(&pod_security["sysctls"]) {
        let sysctl = sysctl["name"].as_str().unwrap_or_default();
        if !SAFE_SYSCTLS.contains(&sysctl) {
            fail("sysctls", sysctl.to_owned());
        }
    }

    // Restricted.
    for volume in array(&spec["volumes"]) {
        const ALLOWED: [&str; 9] = [
            "configMap",
            "csi",
            "downwardAPI",
            "emptyDir",
            "ephemeral",
            "image",
            "persistentVolumeClaim",
            "projected",
            "secret",
        ];
        let allowed = volume
            .as_object()
            .is_some_and(|v| v.keys().any(|k| ALLOWED.contains(&k.as_str())));
        if !allowed {
            fail("restrictedVolumes", format!("{}", volume["name"]));
        }
    }
    let pod_non_root = pod_security["runAsNonRoot"].as_bool();
    if pod_non_root == Some(false) {
        fail("runAsNonRoot", "pod sets runAsNonRoot=false".to_owned());
    }
    if pod_security["runAsUser"] == 0 {
        fail("runAsUser", "pod runs as 0".to_owned());
    }
    let seccomp_ok = |profile: &Value| {
        matches!(
            profile["type"].as_str(),
            Some("RuntimeDefault" | "Localhost")
        )
    };
    let pod_seccomp = &pod_security["seccompProfile"];
    if !pod_seccomp.is_null() && !seccomp_ok(pod_seccomp) {
        fail("seccompProfile_restricted", "pod".to_owned());
    }
    for c in &containers {
        let security = &c["securityContext"];
        if !windows && security["allowPrivilegeEscalation"] != false {
            fail(
                "allowPrivilegeEscalation",
                format!("{} must set allowPrivilegeEscalation=false", name(c)),
            );
        }
        match security["runAsNonRoot"].as_bool() {
            Some(false) => fail(
                "runAsNonRoot",
                format!("{} sets runAsNonRoot=false", name(c)),
            ),
            None if pod_non_root != Some(true) => fail(
                "runAsNonRoot",
                format!("pod or {} must set runAsNonRoot=true", name(c)),
            ),
            _ => {}
        }
        if security["runAsUser"] == 0 {
            fail("runAsUser", format!("{} runs as 0", name(c)));
        }
        let profile = &security["seccompProfile"];
        if (!profile.is_null() && !seccomp_ok(profile))
            || (profile.is_null() && pod_seccomp.is_null())
        {
            fail(
                "seccompProfile_restricted",
                format!("pod or {} must set RuntimeDefault or Localhost", name(c)),
            );
        }
        if !windows {
            let capabilities = &security["capabilities"];
            if !array(&capabilities["drop"]).iter().any(|d| d == "ALL") {
                fail(
                    "capabilities_restricted",
                    format!("{} must drop ALL", name(c)),
                );
            }
            for added in array(&capabilities["add"]) {
                if added != "NET_BIND_SERVICE" {
                    fail(
                        "capabilities_restricted",
                        format!("{} adds {added}", name(c)),
                    );
                }
            }
        }
    }
    violations
}
