//! netns-cni behind the real reference plugins (Debian's
//! containernetworking-plugins: loopback, bridge, host-local), run by hand
//! the way a container runtime runs a chain, inside a throw-away node
//! namespace, against an agent with `--pod-source cni`. What is asserted
//! comes from the kernel (the agent's pinned maps, read back) and from the
//! plugin's stdout and exit status (the CNI spec's result and error objects).
//! Needs root, iproute2 and containernetworking-plugins (`./x test`
//! installs them).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use netns_core::NetNs;
use netns_tests::cni::{Chain, Run};
use serde_json::{Value, json};

const AGENT: &str = env!("CARGO_BIN_EXE_netns-agent");
const PLUGIN: &str = env!("CARGO_BIN_EXE_netns-cni");
/// Held by each test for its whole run: each starts agents (program loads)
/// and the burst loads the machine; one at a time keeps the slow guests'
/// timings far from the plugin's timeout.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn meshed(chain: &Chain) -> Vec<u64> {
    netns_tests::pins::meshed_cookies(&chain.bpffs())
}

/// The pod addresses in the maps, with the cookie each is filed under.
fn local_pods(chain: &Chain) -> Vec<(IpAddr, u64)> {
    netns_tests::pins::local_pods(&chain.bpffs())
}

/// The addresses of a CNI result's `ips`.
fn result_addrs(result: &Value) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| {
            ip["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    addrs.sort();
    addrs
}

fn assert_ok(run: &Run, what: &str) {
    assert_eq!(run.exit, 0, "{what}: {run:?}");
}

fn assert_error(run: &Run, code: u64, what: &str) {
    assert_ne!(run.exit, 0, "{what}: {run:?}");
    assert_eq!(run.code(), Some(code), "{what}: {run:?}");
    assert!(
        run.out["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {run:?}"
    );
}

/// ADD -> CHECK -> DEL -> DEL again, dual-stack: the maps hold exactly the
/// pod's cookie and every address of bridge's result while attached, and
/// nothing after; prevResult comes back unchanged.
#[test]
fn root_cni_add_check_del_del_behind_bridge_and_host_local() {
    let _alone = serial();
    let mut chain = Chain::new(AGENT, PLUGIN, "lifecycle");
    chain.start_agent();
    let pod = chain.pod("pod-1");
    let netns = pod.path().to_str().unwrap().to_owned();

    let (prev, add) = chain.add("c1", &pod);
    assert_ok(&add, "ADD");
    assert_eq!(add.out, prev, "prevResult passed through unchanged");
    let addrs = result_addrs(&prev);
    assert_eq!(addrs.len(), 2, "dual-stack result: {prev}");
    let cookie = chain.cookie(&pod);
    assert_eq!(meshed(&chain), [cookie]);
    let want: Vec<(IpAddr, u64)> = addrs.iter().map(|a| (*a, cookie)).collect();
    assert_eq!(local_pods(&chain), want);

    let check = chain.plugin("CHECK", "c1", &netns, &chain.plugin_config(Some(&prev)));
    assert_ok(&check, "CHECK");

    let del = chain.del("c1", &netns, &prev);
    assert_ok(&del, "DEL");
    assert_eq!(meshed(&chain), Vec::<u64>::new());
    assert_eq!(local_pods(&chain), Vec::new());
    let check = chain.plugin("CHECK", "c1", &netns, &chain.plugin_config(Some(&prev)));
    assert_error(&check, 101, "CHECK after DEL");

    let again = chain.plugin("DEL", "c1", &netns, &chain.plugin_config(Some(&prev)));
    assert_ok(&again, "DEL again");
    assert_eq!(again.stdout, "");
}

/// DEL after the pod's namespace is gone, and DEL while the agent is down:
/// both succeed; the agent's restart then drops what was left.
#[test]
fn root_cni_del_succeeds_when_the_namespace_or_the_agent_is_gone() {
    let _alone = serial();
    let mut chain = Chain::new(AGENT, PLUGIN, "gone");
    chain.start_agent();
    let pod1 = chain.pod("pod-1");
    let pod2 = chain.pod("pod-2");
    let (prev1, add1) = chain.add("c1", &pod1);
    assert_ok(&add1, "ADD 1");
    let (prev2, add2) = chain.add("c2", &pod2);
    assert_ok(&add2, "ADD 2");
    assert_eq!(meshed(&chain).len(), 2);

    // The namespace goes first (a runtime that lost it), then DEL.
    let path1 = pod1.path().to_str().unwrap().to_owned();
    drop(pod1);
    NetNs::delete_at(Path::new(&path1)).unwrap();
    let del = chain.plugin("DEL", "c1", &path1, &chain.plugin_config(Some(&prev1)));
    assert_ok(&del, "DEL of a deleted namespace");
    assert_eq!(meshed(&chain).len(), 1);

    // The agent is down during DEL: DEL still succeeds; the pod's namespace
    // goes too; the next agent finds its record, sees the namespace gone and
    // removes its entries.
    chain.stop_agent();
    let path2 = pod2.path().to_str().unwrap().to_owned();
    let del = chain.plugin("DEL", "c2", &path2, &chain.plugin_config(Some(&prev2)));
    assert_ok(&del, "DEL with the agent down");
    assert!(del.stderr.contains("reconcile"), "{del:?}");
    drop(pod2);
    NetNs::delete_at(Path::new(&path2)).unwrap();
    assert_eq!(meshed(&chain).len(), 1, "kept state while no agent runs");
    chain.start_agent();
    assert_eq!(meshed(&chain), Vec::<u64>::new(), "{}", chain.logs());
    assert_eq!(local_pods(&chain), Vec::new());
}

/// The agent restarts between ADD and DEL: DEL still removes exactly the pod.
#[test]
fn root_cni_agent_restarted_between_add_and_del() {
    let _alone = serial();
    let mut chain = Chain::new(AGENT, PLUGIN, "restart");
    chain.start_agent();
    let pod = chain.pod("pod-1");
    let netns = pod.path().to_str().unwrap().to_owned();
    let (prev, add) = chain.add("c1", &pod);
    assert_ok(&add, "ADD");
    chain.stop_agent();
    chain.start_agent();
    let cookie = chain.cookie(&pod);
    assert_eq!(meshed(&chain), [cookie], "re-taken after the restart");
    let check = chain.plugin("CHECK", "c1", &netns, &chain.plugin_config(Some(&prev)));
    assert_ok(&check, "CHECK after restart");
    assert_ok(&chain.del("c1", &netns, &prev), "DEL after restart");
    assert_eq!(meshed(&chain), Vec::<u64>::new());
}

/// Bad input gets the spec's error and leaves nothing behind.
#[test]
fn root_cni_bad_input_gets_spec_errors_and_nothing_half_done() {
    let _alone = serial();
    let mut chain = Chain::new(AGENT, PLUGIN, "errors");
    let pod = chain.pod("pod-1");
    let netns = pod.path().to_str().unwrap().to_owned();
    let plugin = Path::new(PLUGIN);
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "198.18.64.9/24"}]});

    // The agent is down: ADD says "try again later" (11) by default...
    let add = chain.plugin("ADD", "c1", &netns, &chain.plugin_config(Some(&prev)));
    assert_error(&add, 11, "ADD with no agent");
    // ...and lets the pod start unmeshed when configured so.
    let mut allow = chain.plugin_config(Some(&prev));
    allow["agentUnreachable"] = json!("allow");
    let add = chain.plugin("ADD", "c1", &netns, &allow);
    assert_ok(&add, "ADD with no agent, agentUnreachable: allow");
    assert_eq!(add.out, prev);
    assert!(add.stderr.contains("unmeshed"), "{add:?}");

    chain.start_agent();
    let version = chain.plugin("VERSION", "", "", &json!({"cniVersion": "1.0.0"}));
    assert_ok(&version, "VERSION");
    assert!(
        version.out["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.1.0"))
    );
    let status = chain.plugin("STATUS", "", "", &json!({"cniVersion": "1.1.0", "name": "meshnet", "type": "netns-cni", "agentSocket": chain.socket()}));
    assert_ok(&status, "STATUS");

    let garbage = chain.exec(plugin, "ADD", "c1", &netns, b"{not json");
    assert_error(&garbage, 6, "malformed stdin");
    let old = json!({"cniVersion": "0.1.0", "name": "x", "type": "netns-cni"});
    assert_error(
        &chain.plugin("ADD", "c1", &netns, &old),
        1,
        "unsupported version",
    );
    let no_prev = chain.plugin("ADD", "c1", &netns, &chain.plugin_config(None));
    assert_error(&no_prev, 7, "no prevResult");
    let no_netns = chain.plugin("ADD", "c1", "", &chain.plugin_config(Some(&prev)));
    assert_error(&no_netns, 4, "missing CNI_NETNS");
    let bad_id = chain.plugin("ADD", "../etc", &netns, &chain.plugin_config(Some(&prev)));
    assert_error(&bad_id, 4, "container id with a slash");
    let file = chain.dir.join("not-a-netns");
    std::fs::write(&file, "x").unwrap();
    let regular = chain.plugin(
        "ADD",
        "c2",
        file.to_str().unwrap(),
        &chain.plugin_config(Some(&prev)),
    );
    assert_error(&regular, 4, "CNI_NETNS is a regular file");
    let huge = vec![b' '; (1 << 20) + 10];
    assert_error(
        &chain.exec(plugin, "ADD", "c1", &netns, &huge),
        7,
        "oversized config",
    );

    // A pod of an excluded namespace passes through without the agent.
    let mut system = chain.plugin_config(Some(&prev));
    system["excludeNamespaces"] = json!(["default"]);
    let add = chain.plugin("ADD", "c3", &netns, &system);
    assert_ok(&add, "ADD in an excluded namespace");
    assert_eq!(add.out, prev);

    assert_eq!(meshed(&chain), Vec::<u64>::new(), "nothing half-done");
    assert_eq!(local_pods(&chain), Vec::new());
    assert!(
        std::fs::read_dir(chain.dir.join("cni")).map_or(0, Iterator::count) == 0,
        "no attachment recorded"
    );
}

