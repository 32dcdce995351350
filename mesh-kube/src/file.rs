//! The file backend: the cluster as a directory of Node and Peer files, for clusters without
//! Kubernetes (and for end-to-end tests).
//!
//! # Layout
//!
//! ```text
//! DIR/nodes/<name>.yaml   one Node each, as `kubectl get node <name> -o yaml` prints it
//! DIR/peers/<name>.yaml   one Peer (kilo.squat.ai/v1alpha1) each; peers/ is optional
//! ```
//!
//! `.yml` and `.json` files are read too (JSON files are parsed as JSON). Dotfiles and every
//! name without one of these extensions (editor backups `a.yaml~`, swap files, `a.yaml.tmp`, the
//! backend's own `.a.yaml.tmp`) are ignored. A file holds exactly one object; `kind` and
//! `apiVersion` may be left out, `metadata.name` too (the file name is the object's name), but
//! a `metadata.name` that differs from the file name is an error, so that one file is the one
//! place a node's annotations are read from and written to. When `a.yaml` and `a.json` both
//! exist, the first of `.yaml`, `.yml`, `.json` is the object and the others are reported.
//!
//! # Change detection
//!
//! [`FileBackend::next_snapshot`](ClusterBackend::next_snapshot) polls both directories every
//! [`FileBackend::DEFAULT_POLL_INTERVAL`] with tokio timers (no inotify: it works the same on
//! every file system, bind mount and container runtime, and a poll costs a `stat` per file). A
//! file is read again when its size, modification or change time or inode differs from the last
//! read, or when that read was less than two seconds after its last modification (a write within
//! the same timestamp tick could otherwise go unseen). Files are compared by content and then by
//! their translation, so a rewrite with identical content, or a change that does not alter what
//! the mesh sees, yields no snapshot. After a change, the backend polls every
//! [`FileBackend::DEFAULT_DEBOUNCE`] until the directory is quiet (at most one second), so a
//! burst of writes makes one snapshot; a change is seen within about half a second.
//!
//! # Malformed files
//!
//! A file that cannot be read or parsed (YAML or JSON syntax, a field of the wrong type, the
//! wrong `kind`, several objects) never stops the backend. It is reported in
//! [`FileBackend::diagnostics`] as a [`FileProblem`] with its path and, where the parser knows
//! it, the line and column. If the file held a valid object before, that **last valid version
//! stays in the cluster** (reported as a [`Warning`]): a node file caught half-written by a
//! writer that does not rename, or mangled by a typo, must not tear down the WireGuard
//! tunnels of a whole location. A file that never parsed is left out (reported as
//! [`Skipped`]). Removing the file removes the object. A Peer that parses but fails Kilo's
//! validation is skipped as Kilo skips it, whatever it was before.
//!
//! # Writing
//!
//! [`announce`](ClusterBackend::announce) and [`clean_up`](ClusterBackend::clean_up) rewrite
//! one node file: they read it, change only the annotations the agent owns
//! ([`OWNED_ANNOTATIONS`]), and replace the file atomically (a temporary dotfile in the same
//! directory, `fsync`, `rename`), so a reader sees the old or the new file, never a mix. Every
//! other field and annotation keeps its value; key order and comments are not kept (the file is
//! re-serialized, as YAML or as JSON after its extension). A write that would not change the
//! annotations is not done. Several agents, each in its own network namespace, may share one
//! directory: each writes only its own node file. Edits by hand to a node file while its agent
//! writes it may be lost (there is no lock, as there is no resourceVersion).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_core::backend::{BackendError, ClusterBackend, LocalAnnouncement, SnapshotDiagnostics};
use mesh_core::time::unix_seconds;
use mesh_core::{ClusterSnapshot, ObjectKind, Skipped, Warning};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::time::{Instant, sleep};

use crate::annotations::{OWNED_ANNOTATIONS, announcement_annotations};
use crate::crd::Peer;
use crate::translate::{self, TranslatedNode, TranslatedPeer};
use crate::{Diagnostics, Error, Result, Translated};

/// The subdirectory of node files.
pub const NODES_DIR: &str = "nodes";
/// The subdirectory of peer files.
pub const PEERS_DIR: &str = "peers";

/// Object file extensions, in order of precedence when several files name the same object.
const EXTENSIONS: [&str; 3] = [".yaml", ".yml", ".json"];

