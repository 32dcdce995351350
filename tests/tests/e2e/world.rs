//! The disposable world of the end-to-end test: network namespaces and the processes that run in
//! them, all named after one per-run id and all removed when the [`World`] is dropped, also when
//! the test panics, and the helpers both end-to-end suites share (`e2e.rs` on wireguard-go,
//! `kernel.rs` in a VM). Nothing here knows about the mesh; the suites build it on top.
//!
//! Failures are values ([`Outcome`]) rather than panics, so that a failing scenario can still be
//! reported in the summary table before the test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A step that either worked or says why not.
pub type Outcome<T = ()> = Result<T, String>;

/// When the test started, for the timestamps of progress lines.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Prints a progress line straight to the process's stderr, past libtest's output capture, so
/// that CI logs show how far a slow or hanging run got.
pub fn progress(message: &str) {
    let started = STARTED.get_or_init(Instant::now);
    // The suite's name (`e2e`, `kernel`): the test binary's, without cargo's hash.
    let suite = std::env::current_exe().ok().and_then(|exe| {
        exe.file_stem().and_then(|stem| stem.to_str()).and_then(|stem| stem.split('-').next()).map(str::to_owned)
    });
    let suite = suite.as_deref().unwrap_or("test");
    let _ = writeln!(std::io::stderr(), "[{suite} +{:6.1}s] {message}", started.elapsed().as_secs_f64());
}

/// Writes `text` straight to stderr, past libtest's output capture.
pub fn print_uncaptured(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// Runs `command` to completion; its stdout, or an error naming the command and quoting stderr.
pub fn run(command: &mut Command) -> Outcome<String> {
    let output = command.stdin(Stdio::null()).output().map_err(|error| format!("cannot run {command:?}: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        ))
    }
}

/// Runs a shell script (`sh -ec`) in the host namespace.
pub fn sh(script: &str) -> Outcome<String> {
    run(Command::new("sh").arg("-ec").arg(script))
}

/// Runs a shell script (`sh -ec`) inside network namespace `namespace`.
pub fn in_ns(namespace: &str, script: &str) -> Outcome<String> {
    run(Command::new("ip").args(["netns", "exec", namespace, "sh", "-ec", script]))
}

/// Calls `probe` until it succeeds or `timeout` has passed; the last error names what was awaited.
pub fn poll<T>(what: &str, timeout: Duration, interval: Duration, mut probe: impl FnMut() -> Outcome<T>) -> Outcome<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() >= deadline => {
                return Err(format!("timed out after {timeout:?} waiting for {what}: {error}"));
            }
            Err(_) => std::thread::sleep(interval),
        }
    }
}

/// Whether the current user is root.
pub fn is_root() -> bool {
    run(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}

/// Whether `tool` is on the PATH.
pub fn has_tool(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The flags of a test agent on the file backend with a wireguard-go interface it does not
/// create: cluster files in `cluster`, its key in `key`, HTTP on 127.0.0.1:`port`, a `resync`
/// period, and `internal_cidr` as its location's network.
pub fn file_backend_agent_args(
    cluster: &Path,
    hostname: &str,
    interface: &str,
    key: &Path,
    port: u16,
    resync: Duration,
    internal_cidr: &str,
) -> Vec<String> {
    let mut args = vec!["--backend=file".to_owned(), format!("--cluster-dir={}", cluster.display())];
    args.extend(agent_args(hostname, interface, key, port, resync, internal_cidr));
    args
}

/// The flags of [`file_backend_agent_args`] without the backend's: a test agent with a
/// wireguard-go interface it does not create.
pub fn agent_args(
    hostname: &str,
    interface: &str,
    key: &Path,
    port: u16,
    resync: Duration,
    internal_cidr: &str,
) -> Vec<String> {
    vec![
        format!("--hostname={hostname}"),
        format!("--interface={interface}"),
        "--create-interface=false".to_owned(),
        "--wireguard-backend=userspace".to_owned(),
        "--encapsulate=never".to_owned(),
        "--cni=false".to_owned(),
        format!("--private-key-file={}", key.display()),
        format!("--listen=127.0.0.1:{port}"),
        format!("--resync-period={}ms", resync.as_millis()),
        format!("--internal-cidr={internal_cidr}"),
        "--mtu=1420".to_owned(),
    ]
}

/// A short id that makes this run's names unique on the machine (netns names are global).
pub fn run_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.subsec_nanos());
    let mixed = (std::process::id().wrapping_mul(2_654_435_761) ^ nanos) % (36 * 36 * 36 * 36);
    let digits: Vec<char> = (0..4)
        .scan(mixed, |rest, _| {
            let digit = char::from_digit(*rest % 36, 36);
            *rest /= 36;
            digit
        })
        .collect();
    digits.into_iter().collect()
}

