//! A node's transitions, through the shipped agent binary: a sidecar that
//! listened before the agent started (late start), a restart without
//! `--keep-state` while the sidecar keeps running, a second agent on the same
//! pins, socket and cgroup, and SIGHUP. Throughout, an app in the pod dials a
//! service that exists nowhere (outbound) and a client outside the pod dials
//! the pod's app (inbound); each connection counts as working only when the
//! sidecar answers with the destination the kernel gave it (`SO_ORIGINAL_DST`).
//! Its own test binary: this process joins the captured cgroup (the app and
//! the sidecar are its threads). Needs root.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, Map};
use netns_core::NetNs;
use netns_datapath::attached_program_ids;
use netns_ebpf::{MeshSettings, names};
use netns_tests::agent::{Running, run_command};
use netns_tests::pod_traffic::{
    App, Sidecar, answer_each, both_ways, connect_once, pod_and_outside_client,
    serve_sidecar_and_app,
};

const AGENT: &str = env!("CARGO_BIN_EXE_netns-agent");
/// Routed nowhere: reachable only through the sidecar.
const SERVICE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 96, 10)), 80);
/// The pod's app, as a client outside the pod dials it.
const POD_APP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 97, 1)), 8080);
/// A service beside the pod (in the client's namespace), reachable directly:
/// a connection to it that went around the sidecar is answered `service`.
const AROUND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 97, 2)), 80);
/// How long the emulated guests may take to get an agent ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

struct Places {
    dir: PathBuf,
    cgroup: netns_datapath::cgroup::ChildCgroup,
    metrics: SocketAddr,
}

impl Places {
    fn command(&self) -> std::process::Command {
        let mut cmd = run_command(AGENT, &self.dir, self.cgroup.path(), self.metrics);
        cmd.stdout(Stdio::null());
        cmd
    }

    fn start(&self) -> Running {
        Running::start(
            self.command(),
            &self.dir.join("agent.log"),
            self.metrics,
            READY_WITHIN,
        )
    }

