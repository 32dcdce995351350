//! The kernel's link notifications, narrowed to the data plane's devices, in a real network
//! namespace: a wireguard-go device that comes, goes up and dies, and a watched veth that is
//! deleted, while other devices' notifications stay silent. Needs root (`netns_` prefix) and
//! fails, never skips, without it.

mod common;

use std::time::Duration;

use common::{Netns, WireGuardGo, require_netns_prerequisites, require_tool};
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