/// Network namespaces, processes, UAPI sockets and a temporary directory that exist for one run.
#[derive(Debug)]
pub struct World {
    /// The per-run id every name contains.
    pub id: String,
    /// The run's temporary directory (cluster files, keys, logs).
    pub dir: PathBuf,
    namespaces: Vec<String>,
    processes: BTreeMap<String, Child>,
    logs: BTreeMap<String, PathBuf>,
    sockets: Vec<PathBuf>,
}

impl World {
    /// An empty world with a fresh temporary directory, which records the process that owns
    /// the world (`owner`), the namespaces it creates (`namespaces`) and the files outside it
    /// that it owns (`files`), so that a later run can remove what a killed run left behind
    /// ([`World::remove_abandoned`]).
    pub fn new(id: &str) -> Outcome<World> {
        let dir = std::env::temp_dir().join(format!("{RUN_DIR_PREFIX}{id}"));
        fs::create_dir_all(dir.join("logs")).map_err(|error| format!("create {}: {error}", dir.display()))?;
        write_file(&dir.join("owner"), &std::process::id().to_string())?;
        Ok(World {
            id: id.to_owned(),
            dir,
            namespaces: Vec::new(),
            processes: BTreeMap::new(),
            logs: BTreeMap::new(),
            sockets: Vec::new(),
        })
    }