/// However long a burst lasts, a snapshot is taken at most this long after its first change.
const MAX_SETTLE: Duration = Duration::from_secs(1);

/// A file modified less than this before it was read is read again at the next poll, whatever
/// its metadata says: coarse timestamps cannot tell two writes within one tick apart.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// A node or peer file that could not be used.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileProblem {
    /// The file.
    pub path: PathBuf,
    /// The line (1-based) of a syntax or type error, where the parser knows it.
    pub line: Option<usize>,
    /// The column (1-based) of a syntax or type error, where the parser knows it.
    pub column: Option<usize>,
    /// What is wrong (a parser message includes its location, e.g. `at line 3 column 1`).
    pub message: String,
    /// The file held a valid object before, and that version is still in the cluster.
    pub kept_last_valid: bool,
}

impl fmt::Display for FileProblem {
    /// `PATH: MESSAGE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// The file [`ClusterBackend`]: reads `DIR/nodes` and `DIR/peers`, publishes the local node in
/// `DIR/nodes/<hostname>.yaml`. See the [module documentation](self) for the format, change
/// detection and the malformed-file policy.
///
/// `next_snapshot` is cancel safe: a change seen by a cancelled call is delivered by the next.
/// File system work runs on tokio's blocking pool.
pub struct FileBackend {
    dir: PathBuf,
    hostname: String,
    topology_label: String,
    poll_interval: Duration,
    debounce: Duration,
    nodes: Folder<TranslatedNode>,
    peers: Folder<std::result::Result<TranslatedPeer, Skipped>>,
    /// A change was seen that no returned snapshot holds yet.
    dirty: bool,
    last: Option<Translated>,
    diagnostics: Diagnostics,
    scan_error: Option<String>,
}

impl fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileBackend")
            .field("dir", &self.dir)
            .field("hostname", &self.hostname)
            .field("topology_label", &self.topology_label)
            .field("node_files", &self.nodes.files.len())
            .field("peer_files", &self.peers.files.len())
            .field("poll_interval", &self.poll_interval)
            .field("debounce", &self.debounce)
            .finish_non_exhaustive()
    }
}

impl FileBackend {
    /// How often the directories are polled for changes.
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

    /// After a change, how long the directories must stay quiet before a snapshot is taken.
    pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

    /// A backend on `dir` for the agent on `hostname` (the node name, and the file
    /// `nodes/<hostname>.yaml`), reading locations from `topology_label` when a Node has no
    /// `kilo.squat.ai/location` annotation.
    ///
    /// Fails when `dir` or `dir/nodes` is not a directory, or when `hostname` cannot be a file
    /// name. Nothing is read until the first [`next_snapshot`](ClusterBackend::next_snapshot).
    pub fn new(
        dir: impl Into<PathBuf>,
        hostname: impl Into<String>,
        topology_label: impl Into<String>,
    ) -> Result<Self> {
        let dir = dir.into();
        let hostname = hostname.into();
        check_name(&hostname)?;
        for path in [dir.clone(), dir.join(NODES_DIR)] {
            let metadata = fs::metadata(&path).map_err(|source| Error::OpenDirectory { path: path.clone(), source })?;
            if !metadata.is_dir() {
                let source = io::Error::new(ErrorKind::NotADirectory, "not a directory");
                return Err(Error::OpenDirectory { path, source });
            }
        }
        Ok(FileBackend {
            nodes: Folder::new(dir.join(NODES_DIR), ObjectKind::Node),
            peers: Folder::new(dir.join(PEERS_DIR), ObjectKind::Peer),
            dir,
            hostname,
            topology_label: topology_label.into(),
            poll_interval: Self::DEFAULT_POLL_INTERVAL,
            debounce: Self::DEFAULT_DEBOUNCE,
            dirty: false,
            last: None,
            diagnostics: Diagnostics::default(),
            scan_error: None,
        })
    }

    /// Sets how often the directories are polled (default [`Self::DEFAULT_POLL_INTERVAL`]).
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the quiet time that ends a burst (default [`Self::DEFAULT_DEBOUNCE`]).
    #[must_use]
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node this backend announces.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Skipped objects, warnings and unusable files of the last snapshot returned.
    pub fn diagnostics(&self) -> &Diagnostics {
        &self.diagnostics
    }

