//! The tunnel devices on the real kernel. This kernel has no ipip module, so `cilium_tunl` is
//! played by a veth renamed to `cilium_tunl`, and `tunl0` creation is checked to fail with an
//! error naming the tunnel (or, on a kernel with ipip, to produce the right device).

mod common;
mod fixtures;

use common::{Netns, keypair, require_netns_prerequisites};
use fixtures::*;
use mesh_core::backend::Dataplane;
use mesh_core::{Compatibility, Dev, Operation, Plan};
use mesh_netlink::{DataplaneConfig, Error, LinuxDataplane, WireGuardBackend};

async fn tunnel_dataplane(netns: &Netns, compatibility: Compatibility, private: &str) -> LinuxDataplane {
    let mut config = DataplaneConfig::new(keypair(50).0);
    config.interface = "kttun0".to_owned();
    config.private_interface = Some(private.to_owned());
    config.compatibility = compatibility;
    config.backend = WireGuardBackend::Userspace;
    config.create_interface = false;
    config.namespace = netns.namespace();
    LinuxDataplane::new(config).await.unwrap()
}

fn plan(operations: Vec<Operation>) -> Plan {
    Plan { operations, ..Plan::default() }
}

/// Without `cilium_tunl`, Cilium mode fails with the message the cilium-kilo documentation
/// tells users to look for; Flannel mode names `flannel.1`; a missing WireGuard interface that
/// we may not create is named with the reason.
#[tokio::test]
async fn netns_missing_tunnel_devices_and_interface_are_named_errors() {
    require_netns_prerequisites();
    let netns = Netns::new("kt-nl-tun-miss");
    netns.veth_pair("kttm-p", "kttm-q");
    let route = kilo_route("192.168.60.2/32", "10.2.2.0", Dev::Tunnel);

    let mut cilium = tunnel_dataplane(&netns, Compatibility::Cilium, "kttm-p").await;
    let error = cilium.apply_plan(&plan(vec![Operation::AddRoute(route)])).await.unwrap_err();
    assert!(matches!(error, Error::CiliumTunnelNotFound), "{error:?}");
    assert_eq!(error.to_string(), "cilium_tunl interface not found: run Cilium with enable-ipip-termination=true");
    let error = cilium.apply(&plan(vec![Operation::SetTunnelAddress(Some(net("10.2.1.1/32")))])).await.unwrap_err();
    assert!(
        error.to_string().contains("cilium_tunl interface not found: run Cilium with enable-ipip-termination=true"),
        "{error}"
    );

    let mut flannel = tunnel_dataplane(&netns, Compatibility::Flannel, "kttm-p").await;
    let error = flannel.apply_plan(&plan(vec![Operation::AddRoute(route)])).await.unwrap_err();
    assert!(
        error.to_string().starts_with("failed to add route 192.168.60.2/32 via 10.2.2.0 dev flannel.1 onlink table 1107: interface flannel.1 not found"),
        "{error}"
    );

    let error = cilium.apply_plan(&plan(vec![Operation::AddAddress(net("10.4.0.1/16"))])).await.unwrap_err();
    assert!(error.to_string().contains("interface kttun0 not found: --create-interface=false"), "{error}");
    assert_eq!(cilium.writes() + flannel.writes(), 0);
}

