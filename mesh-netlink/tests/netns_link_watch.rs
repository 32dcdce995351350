//! The kernel's link and route notifications, narrowed to the data plane's devices and the mesh's
//! routes, in a real network namespace: a wireguard-go device that comes, goes up and dies, and a
//! watched veth that is deleted, while other devices' notifications stay silent; the mesh's routes
//! deleted (IPv4 and IPv6, by protocol and by table), while added routes and the deletion of
//! others' routes stay silent. Needs root (`netns_` prefix) and fails, never skips, without it.

mod common;

use std::time::Duration;

use common::{Netns, WireGuardGo, require_netns_prerequisites, require_tool};
use mesh_core::RouteKey;
use mesh_core::backend::LinkChange;
use mesh_netlink::{LinkWatch, Namespace};

/// The next change, or a failure naming what was awaited after 5 s.
async fn next(watch: &mut LinkWatch, what: &str) -> LinkChange {
    tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap_or_else(|_| panic!("no link change within 5 s while waiting for {what}"))
        .expect("the notification socket stays open")
}

/// Skips changes of `interface`'s state (the carrier comes and goes with wireguard-go's hold on
/// its TUN; a device goes down before it is deleted) until one that `wanted` matches.
async fn changes_until(
    watch: &mut LinkWatch,
    interface: &str,
    what: &str,
    wanted: impl Fn(&LinkChange) -> bool,
) -> LinkChange {
    loop {
        let change = next(watch, what).await;
        if wanted(&change) {
            return change;
        }
        assert!(
            matches!(&change, LinkChange::Changed { interface: changed, .. } if changed == interface),
            "unexpected {change:?} while waiting for {what}"
        );
    }
}

#[tokio::test]
async fn netns_watched_devices_report_coming_changing_and_going() {
    require_netns_prerequisites();
    require_tool("wireguard-go");
    let netns = Netns::new("kt-nl-watch");
    netns.veth_pair("ktlw-p", "ktlw-q");
    // Settled before the watch starts: the carrier comes a moment after both ends are up.
    let started = std::time::Instant::now();
    while !netns.ip(&["link", "show", "ktlw-p"]).contains("LOWER_UP") {
        assert!(started.elapsed() < Duration::from_secs(5), "ktlw-p has no carrier after 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut watch =
        LinkWatch::new(&Namespace::named(&netns.name), vec!["ktlw0".into(), "ktlw-p".into()]).await.unwrap();

    // Devices that exist when the watch starts are known: no news about them yet; another
    // device's notifications say nothing.
    netns.ip(&["link", "set", "ktlw-q", "mtu", "1400"]);

    let daemon = WireGuardGo::start(&netns, "ktlw0");
    let appeared = next(&mut watch, "the WireGuard device").await;
    assert_eq!(appeared, LinkChange::Appeared { interface: "ktlw0".into() });
    netns.ip(&["link", "set", "ktlw0", "up"]);
    let up =
        changes_until(&mut watch, "ktlw0", "ktlw0 up", |change| matches!(change, LinkChange::Changed { up: true, .. }))
            .await;
    assert_eq!(up, LinkChange::Changed { interface: "ktlw0".into(), up: true, mtu: Some(1420) });

    drop(daemon); // SIGTERM: wireguard-go takes its device down, then removes it
    let gone =
        changes_until(&mut watch, "ktlw0", "ktlw0 to go", |change| !matches!(change, LinkChange::Changed { .. })).await;
    assert_eq!(gone, LinkChange::Disappeared { interface: "ktlw0".into() });
    netns.ip(&["link", "del", "ktlw-p"]);
    let gone =
        changes_until(&mut watch, "ktlw-p", "the veth to go", |change| !matches!(change, LinkChange::Changed { .. }))
            .await;
    assert_eq!(gone, LinkChange::Disappeared { interface: "ktlw-p".into() });
}

#[tokio::test]
async fn netns_deleted_routes_of_the_mesh_are_reported_and_others_are_not() {
    require_netns_prerequisites();
    let netns = Netns::new("kt-nl-routes");
    netns.veth_pair("ktlr-p", "ktlr-q");
    // No device is watched: only route notifications can report anything.
    let mut watch = LinkWatch::new(&Namespace::named(&netns.name), vec!["ktlr-none".into()]).await.unwrap();
    let key = |table, dst: &str| RouteKey { table, dst: dst.parse().unwrap() };

    // Added routes are no news; the deletion of a route that is not the mesh's neither.
    netns.ip(&["route", "add", "10.99.1.0/24", "dev", "ktlr-p", "proto", "107"]);
    netns.ip(&["route", "add", "10.99.2.0/24", "dev", "ktlr-p", "proto", "static"]);
    netns.ip(&["route", "add", "10.99.3.0/24", "dev", "ktlr-p", "table", "1107"]);
    netns.ip(&["-6", "route", "add", "fd99::/64", "dev", "ktlr-p", "proto", "107"]);
    netns.ip(&["route", "del", "10.99.2.0/24"]);
    netns.ip(&["route", "del", "10.99.1.0/24", "proto", "107"]);
    let ours = next(&mut watch, "the deleted route of protocol 107").await;
    assert_eq!(ours, LinkChange::RouteDeleted(key(mesh_core::MAIN_TABLE, "10.99.1.0/24")));

    netns.ip(&["route", "flush", "table", "1107"]);
    let in_table = next(&mut watch, "the route flushed from table 1107").await;
    assert_eq!(in_table, LinkChange::RouteDeleted(key(mesh_core::KILO_TABLE, "10.99.3.0/24")));

    netns.ip(&["-6", "route", "del", "fd99::/64", "dev", "ktlr-p"]);
    let v6 = next(&mut watch, "the deleted IPv6 route").await;
    assert_eq!(v6, LinkChange::RouteDeleted(key(mesh_core::MAIN_TABLE, "fd99::/64")));
}