    /// The latest translation of a Node (it may be newer than the last snapshot; the last valid
    /// version of a malformed file), e.g. to read its `spec.no_internal_ip`.
    pub fn node(&self, name: &str) -> Option<&TranslatedNode> {
        self.nodes.current(name)
    }

    /// The latest translation of the local Node.
    pub fn local_node(&self) -> Option<&TranslatedNode> {
        self.node(&self.hostname)
    }

    /// Why the last poll failed (e.g. `nodes/` was removed), until a poll succeeds. While polls
    /// fail, the cluster stays as it was last read.
    pub fn last_scan_error(&self) -> Option<&str> {
        self.scan_error.as_deref()
    }

    /// Publishes `announcement` in the local node's file; see [`ClusterBackend::announce`].
    pub async fn announce_node(&self, announcement: &LocalAnnouncement) -> Result<()> {
        let wanted = announcement_annotations(announcement);
        let nodes_dir = self.nodes.dir.clone();
        let hostname = self.hostname.clone();
        blocking(move || {
            let path = find_node_file(&nodes_dir, &hostname)
                .ok_or_else(|| Error::MissingNodeFile { path: nodes_dir.join(format!("{hostname}.yaml")) })?;
            let edited = edit_annotations(&path, |annotations| {
                let mut changed = false;
                for (key, value) in wanted {
                    if annotations.get(&key).and_then(Value::as_str) != Some(value.as_str()) {
                        annotations.insert(key, Value::String(value));
                        changed = true;
                    }
                }
                changed
            })?;
            edited.ok_or(Error::MissingNodeFile { path }).map(drop)
        })
        .await
    }

    /// Removes the annotations of [`OWNED_ANNOTATIONS`] from `node`'s file; see
    /// [`ClusterBackend::clean_up`]. A node without a file has nothing to clean.
    pub async fn clean_up_node(&self, node: &str) -> Result<()> {
        check_name(node)?;
        let nodes_dir = self.nodes.dir.clone();
        let node = node.to_owned();
        blocking(move || {
            let Some(path) = find_node_file(&nodes_dir, &node) else { return Ok(()) };
            edit_annotations(&path, |annotations| {
                let mut changed = false;
                for key in OWNED_ANNOTATIONS {
                    changed |= annotations.remove(*key).is_some();
                }
                changed
            })
            .map(drop)
        })
        .await
    }

    /// Reads what changed in both directories; `Some(true)` when a translation or a problem
    /// changed, `None` when the directories could not be listed (the cluster is kept as it was).
    ///
    /// Cancel safe: `self` changes only after the last await.
    async fn poll(&mut self) -> Option<bool> {
        let (nodes_dir, nodes_known) = (self.nodes.dir.clone(), self.nodes.trusted_fingerprints());
        let (peers_dir, peers_known) = (self.peers.dir.clone(), self.peers.trusted_fingerprints());
        let scanned = tokio::task::spawn_blocking(move || {
            let nodes = scan(&nodes_dir, &nodes_known).and_then(|nodes| {
                nodes.ok_or_else(|| format!("failed to list {}: no such directory", nodes_dir.display()))
            });
            // `peers/` is optional: without it there are no peers.
            let peers = scan(&peers_dir, &peers_known).map(Option::unwrap_or_default);
            (nodes, peers)
        })
        .await;
        let (nodes, peers) = match scanned {
            Ok((Ok(nodes), Ok(peers))) => (nodes, peers),
            Ok((Err(error), _) | (_, Err(error))) => return self.scan_failed(error),
            Err(error) => return self.scan_failed(format!("failed to scan {}: {error}", self.dir.display())),
        };
        if let Some(error) = self.scan_error.take() {
            tracing::info!(dir = %self.dir.display(), %error, "file backend directory readable again");
        }
        let topology_label = &self.topology_label;
        let changed_nodes = self.nodes.update(nodes, |path, stem, text| parse_node(path, stem, text, topology_label));
        let changed_peers = self.peers.update(peers, parse_peer);
        let changed = changed_nodes | changed_peers;
        self.dirty |= changed;
        Some(changed)
    }

    fn scan_failed(&mut self, error: String) -> Option<bool> {
        if self.scan_error.as_ref() != Some(&error) {
            tracing::warn!(%error, "failed to read the file backend directory; keeping the last known cluster");
            self.scan_error = Some(error);
        }
        None
    }