    /// Creates network namespace `name` with its loopback up. It is deleted on drop.
    pub fn add_namespace(&mut self, name: &str) -> Outcome {
        if self.namespaces.iter().any(|known| known == name) {
            return Err(format!("namespace {name} exists already"));
        }
        // Recorded first: a namespace that was half set up is deleted all the same, by this
        // world or, if this process is killed, by the next run.
        self.namespaces.push(name.to_owned());
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("namespaces"))
            .and_then(|mut file| writeln!(file, "{name}"))
            .map_err(|error| format!("record namespace {name}: {error}"))?;
        run(Command::new("ip").args(["netns", "add", name]))?;
        run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        Ok(())
    }

    /// Removes what runs killed without a chance to clean up (SIGKILL, a CI timeout) left
    /// behind: for every run directory whose owner process is gone, the processes in its
    /// namespaces, the namespaces and the directory. Returns how many worlds were removed.
    pub fn remove_abandoned() -> usize {
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return 0 };
        let mut removed = 0;
        for dir in entries.filter_map(Result::ok).map(|entry| entry.path()) {
            let is_run_dir =
                dir.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with(RUN_DIR_PREFIX));
            let Ok(owner) = fs::read_to_string(dir.join("owner")) else { continue };
            if !is_run_dir || Path::new("/proc").join(owner.trim()).exists() {
                continue;
            }
            let namespaces = fs::read_to_string(dir.join("namespaces")).unwrap_or_default();
            for namespace in namespaces.lines().rev() {
                remove_namespace(namespace);
            }
            for file in fs::read_to_string(dir.join("files")).unwrap_or_default().lines() {
                let _ = fs::remove_file(file);
            }
            let _ = fs::remove_dir_all(&dir);
            removed += 1;
        }
        removed
    }

    /// The namespaces of this world, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// A UAPI socket (or other file outside the run directory) to remove on drop.
    pub fn own_file(&mut self, path: PathBuf) {
        let _ = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("files"))
            .and_then(|mut file| writeln!(file, "{}", path.display()));
        self.sockets.push(path);
    }

    /// The log file of process `label`.
    pub fn log_path(&self, label: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{label}.log"))
    }

    /// Starts `program` inside `namespace` (`ip netns exec` execs it, so the child's PID is the
    /// program's), with stdout and stderr appended to the log of `label`.
    pub fn spawn(&mut self, label: &str, namespace: &str, program: &Path, args: &[String]) -> Outcome<u32> {
        self.spawn_with_env(label, namespace, program, args, &[])
    }

    /// [`World::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        &mut self,
        label: &str,
        namespace: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Outcome<u32> {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", namespace]).arg(program).args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        self.spawn_command(label, command)
    }

    /// Starts `command` as process `label`, with stdout and stderr appended to its log; it is
    /// killed (by PID) when the world is dropped.
    pub fn spawn_command(&mut self, label: &str, mut command: Command) -> Outcome<u32> {
        if self.is_running(label) {
            return Err(format!("process {label} is running already"));
        }
        let path = self.log_path(label);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|error| format!("open {}: {error}", path.display()))?;
        let _ = writeln!(log, "===== {label}: {command:?}");
        let stderr = log.try_clone().map_err(|error| format!("clone log handle: {error}"))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|error| format!("cannot start {label} ({command:?}): {error}"))?;
        let pid = child.id();
        self.processes.insert(label.to_owned(), child);
        self.logs.insert(label.to_owned(), path);
        Ok(pid)
    }

    /// Starts `wireguard-go` for `interface` in `namespace` as process `label` and waits for
    /// its UAPI socket (removed on drop).
    pub fn spawn_wireguard_go(&mut self, label: &str, namespace: &str, interface: &str) -> Outcome {
        let socket = PathBuf::from(format!("/var/run/wireguard/{interface}.sock"));
        self.own_file(socket.clone());
        // A killed wireguard-go leaves its socket behind: waiting for the socket must wait for the
        // new process's, or an agent started next finds no interface yet.
        match std::fs::remove_file(&socket) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("remove the stale {}: {error}", socket.display()));
            }
            _ => {}
        }
        self.spawn_with_env(
            label,
            namespace,
            Path::new("wireguard-go"),
            &["-f".to_owned(), interface.to_owned()],
            &[("WG_PROCESS_FOREGROUND", "1")],
        )?;
        poll(&format!("the UAPI socket of {label}"), Duration::from_secs(10), Duration::from_millis(50), || {
            if socket.exists() { Ok(()) } else { Err(format!("{} missing", socket.display())) }
        })
    }

    /// Whether process `label` was started and has not exited.
    pub fn is_running(&mut self, label: &str) -> bool {
        self.processes.get_mut(label).is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The PID of process `label`.
    pub fn pid(&self, label: &str) -> Option<u32> {
        self.processes.get(label).map(Child::id)
    }

    /// Sends `signal` to process `label`, by its PID.
    pub fn signal(&mut self, label: &str, signal: Signal) -> Outcome {
        let pid = self.pid(label).ok_or_else(|| format!("no process {label}"))?;
        let pid = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
        kill(Pid::from_raw(pid), signal).map_err(|error| format!("kill -{signal} {label} ({pid}): {error}"))
    }

    /// Waits up to `timeout` for process `label` to exit and forgets it.
    pub fn wait_exit(&mut self, label: &str, timeout: Duration) -> Outcome<ExitStatus> {
        let child = self.processes.get_mut(label).ok_or_else(|| format!("no process {label}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.processes.remove(label);
                    return Ok(status);
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Ok(None) => return Err(format!("{label} (pid {}) did not exit within {timeout:?}", child.id())),
                Err(error) => return Err(format!("waiting for {label}: {error}")),
            }
        }
    }

    /// The last `lines` lines of every process log, for a failure report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut text = String::new();
        for (label, path) in &self.logs {
            let content = fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = content.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            text.push_str(&format!("----- {label} ({}) -----\n{}\n", path.display(), tail.join("\n")));
        }
        text
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Our processes first (agents would otherwise clean up against half-deleted namespaces),
        // by PID; then whatever still runs inside our namespaces (pings), by PID; then the
        // namespaces, the sockets and the directory.
        for child in self.processes.values_mut() {
            let _ = child.kill();
        }
        for child in self.processes.values_mut() {
            let _ = child.wait();
        }
        for namespace in self.namespaces.iter().rev() {
            remove_namespace(namespace);
        }
        for socket in &self.sockets {
            let _ = fs::remove_file(socket);
        }
        if std::env::var_os("KTE_KEEP_DIR").is_some() {
            // Without an owner it is not an abandoned world that a later run would remove.
            let _ = fs::remove_file(self.dir.join("owner"));
            progress(&format!("kept {} (KTE_KEEP_DIR is set)", self.dir.display()));
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A location of both suites' worlds: its name, its bridge in the fabric namespace and its
/// private network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The `kilo.squat.ai/location` annotation.
    pub name: &'static str,
    /// The fabric bridge of the location; `None`: its node sits behind the NAT router.
    pub bridge: Option<&'static str>,
    /// The private network (`--internal-cidr`).
    pub network: &'static str,
}

/// Location A: a bridge in the fabric.
pub const LOC_A: Location = Location { name: "loc-a", bridge: Some("bra"), network: "192.168.10.0/24" };
/// Location B: a bridge in the fabric.
pub const LOC_B: Location = Location { name: "loc-b", bridge: Some("brb"), network: "192.168.20.0/24" };
/// Location C: one node behind a masquerading router.
pub const LOC_C: Location = Location { name: "loc-c", bridge: None, network: "10.0.30.0/24" };

/// A veth pair with one end in each namespace, created there directly (never in the host's).
pub fn veth(name: &str, namespace: &str, peer: &str, peer_namespace: &str) -> Outcome {
    run(Command::new("ip").args(["link", "add", name, "netns", namespace, "type", "veth"]).args([
        "peer",
        "name",
        peer,
        "netns",
        peer_namespace,
    ]))
    .map(drop)
}

/// A Node file of the file backend, as `kubectl get node -o yaml` prints one: the hostname
/// label, the location, leader and persistent-keepalive annotations, and the pod CIDR.
pub fn node_yaml(name: &str, location: &str, leader: bool, keepalive: Option<u16>, pod_cidr: &str) -> String {
    let mut annotations = format!("    kilo.squat.ai/location: {location}\n");
    if leader {
        annotations.push_str("    kilo.squat.ai/leader: \"true\"\n");
    }
    if let Some(keepalive) = keepalive {
        annotations.push_str(&format!("    kilo.squat.ai/persistent-keepalive: \"{keepalive}\"\n"));
    }
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n  \
         annotations:\n{annotations}spec:\n  podCIDR: {pod_cidr}\n"
    )
}

