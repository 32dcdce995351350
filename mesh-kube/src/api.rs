//! The live Kubernetes backend: Node and Peer watchers feeding coalesced snapshots, and the
//! local node's annotations; the one place a Kubernetes client is built.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use mesh_core::backend::{BackendError, ClusterBackend, LocalAnnouncement, SnapshotDiagnostics};
use mesh_core::time::{Backoff, unix_seconds};
use mesh_core::{ClusterSnapshot, Skipped};
use tokio::time::{Instant, sleep, sleep_until};

use crate::annotations::{OWNED_ANNOTATIONS, announcement_annotations};
use crate::crd::Peer;
use crate::pacing::{PacedWatches, WatchPacing};
use crate::translate::{self, TranslatedNode, TranslatedPeer};
use crate::{Diagnostics, Error, Result, Translated};

/// The field manager of every write, so `kubectl get node -o yaml --show-managed-fields` names us.
pub const FIELD_MANAGER: &str = "mesh-agent";

/// How API calls are retried: exponential backoff with jitter, bounded.
///
/// Writes (`announce`, `clean_up`, `check_crd`) give up after `attempts` tries; the watchers
/// never give up, they wait between `initial` and `max` after each failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries of one write, the first included (at least 1).
    pub attempts: u32,
    /// The delay after the first failure; it doubles after each further failure.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// 5 tries, 200 ms doubling to at most 4 s, jittered: a write gives up after about 3 s. A
    /// watcher facing a long outage waits its backoff (2 to 4 s) after a failed watch, and the
    /// watch that follows waits the pacing of watches that end at once (2 to 4 s more, see
    /// `pacing`): one try per 4 to 8 s per resource, so the agent sees the cluster again within
    /// about 8 s of its return, under one request per second.
    fn default() -> Self {
        RetryPolicy { attempts: 5, initial: Duration::from_millis(200), max: Duration::from_secs(4) }
    }
}

impl RetryPolicy {
    /// The delay after failure number `failure` (0-based): `initial * 2^failure`, capped at
    /// `max`, then scaled by a random factor in [0.5, 1] so that agents restarted together do
    /// not hammer the API server in step.
    pub fn delay(&self, failure: u32) -> Duration {
        let random = RandomState::new().hash_one(std::time::Instant::now());
        self.backoff().jittered(failure, random)
    }

    /// The delays without jitter.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.initial, self.max)
    }
}

/// The Kubernetes [`ClusterBackend`]: watches Nodes and Peers, publishes the local node.
///
/// The watchers run while [`next_snapshot`](ClusterBackend::next_snapshot) is awaited (no
/// background task; the HTTP streams buffer in between). `next_snapshot` is cancel safe: a
/// change seen by a cancelled call is delivered by the next one.
///
/// Failure handling: a failed list or watch is retried with jittered exponential backoff
/// ([`RetryPolicy`]); a `410 Gone` relists at once (kube's watcher,
/// and a restart of the watcher when the API server answers the watch request itself with 410).
/// Each failure is returned once by `next_snapshot` (the agent then fails static); it never
/// returns an empty or partial cluster because of an error. The first complete list after a
/// failure, or the first watch of each failed resource established after it, is returned as a
/// snapshot even if nothing changed.
pub struct KubeBackend {
    hostname: String,
    nodes_api: Api<Node>,
    crds_api: Api<CustomResourceDefinition>,
    nodes: Reflector<Node, TranslatedNode>,
    peers: Reflector<Peer, std::result::Result<TranslatedPeer, Skipped>>,
    /// A change arrived that no returned snapshot holds yet.
    dirty: bool,
    debounce: Duration,
    retry: RetryPolicy,
    watch_pacing: WatchPacing,
    /// After a read error, per resource that failed: its URL and the number of its watches
    /// established then (see [`WatchPacing::established`]). Cleared once each of them has
    /// established another: one resource served again says nothing of the other.
    blind: Vec<(String, u64)>,
    last: Option<Translated>,
    diagnostics: Diagnostics,
}

