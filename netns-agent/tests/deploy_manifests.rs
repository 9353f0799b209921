//! The deployment (deploy/) against the binaries it runs: every flag the
//! `DaemonSet` passes exists (asked of the binaries' `--help`), every
//! `ConfigMap` key is an environment variable the agent reads, the probes hit
//! the port and path the agent serves, the mounts cover every path the
//! flags name, the capabilities are the listed set, RBAC is read-only on
//! pods, and the Dockerfile builds both binaries with the eBPF object.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const AGENT: &str = env!("CARGO_BIN_EXE_netns-agent");
const PLUGIN: &str = env!("CARGO_BIN_EXE_netns-cni");

/// Embedded at build time: the test runs where no source tree is (the VM guests).
const MANIFEST: &str = include_str!("../../deploy/netns-agent.yaml");
const DOCKERFILE: &str = include_str!("../../deploy/Dockerfile");

fn docs() -> Vec<Yaml> {
    YamlLoader::load_from_str(MANIFEST).unwrap_or_else(|e| panic!("deploy/netns-agent.yaml: {e}"))
}

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in deploy/netns-agent.yaml"))
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec()
        .unwrap_or_else(|| panic!("not a list: {list:?}"))
        .iter()
        .map(|v| match v {
            Yaml::String(s) => s.clone(),
            Yaml::Integer(i) => i.to_string(),
            other => panic!("not a string: {other:?}"),
        })
        .collect()
}

fn help(binary: &str, args: &[&str]) -> String {
    let out = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{binary} {args:?} --help: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `--flags` of a command line.
fn flags(command: &[String]) -> Vec<&str> {
    command
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(String::as_str)
        .collect()
}

/// The value after `flag`.
fn value<'a>(command: &'a [String], flag: &str) -> &'a str {
    let at = command
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} missing from {command:?}"));
    &command[at + 1]
}

fn container<'a>(ds: &'a Yaml, name: &str) -> &'a Yaml {
    ds["spec"]["template"]["spec"]["containers"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn mount_paths(c: &Yaml) -> Vec<String> {
    c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap().to_owned())
        .collect()
}

fn under_a_mount(path: &str, mounts: &[String]) -> bool {
    mounts.iter().any(|m| Path::new(path).starts_with(m))
}

/// The agent's and the installer's command lines.
fn commands(ds: &Yaml) -> (Vec<String>, Vec<String>) {
    (
        strings(&container(ds, "agent")["command"]),
        strings(&container(ds, "install-cni")["command"]),
    )
}

#[test]
fn the_daemonset_runs_flags_the_binaries_have() {
    let docs = docs();
    let ds = kind(&docs, "DaemonSet");
    let (agent, install) = (container(ds, "agent"), container(ds, "install-cni"));
    let version = env!("CARGO_PKG_VERSION");
    for c in [agent, install] {
        let image = c["image"].as_str().unwrap();
        assert!(
            image.ends_with(&format!(":{version}")),
            "{image}: the workspace version"
        );
    }
    assert_eq!(
        agent["image"], install["image"],
        "one image with both binaries"
    );
    let (agent_cmd, install_cmd) = commands(ds);
    assert_eq!(&agent_cmd[..2], ["netns-agent", "run"]);
    let run_help = help(AGENT, &["run"]);
    for flag in flags(&agent_cmd) {
        assert!(run_help.contains(flag), "netns-agent run has no {flag}");
    }
    assert_eq!(value(&agent_cmd, "--pod-source"), "cni");
    assert!(
        agent_cmd.iter().any(|a| a == "--keep-state"),
        "rolling upgrades keep the data path"
    );
    assert_eq!(&install_cmd[..2], ["netns-cni", "install"]);
    let install_help = help(PLUGIN, &["install"]);
    for flag in flags(&install_cmd) {
        assert!(
            install_help.contains(flag),
            "netns-cni install has no {flag}"
        );
    }
    assert_eq!(
        value(&install_cmd, "--agent-socket"),
        value(&agent_cmd, "--control-socket"),
        "the plugin reaches the agent's socket"
    );
}

#[test]
fn the_probes_hit_what_the_agent_serves() {
    let docs = docs();
    let ds = kind(&docs, "DaemonSet");
    let agent = container(ds, "agent");
    let (agent_cmd, _) = commands(ds);
    let metrics = value(&agent_cmd, "--metrics-addr");
    let (host, port) = metrics.rsplit_once(':').unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"].as_bool(),
        Some(true),
        "probes reach the node's loopback"
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &agent[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            get["port"].as_i64().map(|p| p.to_string()).as_deref(),
            Some(port),
            "{probe}"
        );
        assert_eq!(get["host"].as_str(), Some(host), "{probe}");
    }
}