/// An existing `cilium_tunl` (down) is reused: brought up, given our tunnel address (marked
/// as ours, next to an address of Cilium's that we leave alone), used for table-1107 routes,
/// and never deleted by clean-up.
#[tokio::test]
async fn netns_cilium_tunl_is_reused_brought_up_and_never_deleted() {
    require_netns_prerequisites();
    let netns = Netns::new("kt-nl-tun-cil");
    netns.veth_pair("ktcl-p", "ktcl-q");
    netns.address("ktcl-p", "192.168.60.1/24");
    netns.ip(&["link", "add", "ktcl-x", "type", "veth", "peer", "name", "ktcl-y"]);
    netns.ip(&["link", "set", "ktcl-x", "name", "cilium_tunl"]);
    netns.ip(&["link", "set", "ktcl-y", "up"]);
    netns.address("cilium_tunl", "169.254.99.1/32");
    assert!(netns.ip(&["link", "show", "cilium_tunl"]).contains("state DOWN"));

    let mut dataplane = tunnel_dataplane(&netns, Compatibility::Cilium, "ktcl-p").await;
    let mut desired = mesh_core::DesiredState { tunnel_address: Some(net("10.2.1.1/32")), ..Default::default() };
    let route = kilo_route("192.168.60.2/32", "10.2.2.0", Dev::Tunnel);
    desired.routes.insert(route.key(), route);
    desired.rules.insert(rule(None, "192.168.60.2/32", Some(Dev::Kilo)));
    let before = dataplane.observe().await.unwrap();
    assert_eq!(before.state.tunnel_address, None, "Cilium's own address was taken for ours");
    let plan = Plan::between(&before, &desired);
    dataplane.apply(&plan).await.unwrap();
    let after = dataplane.observe().await.unwrap();
    assert_eq!(after.state, plan.apply_to(&before.state));
    assert_eq!(after.state, desired);

    let link = netns.ip(&["link", "show", "cilium_tunl"]);
    assert!(link.contains(",UP"), "cilium_tunl was not brought up: {link}");
    let addresses = netns.ip(&["-4", "addr", "show", "cilium_tunl"]);
    assert!(addresses.contains("10.2.1.1/32") && addresses.contains("169.254.99.1/32"), "{addresses}");
    let table = netns.ip(&["route", "show", "table", "1107"]);
    assert!(table.contains("192.168.60.2 via 10.2.2.0 dev cilium_tunl proto 107 onlink"), "{table}");

    dataplane.clean_up().await.unwrap();
    let link = netns.ip(&["link", "show", "cilium_tunl"]);
    assert!(link.contains(",UP"), "clean-up touched cilium_tunl: {link}");
    let addresses = netns.ip(&["-4", "addr", "show", "cilium_tunl"]);
    assert!(!addresses.contains("10.2.1.1/32") && addresses.contains("169.254.99.1/32"), "{addresses}");
    assert!(netns.ip(&["route", "show", "table", "1107"]).is_empty());
    assert_eq!(dataplane.observe().await.unwrap().state, mesh_core::DesiredState::default());
}

/// Kilo's own mode creates `tunl0` as an IPIP link with the private interface's MTU − 20. This
/// kernel has no ipip module, so the creation request must fail with an error naming the
/// device and the MTU; with ipip (another machine) the device must be there, up, with that MTU.
#[tokio::test]
async fn netns_tunl0_is_created_as_ipip_with_the_private_mtu_minus_20() {
    require_netns_prerequisites();
    let netns = Netns::new("kt-nl-tun-ipip");
    netns.veth_pair("ktip-p", "ktip-q");
    netns.ip(&["link", "set", "ktip-p", "mtu", "1450"]);
    let mut dataplane = tunnel_dataplane(&netns, Compatibility::None, "ktip-p").await;
    let result = dataplane.apply_plan(&plan(vec![Operation::SetTunnelAddress(Some(net("10.2.1.1/32")))])).await;
    match result {
        Err(error) => {
            assert!(error.to_string().starts_with("failed to create IPIP tunnel tunl0 with mtu 1430: "), "{error}");
            assert_eq!(error.raw_os_error(), Some(nix::libc::EOPNOTSUPP), "{error}");
        }
        Ok(()) => {
            let link = netns.ip(&["-d", "link", "show", "tunl0"]);
            assert!(link.contains("mtu 1430") && link.contains("ipip") && link.contains(",UP"), "{link}");
            assert_eq!(dataplane.observe().await.unwrap().state.tunnel_address, Some(net("10.2.1.1/32")));
        }
    }
}

/// An error the kernel returns names the operation and the object, as Kilo's logs do:
/// `failed to add route … table 1107: Network is down (os error 100)`.
#[tokio::test]
async fn netns_kernel_errors_name_the_operation_and_the_object() {
    require_netns_prerequisites();
    let netns = Netns::new("kt-nl-err");
    netns.ip(&["link", "add", "ktke-p", "type", "veth", "peer", "name", "ktke-q"]);
    let mut dataplane = tunnel_dataplane(&netns, Compatibility::None, "ktke-p").await;
    let route = kilo_route("10.2.1.0/24", "10.4.0.2", Dev::Private);
    let error = dataplane.apply(&plan(vec![Operation::AddRoute(route)])).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "failed to apply the plan: failed to add route 10.2.1.0/24 via 10.4.0.2 dev ktke-p onlink table 1107: \
         Network is down (os error 100)"
    );
    assert_eq!(dataplane.writes(), 1);
}
