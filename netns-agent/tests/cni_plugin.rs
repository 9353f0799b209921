//! The `netns-cni` plugin's logic without a runtime or a root:
//! `netns_agent::cni::plugin::run` called directly with the environment a
//! runtime would set and the network config it would pipe in. Where an agent
//! is needed it is a fake: a unix socket in a temporary directory that
//! records the request line and answers what the test says. Every error is
//! checked against the CNI spec's error object (`cniVersion`, `code`, `msg`,
//! `details`, exit status 1).

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use netns_agent::cni::code;
use netns_agent::cni::plugin::{Env, Outcome, SUPPORTED_VERSIONS, run};
use serde_json::{Value, json};

/// A private directory under /tmp, removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "netns-cni-plugin-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    /// A socket path nobody listens on (the file does not exist).
    fn nowhere(&self) -> PathBuf {
        self.dir.join("no-agent.sock")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fake agent on `socket`: takes one connection, reads one request line,
/// answers `reply` and hands back the request line.
fn fake_agent(socket: &Path, reply: &'static str) -> JoinHandle<String> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).unwrap();
        (&conn).write_all(reply.as_bytes()).unwrap();
        (&conn).write_all(b"\n").unwrap();
        line
    })
}

/// What a runtime sets for `command` on container `c1` in `/run/netns/cni-1`.
fn env(command: &str) -> Env {
    Env {
        command: command.to_owned(),
        container_id: "c1".to_owned(),
        netns: "/run/netns/cni-1".to_owned(),
        ifname: "eth0".to_owned(),
        args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1".to_owned(),
    }
}

/// What `bridge` with `host-local` hands on: one IPv4 and one IPv6 address.
fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/cni-1"}
        ],
        "ips": [
            {"interface": 1, "address": "198.18.5.3/24", "gateway": "198.18.5.1"},
            {"interface": 1, "address": "fd00:5::3/64", "gateway": "fd00:5::1"}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    })
}

/// The network config netns-cni gets, with `extra` fields of its own.
fn config(extra: &Value) -> Vec<u8> {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "netns-cni",
        "prevResult": prev_result(),
    });
    for (key, value) in extra.as_object().unwrap() {
        conf[key] = value.clone();
    }
    serde_json::to_vec(&conf).unwrap()
}

/// The spec's error object of a failed invocation: exactly `cniVersion`,
/// `code`, `msg` and `details`, exit status 1. Returns code, msg, details.
fn error(out: &Outcome) -> (u64, String, String) {
    assert_eq!(out.exit, 1, "{out:?}");
    let err: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("the error is not JSON ({e}): {out:?}"));
    let mut keys: Vec<&str> = err
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["cniVersion", "code", "details", "msg"], "{out:?}");
    let version = err["cniVersion"].as_str().unwrap();
    assert!(SUPPORTED_VERSIONS.contains(&version), "{out:?}");
    let msg = err["msg"].as_str().expect("msg is a string").to_owned();
    assert!(!msg.is_empty(), "{out:?}");
    (
        err["code"].as_u64().expect("code is a number"),
        msg,
        err["details"]
            .as_str()
            .expect("details is a string")
            .to_owned(),
    )
}

