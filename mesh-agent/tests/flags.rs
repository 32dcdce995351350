//! Kilo's `kg` flags: every one is accepted with its default, and bad values are refused with a
//! message that names the flag and what it accepts (Kilo silently accepts an unknown
//! `--compatibility`; we do not).

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    run_with_env(args, &[])
}

/// Runs mesh-agent with only `PATH` and `env` in its environment.
fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("mesh-agent runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_kilo_flag_is_there_with_its_default() {
    let (code, help, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    let flags: &[(&str, Option<&str>)] = &[
        ("--backend", Some("kubernetes")),
        ("--clean-up", Some("true")),
        ("--clean-up-interface", Some("false")),
        ("--cni", Some("true")),
        ("--cni-path", Some("/etc/cni/net.d/10-kilo.conflist")),
        ("--compatibility", Some("\"\"")),
        ("--create-interface", Some("true")),
        ("--encapsulate", Some("always")),
        ("--hostname", None),
        ("--interface", Some("kilo0")),
        ("--internal-cidr", None),
        ("--iptables-forward-rules", Some("false")),
        ("--kubeconfig", None),
        ("--listen", Some(":1107")),
        ("--local", Some("true")),
        ("--log-level", Some("info")),
        ("--master", None),
        ("--mesh-granularity", None),
        ("--mtu", Some("auto")),
        ("--port", Some("51820")),
        ("--prioritise-private-addresses", Some("false")),
        ("--resync-period", Some("30s")),
        ("--service-cidr", None),
        ("--subnet", None),
        ("--topology-label", Some("topology.kubernetes.io/region")),
        ("--version", None),
        // Ours.
        ("--cluster-dir", None),
        ("--wireguard-backend", Some("auto")),
        ("--private-key-file", Some("/var/lib/kilo/key")),
        ("--log-format", Some("text")),
    ];
    for (flag, default) in flags {
        let entry = help_entry(&help, flag).unwrap_or_else(|| panic!("{flag} missing from --help:\n{help}"));
        if let Some(default) = default {
            assert!(entry.contains(&format!("[default: {default}]")), "{flag} default is not {default}: {entry}");
        }
        if *flag != "--version" {
            let env = format!("KILO_{}", flag.trim_start_matches("--").replace('-', "_").to_uppercase());
            assert!(entry.contains(&format!("[env: {env}")), "{flag} has no environment variable {env}: {entry}");
        }
    }
    assert!(help.contains("minus 70"), "--mtu states the cilium overhead");
    // Defaults that are not printed as such.
    assert!(help.contains("[default: 10.4.0.0/16"), "--subnet default");
    assert!(help.contains("location, full or cross"), "--mesh-granularity values");
}

/// The help entry of `flag`: its line and the description lines under it.
fn help_entry(help: &str, flag: &str) -> Option<String> {
    let mut lines = help.lines().skip_while(|line| {
        let line = line.trim_start();
        !(line.strip_prefix(flag).is_some_and(|rest| rest.is_empty() || rest.starts_with(['[', ' ', '=']))
            || line.strip_prefix("-V, ").is_some_and(|rest| rest.starts_with(flag)))
    });
    let first = lines.next()?;
    let rest: Vec<&str> = lines.take_while(|line| !line.trim_start().starts_with('-')).collect();
    Some(format!("{first}\n{}", rest.join(" ")))
}

#[test]
fn bad_values_name_the_flag_and_the_allowed_values() {
    let cases: &[(&[&str], &str)] = &[
        (&["--compatibility=cillium"], "compatibility \"cillium\" unknown; possible values are: flannel, cilium"),
        (
            &["--encapsulate=sometimes"],
            "encapsulation \"sometimes\" unknown; possible values are: never, crosssubnet, always",
        ),
        (&["--backend=etcd"], "[possible values: kubernetes, file]"),
        (&["--log-level=verbose"], "[possible values: all, debug, info, warn, error, none]"),
        (&["--log-format=xml"], "[possible values: text, json]"),
        (&["--wireguard-backend=boringtun"], "possible values are: auto, kernel, userspace"),
        (&["--mtu=big"], "failed to parse MTU \"big\""),
        (&["--port=0"], "--port"),
        (&["--port=70000"], "--port"),
        (&["--resync-period=30"], "invalid duration \"30\""),
        (&["--subnet=10.4.0.0"], "failed to parse \"10.4.0.0\" as CIDR"),
        (&["--service-cidr=10.96.0.0/12,nope"], "failed to parse \"nope\" as CIDR"),
        (&["--internal-cidr=x"], "failed to parse \"x\" as CIDR"),
        (&["--local=maybe"], "--local"),
        (
            &["--mesh-granularity=auto", "--hostname=a"],
            "invalid value \"auto\" for --mesh-granularity: possible values are: location, full, cross",
        ),
        (&["--mesh-granularity=logical", "--hostname=a"], "possible values are: location, full, cross"),
    ];
    for (args, message) in cases {
        let (code, _, stderr) = run(args);
        assert_eq!(code, Some(1), "{args:?} must be refused: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {message:?} not in {stderr}");
    }
}

#[test]
fn booleans_take_kilo_forms() {
    for form in ["--clean-up", "--clean-up=true", "--clean-up=false"] {
        // A usage error would come first: an unknown granularity stops the agent before it touches
        // the host, so the flag parsed when the error is about the granularity.
        let (code, _, stderr) = run(&[form, "--mesh-granularity=bogus", "--hostname=a"]);
        assert_eq!(code, Some(1));
        assert!(stderr.contains("--mesh-granularity"), "{form}: {stderr}");
    }
}

#[test]
fn version_prints_the_version() {
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")));
    let (code, stdout, _) = run(&["version"]);
    assert_eq!((code, stdout.as_str()), (Some(0), concat!(env!("CARGO_PKG_VERSION"), "\n")));
}

/// What Kubernetes puts into every pod of a namespace that has a Service named `kilo` with a
/// port 1107 named `metrics` (unless the pod sets `enableServiceLinks: false`).
const KILO_SERVICE_LINKS: &[(&str, &str)] = &[
    ("KILO_SERVICE_HOST", "10.96.0.10"),
    ("KILO_SERVICE_PORT", "1107"),
    ("KILO_SERVICE_PORT_METRICS", "1107"),
    ("KILO_PORT", "tcp://10.96.0.10:1107"),
    ("KILO_PORT_1107_TCP", "tcp://10.96.0.10:1107"),
    ("KILO_PORT_1107_TCP_PROTO", "tcp"),
    ("KILO_PORT_1107_TCP_PORT", "1107"),
    ("KILO_PORT_1107_TCP_ADDR", "10.96.0.10"),
];

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cozystack-cluster.yaml");

/// `plan` for the example's `onprem-1`: its JSON, or its standard error on failure.
fn plan(args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let mut full = vec!["plan", "--nodes", EXAMPLE, "--hostname", "onprem-1", "--now", "1767225600", "-o", "json"];
    full.extend_from_slice(args);
    let (code, stdout, stderr) = run_with_env(&full, env);
    if code == Some(0) { Ok(stdout) } else { Err(stderr) }
}

#[test]
fn a_service_named_kilo_neither_stops_nor_reconfigures_the_agent() {
    // The agent: flags parse (the error that stops it is the bogus granularity, which is checked
    // before the agent touches the host), and the warning says what was ignored.
    let (code, _, stderr) = run_with_env(&["--mesh-granularity=bogus", "--hostname=a"], KILO_SERVICE_LINKS);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--mesh-granularity"), "parsing stopped before the granularity: {stderr}");
    assert!(
        stderr.contains("ignoring KILO_PORT=tcp://10.96.0.10:1107") && stderr.contains("using port 51820"),
        "no warning about KILO_PORT: {stderr}"
    );
    // The offline tools read the same flags: the plan is the one without the variables.
    assert_eq!(plan(&[], KILO_SERVICE_LINKS), plan(&[], &[]));
}

#[test]
fn kilo_port_is_still_read_and_checked() {
    assert!(plan(&[], &[("KILO_PORT", "51821")]).is_ok());
    let error = plan(&[], &[("KILO_PORT", "0")]).unwrap_err();
    assert!(error.contains("invalid port \"0\""), "{error}");
    // A malformed KILO_PORT that is no service link is refused.
    let error = plan(&[], &[("KILO_PORT", "http://x")]).unwrap_err();
    assert!(error.contains("invalid port \"http://x\""), "{error}");
    // The command line wins over a service link, as over any variable (no warning: the variable
    // is never parsed).
    let (code, _, stderr) =
        run_with_env(&["--port=51822", "--mesh-granularity=bogus", "--hostname=a"], KILO_SERVICE_LINKS);
    assert_eq!(code, Some(1));
    assert!(!stderr.contains("KILO_PORT"), "{stderr}");
}

#[test]
fn a_service_link_on_the_command_line_is_refused() {
    let error = plan(&["--port=tcp://10.96.0.10:1107"], &[]).unwrap_err();
    assert!(error.contains("invalid port \"tcp://10.96.0.10:1107\""), "{error}");
}

#[test]
fn a_corrupt_key_file_stops_the_agent_with_the_start_up_exit_code() {
    let directory = std::env::temp_dir().join(format!("mesh-agent-flags-key-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("key");
    std::fs::write(&path, "not a key").unwrap();
    let file = format!("--private-key-file={}", path.display());
    let (code, _, stderr) = run(&["--hostname=a", &file]);
    let kept = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_dir_all(&directory);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains(&format!("private key file {} holds no usable key", path.display())), "{stderr}");
    assert!(stderr.contains("--regenerate-private-key"), "{stderr}");
    assert_eq!(kept, "not a key", "the file was replaced");
}
