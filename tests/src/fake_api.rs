//! A fake Kubernetes API server over real HTTP/1.1, for tests that run the real agent binary
//! with `--backend=kubernetes`: it serves what the agent reads and writes (the Peer CRD, Nodes
//! and Peers listed and watched, merge patches of a Node's annotations) from objects the test
//! sets, and it fails on demand as an API server does on a bad day: every request answered
//! `500` ([`Mode::Failing`]), or nothing listening any more ([`Mode::Down`], connection refused).
//!
//! Watches behave as the API server's: a watch from `resourceVersion` N first gets every object
//! changed after N, then each change as it happens, and ends after its `timeoutSeconds`. Turning
//! the server to `Failing` or `Down` ends every open connection, watches included, as a
//! restarting or failing API server does; otherwise an open watch would hide the fault.
//! Deletions are not modelled (the tests add and change objects only).
//!
//! The server binds through a closure, so that a test can bind it inside a network namespace
//! (a socket belongs to the namespace of the thread that creates it), and binds the same
//! address again when it comes back from `Down`.
//!
//! ```
//! use std::io::{Read as _, Write as _};
//! use mesh_tests::fake_api::{FakeApiServer, Mode};
//!
//! let server = FakeApiServer::start("127.0.0.1:0".parse().unwrap(), std::net::TcpListener::bind).unwrap();
//! server.set_node(serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}));
//! let get = |path: &str| {
//!     let mut stream = std::net::TcpStream::connect(server.address()).unwrap();
//!     write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
//!     let mut response = String::new();
//!     stream.read_to_string(&mut response).unwrap();
//!     response
//! };
//! let list = get("/api/v1/nodes");
//! assert!(list.starts_with("HTTP/1.1 200") && list.contains("\"n1\""));
//! server.set_mode(Mode::Failing);
//! assert!(get("/api/v1/nodes").starts_with("HTTP/1.1 500"));
//! ```

use std::collections::BTreeMap;
use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Serves the objects.
    Serving,
    /// Answers every request `500 InternalError` (etcd timing out, say).
    Failing,
    /// Listens no more: connections are refused.
    Down,
}

/// What a bind does: the address in, a listening socket out.
type Bind = Box<dyn Fn(SocketAddr) -> io::Result<TcpListener> + Send + Sync>;

/// A watched collection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Collection {
    Nodes,
    Peers,
}

impl Collection {
    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Collection::Nodes => ("v1", "NodeList"),
            Collection::Peers => ("kilo.squat.ai/v1alpha1", "PeerList"),
        }
    }
}

/// An open watch: where its events go and when the API server would end it.
#[derive(Debug)]
struct Watch {
    collection: Collection,
    stream: TcpStream,
    ends_at: Instant,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    /// The last resourceVersion handed out.
    revision: u64,
    /// Objects by name, each with its `metadata.resourceVersion` set.
    nodes: BTreeMap<String, Value>,
    peers: BTreeMap<String, Value>,
    watches: Vec<Watch>,
    /// Every open connection, to end them all when the mode changes.
    connections: BTreeMap<u64, TcpStream>,
    next_connection: u64,
    requests: u64,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    address: SocketAddr,
    bind: Bind,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// See the [module documentation](self). Stops (and closes every connection) when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer").field("address", &self.shared.address).finish_non_exhaustive()
    }
}