impl std::fmt::Debug for KubeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend")
            .field("hostname", &self.hostname)
            .field("nodes", &self.nodes.store.len())
            .field("peers", &self.peers.store.len())
            .field("synced", &(self.nodes.synced && self.peers.synced))
            .field("debounce", &self.debounce)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl KubeBackend {
    /// The default coalescing window: changes arriving within it make one snapshot.
    pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

    /// A backend for the agent on `hostname` (the Node name), reading locations from
    /// `topology_label` when a Node has no `kilo.squat.ai/location` annotation.
    ///
    /// Nothing is requested until the first [`next_snapshot`](ClusterBackend::next_snapshot).
    pub fn new(client: Client, hostname: impl Into<String>, topology_label: impl Into<String>) -> Self {
        let topology_label = topology_label.into();
        let nodes_api: Api<Node> = Api::all(client.clone());
        let retry = RetryPolicy::default();
        // The watchers' client paces watches that the API server ends at once.
        let watch_pacing = WatchPacing::new(retry.backoff());
        let watch_client = PacedWatches::client(client.clone(), watch_pacing.clone());
        let peers_api: Api<Peer> = Api::all(watch_client.clone());
        KubeBackend {
            hostname: hostname.into(),
            nodes: Reflector::new(
                "nodes",
                Api::all(watch_client),
                Box::new(move |node: &Node| translate::node(node, &topology_label)),
                retry.clone(),
            ),
            peers: Reflector::new("peers", peers_api, Box::new(translate::peer), retry.clone()),
            nodes_api,
            crds_api: Api::all(client),
            dirty: false,
            debounce: Self::DEFAULT_DEBOUNCE,
            retry,
            watch_pacing,
            blind: Vec::new(),
            last: None,
            diagnostics: Diagnostics::default(),
        }
    }

    /// Sets the coalescing window (default [`Self::DEFAULT_DEBOUNCE`]).
    #[must_use]
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// Sets how API calls are retried (default [`RetryPolicy::default`]).
    #[must_use]
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.nodes.retry = retry.clone();
        self.peers.retry = retry.clone();
        self.watch_pacing.set_backoff(retry.backoff());
        self.retry = retry;
        self
    }

    /// The node this backend announces.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Skipped objects and warnings of the last snapshot returned (Nodes first, then Peers, each
    /// by name; `files` is always empty).
    pub fn diagnostics(&self) -> &Diagnostics {
        &self.diagnostics
    }

    /// The latest translation of a Node (it may be newer than the last snapshot), e.g. to read
    /// the local node's `spec.no_internal_ip`.
    pub fn node(&self, name: &str) -> Option<&TranslatedNode> {
        self.nodes.store.get(name)
    }

    /// The latest translation of the local Node.
    pub fn local_node(&self) -> Option<&TranslatedNode> {
        self.node(&self.hostname)
    }

    /// Whether both Nodes and Peers have been listed completely at least once.
    pub fn is_synced(&self) -> bool {
        self.nodes.synced && self.peers.synced
    }

    /// The last list or watch error, until the next successful event (for health reporting).
    pub fn last_watch_error(&self) -> Option<&str> {
        self.nodes.last_error.as_deref().or(self.peers.last_error.as_deref())
    }

    /// Checks that the Peer CRD (`peers.kilo.squat.ai`) is installed, as Kilo does at start.
    pub async fn check_crd(&self) -> Result<()> {
        let name = format!("{}.{}", Peer::plural(&()), Peer::group(&()));
        with_retries(&self.retry, || self.crds_api.get(&name))
            .await
            .map(drop)
            .map_err(|source| Error::GetCrd { name, source })
    }

    /// Publishes `announcement` on the local Node; see [`ClusterBackend::announce`].
    pub async fn announce_node(&self, announcement: &LocalAnnouncement) -> Result<()> {
        let annotations = announcement_annotations(announcement);
        let patch = serde_json::json!({ "metadata": { "annotations": annotations } });
        self.patch_annotations(&self.hostname, &patch).await
    }

    /// Removes the annotations of [`OWNED_ANNOTATIONS`] from `node`; see
    /// [`ClusterBackend::clean_up`]. A Node that does not exist has nothing to clean.
    ///
    /// One JSON merge patch with every owned key set to `null`: `null` deletes a key that is
    /// there and is a no-op for one that is not, so there is no read first. That keeps the
    /// agent's RBAC to Kilo's verbs (nodes: list, watch, patch), which Cozystack's chart grants,
    /// and unlike a JSON patch `remove` it cannot fail because another writer removed a key first.
    pub async fn clean_up_node(&self, node: &str) -> Result<()> {
        let owned: BTreeMap<&str, serde_json::Value> =
            OWNED_ANNOTATIONS.iter().map(|key| (*key, serde_json::Value::Null)).collect();
        let patch = serde_json::json!({ "metadata": { "annotations": owned } });
        match self.patch_annotations(node, &patch).await {
            Err(Error::PatchNode { source: kube::Error::Api(status), .. }) if status.code == 404 => Ok(()),
            result => result,
        }
    }

    async fn patch_annotations(&self, node: &str, patch: &serde_json::Value) -> Result<()> {
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
        let patch = Patch::Merge(patch);
        with_retries(&self.retry, || self.nodes_api.patch(node, &params, &patch))
            .await
            .map(drop)
            .map_err(|source| Error::PatchNode { node: node.to_owned(), source })
    }

    /// Runs both watchers until one of them reports a change (or until `deadline`).
    async fn step(&mut self, deadline: Option<Instant>) {
        let nodes = &mut self.nodes;
        let peers = &mut self.peers;
        let changed = tokio::select! {
            changed = nodes.step() => changed,
            changed = peers.step() => changed,
            () = sleep_until_or_forever(deadline) => false,
        };
        self.dirty |= changed;
        // One resource failed: take what the other has ready as well (the answer to a request
        // sent while the API server still failed), so both failures make one error. Reported
        // one after the other, each would pause the agent's reads once more, and the agent
        // would see the cluster again seconds later than it could.
        if nodes.fresh_error.is_some() || peers.fresh_error.is_some() {
            let ready = [nodes.step_if_ready(), peers.step_if_ready()];
            self.dirty |= ready.into_iter().flatten().any(|changed| changed);
        }
    }

    /// A list or watch failed since the last call: the agent must know it cannot see the
    /// cluster (it fails static). The next complete list is returned as a snapshot even if
    /// nothing changed, so the agent learns at once that it sees the cluster again.
    fn fail_on_read_error(&mut self) -> Result<(), BackendError> {
        let failed = [
            self.nodes.fresh_error.take().map(|error| (self.nodes.api.resource_url(), error)),
            self.peers.fresh_error.take().map(|error| (self.peers.api.resource_url(), error)),
        ];
        let mut errors = Vec::new();
        for (resource, error) in failed.into_iter().flatten() {
            if !self.blind.iter().any(|(blind, _)| blind == resource) {
                self.blind.push((resource.to_owned(), self.watch_pacing.established(resource)));
            }
            errors.push(error);
        }
        if errors.is_empty() {
            return Ok(());
        }
        self.last = None;
        Err(BackendError::new("failed to read the cluster", errors.join("; ")))
    }

    /// Whether every resource that failed has established a watch since.
    fn served_again(&self) -> bool {
        self.blind.iter().all(|(resource, mark)| self.watch_pacing.established(resource) > *mark)
    }

    fn build(&self) -> Translated {
        Translated::collect(self.nodes.store.values(), self.peers.store.values(), Diagnostics::default())
    }
}

