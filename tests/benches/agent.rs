//! `./x bench-agent`: what `netns-agent run` costs at scale. 1,000 pods
//! appear in a watched directory (each a namespace with an address on an
//! interface of its own, all configured before the first file appears, as a
//! CNI plugin would); per pod, the time from its namespace file appearing to
//! its netns cookie being in the agent's map (read from the pinned map: the
//! kernel's view). Then the agent's resident memory with 1,000 pods, then 1,000
//! add+delete churns, and what is left behind (descriptors, threads, map
//! entries).
//!
//! Then reports under load: with the 1,000 pods in place, 200 more pods
//! appear in blocks of 25, alternately while `/metrics` is scraped every
//! second and while it is not; a report must cost the pod worker nothing
//! (the agent makes it from the kernel's maps without the data path's
//! lock). Open connections add nothing to a report: their state lives in
//! socket storage, which no report walks.
//!
//! Prints `pod_ready_p50_ms`, `pod_ready_p99_ms`, `rss_mib_1000_pods`,
//! `scrape_ms_1000_pods`, `pod_ready_p99_ms_quiet`,
//! `pod_ready_p99_ms_scraped`, `leaked_fds`, `leaked_threads`,
//! `leaked_map_entries`; `./x bench-agent`
//! then runs the restart proof (`netns-agent/tests/root_agent_restart.rs`),
//! which prints `restart_failed_connections`. Environment: `NETNS_BENCH_AGENT` (the agent
//! binary; `./x bench-agent` builds it), `NETNS_BENCH_PODS` (default 1000).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData};
use netns_core::NetNs;
use netns_datapath::CookieProbe;
use netns_datapath::cgroup::{ChildCgroup, cgroup2_mount};
use netns_ebpf::{PodFlags, names};
use netns_tests::agent::{run_command, unused_port};
use netns_tests::bench::env_u32;