/// The system clock in Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| i64::try_from(since.as_secs()).unwrap_or(0))
}

/// Run directories are `<temp dir>/kte-<id>`.
const RUN_DIR_PREFIX: &str = "kte-";

/// Kills what still runs in `namespace` (by PID) and deletes it; errors are ignored (it may be
/// gone already).
fn remove_namespace(namespace: &str) {
    if let Ok(pids) = run(Command::new("ip").args(["netns", "pids", namespace])) {
        for pid in pids.split_whitespace().filter_map(|pid| pid.parse().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let _ = Command::new("ip").args(["netns", "delete", namespace]).stderr(Stdio::null()).status();
}

/// One row of the summary table.
#[derive(Debug)]
pub struct Row {
    /// The scenario.
    pub scenario: String,
    /// `Ok(detail)` or `Err(why)`.
    pub result: Outcome<String>,
    /// How long it took.
    pub time: Duration,
}

/// The summary table: scenario | result | time | detail.
pub fn summary(rows: &[Row], total: Duration) -> String {
    let width = rows.iter().map(|row| row.scenario.len()).max().unwrap_or(8).max(8);
    let mut text = format!("\n{:<width$} | result | {:>7} | detail\n", "scenario", "time");
    text.push_str(&format!("{}-|--------|-{}-|-------\n", "-".repeat(width), "-".repeat(7)));
    for row in rows {
        let (result, detail) = match &row.result {
            Ok(detail) => ("pass", detail.as_str()),
            Err(error) => ("FAIL", error.as_str()),
        };
        let detail: String = detail.chars().take(600).collect();
        text.push_str(&format!(
            "{:<width$} | {result:<6} | {:>6.1}s | {}\n",
            row.scenario,
            row.time.as_secs_f64(),
            detail.replace('\n', " / ")
        ));
    }
    text.push_str(&format!("{:<width$} | {:<6} | {:>6.1}s |\n", "total", "", total.as_secs_f64()));
    text
}

/// Creates (or truncates) `path` with `text`.
pub fn write_file(path: &Path, text: &str) -> Outcome {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|error| format!("create {}: {error}", parent.display()))?;
    }
    File::create(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|error| format!("write {}: {error}", path.display()))
}

/// One ping: from a namespace to an address.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Who pings (a label).
    pub from: String,
    /// The namespace the ping runs in.
    pub namespace: String,
    /// What is pinged (a label).
    pub to: String,
    /// The address pinged.
    pub address: String,
    /// The source address (`ping -I`), if not the one the route chooses.
    pub source: Option<String>,
}