    fn build(&self) -> Translated {
        let mut diagnostics = Diagnostics::default();
        let nodes = self.nodes.resolve(&mut diagnostics);
        let peers = self.peers.resolve(&mut diagnostics);
        let mut built = Translated::collect(nodes, peers, diagnostics);
        let diagnostics = &mut built.diagnostics;
        // Nodes first, then Peers, each by name; each object's translation warnings stay in
        // annotation order (a stable sort).
        diagnostics.skipped.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        diagnostics.warnings.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        diagnostics.files.sort();
        built
    }

    fn publish(&mut self, built: Translated) -> ClusterSnapshot {
        let snapshot = built.snapshot(unix_seconds(SystemTime::now()));
        self.diagnostics = built.diagnostics.clone();
        self.last = Some(built);
        snapshot
    }
}

#[async_trait::async_trait]
impl ClusterBackend for FileBackend {
    /// The first call returns the cluster as it is. Later calls wait until a file change alters
    /// a translated Node or Peer or a diagnostic, let a burst of writes settle, and return the
    /// cluster as of then. Never returns `Ok(None)`. When the directories cannot be listed any
    /// more, it returns the error once; the next call waits until they can and returns them
    /// (see [`FileBackend::last_scan_error`]).
    async fn next_snapshot(&mut self) -> Result<Option<ClusterSnapshot>, BackendError> {
        if self.last.is_none() {
            while self.poll().await.is_none() {
                sleep(self.poll_interval).await;
            }
            self.dirty = false;
            let built = self.build();
            return Ok(Some(self.publish(built)));
        }
        loop {
            while !self.dirty {
                sleep(self.poll_interval).await;
                if self.poll().await.is_none() {
                    // The agent must know it cannot see the cluster (it fails static). The
                    // next call waits for the directories and returns them as a snapshot,
                    // which tells the agent it sees the cluster again.
                    self.last = None;
                    let error = self.scan_error.clone().unwrap_or_else(|| "unreadable".to_owned());
                    return Err(BackendError::new(
                        format!("failed to read the cluster in {}", self.dir.display()),
                        error,
                    ));
                }
            }
            let deadline = Instant::now() + MAX_SETTLE;
            loop {
                sleep(self.debounce).await;
                if self.poll().await != Some(true) || Instant::now() >= deadline {
                    break;
                }
            }
            self.dirty = false;
            let built = self.build();
            if self.last.as_ref() != Some(&built) {
                return Ok(Some(self.publish(built)));
            }
        }
    }

    fn diagnostics(&self) -> SnapshotDiagnostics {
        self.diagnostics.for_agent()
    }

    async fn announce(&mut self, announcement: &LocalAnnouncement) -> Result<(), BackendError> {
        let operation = format!("failed to announce node {:?}", self.hostname);
        if !announcement.hostname.is_empty() && announcement.hostname != self.hostname {
            return Err(BackendError::new(
                format!("failed to announce node {:?}", announcement.hostname),
                format!("this backend publishes only its own node {:?}", self.hostname),
            ));
        }
        self.announce_node(announcement).await.map_err(|error| BackendError::new(operation, error))
    }

    async fn clean_up(&mut self, node: &str) -> Result<(), BackendError> {
        self.clean_up_node(node)
            .await
            .map_err(|error| BackendError::new(format!("failed to clean up node {node:?}"), error))
    }
}

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    /// The status change time: moves on every write, even one that resets the modification time.
    changed: Option<SystemTime>,
    /// Device and inode: a rename over the file gives a new inode.
    inode: (u64, u64),
}

impl Fingerprint {
    fn of(metadata: &fs::Metadata) -> Self {
        #[cfg(unix)]
        let (changed, inode) = {
            use std::os::unix::fs::MetadataExt as _;
            let changed = u64::try_from(metadata.ctime()).ok().map(|seconds| {
                UNIX_EPOCH + Duration::new(seconds, u32::try_from(metadata.ctime_nsec()).unwrap_or_default())
            });
            (changed, (metadata.dev(), metadata.ino()))
        };
        #[cfg(not(unix))]
        let (changed, inode) = (None, (0, 0));
        Fingerprint { len: metadata.len(), modified: metadata.modified().ok(), changed, inode }
    }