#[async_trait::async_trait]
impl ClusterBackend for KubeBackend {
    /// Waits until both Nodes and Peers are listed and something changed, lets further changes
    /// arrive for the debounce window, and returns the cluster as of then. A change that leaves
    /// every translated Node, Peer and diagnostic as it was (a status update, a relist that
    /// finds nothing new) does not produce a snapshot. Never returns `Ok(None)`; returns each
    /// failed list or watch once as an error.
    async fn next_snapshot(&mut self) -> Result<Option<ClusterSnapshot>, BackendError> {
        loop {
            while !(self.is_synced() && self.dirty) {
                // While blind, look every half second whether a watch got through again: a
                // watch that starts brings no event until something changes.
                let blind = !self.blind.is_empty();
                let deadline = blind.then(|| Instant::now() + Duration::from_millis(500));
                self.step(deadline).await;
                self.fail_on_read_error()?;
                if blind && self.served_again() {
                    self.blind.clear();
                    self.dirty = true;
                }
            }
            let deadline = Instant::now() + self.debounce;
            while Instant::now() < deadline {
                self.step(Some(deadline)).await;
                self.fail_on_read_error()?;
            }
            self.dirty = false;
            let current = self.build();
            if self.last.as_ref() == Some(&current) {
                continue;
            }
            let snapshot = current.snapshot(unix_seconds(SystemTime::now()));
            self.diagnostics = current.diagnostics.clone();
            self.last = Some(current);
            return Ok(Some(snapshot));
        }
    }

