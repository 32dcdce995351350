//! The crate's one error type: every variant names the operation and the object it failed on.

use std::io;

use mesh_core::backend::BackendError;
pub use mesh_core::backend::RouteConflict;

/// A data-plane operation that failed, e.g.
/// `failed to add route 10.2.1.0/24 via 10.4.0.2 dev kilo0 table 1107: Network is unreachable (os error 101)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A netlink request (link, address, route, rule) failed.
    #[error("failed to {operation}: {source}")]
    Netlink {
        /// What was being done, e.g. `add route 10.2.1.0/24 dev kilo0 table 1107`.
        operation: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Reading or configuring the WireGuard device failed.
    #[error("failed to {operation}: {source}")]
    WireGuard {
        /// What was being done, e.g. `add WireGuard peer <key> on kilo0`.
        operation: String,
        /// The kernel's or the userspace daemon's answer.
        #[source]
        source: io::Error,
    },
    /// `iptables-save` or `iptables-restore` (or their IPv6 twins) failed.
    #[error("failed to {operation}: {reason}")]
    Firewall {
        /// What was being done, e.g. `apply IPv4 firewall rules with iptables-restore`.
        operation: String,
        /// The exit status and what the tool printed.
        reason: String,
    },
    /// Entering the configured network namespace failed.
    #[error("failed to {operation}: {source}")]
    Namespace {
        /// What was being done, e.g. `enter network namespace /run/netns/a`.
        operation: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A device the operation needs does not exist (and is not ours to create).
    #[error("failed to {operation}: interface {interface} not found{hint}")]
    InterfaceNotFound {
        /// What was being done.
        operation: String,
        /// The missing interface.
        interface: String,
        /// What to do about it, starting with `: ` (or empty).
        hint: String,
    },
    /// `--compatibility=cilium` needs Cilium's IPIP device, which Cilium only creates with
    /// `enable-ipip-termination=true`. The message is the one the cilium-kilo documentation
    /// tells users to look for.
    #[error("cilium_tunl interface not found: run Cilium with enable-ipip-termination=true")]
    CiliumTunnelNotFound,
    /// Kilo's `tunl0` cannot be created because the namespace's any-to-any IPIP device, of
    /// which the kernel allows one, exists under another name: the fallback `tunl0` that
    /// loading the ipip module creates, renamed (by Cilium, to `cilium_tunl`).
    #[error(
        "failed to create IPIP tunnel {tunnel}: the kernel's any-to-any IPIP device exists as {existing} and \
         refuses a second one (File exists); if {existing} is Cilium's, run with --compatibility=cilium to share it"
    )]
    IpipDeviceRenamed {
        /// The device the mesh wanted (`tunl0`).
        tunnel: String,
        /// The name the kernel's IPIP device has now (`cilium_tunl`).
        existing: String,
    },
    /// Several parts of a plan failed; the others were applied.
    #[error("{} parts of the plan failed: {}", failures.len(), failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    PartlyApplied {
        /// Each part's failure, in the plan's order.
        failures: Vec<Error>,
    },
    /// IP discovery found no address the node could use.
    #[error("no valid IP was found")]
    NoValidIp,
    /// Routes the mesh wants where the kernel holds routes that are not the mesh's (the host's
    /// default route, a connected network, another CNI's route). Those are never replaced or
    /// deleted; the rest of the plan is applied.
    #[error("{}", route_conflicts_text(.0))]
    RouteConflicts(Vec<RouteConflict>),
    /// A `--wireguard-backend` value that is not `auto`, `kernel` or `userspace`.
    #[error("invalid WireGuard backend {0:?}: expected auto, kernel or userspace")]
    InvalidBackend(String),
}

/// At most this many conflicts are spelled out in one message.
const CONFLICTS_SHOWN: usize = 5;

fn route_conflicts_text(conflicts: &[RouteConflict]) -> String {
    let mut text: Vec<String> = conflicts.iter().take(CONFLICTS_SHOWN).map(ToString::to_string).collect();
    if conflicts.len() > CONFLICTS_SHOWN {
        text.push(format!("and {} more", conflicts.len() - CONFLICTS_SHOWN));
    }
    text.join("; ")
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The OS error number behind the failure, if there is one (e.g. `libc::EEXIST` = 17).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. } | Error::WireGuard { source, .. } | Error::Namespace { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }

    pub(crate) fn netlink(operation: impl Into<String>, source: io::Error) -> Self {
        Error::Netlink { operation: operation.into(), source }
    }

    pub(crate) fn wireguard(operation: impl Into<String>, source: io::Error) -> Self {
        Error::WireGuard { operation: operation.into(), source }
    }

    pub(crate) fn not_found(operation: impl Into<String>, interface: impl Into<String>) -> Self {
        Error::InterfaceNotFound { operation: operation.into(), interface: interface.into(), hint: String::new() }
    }

    /// Takes the route conflicts out of an apply's error: what is left (if anything) is the
    /// failure, the conflicts are refusals.
    pub fn split_route_conflicts(self) -> (Option<Error>, Vec<RouteConflict>) {
        match self {
            Error::RouteConflicts(conflicts) => (None, conflicts),
            Error::PartlyApplied { failures } => {
                let mut conflicts = Vec::new();
                let mut rest = Vec::new();
                for failure in failures {
                    match failure {
                        Error::RouteConflicts(found) => conflicts.extend(found),
                        other => rest.push(other),
                    }
                }
                let rest = match rest.len() {
                    0 => None,
                    1 => rest.pop(),
                    _ => Some(Error::PartlyApplied { failures: rest }),
                };
                (rest, conflicts)
            }
            other => (Some(other), Vec::new()),
        }
    }

    /// Wraps the error as the data-plane trait's error, with `operation` (`failed to apply plan`)
    /// in front of this error's own message.
    pub fn into_backend(self, operation: &str) -> BackendError {
        BackendError::new(operation, self)
    }
}

/// The `io::Error` behind an rtnetlink error: the kernel's errno when it sent one.
pub(crate) fn netlink_io(error: rtnetlink::Error) -> io::Error {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{Dev, Route};

    fn conflict(destination: &str) -> RouteConflict {
        let route = Route {
            dst: destination.parse().unwrap(),
            gateway: None,
            dev: Dev::Kilo,
            src: None,
            table: 254,
            onlink: false,
        };
        RouteConflict { route, wanted: format!("{destination} dev kilo0"), existing: format!("{destination} dev eth0") }
    }

    fn firewall_failure() -> Error {
        Error::Firewall { operation: "apply IPv4 firewall rules with iptables-restore".into(), reason: "exit 1".into() }
    }

    #[test]
    fn route_conflicts_split_from_the_failures_they_came_with() {
        let (rest, conflicts) = Error::RouteConflicts(vec![conflict("0.0.0.0/0")]).split_route_conflicts();
        assert!(rest.is_none());
        assert_eq!(conflicts, [conflict("0.0.0.0/0")]);

        let mixed =
            Error::PartlyApplied { failures: vec![firewall_failure(), Error::RouteConflicts(vec![conflict("::/0")])] };
        let (rest, conflicts) = mixed.split_route_conflicts();
        assert!(matches!(rest, Some(Error::Firewall { .. })), "{rest:?}");
        assert_eq!(conflicts, [conflict("::/0")]);

        let (rest, conflicts) = firewall_failure().split_route_conflicts();
        assert!(matches!(rest, Some(Error::Firewall { .. })) && conflicts.is_empty());
    }
}