    /// Whether any later write is sure to change this fingerprint: the file's last change is
    /// older than [`RACY_WINDOW`] before `read_at`, the instant just before it was read.
    fn is_settled(&self, read_at: SystemTime) -> bool {
        let last_change = self.modified.max(self.changed);
        match (last_change, read_at.checked_sub(RACY_WINDOW)) {
            (Some(last_change), Some(limit)) => last_change < limit,
            _ => false,
        }
    }
}

/// One directory entry as a poll found it.
#[derive(Debug)]
enum Observed {
    /// Same settled fingerprint as the last read: not read again.
    Unchanged,
    /// Read now.
    Read { fingerprint: Fingerprint, bytes: Vec<u8>, settled: bool },
    /// Exists but cannot be read.
    Failed(io::Error),
}

/// Lists `dir` and reads the object files whose fingerprint is not in `known`. Files that
/// disappear between the listing and the read are left out. `Ok(None)`: `dir` does not exist.
fn scan(
    dir: &Path,
    known: &HashMap<String, Fingerprint>,
) -> std::result::Result<Option<BTreeMap<String, Observed>>, String> {
    let listing_failed = |error: io::Error| format!("failed to list {}: {error}", dir.display());
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(listing_failed(error)),
    };
    let mut observed = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(listing_failed)?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if object_name(&name).is_none() {
            continue;
        }
        let path = entry.path();
        let read_at = SystemTime::now();
        // `metadata` follows symbolic links, as reading does.
        let fingerprint = match fs::metadata(&path) {
            Ok(metadata) => Fingerprint::of(&metadata),
            Err(error) if error.kind() == ErrorKind::NotFound => continue,
            Err(error) => {
                observed.insert(name, Observed::Failed(error));
                continue;
            }
        };
        if known.get(&name) == Some(&fingerprint) {
            observed.insert(name, Observed::Unchanged);
            continue;
        }
        match fs::read(&path) {
            Ok(bytes) => {
                let settled = fingerprint.is_settled(read_at);
                observed.insert(name, Observed::Read { fingerprint, bytes, settled });
            }
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => {
                observed.insert(name, Observed::Failed(error));
            }
        }
    }
    Ok(Some(observed))
}

/// The object name of an object file name (`a.yaml` is `a`) and the precedence of its
/// extension; `None` for files the backend ignores (dotfiles, other extensions).
fn object_name(file_name: &str) -> Option<(&str, usize)> {
    if file_name.starts_with('.') {
        return None;
    }
    EXTENSIONS
        .iter()
        .enumerate()
        .find_map(|(precedence, extension)| Some((file_name.strip_suffix(extension)?, precedence)))
        .filter(|(stem, _)| !stem.is_empty())
}

/// One file of a directory, as last read.
#[derive(Debug)]
struct Tracked<T> {
    /// `None` when the file could not be read: it is read again at every poll.
    fingerprint: Option<Fingerprint>,
    settled: bool,
    bytes: Vec<u8>,
    parsed: std::result::Result<T, FileProblem>,
    /// The last successful parse, used while the file is malformed.
    last_valid: Option<T>,
}

/// The object files of one directory, by file name.
#[derive(Debug)]
struct Folder<T> {
    dir: PathBuf,
    kind: ObjectKind,
    files: BTreeMap<String, Tracked<T>>,
}

impl<T: Clone + PartialEq> Folder<T> {
    fn new(dir: PathBuf, kind: ObjectKind) -> Self {
        Folder { dir, kind, files: BTreeMap::new() }
    }

    /// Fingerprints that tell for sure whether a file changed since it was read.
    fn trusted_fingerprints(&self) -> HashMap<String, Fingerprint> {
        self.files
            .iter()
            .filter(|(_, tracked)| tracked.settled)
            .filter_map(|(name, tracked)| Some((name.clone(), tracked.fingerprint?)))
            .collect()
    }

