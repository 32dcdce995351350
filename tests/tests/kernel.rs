//! The kernel data path, end to end, in a throw-away VM: kernel WireGuard, IPIP (`tunl0`) and
//! Cilium's `cilium_tunl`, which the host kernel of our machines lacks (no `wireguard`, no
//! `ipip` module), so the userspace suite (`e2e.rs`) cannot exercise them.
//!
//! The one test of this binary delegates to itself: on the host it boots Debian's stock kernel
//! with `scripts/vm/vm-run.sh` (QEMU; the host's root shared read-only under a RAM overlay) and
//! runs this same test binary inside as root, where `VM_RUN_GUEST` is set; there it runs every
//! scenario in its own network namespaces, prints the summary table (scenario, result, time) and
//! fails if any scenario failed. The VM's exit status is the test's.
//!
//! Scenarios ([`dataplane`]: `mesh-netlink` on the kernel; [`mesh`]: real `mesh-agent`s with the
//! file backend, kernel WireGuard created by the agents) are listed in their modules.
//!
//! Run alone with `cargo test -p mesh-tests --test kernel`. Needs root and what
//! `scripts/vm/vm-setup.sh` installs (QEMU, a static busybox, the extracted kernel package);
//! without them the test fails, never skips, and says to run that script. `KTE_KEEP_DIR=1` keeps
//! the guest's run directories, which live in the VM's RAM, so it is useful with `VM_RW_DIRS`;
//! `KTE_ONLY=a,b` runs only the scenarios whose label contains `a` or `b`.
//! The whole suite must stay under 5 minutes (`VM_TIMEOUT` is set to 300 s).

#[allow(dead_code, reason = "the helpers are shared with e2e.rs, which uses others")]
#[path = "e2e/world.rs"]
mod world;

#[path = "kernel/dataplane.rs"]
mod dataplane;
#[path = "kernel/mesh.rs"]
mod mesh;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use world::{Outcome, progress, step};

/// A scenario: its row label and its body.
type Scenario = (&'static str, fn() -> Outcome<String>);

/// The whole suite's time limit in the VM (the budget), boot included.
const VM_TIMEOUT_SECONDS: u32 = 300;

#[test]
fn kernel_vm_suite() {
    if std::env::var_os("VM_RUN_GUEST").is_some() {
        guest();
    } else {
        host();
    }
}

/// Host side: check the prerequisites, build the agent, boot the VM with this test inside.
fn host() {
    assert!(world::is_root(), "the kernel VM suite needs root (it boots QEMU with the host root shared)");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
    let scripts = workspace.join("scripts/vm");
    let check = Command::new(scripts.join("vm-setup.sh")).arg("--check").output().expect("run vm-setup.sh --check");
    assert!(
        check.status.success(),
        "the kernel VM suite cannot start a VM: {} (vm-setup.sh installs QEMU and a static busybox, and \
         extracts Debian's kernel package under target/vm)",
        String::from_utf8_lossy(&check.stderr).trim()
    );
    for tool in ["ip", "wg", "iptables", "ping", "bash"] {
        assert!(world::has_tool(tool), "the kernel VM suite needs `{tool}` (inside the VM too: it shares /)");
    }
    // Built on the host: the VM's 9p root is read-only and `cargo` under emulation is slow.
    let agent = world::agent_binary().unwrap_or_else(|error| panic!("{error}"));
    let exe = std::env::current_exe().expect("the test binary");
    progress(&format!("booting the kernel VM for {} (agent {})", exe.display(), agent.display()));
    let started = Instant::now();
    let status = Command::new(scripts.join("vm-run.sh"))
        .arg(&exe)
        .args(["--exact", "kernel_vm_suite", "--nocapture", "--test-threads=1"])
        .env("VM_TIMEOUT", VM_TIMEOUT_SECONDS.to_string())
        .env("VM_MEM", "2048")
        .env("VM_ENV", "KTE_AGENT KTE_ONLY KTE_LOGS")
        .env("KTE_AGENT", &agent)
        .status()
        .expect("run scripts/vm/vm-run.sh");
    progress(&format!("the kernel VM exited after {:.1}s: {status}", started.elapsed().as_secs_f64()));
    match status.code() {
        Some(0) => {}
        Some(124) => panic!("the kernel VM suite did not finish within {VM_TIMEOUT_SECONDS} s"),
        Some(125) => panic!("the VM did not start or did not run the suite (kernel log above)"),
        _ => panic!("the kernel VM suite failed: {status} (summary table and logs above)"),
    }
}

/// Guest side: run every scenario, print the table, fail if one failed.
fn guest() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    progress(&format!("in the VM: kernel {}", release.trim()));
    // `KTE_ONLY=a,b` runs only the scenarios whose label contains `a` or `b` (to iterate on one).
    let only = std::env::var("KTE_ONLY").unwrap_or_default();
    let selected = |name: &str| only.split(',').any(|part| name.contains(part));
    let started = Instant::now();
    let mut rows = Vec::new();
    for (name, body) in dataplane::SCENARIOS.iter().filter(|(name, _)| selected(name)) {
        step(&mut rows, name, *body);
    }
    mesh::run(&mut rows, &selected);
    assert!(!rows.is_empty(), "no scenario matches KTE_ONLY={only}");
    world::print_uncaptured(&world::summary(&rows, started.elapsed()));
    let failed: Vec<&str> = rows.iter().filter(|row| row.result.is_err()).map(|row| row.scenario.as_str()).collect();
    assert!(failed.is_empty(), "{} scenario(s) failed: {}", failed.len(), failed.join(", "));
}

/// The `mesh-agent` binary the host built (passed in, because the guest must not build).
fn agent() -> Outcome<std::path::PathBuf> {
    std::env::var_os("KTE_AGENT").map(Into::into).ok_or_else(|| "KTE_AGENT is not set by the host side".to_owned())
}