#[test]
fn the_mounts_cover_every_path_the_flags_name() {
    let docs = docs();
    let ds = kind(&docs, "DaemonSet");
    let (agent_cmd, install_cmd) = commands(ds);
    let config = kind(&docs, "ConfigMap");
    let agent_mounts = mount_paths(container(ds, "agent"));
    for path in [
        value(&agent_cmd, "--bpffs"),
        value(&agent_cmd, "--control-socket"),
        value(&agent_cmd, "--cni-state-dir"),
        config["data"]["NETNS_AGENT_CGROUP"].as_str().unwrap(),
        "/var/run/netns",
    ] {
        assert!(
            under_a_mount(path, &agent_mounts),
            "{path} is not mounted: {agent_mounts:?}"
        );
    }
    let install_mounts = mount_paths(container(ds, "install-cni"));
    for flag in ["--conf-dir", "--bin-dir"] {
        let path = value(&install_cmd, flag);
        assert!(
            under_a_mount(path, &install_mounts),
            "{flag} {path} is not mounted"
        );
    }
    let host_paths: BTreeSet<&str> = ds["spec"]["template"]["spec"]["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| v["hostPath"]["path"].as_str().unwrap())
        .collect();
    for wanted in [
        "/sys/fs/bpf",
        "/sys/fs/cgroup",
        "/var/run/netns",
        "/etc/cni/net.d",
        "/opt/cni/bin",
    ] {
        assert!(
            host_paths.contains(wanted),
            "no hostPath {wanted}: {host_paths:?}"
        );
    }
}

#[test]
fn the_capabilities_are_exactly_the_listed_ones() {
    let docs = docs();
    let ds = kind(&docs, "DaemonSet");
    let security = &container(ds, "agent")["securityContext"];
    assert_eq!(security["privileged"].as_bool(), Some(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    let caps: BTreeSet<String> = strings(&security["capabilities"]["add"])
        .into_iter()
        .collect();
    let wanted: BTreeSet<String> = [
        "SYS_ADMIN",
        "NET_ADMIN",
        "BPF",
        "PERFMON",
        "SYS_RESOURCE",
        "SYS_PTRACE",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(caps, wanted);
    let install = &container(ds, "install-cni")["securityContext"]["capabilities"];
    assert_eq!(strings(&install["drop"]), ["ALL"]);
    assert!(install["add"].is_badvalue());
}

#[test]
fn the_configmap_sets_only_variables_the_agent_reads() {
    let docs = docs();
    let config = kind(&docs, "ConfigMap");
    let run_help = help(AGENT, &["run"]);
    let data = config["data"].as_hash().unwrap();
    assert!(!data.is_empty());
    for key in data.keys() {
        let key = key.as_str().unwrap();
        assert!(
            run_help.contains(&format!("env: {key}=")),
            "netns-agent run reads no {key}"
        );
    }
    let ds = kind(&docs, "DaemonSet");
    let env_from = &container(ds, "agent")["envFrom"][0]["configMapRef"]["name"];
    assert_eq!(env_from.as_str(), config["metadata"]["name"].as_str());
    // The kubernetes source's node name, from the downward API.
    let env = container(ds, "agent")["env"].as_vec().unwrap();
    let node = env
        .iter()
        .find(|e| e["name"].as_str() == Some("NODE_NAME"))
        .expect("NODE_NAME in the agent's env");
    assert_eq!(
        node["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("spec.nodeName")
    );
    assert!(
        run_help.contains("env: NODE_NAME="),
        "netns-agent run reads no NODE_NAME"
    );
}

#[test]
fn rbac_is_read_only_on_pods() {
    let docs = docs();
    let role = kind(&docs, "ClusterRole");
    let rules = role["rules"].as_vec().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(strings(&rules[0]["resources"]), ["pods"]);
    assert_eq!(strings(&rules[0]["apiGroups"]), [""]);
    let verbs: BTreeSet<String> = strings(&rules[0]["verbs"]).into_iter().collect();
    assert_eq!(
        verbs,
        ["get", "list", "watch"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );
    let binding = kind(&docs, "ClusterRoleBinding");
    let account = kind(&docs, "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], account["metadata"]["name"]);
    let ds = kind(&docs, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        account["metadata"]["name"]
    );
}

#[test]
fn the_dockerfile_builds_both_binaries_with_the_ebpf_object() {
    let text = DOCKERFILE;
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        froms.len(),
        2,
        "multi-stage: build, then a small runtime image"
    );
    assert!(froms[1].contains("slim"), "{}", froms[1]);
    assert!(
        text.contains("./x build-ebpf"),
        "the eBPF object is built inside"
    );
    assert!(text.contains("--package netns-agent --bins"));
    let copy = text
        .lines()
        .find(|l| l.starts_with("COPY --from=build"))
        .unwrap();
    assert!(
        copy.contains("/netns-agent") && copy.contains("/netns-cni"),
        "{copy}"
    );
}