    fn diagnostics(&self) -> SnapshotDiagnostics {
        self.diagnostics.for_agent()
    }

    async fn announce(&mut self, announcement: &LocalAnnouncement) -> Result<(), BackendError> {
        if !announcement.hostname.is_empty() && announcement.hostname != self.hostname {
            return Err(BackendError::new(
                format!("failed to announce node {:?}", announcement.hostname),
                format!("this backend publishes only its own node {:?}", self.hostname),
            ));
        }
        self.announce_node(announcement)
            .await
            .map_err(|error| BackendError::new(format!("failed to announce node {:?}", self.hostname), error))
    }

    async fn clean_up(&mut self, node: &str) -> Result<(), BackendError> {
        self.clean_up_node(node)
            .await
            .map_err(|error| BackendError::new(format!("failed to clean up node {node:?}"), error))
    }
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Retries `operation` on errors that may go away (5xx, 429, transport), per `policy`.
async fn with_retries<T, F, Fut>(policy: &RetryPolicy, mut operation: F) -> kube::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = kube::Result<T>>,
{
    let mut failures = 0;
    loop {
        match operation().await {
            Err(error) if failures + 1 < policy.attempts && is_retryable(&error) => {
                tracing::debug!(%error, attempt = failures + 1, "API call failed; retrying");
                sleep(policy.delay(failures)).await;
                failures += 1;
            }
            result => return result,
        }
    }
}

fn is_retryable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

type Translate<K, V> = Box<dyn Fn(&K) -> V + Send + Sync>;

/// A watcher stream. The mutex is never locked (only `get_mut` is used): it makes the backend
/// `Sync`, so futures borrowing it are `Send`.
type WatchStream<K> = Mutex<BoxStream<'static, watcher::Result<Event<K>>>>;

/// One watched resource: a kube watcher and the translated objects by name.
///
/// Like kube's reflector, but it stores translations instead of objects (a Node is large, its
/// translation small) and it can restart its watcher.
struct Reflector<K: Resource + 'static, V> {
    resource: &'static str,
    api: Api<K>,
    stream: WatchStream<K>,
    translate: Translate<K, V>,
    store: BTreeMap<String, V>,
    /// Objects of a relist in progress; they replace `store` when it completes.
    relist: Option<BTreeMap<String, V>>,
    synced: bool,
    retry: RetryPolicy,
    failures: u32,
    resume_at: Option<Instant>,
    last_error: Option<String>,
    /// A failure not yet reported by `next_snapshot`.
    fresh_error: Option<String>,
}