/// Pings every probe until each has answered once; how long it took, or which never answered.
///
/// On success, also names the paths that answered last (the slowest), for the summary.
pub fn reach(probes: &[Probe], timeout: Duration) -> Outcome<(Duration, String)> {
    let started = Instant::now();
    let mut pending: Vec<&Probe> = probes.iter().collect();
    let mut first_round = true;
    loop {
        let trying: Vec<String> = pending.iter().map(|probe| format!("{}->{}", probe.from, probe.to)).collect();
        let children: Vec<_> = pending
            .iter()
            .map(|probe| {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &probe.namespace, "ping", "-n", "-q", "-c1", "-W1"]);
                if let Some(source) = &probe.source {
                    command.args(["-I", source]);
                }
                let child = command
                    .arg(&probe.address)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn();
                (*probe, child)
            })
            .collect();
        pending = children
            .into_iter()
            .filter_map(|(probe, child)| {
                let answered =
                    child.ok().and_then(|mut child| child.wait().ok()).is_some_and(|status| status.success());
                (!answered).then_some(probe)
            })
            .collect();
        if pending.is_empty() {
            let last = if first_round { "none: all at once".to_owned() } else { trying.join(" ") };
            return Ok((started.elapsed(), last));
        }
        first_round = false;
        if started.elapsed() >= timeout {
            let missing: Vec<String> =
                pending.iter().map(|probe| format!("{}->{}({})", probe.from, probe.to, probe.address)).collect();
            return Err(format!(
                "{} of {} paths never answered within {timeout:?}: {}",
                missing.len(),
                probes.len(),
                missing.join(" ")
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// GET `path` from the HTTP server on 127.0.0.1:`port` inside `namespace` (bash's `/dev/tcp`,
/// no client to install): the whole response, or an error unless the status is 200.
pub fn http_get(namespace: &str, port: u16, path: &str) -> Outcome<String> {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let response = run(Command::new("ip").args(["netns", "exec", namespace, "timeout", "5", "bash", "-c", &script]))?;
    if response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200") {
        Ok(response)
    } else {
        Err(format!("GET {path} in {namespace}: {}", response.lines().next().unwrap_or("no response")))
    }
}

/// The value of one series (`name` or `name{labels}`) in a Prometheus text exposition; 0 when absent.
pub fn series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(series, _)| *series == name)
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The `mesh-agent` binary of this workspace and profile, built first when missing or stale.
pub fn agent_binary() -> Outcome<PathBuf> {
    let exe = std::env::current_exe().map_err(|error| format!("current_exe: {error}"))?;
    // target/<profile>/deps/e2e-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).ok_or("unexpected test binary location")?;
    let target_dir = profile_dir.parent().ok_or("unexpected test binary location")?;
    let profile = profile_dir.file_name().and_then(|name| name.to_str()).ok_or("unexpected profile directory")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("no workspace")?;
    let binary = profile_dir.join("mesh-agent");
    if is_fresh(&binary, workspace) {
        return Ok(binary);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    progress(&format!("building mesh-agent ({profile} profile) with {cargo}"));
    let mut command = Command::new(&cargo);
    command.current_dir(workspace).args(["build", "-p", "mesh-agent", "--bin", "mesh-agent"]);
    command.env("CARGO_TARGET_DIR", target_dir);
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    run(&mut command).map_err(|error| format!("building mesh-agent failed: {error}"))?;
    if binary.exists() { Ok(binary) } else { Err(format!("cargo build did not produce {}", binary.display())) }
}

/// Whether `binary` is newer than every file it was built from: the sources its dep-info file
/// (`mesh-agent.d`, written by cargo beside it) lists, and the manifests. `cargo test --workspace`
/// builds the binary for mesh-agent's own tests, so in CI it is fresh; a plain mtime walk of the
/// crates would also count `#[cfg(test)]` files the binary does not contain.
fn is_fresh(binary: &Path, workspace: &Path) -> bool {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|metadata| metadata.modified()).ok();
    let Some(built) = modified(binary) else { return false };
    let Ok(dep_info) = std::fs::read_to_string(binary.with_extension("d")) else { return false };
    let Some((_, inputs)) = dep_info.lines().next().and_then(|line| line.split_once(": ")) else { return false };
    // Make syntax: inputs are separated by spaces; a space inside a path is escaped as `\ `.
    let mut sources = vec![String::new()];
    let mut chars = inputs.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => sources.last_mut().expect("one").push(chars.next().expect("a space")),
            ' ' => sources.push(String::new()),
            c => sources.last_mut().expect("one").push(c),
        }
    }
    let mut sources: Vec<PathBuf> =
        sources.into_iter().filter(|source| !source.is_empty()).map(PathBuf::from).collect();
    sources.extend(["Cargo.toml", "Cargo.lock"].map(|name| workspace.join(name)));
    sources.extend(
        ["mesh-core", "mesh-netlink", "mesh-kube", "mesh-agent"].map(|name| workspace.join(name).join("Cargo.toml")),
    );
    sources.len() > 2 + 4 && sources.iter().all(|source| modified(source).is_some_and(|time| time <= built))
}