/// 200 concurrent ADDs (as a node starting many pods), then 200 DELs: every
/// pod meshed exactly once, nothing left.
#[test]
fn root_cni_200_concurrent_adds() {
    let _alone = serial();
    let mut chain = Chain::new(AGENT, PLUGIN, "burst");
    chain.start_agent();
    let pods: Vec<NetNs> = (0..200).map(|i| chain.pod(&format!("pod-{i}"))).collect();
    let results: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let chain = &chain;
                s.spawn(move || {
                    let netns = pod.path().to_str().unwrap();
                    let addr = format!("198.18.65.{}/24", i + 1);
                    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": addr}]});
                    let mut conf = chain.plugin_config(Some(&prev));
                    // 200 at once queue behind each other in the agent: the
                    // last waits for all the others (seconds in the guests).
                    conf["timeoutMs"] = json!(60_000);
                    chain.plugin("ADD", &format!("c{i}"), netns, &conf)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The margin is the plugin's 60 s budget, which the agent honours (the
    // request carries it): printed so that a slow guest shows how close it came.
    let mut took: Vec<Duration> = results.iter().map(|r| r.elapsed).collect();
    took.sort_unstable();
    eprintln!(
        "200 concurrent ADDs: each took p50 {:?}, max {:?} (budget 60 s)",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    for (i, run) in results.iter().enumerate() {
        assert_ok(run, &format!("ADD {i}"));
    }
    assert_eq!(meshed(&chain).len(), 200);
    assert_eq!(local_pods(&chain).len(), 200);
    for (i, pod) in pods.iter().enumerate() {
        let netns = pod.path().to_str().unwrap();
        let del = chain.plugin("DEL", &format!("c{i}"), netns, &chain.plugin_config(None));
        assert_ok(&del, "DEL");
    }
    assert_eq!(meshed(&chain), Vec::<u64>::new());
    assert_eq!(local_pods(&chain), Vec::new());
}

/// ADD naming the node's own namespace (the agent's, the host's) is refused
/// and meshes nothing; DEL of an attachment not on record touches nothing,
/// even when it names a meshed pod's namespace; a pod with two attachments
/// (two interfaces) stays meshed until the last one is deleted.
#[test]
fn root_cni_refuses_the_node_namespace_and_keys_attachments_by_interface() {
    let _alone = serial();
    let mut chain = Chain::new(AGENT, PLUGIN, "exact");
    chain.start_agent();
    let pod = chain.pod("pod-a");
    let netns = pod.path().to_str().unwrap().to_owned();
    let (prev, add) = chain.add("ca", &pod);
    assert_ok(&add, "ADD");
    let cookie = chain.cookie(&pod);
    assert_eq!(meshed(&chain), [cookie]);

    for node in ["/proc/self/ns/net", "/proc/1/ns/net"] {
        let run = chain.plugin("ADD", "cnode", node, &chain.plugin_config(Some(&prev)));
        assert_error(&run, 4, &format!("ADD of {node}"));
        assert_eq!(meshed(&chain), [cookie], "ADD of {node} meshed nothing");
    }

    let unknown = chain.plugin("DEL", "cother", &netns, &chain.plugin_config(Some(&prev)));
    assert_ok(&unknown, "DEL of an unknown attachment");
    assert_eq!(
        meshed(&chain),
        [cookie],
        "an unknown DEL leaves pod A meshed"
    );

    let second = chain.plugin_on(
        "ADD",
        "ca",
        "net1",
        &netns,
        &chain.plugin_config(Some(&prev)),
    );
    assert_ok(&second, "ADD of a second interface");
    let del_second = chain.plugin_on(
        "DEL",
        "ca",
        "net1",
        &netns,
        &chain.plugin_config(Some(&prev)),
    );
    assert_ok(&del_second, "DEL of the second interface");
    assert_eq!(
        meshed(&chain),
        [cookie],
        "still attached on eth0: still meshed"
    );
    let del = chain.del("ca", &netns, &prev);
    assert_ok(&del, "DEL of the last interface");
    assert_eq!(
        meshed(&chain),
        Vec::<u64>::new(),
        "the last attachment took the pod out"
    );
}

/// GC as a node with thousands of attachments sends it (a request far over
/// the old 64 KiB limit): answered, the listed pod kept; a GC that no longer
/// lists it removes it.
#[test]
fn root_cni_gc_of_thousands_of_attachments_is_answered() {
    let _alone = serial();
    let mut chain = Chain::new(AGENT, PLUGIN, "gc");
    chain.start_agent();
    let pod = chain.pod("pod-a");
    let netns = pod.path().to_str().unwrap().to_owned();
    let (prev, add) = chain.add("ca", &pod);
    assert_ok(&add, "ADD");
    let cookie = chain.cookie(&pod);
    let gc = |valid: Vec<Value>| {
        let mut conf = chain.plugin_config(None);
        conf["cniVersion"] = json!("1.1.0");
        conf["cni.dev/valid-attachments"] = Value::Array(valid);
        chain.plugin("GC", "", "", &conf)
    };
    let mut valid: Vec<Value> = (0..5000)
        .map(|i| json!({"containerID": format!("{i:064x}"), "ifname": "eth0"}))
        .collect();
    valid.push(json!({"containerID": "ca", "ifname": "eth0"}));
    let kept = gc(valid.clone());
    assert_ok(&kept, "GC listing 5,001 attachments");
    assert_eq!(meshed(&chain), [cookie], "the listed pod stays");
    valid.pop();
    let removed = gc(valid);
    assert_ok(&removed, "GC without the pod");
    assert_eq!(meshed(&chain), Vec::<u64>::new(), "the unlisted pod goes");
    let del = chain.del("ca", &netns, &prev);
    assert_ok(&del, "DEL after GC");
}

/// SIGTERM (20 times) while CNI ADDs and DELs flood the agent: each time it
/// stops at once with exit 0 and no panic (pod work that races the shutdown
/// is told the agent is stopping), and nothing of it stays attached.
#[test]
fn root_cni_sigterm_under_a_cni_flood_always_stops_cleanly() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let _alone = serial();
    let mut chain = Chain::new(AGENT, PLUGIN, "sigterm");
    let pods: Vec<NetNs> = (0..4).map(|i| chain.pod(&format!("pod-{i}"))).collect();
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "198.18.66.1/24"}]});
    let mut slowest = Duration::ZERO;
    for trial in 0..20 {
        chain.start_agent_with(&["--pod-source", "cni"], &[]);
        let mut agent = chain.take_agent();
        let stop = AtomicBool::new(false);
        let (status, took) = std::thread::scope(|s| {
            for (i, pod) in pods.iter().enumerate() {
                let (chain, stop, prev) = (&chain, &stop, &prev);
                s.spawn(move || {
                    let netns = pod.path().to_str().unwrap();
                    let conf = chain.plugin_config(Some(prev));
                    while !stop.load(Ordering::Relaxed) {
                        let _ = chain.plugin("ADD", &format!("c{i}"), netns, &conf);
                        let _ = chain.plugin("DEL", &format!("c{i}"), netns, &conf);
                    }
                });
            }
            let _stop = netns_tests::StopOnDrop(&stop);
            std::thread::sleep(Duration::from_millis(150));
            agent.signal(nix::sys::signal::Signal::SIGTERM)
        });
        slowest = slowest.max(took);
        let logs = chain.logs();
        assert_eq!(
            status.code(),
            Some(0),
            "trial {trial}: {status:?}; logs:\n{logs}"
        );
        assert!(
            !logs.contains("panicked"),
            "trial {trial}: a panic; logs:\n{logs}"
        );
        // --keep-state leaves the data path for the next run; the flood's
        // pods come and go, so the next agent starts from its records.
    }
    eprintln!("SIGTERM under a CNI flood: 20 of 20 clean, slowest exit {slowest:?}");
    assert!(
        slowest < Duration::from_secs(5),
        "an exit took {slowest:?}: a signal was missed or shutdown waited on pod work"
    );
}