    fn status(&self) -> netns_agent::status::Status {
        let out = std::process::Command::new(AGENT)
            .args(["status", "--json", "--control-socket"])
            .arg(self.dir.join("agent.sock"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Places {
    fn drop(&mut self) {
        netns_tests::pod_traffic::remove_private(&self.dir);
    }
}

/// Waits until both loops have had a connection work since `since`, and
/// returns how long that took.
fn first_capture(apps: &[&App], since: Instant, places: &Places) -> Duration {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let firsts: Vec<Option<Instant>> = apps.iter().map(|a| a.first_ok()).collect();
        if firsts.iter().all(Option::is_some) {
            return firsts
                .into_iter()
                .flatten()
                .max()
                .expect("two")
                .saturating_duration_since(since);
        }
        assert!(
            Instant::now() < deadline,
            "no correct capture of the pre-existing pod within {READY_WITHIN:?} \
             (outbound {:?}, inbound {:?}); logs:\n{}",
            apps[0].counts(),
            apps[1].counts(),
            places.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Both loops keep working for `time`: every connection in it answered by
/// the sidecar with its original destination.
fn all_work_for(apps: &[&App], time: Duration, what: &str, places: &Places) {
    // Each loop's connection in flight when the state changed (dialed while
    // the sidecar or the agent was still away) ends first: one success each.
    let started: Vec<u64> = apps.iter().map(|a| a.counts().0).collect();
    netns_tests::wait_until(
        &format!("{what}: a connection working"),
        READY_WITHIN,
        || apps.iter().zip(&started).all(|(a, ok)| a.counts().0 > *ok),
    );
    let before: Vec<(u64, u64)> = apps.iter().map(|a| a.counts()).collect();
    std::thread::sleep(time);
    for (app, (ok_before, failed_before)) in apps.iter().zip(before) {
        let (ok, failed) = app.counts();
        assert_eq!(
            failed - failed_before,
            0,
            "{what}: connections failed (the last: {}); logs:\n{}",
            app.last_failure(),
            places.logs()
        );
        assert!(ok > ok_before + 5, "{what}: the loop kept connecting");
    }
}

/// The default fail policy is on, and the pod's sidecar, found listening, is
/// noted as seen: from now on its absence refuses, never bypasses. status
/// says the pod is meshed, its sidecar listening, both listeners equipped.
fn assert_sidecar_seen_under_the_default_policy(places: &Places) {
    let status = places.status();
    assert_eq!(status.pods.len(), 1);
    assert!(status.pods[0].meshed, "{:?}", status.pods[0]);
    assert_options_counted_for_the_pod(&status);
    assert_eq!(status.pods[0].sidecar, "listening", "{:?}", status.pods[0]);
    assert_eq!(
        status.pods[0].equipped.len(),
        2,
        "15001 and 15006: {:?}",
        status.pods[0]
    );
    let pin = |name: &str| netns_tests::pins::map(&places.dir.join("bpf"), name);
    let settings: Array<_, MeshSettings> =
        Array::try_from(Map::Array(pin(names::SETTINGS))).unwrap();
    let flags = settings.get(&0, 0).unwrap().flags;
    assert_ne!(
        flags & MeshSettings::FLAG_REFUSE_ONCE_LISTENED,
        0,
        "flags {flags:#x}"
    );
    let seen: HashMap<_, u64, u8> =
        netns_tests::pins::hash(&places.dir.join("bpf"), names::SIDECAR_SEEN);
    let cookies = netns_tests::pins::meshed_cookies(&places.dir.join("bpf"));
    assert_eq!(cookies.len(), 1);
    assert!(
        seen.get(&cookies[0], 0).is_ok(),
        "the pre-existing sidecar is noted as seen"
    );
}

/// The kernel counted options received on the sidecar's outbound listener
/// for the pod: the sidecar listened before this agent's maps existed, so
/// only the agent's filing of the pod on that listener (when it equipped
/// it) lets the accepted sockets know their pod.
fn assert_options_counted_for_the_pod(status: &netns_agent::status::Status) {
    assert!(
        status.pods[0]
            .decisions
            .iter()
            .any(|(verdict, n)| verdict == "original_dst_received" && *n > 0),
        "{:?}",
        status.pods[0].decisions
    );
}

/// The sidecar restarts under the loops `ways` and one more to a service
/// beside the pod (the default fail policy): while it is away connections
/// are refused, none reaches the app or a service around it; once it listens
/// again every connection works. Returns the new sidecar.
fn sidecar_restart(
    sidecar: Sidecar,
    pod: &NetNs,
    remote: &NetNs,
    ways: [&App; 2],
    places: &Places,
) -> Sidecar {
    let service = remote.sockets().tcp_listener(AROUND).unwrap();
    answer_each(service, |_| "service".to_owned());
    let reachable = {
        let pod = pod.clone();
        App::start(move || connect_once(&pod, AROUND))
    };
    let loops = [ways[0], ways[1], &reachable];
    all_work_for(
        &loops,
        Duration::from_millis(300),
        "before the sidecar restart",
        places,
    );
    let around_before: u64 = loops.iter().map(|a| a.around()).sum();
    let failed_before: u64 = loops.iter().map(|a| a.counts().1).sum();
    sidecar.stop();
    std::thread::sleep(Duration::from_millis(500));
    let sidecar = Sidecar::start(pod);
    let around = loops.iter().map(|a| a.around()).sum::<u64>() - around_before;
    let refused = loops.iter().map(|a| a.counts().1).sum::<u64>() - failed_before;
    println!("sidecar_restart: around_the_sidecar={around} refused={refused}");
    assert_eq!(
        around,
        0,
        "connections went around the restarting sidecar; logs:\n{}",
        places.logs()
    );
    assert!(refused > 0, "the sidecar's absence was seen");
    all_work_for(
        &loops,
        Duration::from_millis(500),
        "after the sidecar restart",
        places,
    );
    let _ = reachable.stop();
    sidecar
}

#[test]
fn root_lifecycle_late_start_restart_second_agent_and_sighup() {
    let netns_tests::agent::Private {
        dir,
        cgroup,
        metrics,
    } = netns_tests::agent::private("lifecycle");
    let places = Places {
        dir: dir.clone(),
        cgroup,
        metrics,
    };
    let (pod, remote) = pod_and_outside_client(&dir);
    let _keeper = netns_tests::agent::Keeper::attach(&dir);

    // The sidecar (and the app) listen before any agent exists: the
    // DaemonSet rolled out on a node whose pods already run.
    places
        .cgroup
        .add_process(std::process::id())
        .expect("join the captured cgroup");
    let sidecar = serve_sidecar_and_app(&pod);
    let (outbound, inbound) = both_ways(&pod, SERVICE, &remote, POD_APP);
    let apps = [&outbound, &inbound];

    // 1. Late start: from the first connection the agent redirects, the
    // sidecar learns its destination (equipped before the pod was meshed).
    let started = Instant::now();
    let mut agent = places.start();
    let took = first_capture(&apps, started, &places);
    println!(
        "late_start_first_capture_ms: {:.1} (agent start to the first correct capture, both ways)",
        took.as_secs_f64() * 1000.0
    );
    for (app, way) in apps.iter().zip(["outbound", "inbound"]) {
        let (failed, first) = app.failed_after_ok();
        assert_eq!(
            failed,
            0,
            "late start, {way}: a connection failed after the first capture: {first}; logs:\n{}",
            places.logs()
        );
    }
    let logs = places.logs();
    assert!(
        logs.contains("equipped sidecar listeners that predate the agent"),
        "{logs}"
    );
    all_work_for(&apps, Duration::from_millis(500), "late start", &places);
    assert_sidecar_seen_under_the_default_policy(&places);

    // 2. Restart without --keep-state, the sidecar running on: once the new
    // agent is ready, both ways work again (the inbound listener is filed
    // anew in the new maps).
    let (status, _) = agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "SIGTERM: {status:?}");
    let mut agent = places.start();
    std::thread::sleep(Duration::from_millis(100));
    all_work_for(
        &apps,
        Duration::from_millis(700),
        "after a restart",
        &places,
    );
    assert_options_counted_for_the_pod(&places.status());

    // 3. A second agent on the same pins, cgroup and socket refuses before
    // touching anything; the first keeps capturing, its programs attached.
    let second = places
        .command()
        .stderr(Stdio::piped())
        .output()
        .expect("run a second agent");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "second agent: {said}");
    assert!(
        said.contains("another netns-agent") && said.contains(&format!("pid {}", agent.id())),
        "the refusal names the first agent: {said}"
    );
    assert!(places.dir.join("agent.sock").exists(), "its socket is kept");
    assert!(netns_tests::agent::ready(metrics));
    let mut ids = attached_program_ids(places.cgroup.path()).unwrap();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8, "the first agent's programs stay: {ids:?}");
    all_work_for(
        &apps,
        Duration::from_millis(500),
        "beside a refused second agent",
        &places,
    );

    let sidecar = sidecar_restart(sidecar, &pod, &remote, [&outbound, &inbound], &places);

    // 4. SIGHUP stops the agent like SIGTERM (its handler ran: exit 0, the
    // data path detached), never like SIGKILL.
    let (status, _) = agent.signal(nix::sys::signal::Signal::SIGHUP);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGHUP: {status:?}; logs:\n{}",
        places.logs()
    );
    assert_eq!(
        attached_program_ids(places.cgroup.path()).unwrap(),
        Vec::<u32>::new()
    );
    let _ = (outbound.stop(), inbound.stop());
    sidecar.stop();
}