/// The scenarios `KTE_SCENARIOS` asks for (numbers such as `1,5a,5b`), or all when it is unset,
/// and the numbers of the scenarios offered so far.
pub struct ChosenScenarios {
    chosen: Option<BTreeSet<String>>,
    offered: std::cell::RefCell<BTreeSet<String>>,
}

impl ChosenScenarios {
    /// Whether the scenario labelled `label` (its number, a space, its title) runs; says so when not.
    pub fn includes(&self, label: &str) -> bool {
        let number = label.split(' ').next().unwrap_or_default();
        self.offered.borrow_mut().insert(number.to_owned());
        let Some(chosen) = &self.chosen else { return true };
        let included = chosen.contains(number);
        if !included {
            progress(&format!("{label}: left out (KTE_SCENARIOS)"));
        }
        included
    }

    /// Fails when `KTE_SCENARIOS` names a scenario that was never offered (a typo such as `5`
    /// for `5a`), so that a run of nothing cannot pass.
    pub fn check_all_offered(&self) -> Outcome {
        let offered = self.offered.borrow();
        let unknown: Vec<&str> =
            self.chosen.iter().flatten().filter(|number| !offered.contains(*number)).map(String::as_str).collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let known: Vec<&str> = offered.iter().map(String::as_str).collect();
        Err(format!("KTE_SCENARIOS names no scenario {}; the scenarios are {}", unknown.join(","), known.join(",")))
    }
}

/// Reads `KTE_SCENARIOS`.
pub fn chosen_scenarios() -> ChosenScenarios {
    ChosenScenarios {
        chosen: std::env::var("KTE_SCENARIOS")
            .ok()
            .map(|list| list.split(',').map(|number| number.trim().to_owned()).filter(|n| !n.is_empty()).collect()),
        offered: std::cell::RefCell::default(),
    }
}

/// Runs one scenario, catching panics, and records its row.
pub fn step(rows: &mut Vec<Row>, scenario: &str, body: impl FnOnce() -> Outcome<String>) -> bool {
    progress(&format!("{scenario}: start"));
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
            .unwrap_or_else(|| "panicked".into());
        Err(format!("panic: {message}"))
    });
    let passed = result.is_ok();
    progress(&format!(
        "{scenario}: {} after {:.1}s: {}",
        if passed { "pass" } else { "FAIL" },
        started.elapsed().as_secs_f64(),
        result.as_ref().map_or_else(String::as_str, String::as_str)
    ));
    rows.push(Row { scenario: scenario.to_owned(), result, time: started.elapsed() });
    passed
}

/// The annotations of the Node in the YAML file at `path` (the file backend's format).
pub fn annotations_in(path: &Path) -> Outcome<BTreeMap<String, String>> {
    let text = fs::read_to_string(path).map_err(|error| format!("read {}: {error}", path.display()))?;
    let value: serde_json::Value =
        serde_norway::from_str(&text).map_err(|error| format!("parse {}: {error}", path.display()))?;
    let annotations = value.pointer("/metadata/annotations").and_then(serde_json::Value::as_object);
    Ok(annotations
        .into_iter()
        .flatten()
        .map(|(key, value)| (key.clone(), value.as_str().map_or_else(|| value.to_string(), str::to_owned)))
        .collect())
}

/// The exit code and the JSON report of a finished `mesh-agent doctor -o json`, run for `what`.
pub fn doctor_report(output: &std::process::Output, what: &str) -> Outcome<(Option<i32>, serde_json::Value)> {
    let report = serde_json::from_slice(&output.stdout).map_err(|error| {
        format!(
            "doctor {what}: {error}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok((output.status.code(), report))
}
