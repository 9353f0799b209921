//! `./x bench-cni`: one CNI ADD as a container runtime sees it, from process
//! start to exit, over 1,000 pods: `netns-cni` alone (its request to the
//! agent included: the agent meshes the pod before the plugin exits) and
//! the whole chain (Debian's `loopback`, `bridge` with `host-local`, then
//! `netns-cni`, one after another). Pods are namespaces made for the
//! benchmark, inside a throw-away node namespace (see `netns_tests::cni`).
//!
//! Prints `cni_add_p50_ms`, `cni_add_p99_ms`, `chain_add_p50_ms`,
//! `chain_add_p99_ms`, the same for DEL, and `cni_version_floor_*`: the same
//! spawn of the plugin doing nothing (VERSION), what any plugin pays here,
//! and `cni_version_after_bridge_*`: that spawn where ADD runs, right after
//! bridge's ADD of a new pod; and `agent_phase_*`, the agent's own time per
//! phase of an ADD (its `/metrics` histograms: queued, open, learn, equip,
//! write, record; the p99 as the bound of the bucket that holds it). Environment:
//! `NETNS_BENCH_AGENT`, `NETNS_BENCH_CNI` (the binaries; `./x bench-cni`
//! builds them in release mode), `NETNS_BENCH_PODS` (default 1000).

use std::time::Duration;

use netns_tests::bench::env_u32;
use netns_tests::cni::Chain;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[f64], per_mille: usize) -> f64 {
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

fn print(name: &str, mut xs: Vec<f64>) {
    xs.sort_by(f64::total_cmp);
    println!("{name}_p50_ms: {:.2}", percentile(&xs, 500));
    println!("{name}_p99_ms: {:.2}", percentile(&xs, 990));
    println!("{name}_max_ms: {:.2}", xs[xs.len() - 1]);
}

/// One spawn of the plugin doing nothing (VERSION), in ms.
fn version_ms(chain: &Chain) -> f64 {
    let run = chain.plugin(
        "VERSION",
        "",
        "",
        &serde_json::json!({"cniVersion": "1.0.0"}),
    );
    assert_eq!(run.exit, 0, "VERSION: {run:?}");
    ms(run.elapsed)
}

fn main() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the CNI benchmark needs root: run `./x bench-cni`"
    );
    let agent = std::env::var("NETNS_BENCH_AGENT").expect("NETNS_BENCH_AGENT: the agent binary");
    let plugin = std::env::var("NETNS_BENCH_CNI").expect("NETNS_BENCH_CNI: the plugin binary");
    let pods = env_u32("NETNS_BENCH_PODS", 1000);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel: {}", kernel.trim());
    println!("pods: {pods}");
    let mut chain = Chain::new(&agent, &plugin, "bench");
    chain.start_agent();
    let (mut plugin_add, mut chain_add) = (Vec::new(), Vec::new());
    let mut attached = Vec::new();
    for i in 0..pods {
        let pod = chain.pod(&format!("pod-{i}"));
        let container = format!("c{i}");
        let (prev, run, whole) = chain.add_timed(&container, &pod);
        assert_eq!(run.exit, 0, "ADD {i}: {run:?}");
        plugin_add.push(ms(run.elapsed));
        chain_add.push(ms(whole));
        attached.push((container, pod, prev));
    }
    print("cni_add", plugin_add);
    print("chain_add", chain_add);
    // Where the agent's part of an ADD goes, from its own histograms.
    let metrics = chain.metrics();
    for (phase, count, sum, p99) in
        netns_tests::agent::histograms(&metrics, "netns_agent_pod_setup_phase_seconds", "phase")
    {
        println!(
            "agent_phase_{phase}: n {count} mean_ms {:.3} p99_le_ms {:.3}",
            sum / count.max(1.0) * 1e3,
            p99 * 1e3
        );
    }
    let mut plugin_del = Vec::new();
    for (container, pod, prev) in &attached {
        let netns = pod.path().to_str().unwrap();
        let run = chain.del(container, netns, prev);
        assert_eq!(run.exit, 0, "DEL {container}: {run:?}");
        plugin_del.push(ms(run.elapsed));
    }
    print("cni_del", plugin_del);
    // The floor: the same spawn of the same binary, doing nothing (VERSION).
    let floor: Vec<f64> = (0..200).map(|_| version_ms(&chain)).collect();
    print("cni_version_floor", floor);
    // The same floor where ADD runs: right after bridge's ADD of a new pod
    // (the kernel still busy with the new veth and addresses).
    let mut after_bridge = Vec::new();
    for i in 0..200 {
        let pod = chain.pod(&format!("late-{i}"));
        let (_, run, _) = chain.add_timed_with(&format!("l{i}"), &pod, || {
            after_bridge.push(version_ms(&chain));
        });
        assert_eq!(run.exit, 0, "ADD late-{i}: {run:?}");
    }
    print("cni_version_after_bridge", after_bridge);
}
