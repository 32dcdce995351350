//! Routes that are not the mesh's (the host's default routes, a connected network) are never
//! replaced or deleted, whatever a plan asks for; each such place is reported as a conflict
//! naming both routes. Needs root (`netns_` prefix) and fails, never skips, without it.

mod common;
mod fixtures;

use common::{Netns, dataplane, keypair, require_netns_prerequisites};
use fixtures::*;
use mesh_core::backend::Dataplane;
use mesh_core::{Dev, Operation, Plan};
use mesh_netlink::Error;

fn plan(operations: Vec<Operation>) -> Plan {
    Plan { operations, ..Plan::default() }
}

/// The host's IPv4 and IPv6 default routes and its connected LAN route, as `ip` prints them.
fn host_routes(netns: &Netns) -> [String; 3] {
    [
        netns.ip(&["-4", "route", "show", "default"]),
        netns.ip(&["-4", "route", "show", "192.168.70.0/24"]),
        netns.ip(&["-6", "route", "show", "default"]),
    ]
}

#[tokio::test]
async fn netns_routes_that_are_not_ours_are_never_replaced_or_deleted() {
    require_netns_prerequisites();
    let netns = Netns::new("kt-nl-foreign");
    netns.veth_pair("ktfr-p", "ktfr-q");
    netns.address("ktfr-p", "192.168.70.1/24");
    netns.address("ktfr-p", "fd70::1/64");
    netns.ip(&["route", "add", "default", "via", "192.168.70.254", "dev", "ktfr-p"]);
    netns.ip(&["-6", "route", "add", "default", "via", "fd70::fe", "dev", "ktfr-p"]);
    let before = host_routes(&netns);
    assert!(before[0].contains("via 192.168.70.254") && before[1].contains("proto kernel"), "{before:?}");
    assert!(before[2].contains("via fd70::fe"), "{before:?}");

    let mut dataplane = dataplane(&netns, "ktfr0", Some("ktfr-p"), keypair(70).0).await;
    // What a hijacking allowed-location IP or Peer would make a node want: its default routes
    // and its LAN through the mesh; and one route that is free to take.
    let hijacks = [
        main_route("0.0.0.0/0", Some("192.168.70.2"), Dev::Private, None),
        main_route("192.168.70.0/24", Some("192.168.70.3"), Dev::Private, None),
        main_route("::/0", Some("fd70::2"), Dev::Private, None),
    ];
    let free = main_route("10.70.0.0/24", Some("192.168.70.2"), Dev::Private, None);
    let operations = || hijacks.iter().chain([&free]).map(|route| Operation::AddRoute(*route)).collect();

    let error = dataplane.apply_plan(&plan(operations())).await.unwrap_err();
    let Error::RouteConflicts(conflicts) = &error else { panic!("expected route conflicts, got {error:?}") };
    assert_eq!(conflicts.len(), 3, "{error}");
    let message = error.to_string();
    for expected in [
        "refused to replace route default via 192.168.70.254 dev ktfr-p proto boot (not the mesh's) with 0.0.0.0/0 via 192.168.70.2 dev ktfr-p onlink",
        "refused to replace route 192.168.70.0/24 dev ktfr-p proto kernel scope link (not the mesh's) with 192.168.70.0/24 via 192.168.70.3 dev ktfr-p onlink",
        "refused to replace route default via fd70::fe dev ktfr-p proto boot metric 1024 (not the mesh's) with ::/0 via fd70::2 dev ktfr-p onlink",
    ] {
        assert!(message.contains(expected), "{expected:?} missing in: {message}");
    }
    assert_eq!(host_routes(&netns), before, "a route that is not ours was changed");
    let ours = netns.ip(&["route", "show", "proto", "107"]);
    assert_eq!(ours.trim(), "10.70.0.0/24 via 192.168.70.2 dev ktfr-p onlink", "the rest of the plan was not applied");

    // The next pass asks again for what it did not observe: the conflicts are reported
    // again, without a write.
    let writes = dataplane.writes();
    let again = hijacks.iter().map(|route| Operation::AddRoute(*route)).collect();
    let again = dataplane.apply_plan(&plan(again)).await.unwrap_err();
    assert!(matches!(&again, Error::RouteConflicts(found) if found.len() == 3), "{again:?}");
    assert_eq!(dataplane.writes(), writes, "a lasting conflict cost a write");

    // Through the data-plane trait the agent drives, a conflict is a refusal, not a failure:
    // the apply succeeds and lists what it left out, once each.
    let again = hijacks.iter().map(|route| Operation::AddRoute(*route)).collect();
    Dataplane::apply(&mut dataplane, &plan(again)).await.unwrap();
    let refused: Vec<_> = dataplane.route_conflicts().into_iter().map(|conflict| conflict.route).collect();
    assert_eq!(refused, hijacks, "the refused routes, in the plan's order");
    Dataplane::apply(&mut dataplane, &plan(vec![])).await.unwrap();
    assert!(dataplane.route_conflicts().is_empty(), "conflicts are those of the last apply");

    // A plan that deletes those places (as after the hijack is gone) deletes only ours.
    let deletes = hijacks.iter().chain([&free]).map(|route| Operation::DeleteRoute(*route)).collect();
    dataplane.apply_plan(&plan(deletes)).await.unwrap();
    assert_eq!(host_routes(&netns), before, "a delete removed a route that is not ours");
    assert!(netns.ip(&["route", "show", "proto", "107"]).is_empty());

    dataplane.apply_plan(&plan(vec![Operation::AddRoute(free)])).await.unwrap();
    dataplane.clean_up().await.unwrap();
    assert_eq!(host_routes(&netns), before, "clean-up removed a route that is not ours");
    assert!(netns.ip(&["route", "show", "proto", "107"]).is_empty());

    // Once the place is free, the route the plan wants is installed.
    netns.ip(&["route", "del", "default"]);
    dataplane.apply_plan(&plan(vec![Operation::AddRoute(hijacks[0])])).await.unwrap();
    assert!(netns.ip(&["route", "show", "default"]).contains("via 192.168.70.2 dev ktfr-p proto 107 onlink"));
}

/// A route through our WireGuard interface is the mesh's whatever its protocol (Kilo left its
/// routes with protocol `static`): it is replaced in place.
#[tokio::test]
async fn netns_a_route_kilo_left_on_the_wireguard_interface_is_replaced() {
    require_netns_prerequisites();
    let netns = Netns::new("kt-nl-leftover");
    // A veth stands in for the WireGuard interface: routes only need the device.
    netns.veth_pair("ktlo0", "ktlo-q");
    netns.ip(&["route", "add", "10.71.0.0/24", "dev", "ktlo0", "proto", "static"]);
    let mut dataplane = dataplane(&netns, "ktlo0", None, keypair(71).0).await;
    dataplane
        .apply_plan(&plan(vec![Operation::AddRoute(main_route("10.71.0.0/24", None, Dev::Kilo, None))]))
        .await
        .unwrap();
    assert_eq!(netns.ip(&["route", "show", "10.71.0.0/24"]).trim(), "10.71.0.0/24 dev ktlo0 proto 107");
}