    /// Applies a poll's observations; `true` when a file appeared or disappeared, or parses to
    /// something else than before. Content that is byte for byte the same is not parsed again.
    fn update(
        &mut self,
        observed: BTreeMap<String, Observed>,
        parse: impl Fn(&Path, &str, &[u8]) -> std::result::Result<T, FileProblem>,
    ) -> bool {
        let before = self.files.len();
        self.files.retain(|name, _| observed.contains_key(name));
        let mut changed = self.files.len() != before;
        for (name, observation) in observed {
            let path = self.dir.join(&name);
            let (fingerprint, settled, bytes, parsed) = match observation {
                Observed::Unchanged => continue,
                Observed::Read { fingerprint, bytes, settled } => {
                    if let Some(tracked) = self.files.get_mut(&name)
                        && tracked.fingerprint.is_some()
                        && tracked.bytes == bytes
                    {
                        tracked.fingerprint = Some(fingerprint);
                        tracked.settled = settled;
                        continue;
                    }
                    let stem = object_name(&name).map_or(name.as_str(), |(stem, _)| stem);
                    let parsed = parse(&path, stem, &bytes);
                    (Some(fingerprint), settled, bytes, parsed)
                }
                Observed::Failed(error) => {
                    (None, false, Vec::new(), Err(FileProblem::new(path, format!("failed to read: {error}"))))
                }
            };
            let previous = self.files.remove(&name);
            changed |= previous.as_ref().is_none_or(|previous| previous.parsed != parsed);
            let last_valid = match &parsed {
                Ok(object) => Some(object.clone()),
                Err(_) => previous.and_then(|previous| previous.last_valid),
            };
            self.files.insert(name, Tracked { fingerprint, settled, bytes, parsed, last_valid });
        }
        changed
    }

    /// The objects of the directory, by name, applying the malformed-file policy and reporting
    /// every file that is not used as it is.
    fn resolve(&self, diagnostics: &mut Diagnostics) -> Vec<&T> {
        // Object name -> its files, by precedence of their extensions.
        let mut by_name: BTreeMap<&str, BTreeMap<usize, &str>> = BTreeMap::new();
        for file in self.files.keys() {
            if let Some((name, precedence)) = object_name(file) {
                by_name.entry(name).or_default().insert(precedence, file);
            }
        }
        let kind = self.kind;
        let warning =
            |name: &str, reason: String| Warning { kind, name: name.to_owned(), annotation: None, value: None, reason };
        let mut objects = Vec::new();
        for (name, files) in by_name {
            let mut files = files.into_values();
            let Some(used) = files.next() else { continue };
            let tracked = &self.files[used];
            for ignored in files {
                let message = format!("describes the same object as {}; ignored", self.dir.join(used).display());
                let problem = FileProblem::new(self.dir.join(ignored), message);
                diagnostics.warnings.push(warning(name, problem.to_string()));
                diagnostics.files.push(problem);
            }
            match (&tracked.parsed, &tracked.last_valid) {
                (Ok(object), _) => objects.push(object),
                (Err(problem), Some(last_valid)) => {
                    let problem = FileProblem { kept_last_valid: true, ..problem.clone() };
                    diagnostics.warnings.push(warning(name, format!("{problem}; using its last valid version")));
                    diagnostics.files.push(problem);
                    objects.push(last_valid);
                }
                (Err(problem), None) => {
                    diagnostics.skipped.push(Skipped { kind, name: name.to_owned(), reason: problem.to_string() });
                    diagnostics.files.push(problem.clone());
                }
            }
        }
        objects
    }

    /// The latest valid version of the object `name`.
    fn current(&self, name: &str) -> Option<&T> {
        let tracked = EXTENSIONS.iter().find_map(|extension| self.files.get(&format!("{name}{extension}")))?;
        tracked.parsed.as_ref().ok().or(tracked.last_valid.as_ref())
    }
}

impl FileProblem {
    fn new(path: PathBuf, message: impl Into<String>) -> Self {
        FileProblem { path, line: None, column: None, message: message.into(), kept_last_valid: false }
    }
}

/// A parse failure, with the location where the parser knows it.
#[derive(Debug)]
struct ParseError {
    line: Option<usize>,
    column: Option<usize>,
    message: String,
}

impl ParseError {
    fn new(message: impl Into<String>) -> Self {
        ParseError { line: None, column: None, message: message.into() }
    }

    fn yaml(error: &serde_norway::Error) -> Self {
        let location = error.location();
        ParseError {
            line: location.as_ref().map(|location| location.line()),
            column: location.as_ref().map(|location| location.column()),
            message: error.to_string(),
        }
    }

