//! The driver runs fast-failover probes beside the passes: a successor whose leader never
//! answers claims it and announces the claim, on tokio's paused clock.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_agent::driver::{Driver, Host};
use mesh_agent::reconciler::{Config, Report};
use mesh_core::backend::{BackendError, ClusterBackend, LocalAnnouncement};
use mesh_core::time::unix_seconds;
use mesh_core::{ClusterSnapshot, Endpoint, Key, NodeSpec, Options};
use mesh_tests::MemoryDataplane;
use tokio::sync::oneshot;

/// A host on which `dead` never answers a probe; it counts the probes it was asked for.
struct DeadLeaderHost {
    dead: IpAddr,
    probes: Arc<Mutex<Vec<IpAddr>>>,
}

impl Host for DeadLeaderHost {
    fn probe(&self, ip: IpAddr, _timeout: Duration) -> Pin<Box<dyn Future<Output = bool> + Send + 'static>> {
        self.probes.lock().expect("not poisoned").push(ip);
        let answers = ip != self.dead;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            answers
        })
    }
}

/// One snapshot, then silence; the first announcement with a claim ends the run.
struct Cluster {
    snapshot: Option<ClusterSnapshot>,
    claimed: Option<oneshot::Sender<LocalAnnouncement>>,
}

#[async_trait::async_trait]
impl ClusterBackend for Cluster {
    async fn next_snapshot(&mut self) -> Result<Option<ClusterSnapshot>, BackendError> {
        match self.snapshot.take() {
            Some(snapshot) => Ok(Some(snapshot)),
            None => std::future::pending().await,
        }
    }

    async fn announce(&mut self, announcement: &LocalAnnouncement) -> Result<(), BackendError> {
        if announcement.leader_unreachable.is_some()
            && let Some(claimed) = self.claimed.take()
        {
            let _ = claimed.send(announcement.clone());
        }
        Ok(())
    }

    async fn clean_up(&mut self, _node: &str) -> Result<(), BackendError> {
        Ok(())
    }
}

fn node(name: &str, octet: u8, now: i64) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        endpoint: Some(Endpoint::parse(&format!("192.168.{octet}.1:51820")).expect("valid")),
        key: Some(Key::from_bytes([octet; 32])),
        internal_ip: Some(format!("192.168.{octet}.1/24").parse().expect("valid")),
        location: "x".into(),
        pod_subnet: Some(format!("10.2.{octet}.0/24").parse().expect("valid")),
        last_seen: Some(now),
        failover_capable: true,
        ..NodeSpec::default()
    }
}

#[tokio::test(start_paused = true)]
async fn the_successor_claims_a_leader_that_never_answers_and_announces_it() {
    let now = unix_seconds(std::time::SystemTime::now());
    let snapshot = ClusterSnapshot { nodes: vec![node("x1", 1, now), node("x2", 2, now)], peers: vec![], now };
    let (claimed, claim) = oneshot::channel();
    let cluster = Cluster { snapshot: Some(snapshot), claimed: Some(claimed) };
    let probes = Arc::new(Mutex::new(Vec::new()));
    let host = DeadLeaderHost { dead: "192.168.1.1".parse().expect("valid"), probes: Arc::clone(&probes) };
    let mut config = Config::new(Options::for_host("x2"));
    config.clean_up = false;
    let mut driver = Driver::new(cluster, MemoryDataplane::default(), host, config);
    let started = tokio::time::Instant::now();
    let (announcement_tx, announcement_rx) = oneshot::channel();
    let shutdown = async move {
        let announcement = claim.await.expect("a claim is announced");
        let _ = announcement_tx.send(announcement);
    };
    tokio::time::timeout(Duration::from_secs(10), driver.run(shutdown)).await.expect("the claim within 10 s");
    let announcement = announcement_rx.await.expect("the claim");
    assert_eq!(announcement.leader_unreachable.as_deref(), Some("x1"));
    assert!(announcement.wireguard_ip.is_some(), "the claimant leads at once: {announcement:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1000) && took < Duration::from_secs(3), "claimed after {took:?}");
    let probes = probes.lock().expect("not poisoned").clone();
    assert_eq!(probes, vec!["192.168.1.1".parse::<IpAddr>().expect("valid"); 3]);
    assert_eq!(driver.reconciler().failover_claim(), Some("x1"));
    assert_eq!(driver.reconciler().leaders()["location:x"], "x2");
}

/// A host on which every probe waits forever, as one of a dead leader does until its timeout.
struct SilentHost;

impl Host for SilentHost {
    fn probe(&self, _ip: IpAddr, _timeout: Duration) -> Pin<Box<dyn Future<Output = bool> + Send + 'static>> {
        Box::pin(std::future::pending())
    }
}

/// Snapshots, each at its time, then silence. Cancel safe, as the driver needs: a snapshot is
/// taken off the list only when it is returned.
struct Snapshots(std::collections::VecDeque<(tokio::time::Instant, ClusterSnapshot)>);

#[async_trait::async_trait]
impl ClusterBackend for Snapshots {
    async fn next_snapshot(&mut self) -> Result<Option<ClusterSnapshot>, BackendError> {
        let Some(&(at, _)) = self.0.front() else { return std::future::pending().await };
        tokio::time::sleep_until(at).await;
        Ok(self.0.pop_front().map(|(_, snapshot)| snapshot))
    }

    async fn announce(&mut self, _announcement: &LocalAnnouncement) -> Result<(), BackendError> {
        Ok(())
    }

    async fn clean_up(&mut self, _node: &str) -> Result<(), BackendError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_never_answers_holds_up_neither_passes_nor_shutdown() {
    let now = unix_seconds(std::time::SystemTime::now());
    let x = ClusterSnapshot { nodes: vec![node("x1", 1, now), node("x2", 2, now)], peers: vec![], now };
    let mut with_y = x.clone();
    with_y.nodes.push(NodeSpec { location: "y".into(), ..node("y1", 3, now) });
    let start = tokio::time::Instant::now();
    let cluster = Snapshots([(start, x), (start + Duration::from_secs(2), with_y)].into());
    let mut config = Config::new(Options::for_host("x2"));
    config.clean_up = false;
    let passes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&passes);
    let sink = move |report: &Report| {
        if let Report::Mesh { nodes, .. } = report {
            seen.lock().expect("not poisoned").push(*nodes);
        }
    };
    let mut driver = Driver::new(cluster, MemoryDataplane::default(), SilentHost, config).with_sink(sink);
    let shutdown = tokio::time::sleep(Duration::from_secs(4));
    tokio::time::timeout(Duration::from_secs(10), driver.run(shutdown))
        .await
        .expect("shutdown within its bound while probes hang");
    let passes = passes.lock().expect("not poisoned").clone();
    assert_eq!(passes.last(), Some(&3), "the second snapshot had its pass: nodes in each pass {passes:?}");
}