/// An ADD whose time runs out in the agent leaves nothing meshed: with a
/// 1 ms budget the agent either finds the deadline past when the request's
/// turn comes (not started) or finishes after it (rolled back); either way
/// the runtime is told to try again (11), and once a later request of the
/// same queue is answered the kernel's maps hold nothing of the pod and no
/// attachment is on record. A normal ADD of the same pod then works.
#[test]
fn root_cni_add_past_its_deadline_leaves_nothing_meshed() {
    let _alone = serial();
    let mut chain = Chain::new(AGENT, PLUGIN, "deadline");
    chain.start_agent();
    let pod = chain.pod("pod-1");
    let netns = pod.path().to_str().unwrap().to_owned();
    let (prev, _) = chain.add_before_mesh("c1", &pod);
    let mut hurried = chain.plugin_config(Some(&prev));
    hurried["timeoutMs"] = json!(1);
    for attempt in 0..5 {
        let add = chain.plugin("ADD", "c1", &netns, &hurried);
        assert_error(&add, 11, &format!("ADD {attempt} with a 1 ms budget"));
        // The queue is one line: when CHECK is answered, the ADD is done.
        let check = chain.plugin("CHECK", "c1", &netns, &chain.plugin_config(Some(&prev)));
        assert_error(&check, 101, "CHECK after the late ADD: nothing recorded");
        assert_eq!(meshed(&chain), Vec::<u64>::new(), "attempt {attempt}");
        assert_eq!(local_pods(&chain), Vec::new(), "attempt {attempt}");
    }
    let logs = chain.logs();
    let (skipped, rolled_back) = (
        logs.matches("waited for its turn").count(),
        logs.matches("rolled back").count(),
    );
    println!("late ADDs: {skipped} not started, {rolled_back} rolled back");
    let add = chain.plugin("ADD", "c1", &netns, &chain.plugin_config(Some(&prev)));
    assert_ok(&add, "ADD in time");
    assert_eq!(meshed(&chain), [chain.cookie(&pod)]);
}