    fn json(error: &serde_json::Error) -> Self {
        // serde_json reports line 0 for errors that have no place in the text.
        let line = (error.line() > 0).then_some(error.line());
        ParseError { line, column: line.map(|_| error.column()), message: error.to_string() }
    }

    fn into_problem(self, path: &Path) -> FileProblem {
        FileProblem { line: self.line, column: self.column, ..FileProblem::new(path.to_owned(), self.message) }
    }
}

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|extension| extension == "json")
}

/// The one object of an object file, as a JSON value, and the index of its YAML document.
/// Empty documents (a leading or trailing `---`) do not count.
fn read_document(text: &str, json: bool, kind: &str) -> std::result::Result<(usize, Value), ParseError> {
    let mut documents = Vec::new();
    if json {
        documents.push((0, serde_json::from_str::<Value>(text).map_err(|error| ParseError::json(&error))?));
    } else {
        // YAML is a superset of JSON, and its parser reports lines for both.
        for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(document).map_err(|error| ParseError::yaml(&error))?;
            if !value.is_null() {
                documents.push((index, value));
            }
        }
    }
    let article = if kind.starts_with(['A', 'E', 'I', 'O', 'U']) { "an" } else { "a" };
    let (index, value) = match documents.len() {
        0 => return Err(ParseError::new(format!("no object: the file is empty; it must hold {article} {kind}"))),
        1 => documents.remove(0),
        count => {
            return Err(ParseError::new(format!("{count} objects; the file must hold exactly one {kind}")));
        }
    };
    let Some(object) = value.as_object() else {
        return Err(ParseError::new(format!("not {article} {kind} object but {value}")));
    };
    match object.get("kind") {
        None => {}
        Some(Value::String(found)) if found == kind => {}
        Some(found) => return Err(ParseError::new(format!("kind is {found}; the file must hold one {kind}"))),
    }
    Ok((index, value))
}

/// Parses an object file into `K`, with the line of a syntax or type error where known.
fn parse_object<K: DeserializeOwned>(path: &Path, bytes: &[u8], kind: &str) -> std::result::Result<K, FileProblem> {
    let text =
        std::str::from_utf8(bytes).map_err(|error| FileProblem::new(path.to_owned(), format!("not UTF-8: {error}")))?;
    let json = is_json(path);
    let (index, _) = read_document(text, json, kind).map_err(|error| error.into_problem(path))?;
    let typed = if json {
        serde_json::from_str(text).map_err(|error| ParseError::json(&error))
    } else {
        // Deserialized from the text rather than the value, for the line of a type error.
        let document = serde_norway::Deserializer::from_str(text).nth(index);
        document.map_or_else(
            || Err(ParseError::new("document vanished")),
            |document| K::deserialize(document).map_err(|error| ParseError::yaml(&error)),
        )
    };
    typed.map_err(|error| error.into_problem(path))
}

/// Takes the object's name from its file when it has none; rejects a different one.
fn adopt_name(path: &Path, stem: &str, metadata: &mut ObjectMeta) -> std::result::Result<(), FileProblem> {
    match metadata.name.as_deref() {
        None | Some("") => metadata.name = Some(stem.to_owned()),
        Some(name) if name == stem => {}
        Some(name) => {
            let message = format!(
                "metadata.name {name:?} differs from the file name: the object {name:?} belongs in {name}.yaml"
            );
            return Err(FileProblem::new(path.to_owned(), message));
        }
    }
    Ok(())
}

fn parse_node(
    path: &Path,
    stem: &str,
    bytes: &[u8],
    topology_label: &str,
) -> std::result::Result<TranslatedNode, FileProblem> {
    let mut node: Node = parse_object(path, bytes, "Node")?;
    adopt_name(path, stem, &mut node.metadata)?;
    Ok(translate::node(&node, topology_label))
}

fn parse_peer(
    path: &Path,
    stem: &str,
    bytes: &[u8],
) -> std::result::Result<std::result::Result<TranslatedPeer, Skipped>, FileProblem> {
    let mut peer: Peer = parse_object(path, bytes, "Peer")?;
    adopt_name(path, stem, &mut peer.metadata)?;
    Ok(translate::peer(&peer))
}