impl FakeApiServer {
    /// Binds `address` with `bind` (port 0 picks a free port, kept for later binds) and serves
    /// on a thread of its own, with no objects yet.
    pub fn start(
        address: SocketAddr,
        bind: impl Fn(SocketAddr) -> io::Result<TcpListener> + Send + Sync + 'static,
    ) -> io::Result<FakeApiServer> {
        let listener = bind(address)?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode: Mode::Serving,
                revision: 1,
                nodes: BTreeMap::new(),
                peers: BTreeMap::new(),
                watches: Vec::new(),
                connections: BTreeMap::new(),
                next_connection: 0,
                requests: 0,
                stopping: false,
            }),
            address,
            bind: Box::new(bind),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new().name("fake-api".into()).spawn(move || accept_loop(&shared, listener))?
        };
        Ok(FakeApiServer { shared, acceptor: Some(acceptor) })
    }

    /// The address the server listens on (while not [`Mode::Down`]).
    pub fn address(&self) -> SocketAddr {
        self.shared.address
    }

    /// Switches how the server answers; leaving [`Mode::Serving`] ends every open connection.
    pub fn set_mode(&self, mode: Mode) {
        let mut state = self.shared.state();
        state.mode = mode;
        if mode != Mode::Serving {
            for watch in std::mem::take(&mut state.watches) {
                let _ = watch.stream.shutdown(Shutdown::Both);
            }
            for stream in std::mem::take(&mut state.connections).into_values() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// How many requests the server has read so far.
    pub fn requests(&self) -> u64 {
        self.shared.state().requests
    }

    /// Adds or replaces a Node (by `metadata.name`) and tells the watches.
    pub fn set_node(&self, node: Value) {
        self.shared.state().store(Collection::Nodes, node);
    }

    /// Adds or replaces a Peer (by `metadata.name`) and tells the watches.
    pub fn set_peer(&self, peer: Value) {
        self.shared.state().store(Collection::Peers, peer);
    }

    /// The Node called `name` as the server holds it.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.shared.state().nodes.get(name).cloned()
    }

    /// Changes the Node called `name` with `edit` (as another writer would) and tells the
    /// watches; `false` when there is no such Node.
    pub fn edit_node(&self, name: &str, edit: impl FnOnce(&mut Value)) -> bool {
        let mut state = self.shared.state();
        let Some(mut node) = state.nodes.get(name).cloned() else { return false };
        edit(&mut node);
        state.store(Collection::Nodes, node);
        true
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.state().stopping = true;
        self.set_mode(Mode::Down);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl State {
    fn objects(&self, collection: Collection) -> &BTreeMap<String, Value> {
        match collection {
            Collection::Nodes => &self.nodes,
            Collection::Peers => &self.peers,
        }
    }

    fn store(&mut self, collection: Collection, mut object: Value) {
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let objects = match collection {
            Collection::Nodes => &mut self.nodes,
            Collection::Peers => &mut self.peers,
        };
        let kind = if objects.insert(name, object.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        let event = json!({"type": kind, "object": object});
        self.watches.retain_mut(|watch| watch.collection != collection || send_event(&mut watch.stream, &event));
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    let mut listener = listener.set_nonblocking(true).is_ok().then_some(listener);
    loop {
        let (mode, stopping) = {
            let mut state = shared.state();
            // Watches the API server would have ended by now end cleanly (the last chunk).
            let now = Instant::now();
            state.watches.retain_mut(|watch| {
                if watch.ends_at > now {
                    return true;
                }
                let _ = watch.stream.write_all(b"0\r\n\r\n");
                let _ = watch.stream.shutdown(Shutdown::Both);
                false
            });
            (state.mode, state.stopping)
        };
        if stopping {
            return;
        }
        if mode == Mode::Down {
            listener = None;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let Some(open) = listener.as_ref() else {
            match (shared.bind)(shared.address).and_then(|bound| bound.set_nonblocking(true).map(|()| bound)) {
                Ok(bound) => listener = Some(bound),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            continue;
        };
        match open.accept() {
            Ok((stream, _)) => {
                let shared = Arc::clone(shared);
                std::thread::spawn(move || serve_connection(&shared, stream));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A request as far as the server reads it.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn serve_connection(shared: &Shared, stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let Ok(tracked) = stream.try_clone() else { return };
    let id = {
        let mut state = shared.state();
        if state.mode != Mode::Serving && state.mode != Mode::Failing {
            return;
        }
        state.next_connection += 1;
        let id = state.next_connection;
        state.connections.insert(id, tracked);
        id
    };
    let Ok(request) = read_request(&stream) else {
        shared.state().connections.remove(&id);
        return;
    };
    let mut state = shared.state();
    state.requests += 1;
    let mut stream = stream;
    let respond = |stream: &mut TcpStream, status: u16, body: &Value| {
        let _ = write_response(stream, status, body);
    };
    if state.mode == Mode::Failing {
        respond(&mut stream, 500, &status(500, "InternalError", "etcdserver: request timed out"));
    } else {
        route(&mut state, request, stream, respond);
    }
    state.connections.remove(&id);
}

fn route(state: &mut State, request: Request, mut stream: TcpStream, respond: impl Fn(&mut TcpStream, u16, &Value)) {
    let collection = match request.path.as_str() {
        "/api/v1/nodes" => Some(Collection::Nodes),
        "/apis/kilo.squat.ai/v1alpha1/peers" => Some(Collection::Peers),
        _ => None,
    };
    let node = request.path.strip_prefix("/api/v1/nodes/").map(str::to_owned);
    match (request.method.as_str(), collection, node) {
        ("GET", Some(collection), _) if request.query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            let since: u64 = request.query.get("resourceVersion").and_then(|rv| rv.parse().ok()).unwrap_or(0);
            let timeout: u64 = request.query.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(290);
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
                        Connection: close\r\n\r\n";
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            for object in state.objects(collection).values() {
                let revision: u64 = object["metadata"]["resourceVersion"].as_str().unwrap_or("0").parse().unwrap_or(0);
                if revision > since && !send_event(&mut stream, &json!({"type": "ADDED", "object": object})) {
                    return;
                }
            }
            let ends_at = Instant::now() + Duration::from_secs(timeout);
            state.watches.push(Watch { collection, stream, ends_at });
        }
        ("GET", Some(collection), _) => {
            let (api_version, kind) = collection.list_kind();
            let items: Vec<&Value> = state.objects(collection).values().collect();
            let list = json!({"apiVersion": api_version, "kind": kind,
                              "metadata": {"resourceVersion": state.revision.to_string()}, "items": items});
            respond(&mut stream, 200, &list);
        }
        ("GET", None, _)
            if request.path == "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/peers.kilo.squat.ai" =>
        {
            respond(&mut stream, 200, &peer_crd());
        }
        ("GET", None, Some(name)) => match state.nodes.get(&name) {
            Some(node) => respond(&mut stream, 200, node),
            None => respond(&mut stream, 404, &status(404, "NotFound", &format!("nodes \"{name}\" not found"))),
        },
        ("PATCH", None, Some(name)) => {
            let patch: Value = match serde_json::from_slice(&request.body) {
                Ok(patch) => patch,
                Err(error) => return respond(&mut stream, 400, &status(400, "BadRequest", &error.to_string())),
            };
            let Some(mut node) = state.nodes.get(&name).cloned() else {
                return respond(&mut stream, 404, &status(404, "NotFound", &format!("nodes \"{name}\" not found")));
            };
            merge_patch(&mut node, &patch);
            state.store(Collection::Nodes, node);
            respond(&mut stream, 200, &state.nodes[&name]);
        }
        _ => respond(&mut stream, 404, &status(404, "NotFound", &format!("{} {}", request.method, request.path))),
    }
}

/// RFC 7386: `null` removes a key, objects merge, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(target) = target else { return };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn read_request(stream: &TcpStream) -> io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad request line {line:?}")));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    let (mut length, mut chunked) = (0, false);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { continue };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_ascii_lowercase());
        if name == "content-length" {
            length = value.parse().unwrap_or(0);
        } else if name == "transfer-encoding" && value.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    Ok(Request { method: method.to_owned(), path: path.to_owned(), query, body })
}

fn write_response(stream: &mut TcpStream, status: u16, body: &Value) -> io::Result<()> {
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// Writes one watch event as an HTTP chunk; `false` when the watch is gone.
fn send_event(stream: &mut TcpStream, event: &Value) -> bool {
    let line = format!("{event}\n");
    write!(stream, "{:x}\r\n{line}\r\n", line.len()).and_then(|()| stream.flush()).is_ok()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// The Peer CRD as the API server returns it (what the agent's start-up check reads).
fn peer_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "peers.kilo.squat.ai", "resourceVersion": "1"},
        "spec": {
            "group": "kilo.squat.ai",
            "names": {"kind": "Peer", "listKind": "PeerList", "plural": "peers", "singular": "peer"},
            "scope": "Cluster",
            "versions": [{"name": "v1alpha1", "served": true, "storage": true}]
        }
    })
}