fn percentile(sorted: &[f64], per_mille: usize) -> f64 {
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map_or(0, Iterator::count)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A namespace with `addr` on a veth of its own, not yet in the directory.
fn configured_pod(addr: Ipv4Addr) -> NetNs {
    let ns = NetNs::new_anonymous().expect("new namespace");
    // /proc/<our pid>/fd/N: nsenter's own /proc/self has no such descriptor.
    let path = ns.path().display().to_string();
    let script =
        format!("link add v0 type veth peer name v0p\naddr add {addr}/32 dev v0\nlink set v0 up\n");
    let mut ip = Command::new("nsenter")
        .arg(format!("--net={path}"))
        .args(["ip", "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nsenter ip");
    std::io::Write::write_all(ip.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(ip.wait().unwrap().success(), "configure {addr}");
    ns
}

/// Bind-mounts `ns` at `path` (what `ip netns add` does after creating the file).
fn publish(ns: &NetNs, path: &Path) {
    std::fs::write(path, b"").unwrap();
    nix::mount::mount(
        Some(ns.path()),
        path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind-mount the pod namespace");
}

fn unpublish(path: &Path) {
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_file(path).unwrap();
}

fn meshed(map: &Map) -> HashMap<&MapData, u64, PodFlags> {
    HashMap::try_from(map).expect("MESHED_NETNS")
}

/// Polls every 50 us (sleeping, so the agent keeps both CPUs).
fn wait_until(mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "timed out");
        std::thread::sleep(Duration::from_micros(50));
    }
    started.elapsed()
}

/// What the process's descriptors point at.
fn fd_targets(pid: u32) -> Vec<String> {
    let mut targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| t.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    targets.sort();
    targets
}

/// The agent process; killed (by its PID) if the benchmark fails midway.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Phase 1: `pods` pods, configured first (namespace, interface, address:
/// what a CNI plugin does before the runtime publishes the namespace), then
/// published one after another; returns the time each took to reach the map
/// (ms) and the pods, still present. Configuring them all first keeps the
/// `ip` processes and their kernel work out of the measured windows.
fn appear(
    pods: u32,
    netns_dir: &Path,
    map: &Map,
    probe: &mut CookieProbe,
) -> (Vec<f64>, Vec<(NetNs, PathBuf)>) {
    let configured: Vec<(NetNs, u64)> = (0..pods)
        .map(|i| {
            let [_, _, hi, lo] = (i + 1).to_be_bytes();
            let ns = configured_pod(Ipv4Addr::new(198, 19, hi, lo));
            let cookie = probe.cookie(&ns).unwrap();
            (ns, cookie)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let mut ready_ms = Vec::new();
    let mut live = Vec::new();
    for (i, (ns, cookie)) in configured.into_iter().enumerate() {
        let path = netns_dir.join(format!("pod-{i}"));
        let started = Instant::now();
        publish(&ns, &path);
        wait_until(|| meshed(map).get(&cookie, 0).is_ok());
        ready_ms.push(started.elapsed().as_secs_f64() * 1e3);
        live.push((ns, path));
    }
    ready_ms.sort_by(f64::total_cmp);
    (ready_ms, live)
}

/// Phase 2: `pods` add+delete cycles, one pod at a time.
fn churn(pods: u32, netns_dir: &Path, map: &Map, probe: &mut CookieProbe) {
    for i in 0..pods {
        let ns = configured_pod(Ipv4Addr::new(198, 18, 99, 1));
        let cookie = probe.cookie(&ns).unwrap();
        let path = netns_dir.join(format!("churn-{i}"));
        publish(&ns, &path);
        wait_until(|| meshed(map).get(&cookie, 0).is_ok());
        unpublish(&path);
        wait_until(|| meshed(map).get(&cookie, 0).is_err());
    }
}

fn start_agent(bin: &str, dir: &Path, cgroup: &Path, metrics: SocketAddr) -> AgentProcess {
    AgentProcess(
        run_command(bin, dir, cgroup, metrics)
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the agent"),
    )
}

/// `GET /metrics`, its time.
fn scrape(metrics: SocketAddr) -> Duration {
    let started = Instant::now();
    let answer = netns_tests::agent::http_get(metrics, "/metrics");
    assert!(answer.contains("netns_agent_map_entries"), "{answer}");
    started.elapsed()
}

/// Phase 1b: reports with 1,000 pods in the maps, their cost to the pod
/// worker measured as pod-ready times in blocks with and without a scrape
/// every second (interleaved, so drift of the machine falls on both).
fn reports_under_load(netns_dir: &Path, map: &Map, probe: &mut CookieProbe, metrics: SocketAddr) {
    const BLOCK: u32 = 25;
    const BLOCKS: u32 = 8;
    let scrape_ms: Vec<f64> = (0..5)
        .map(|_| scrape(metrics).as_secs_f64() * 1e3)
        .collect();
    println!(
        "scrape_ms_1000_pods: {:.1} (5 scrapes: {:?})",
        scrape_ms.iter().sum::<f64>() / 5.0,
        scrape_ms.iter().map(|m| m.round()).collect::<Vec<_>>()
    );
    let (mut quiet, mut scraped) = (Vec::new(), Vec::new());
    for block in 0..BLOCKS {
        let scraping = block % 2 == 1;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let background = scraping.then(|| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let took = scrape(metrics);
                    std::thread::sleep(Duration::from_secs(1).saturating_sub(took));
                }
            })
        });
        let pods: Vec<(NetNs, u64)> = (0..BLOCK)
            .map(|i| {
                let ns = configured_pod(Ipv4Addr::new(198, 18, 98, u8::try_from(i + 1).unwrap()));
                let cookie = probe.cookie(&ns).unwrap();
                (ns, cookie)
            })
            .collect();
        let mut paths = Vec::new();
        for (i, (ns, cookie)) in pods.iter().enumerate() {
            let path = netns_dir.join(format!("load-{block}-{i}"));
            let started = Instant::now();
            publish(ns, &path);
            wait_until(|| meshed(map).get(cookie, 0).is_ok());
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if scraping {
                scraped.push(ms);
            } else {
                quiet.push(ms);
            }
            paths.push(path);
            // Spread over the scrapes: about four seconds per block.
            std::thread::sleep(Duration::from_millis(150));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(background) = background {
            background.join().unwrap();
        }
        for path in &paths {
            unpublish(path);
        }
        for (_, cookie) in &pods {
            wait_until(|| meshed(map).get(cookie, 0).is_err());
        }
    }
    for v in [&mut quiet, &mut scraped] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "pod_ready_p50_ms_quiet: {:.3} pod_ready_p50_ms_scraped: {:.3}",
        percentile(&quiet, 500),
        percentile(&scraped, 500)
    );
    println!(
        "pod_ready_p99_ms_quiet: {:.3} pod_ready_p99_ms_scraped: {:.3} (max {:.3} / {:.3})",
        percentile(&quiet, 990),
        percentile(&scraped, 990),
        quiet[quiet.len() - 1],
        scraped[scraped.len() - 1]
    );
}