/// Rejects names that cannot be a node file in `nodes/`, or would be an ignored one.
fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.contains(['/', '\0']) {
        "contains '/' or NUL"
    } else if name.starts_with('.') {
        "starts with '.' (dotfiles are ignored)"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { name: name.to_owned(), reason })
}

/// The file of node `name`: the first of `name.yaml`, `name.yml`, `name.json` that exists.
fn find_node_file(nodes_dir: &Path, name: &str) -> Option<PathBuf> {
    EXTENSIONS.iter().map(|extension| nodes_dir.join(format!("{name}{extension}"))).find(|path| path.exists())
}

/// Applies `edit` to the annotations of the node file at `path` and, if `edit` says it changed
/// something, replaces the file atomically. `Ok(None)`: the file does not exist (any more).
fn edit_annotations(path: &Path, edit: impl FnOnce(&mut Map<String, Value>) -> bool) -> Result<Option<bool>> {
    // Write where a symbolic link points, so that the link stays a link.
    let path = match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()),
        _ => path.to_owned(),
    };
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::ReadNodeFile { path, source }),
    };
    let json = is_json(&path);
    let invalid = |message: String| Error::ParseNodeFile { path: path.clone(), message };
    let mut node = if text.trim().is_empty() {
        // An emptied file: the node restores what it owns (its annotations) rather than stop
        // its heartbeat and drop out of the mesh; the rest is the operator's to write again.
        let name = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
        serde_json::json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": name } })
    } else {
        read_document(&text, json, "Node").map_err(|error| invalid(error.message))?.1
    };
    let annotations = mapping_at(&mut node, &["metadata", "annotations"]).map_err(invalid)?;
    if !edit(annotations) {
        return Ok(Some(false));
    }
    let text = if json {
        serde_json::to_string_pretty(&node).map(|text| text + "\n").map_err(|error| invalid(error.to_string()))?
    } else {
        serde_norway::to_string(&node).map_err(|error| invalid(error.to_string()))?
    };
    write_atomically(&path, text.as_bytes(), None).map_err(|source| Error::WriteNodeFile { path, source })?;
    Ok(Some(true))
}

/// The mapping at `keys` below `value`, created where missing or null.
fn mapping_at<'v>(value: &'v mut Value, keys: &[&str]) -> std::result::Result<&'v mut Map<String, Value>, String> {
    let mut mapping = value.as_object_mut().ok_or_else(|| "not a mapping".to_owned())?;
    let mut at = String::new();
    for key in keys {
        at = if at.is_empty() { (*key).to_owned() } else { format!("{at}.{key}") };
        let next = mapping.entry(*key).or_insert(Value::Null);
        if next.is_null() {
            *next = Value::Object(Map::new());
        }
        mapping = match next {
            Value::Object(next) => next,
            other => return Err(format!("{at} is not a mapping but {other}")),
        };
    }
    Ok(mapping)
}

/// Replaces `path` by a file holding `bytes` so that readers see the old or the new content,
/// never a part, and a crash leaves one or the other: a temporary dotfile `.NAME.tmp` in the same
/// directory (a stale one from a crash is removed first) is written with `mode` (`None`: the
/// mode of the file it replaces, if any), synced, and renamed over `path`; then the directory is
/// synced so the rename is durable too.
///
/// The one atomic write of the workspace: node files here, the agent's key and CNI files.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("mesh-kube-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("key");
/// mesh_kube::file::write_atomically(&path, b"secret", Some(0o600)).unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"secret");
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn write_atomically(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let name = path.file_name().ok_or_else(|| io::Error::other("the path has no file name"))?;
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(".tmp");
    let temporary = dir.join(temporary_name);
    let permissions = match mode {
        Some(mode) => Some(fs::Permissions::from_mode(mode)),
        None => fs::metadata(path).ok().map(|metadata| metadata.permissions()),
    };
    // A crash may have left one behind; `create_new` below must not fail on it.
    match fs::remove_file(&temporary) {
        Err(error) if error.kind() != ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let written = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        if let Some(mode) = mode {
            options.mode(mode);
        }
        let mut file = options.open(&temporary)?;
        if let Some(permissions) = permissions {
            // The umask may have taken bits away.
            file.set_permissions(permissions)?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temporary, path)
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    File::open(dir)?.sync_all()
}

/// Runs file system work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => panic!("file backend I/O task did not complete: {error}"),
        },
    }
}