#[test]
fn version_lists_the_supported_versions() {
    let out = run(&env("VERSION"), br#"{"cniVersion":"1.1.0"}"#);
    assert_eq!(out.exit, 0, "{out:?}");
    let answer: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["cniVersion"], "1.1.0");
    assert_eq!(
        answer["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[test]
fn add_without_cni_version_is_an_invalid_config() {
    let mut conf: Value = serde_json::from_slice(&config(&json!({}))).unwrap();
    conf.as_object_mut().unwrap().remove("cniVersion");
    let out = run(&env("ADD"), &serde_json::to_vec(&conf).unwrap());
    let (code, msg, _) = error(&out);
    assert_eq!(code, u64::from(code::INVALID_CONFIG), "{out:?}");
    assert_eq!(code, 7);
    assert!(msg.contains("cniVersion"), "{msg}");
}

#[test]
fn an_unsupported_cni_version_is_refused() {
    let out = run(
        &env("ADD"),
        &config(&json!({"cniVersion": "0.2.0", "agentSocket": "/nonexistent/agent.sock"})),
    );
    let (code, msg, details) = error(&out);
    assert_eq!(code, u64::from(code::INCOMPATIBLE_VERSION));
    assert_eq!(code, 1);
    assert!(msg.contains("0.2.0"), "{msg}");
    assert!(details.contains("1.1.0"), "{details}");
}

#[test]
fn an_unknown_or_missing_cni_command_is_an_invalid_environment() {
    for command in ["FROB", ""] {
        let out = run(&env(command), &config(&json!({})));
        let (code, msg, _) = error(&out);
        assert_eq!(code, u64::from(code::INVALID_ENV), "{command:?}: {out:?}");
        assert_eq!(code, 4);
        assert!(msg.contains("CNI_COMMAND"), "{msg}");
        // Answered in the config's version.
        let err: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(err["cniVersion"], "1.0.0");
    }
}

#[test]
fn a_malformed_config_cannot_be_decoded() {
    let out = run(&env("ADD"), b"{\"cniVersion\": \"1.0.0\", ");
    let (code, msg, details) = error(&out);
    assert_eq!(code, u64::from(code::DECODE), "{out:?}");
    assert_eq!(code, 6);
    assert!(msg.contains("decode"), "{msg}");
    assert!(details.contains("EOF"), "the parser's own words: {details}");
    // Well-formed JSON of the wrong shape is no better.
    let out = run(&env("ADD"), br#"{"cniVersion": 1}"#);
    assert_eq!(error(&out).0, u64::from(code::DECODE), "{out:?}");
}

#[test]
fn add_with_the_agent_unreachable_fails_with_try_again_later_by_default() {
    let scratch = Scratch::new("unreachable");
    let socket = scratch.nowhere();
    let out = run(
        &env("ADD"),
        &config(&json!({"agentSocket": socket, "timeoutMs": 1000})),
    );
    let (code, msg, details) = error(&out);
    assert_eq!(code, u64::from(code::TRY_AGAIN_LATER), "{out:?}");
    assert_eq!(code, 11);
    assert!(msg.contains("unreachable"), "{msg}");
    assert!(details.contains(&socket.display().to_string()), "{details}");
    // Said the same when asked for explicitly.
    let out = run(
        &env("ADD"),
        &config(&json!({"agentSocket": socket, "agentUnreachable": "fail"})),
    );
    assert_eq!(error(&out).0, 11, "{out:?}");
}

#[test]
fn add_with_the_agent_unreachable_and_allow_passes_prev_result_through() {
    let scratch = Scratch::new("allow");
    let out = run(
        &env("ADD"),
        &config(&json!({"agentSocket": scratch.nowhere(), "agentUnreachable": "allow"})),
    );
    assert_eq!(out.exit, 0, "{out:?}");
    let result: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(result, prev_result());
    assert!(
        out.stderr.contains("warning") && out.stderr.contains("c1 starts unmeshed"),
        "{out:?}"
    );
}

#[test]
fn del_with_the_agent_unreachable_succeeds() {
    let scratch = Scratch::new("del");
    let out = run(
        &env("DEL"),
        &config(&json!({"agentSocket": scratch.nowhere()})),
    );
    assert_eq!(out.exit, 0, "{out:?}");
    assert_eq!(out.stdout, "", "DEL prints nothing on success");
    assert!(out.stderr.contains("reconcile"), "{out:?}");
}

#[test]
fn add_in_an_excluded_namespace_never_asks_the_agent() {
    let scratch = Scratch::new("excluded");
    let mut kube_system = env("ADD");
    kube_system.args = "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1".to_owned();
    // No agent at all, and agentUnreachable "fail": it must not be asked.
    let out = run(
        &kube_system,
        &config(&json!({"agentSocket": scratch.nowhere()})),
    );
    assert_eq!(out.exit, 0, "{out:?}");
    let result: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(result, prev_result());
}

#[test]
fn add_tells_the_agent_the_pod_and_its_budget_and_prints_prev_result() {
    for (timeout_ms, budget_ms) in [(None, 4500), (Some(3000), 2700), (Some(20_000), 19_500)] {
        let scratch = Scratch::new("add");
        let socket = scratch.dir.join("agent.sock");
        let agent = fake_agent(&socket, r#"{"ok":true}"#);
        let mut extra = json!({"agentSocket": socket});
        if let Some(ms) = timeout_ms {
            extra["timeoutMs"] = json!(ms);
        }
        let out = run(&env("ADD"), &config(&extra));
        let line = agent.join().unwrap();
        assert_eq!(out.exit, 0, "{out:?}");
        let result: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(result, prev_result(), "the result is prevResult, unchanged");

        assert!(line.ends_with('\n'), "one line: {line:?}");
        let request: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(request["op"], "cni_add", "{line}");
        assert_eq!(request["container_id"], "c1", "{line}");
        assert_eq!(request["netns"], "/run/netns/cni-1", "{line}");
        assert_eq!(request["ifname"], "eth0", "{line}");
        assert_eq!(
            request["addrs"],
            json!(["198.18.5.3", "fd00:5::3"]),
            "{line}"
        );
        assert_eq!(request["pod_namespace"], "default", "{line}");
        assert_eq!(request["pod_name"], "web-1", "{line}");
        // The agent gets the plugin's time less a margin (a tenth, at most
        // 500 ms), so that it answers before the plugin stops waiting.
        let budget = request["budget_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("no budget_ms: {line}"));
        assert!(budget < timeout_ms.unwrap_or(5000), "{line}");
        assert_eq!(budget, budget_ms, "timeoutMs {timeout_ms:?}: {line}");
    }
}

#[test]
fn add_and_check_pass_the_agents_error_code_on() {
    let scratch = Scratch::new("refused");
    let socket = scratch.dir.join("agent.sock");
    let agent = fake_agent(
        &socket,
        r#"{"ok":false,"code":101,"error":"pod c1 (netns cookie 7): missing from the data path: 198.18.5.3"}"#,
    );
    let out = run(&env("CHECK"), &config(&json!({"agentSocket": socket})));
    let line = agent.join().unwrap();
    assert!(line.contains("\"op\":\"cni_check\""), "{line}");
    let (code, _, details) = error(&out);
    assert_eq!(code, u64::from(code::NOT_MESHED), "{out:?}");
    assert!(details.contains("missing from the data path"), "{details}");

    std::fs::remove_file(&socket).unwrap();
    let agent = fake_agent(&socket, r#"{"ok":false,"code":100,"error":"no such pod"}"#);
    let out = run(&env("ADD"), &config(&json!({"agentSocket": socket})));
    agent.join().unwrap();
    assert_eq!(error(&out).0, u64::from(code::MESH_FAILED), "{out:?}");
}

/// Requests a plugin must refuse before asking any agent: a verb in a spec
/// version it does not exist in (code 1), a prevResult that is not a Result
/// object or a zero timeout (code 7), ADD without an interface name (code 4).
#[test]
fn refuses_what_the_spec_does_not_allow_without_asking_the_agent() {
    let scratch = Scratch::new("spec");
    let socket = scratch.nowhere();
    let with_version = |version: &str| {
        let mut conf: Value =
            serde_json::from_slice(&config(&json!({"agentSocket": socket}))).unwrap();
        conf["cniVersion"] = json!(version);
        serde_json::to_vec(&conf).unwrap()
    };
    for (verb, version) in [
        ("CHECK", "0.3.1"),
        ("CHECK", "0.3.0"),
        ("GC", "1.0.0"),
        ("STATUS", "1.0.0"),
    ] {
        let (code, msg, _) = error(&run(&env(verb), &with_version(version)));
        assert_eq!(
            code,
            u64::from(code::INCOMPATIBLE_VERSION),
            "{verb} in {version}: {msg}"
        );
        assert!(msg.contains(verb), "{msg}");
    }
    let mut string_prev = json!({"agentSocket": socket});
    string_prev["prevResult"] = json!("not a result");
    let (code, msg, details) = error(&run(&env("ADD"), &config(&string_prev)));
    assert_eq!(code, u64::from(code::INVALID_CONFIG), "{msg}: {details}");
    let (code, msg, _) = error(&run(
        &env("ADD"),
        &config(&json!({"agentSocket": socket, "timeoutMs": 0})),
    ));
    assert_eq!(code, u64::from(code::INVALID_CONFIG), "{msg}");
    let mut no_ifname = env("ADD");
    no_ifname.ifname.clear();
    let (code, msg, _) = error(&run(&no_ifname, &config(&json!({"agentSocket": socket}))));
    assert_eq!(code, u64::from(code::INVALID_ENV), "{msg}");
    assert!(msg.contains("CNI_IFNAME"), "{msg}");
}