fn main() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the agent benchmark needs root: run `./x bench-agent`"
    );
    let agent_bin =
        std::env::var("NETNS_BENCH_AGENT").expect("NETNS_BENCH_AGENT: run `./x bench-agent`");
    let pods = env_u32("NETNS_BENCH_PODS", 1000);
    let dir = PathBuf::from(format!("/tmp/netns-bench-agent-{}", std::process::id()));
    let netns_dir = dir.join("netns");
    std::fs::create_dir_all(&netns_dir).unwrap();
    let cgroup = ChildCgroup::create(
        &cgroup2_mount().unwrap(),
        &format!("netns-bench-agent-{}", std::process::id()),
    )
    .unwrap();
    // The benchmark's own view of each pod's cookie (dropped before the cgroup).
    let mut probe = CookieProbe::start(netns_datapath::EBPF_OBJECT, cgroup.path()).unwrap();
    let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, unused_port()));
    let mut agent = start_agent(&agent_bin, &dir, cgroup.path(), metrics);
    let pid = agent.0.id();
    let pin = dir.join("bpf/maps").join(names::MESHED_NETNS);
    wait_until(|| pin.exists());
    std::thread::sleep(Duration::from_millis(200));
    let map = Map::HashMap(MapData::from_pin(&pin).unwrap());
    println!("pods: {pods}");

    let (ready_ms, live) = appear(pods, &netns_dir, &map, &mut probe);
    println!("pod_ready_p50_ms: {:.3}", percentile(&ready_ms, 500));
    println!("pod_ready_p99_ms: {:.3}", percentile(&ready_ms, 990));
    println!("pod_ready_max_ms: {:.3}", ready_ms[ready_ms.len() - 1]);
    std::thread::sleep(Duration::from_secs(3));
    println!(
        "rss_mib_{pods}_pods: {:.1}",
        f64::from(u32::try_from(rss_kib(pid)).unwrap_or(u32::MAX)) / 1024.0
    );
    reports_under_load(&netns_dir, &map, &mut probe, metrics);
    for (_, path) in &live {
        unpublish(path);
    }
    wait_until(|| meshed(&map).keys().next().is_none());
    // The baseline: after the agent's threads have done pod work once (each
    // keeps a handle on its home namespace for fast switches), with no pod.
    std::thread::sleep(Duration::from_secs(3));
    let (fds0, threads0) = (fd_targets(pid), count_dir(&format!("/proc/{pid}/task")));

    churn(pods, &netns_dir, &map, &mut probe);
    std::thread::sleep(Duration::from_secs(3));
    let (fds1, threads1) = (fd_targets(pid), count_dir(&format!("/proc/{pid}/task")));
    println!("churn: {pods} add+delete");
    let mut before = fds0.clone();
    let new: Vec<&String> = fds1
        .iter()
        .filter(|t| {
            before
                .iter()
                .position(|b| b == *t)
                .map(|i| before.remove(i))
                .is_none()
        })
        .collect();
    println!(
        "leaked_fds: {} {new:?}",
        fds1.len().saturating_sub(fds0.len())
    );
    println!("leaked_threads: {}", threads1.saturating_sub(threads0));
    println!("leaked_map_entries: {}", meshed(&map).keys().count());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid.cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = agent.0.wait().unwrap();
    assert!(status.success(), "agent exit: {status}");
    drop(live);
    let _ = std::fs::remove_dir_all(&dir);
}
