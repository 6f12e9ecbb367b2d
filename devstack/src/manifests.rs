//! The committed manifests devstack runs with unless told otherwise, built into the binary: it
//! behaves the same wherever it is run from, an installed or moved binary included.

use std::fmt;

/// A committed manifest, built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltIn {
    /// Where it is committed, from the repository's root.
    pub path: &'static str,
    pub text: &'static str,
}

/// How errors and logs name it: `deploy/base/resiliency.yaml (built in)`.
impl fmt::Display for BuiltIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (built in)", self.path)
    }
}

/// The ScaledObject `--autoscale` reads unless given a path: the one `kubectl apply -k
/// deploy/base` applies.
pub const SCALED_OBJECT: BuiltIn = BuiltIn {
    path: "deploy/base/consumer-scaling.yaml",
    text: include_str!("../../deploy/base/consumer-scaling.yaml"),
};

/// The Deployment it scales, for its pods' terminationGracePeriodSeconds.
pub const DEPLOYMENT: BuiltIn = BuiltIn {
    path: "deploy/base/consumer-deployment.yaml",
    text: include_str!("../../deploy/base/consumer-deployment.yaml"),
};

/// The Resiliency the sidecar applies unless told otherwise: the one deployed with the consumer,
/// so local and production retry alike.
pub const RESILIENCY: BuiltIn = BuiltIn {
    path: "deploy/base/resiliency.yaml",
    text: include_str!("../../deploy/base/resiliency.yaml"),
};

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_built_in_manifests_are_the_committed_ones_and_say_so() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for built_in in [SCALED_OBJECT, DEPLOYMENT, RESILIENCY] {
            let committed = std::fs::read_to_string(root.join(built_in.path)).unwrap();
            assert_eq!(built_in.text, committed, "{built_in}");
        }
        assert_eq!(
            RESILIENCY.to_string(),
            "deploy/base/resiliency.yaml (built in)"
        );
    }
}