impl<K, V> Reflector<K, V>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    fn new(resource: &'static str, api: Api<K>, translate: Translate<K, V>, retry: RetryPolicy) -> Self {
        Reflector {
            resource,
            stream: Self::watch(&api),
            api,
            translate,
            store: BTreeMap::new(),
            relist: None,
            synced: false,
            retry,
            failures: 0,
            resume_at: None,
            last_error: None,
            fresh_error: None,
        }
    }

    fn watch(api: &Api<K>) -> WatchStream<K> {
        // Lists are served from the API server's watch cache (resourceVersion=0, as client-go's
        // informers do), not as quorum reads from etcd: every node runs an agent.
        let mut config = watcher::Config::default().any_semantic();
        config.page_size = None;
        Mutex::new(watcher::watcher(api.clone(), config).boxed())
    }

    /// Waits for the next watcher event and applies it; `true` when the store changed.
    ///
    /// Cancel safe: state lives in `self`, and an event is applied without an await.
    async fn step(&mut self) -> bool {
        if let Some(resume_at) = self.resume_at {
            sleep_until(resume_at).await;
            self.resume_at = None;
        }
        let stream = self.stream.get_mut().unwrap_or_else(PoisonError::into_inner);
        match stream.next().await {
            Some(Ok(event)) => {
                // `Init` comes before every list attempt, also the ones that fail: only
                // progress (objects or the end of a list) resets the backoff.
                if !matches!(event, Event::Init) {
                    self.failures = 0;
                    self.last_error = None;
                }
                self.apply(event)
            }
            Some(Err(error)) => {
                self.failed(error);
                false
            }
            None => {
                // kube's watcher never ends; should it, start over.
                self.stream = Self::watch(&self.api);
                false
            }
        }
    }

    /// [`Self::step`] if it finishes at once (an answer has arrived already); `None` when it
    /// would wait, or when a failure is still to be reported.
    fn step_if_ready(&mut self) -> Option<bool> {
        if self.fresh_error.is_some() {
            return None;
        }
        self.step().now_or_never()
    }

    fn apply(&mut self, event: Event<K>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                let translated = (self.translate)(&object);
                self.relist.get_or_insert_with(BTreeMap::new).insert(object.name_any(), translated);
                false
            }
            Event::InitDone => {
                self.store = self.relist.take().unwrap_or_default();
                self.synced = true;
                true
            }
            Event::Apply(object) => {
                let translated = (self.translate)(&object);
                self.store.insert(object.name_any(), translated);
                true
            }
            Event::Delete(object) => self.store.remove(&object.name_any()).is_some(),
        }
    }

    fn failed(&mut self, error: watcher::Error) {
        let gone = match &error {
            watcher::Error::WatchError(status) => status.code == 410,
            watcher::Error::WatchStartFailed(kube::Error::Api(status)) if status.code == 410 => {
                // kube's watcher would retry the same stale resourceVersion forever.
                self.stream = Self::watch(&self.api);
                true
            }
            _ => false,
        };
        if gone {
            // Routine: the resourceVersion left the API server's window. Relist now.
            tracing::debug!(resource = self.resource, %error, "watch expired; relisting");
            return;
        }
        let delay = self.retry.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        tracing::warn!(resource = self.resource, %error, retry_in = ?delay, "failed to watch; keeping the last known state");
        self.last_error = Some(format!("failed to watch {}: {error}", self.resource));
        self.fresh_error.clone_from(&self.last_error);
        self.resume_at = Some(Instant::now() + delay);
    }
}

/// A client for the cluster of `kubeconfig` (else the in-cluster configuration, else
/// `$KUBECONFIG` or `~/.kube/config`), talking to `master` when given (Kilo's `--master`).
pub async fn client(kubeconfig: Option<&Path>, master: Option<&str>) -> Result<Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let invalid = |message: String| Error::Kubeconfig { path: path.to_owned(), message };
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| invalid(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| invalid(e.to_string()))?
        }
        None => kube::Config::infer().await.map_err(|e| Error::NoConfiguration(e.to_string()))?,
    };
    if let Some(master) = master {
        config.cluster_url = master
            .parse()
            .map_err(|e: http::uri::InvalidUri| Error::Master { master: master.to_owned(), message: e.to_string() })?;
    }
    Client::try_from(config).map_err(|source| Error::Client { source })
}

/// Every Node and Peer of the cluster, listed once (for the offline tools).
pub async fn list(client: Client) -> Result<(Vec<Node>, Vec<Peer>)> {
    let params = kube::api::ListParams::default();
    let nodes = Api::<Node>::all(client.clone())
        .list(&params)
        .await
        .map_err(|source| Error::List { resource: "nodes", source })?;
    let peers =
        Api::<Peer>::all(client).list(&params).await.map_err(|source| Error::List { resource: "peers", source })?;
    Ok((nodes.items, peers.items))
}
