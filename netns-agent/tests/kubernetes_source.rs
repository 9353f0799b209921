//! The Kubernetes pod source against a replaying API server (the real wire
//! format: list, then watch from its resourceVersion) and a fake process
//! tree: pods appear, change annotations (settings follow), disappear; a
//! dropped watch resumes from the last resourceVersion; a 410 Gone forces a
//! relist that keeps the state exact. Needs no root and no cluster.

// The stand-in API server the Kubernetes tests share.
#[path = "support/kube_api.rs"]
#[allow(dead_code, unreachable_pub)]
mod kube_api;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube_api::{ApiServer, pod};
use netns_agent::source::kubernetes::procscan::ProcRoot;
use netns_agent::source::{DescribedPod, Kubernetes, PodEvent, PodSource};
use netns_datapath::settings::PodSettings;
use tokio::sync::mpsc;

const NODE: &str = "node-a";
const STATUS: (&str, &str) = (
    "sidecar.istio.io/status",
    "{\"containers\":[\"istio-proxy\"]}",
);
const UID1: &str = "11111111-1111-4111-8111-111111111111";
const UID2: &str = "22222222-2222-4222-8222-222222222222";
const UID3: &str = "33333333-3333-4333-8333-333333333333";
const UID4: &str = "44444444-4444-4444-8444-444444444444";
const UID5: &str = "55555555-5555-4555-8555-555555555555";

/// A fake `/proc`: the agent's own namespace, and processes of pods.
struct Procs(PathBuf);

impl Procs {
    fn new() -> Procs {
        let root = std::env::temp_dir().join(format!("netns-kube-procs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("self/ns")).unwrap();
        std::fs::write(root.join("host-net"), "").unwrap();
        std::fs::hard_link(root.join("host-net"), root.join("self/ns/net")).unwrap();
        Procs(root)
    }

    /// A process `pid` of the pod `uid` (systemd cgroup driver), in its own
    /// namespace file, or in the host's.
    fn spawn(&self, pid: u32, uid: &str, host: bool) -> PathBuf {
        let dir = self.0.join(pid.to_string());
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        let cgroup = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{pid}.scope\n",
            uid.replace('-', "_")
        );
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        let ns = if host {
            self.0.join("host-net")
        } else {
            let own = self.0.join(format!("net-{uid}"));
            std::fs::write(&own, "").unwrap();
            own
        };
        std::fs::hard_link(ns, dir.join("ns/net")).unwrap();
        dir.join("ns/net")
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn meshed(name: &str, uid: &str, extra: &[(&str, &str)]) -> serde_json::Value {
    let mut annotations = vec![STATUS];
    annotations.extend_from_slice(extra);
    pod(name, uid, NODE, &annotations)
}

fn described(path: &Path, name: &str, settings: PodSettings) -> PodEvent {
    PodEvent::Described(DescribedPod {
        path: path.to_owned(),
        name: format!("default/{name}"),
        settings,
    })
}

fn excluding(ports: &[u16]) -> PodSettings {
    PodSettings {
        exclude_outbound_ports: ports.to_vec(),
        ..PodSettings::default()
    }
}

async fn next(rx: &mut mpsc::Receiver<PodEvent>) -> PodEvent {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an event within 20 s")
        .expect("the source runs")
}

async fn quiet(rx: &mut mpsc::Receiver<PodEvent>) {
    let more = tokio::time::timeout(Duration::from_millis(400), rx.recv()).await;
    assert!(more.is_err(), "no more events, got {more:?}");
}

#[tokio::test]
async fn kubernetes_source_follows_the_api_server() {
    let procs = Procs::new();
    let server = ApiServer::start();
    let ports = "traffic.sidecar.istio.io/excludeOutboundPorts";
    let ns1 = procs.spawn(100, UID1, false);
    let ns2 = procs.spawn(200, UID2, false);
    procs.spawn(300, UID3, true);
    server.put(meshed("pod-1", UID1, &[(ports, "5432")]));
    server.put(pod("pod-2", UID2, NODE, &[]));
    let mut host_network = meshed("pod-3", UID3, &[]);
    host_network["spec"]["hostNetwork"] = true.into();
    server.put(host_network);

    let mut source = Kubernetes::new(NODE.to_owned());
    source.procs = ProcRoot(procs.0.clone());
    source.rescan = Duration::from_millis(100);
    source.api = Some(kube::Config::new(server.url().parse().unwrap()));
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        let ended = Box::new(source).run(tx).await;
        if let Err(e) = &ended {
            eprintln!("the source failed: {e:#}");
        }
        ended
    });

    // The first listing: only pod 1 (pod 2 has no sidecar, pod 3 is on the
    // host network), then the listing is complete.
    assert_eq!(
        next(&mut rx).await,
        described(&ns1, "pod-1", excluding(&[5432]))
    );
    assert_eq!(next(&mut rx).await, PodEvent::Present(vec![ns1.clone()]));

    // Settings follow the annotations.
    server.put(meshed("pod-1", UID1, &[(ports, "5432, 6379")]));
    assert_eq!(
        next(&mut rx).await,
        described(&ns1, "pod-1", excluding(&[5432, 6379]))
    );
    // A change that leaves the settings alone says nothing.
    server.put(meshed(
        "pod-1",
        UID1,
        &[(ports, "6379,5432"), ("other", "x")],
    ));
    quiet(&mut rx).await;

    // A pod listed before its sandbox runs is found once it does.
    server.put(meshed("pod-4", UID4, &[]));
    quiet(&mut rx).await;
    let ns4 = procs.spawn(400, UID4, false);
    assert_eq!(
        next(&mut rx).await,
        described(&ns4, "pod-4", PodSettings::default())
    );
    server.delete(UID4);
    assert_eq!(next(&mut rx).await, PodEvent::Gone(ns4));

    // Pod 2 gets its sidecar.
    server.put(meshed("pod-2", UID2, &[]));
    assert_eq!(
        next(&mut rx).await,
        described(&ns2, "pod-2", PodSettings::default())
    );

    // The stream drops; the change made meanwhile arrives on the new watch,
    // which resumes from the last resourceVersion seen.
    let watches_before = watches(&server).len();
    server.drop_watches();
    server.put(pod("pod-1", UID1, NODE, &[]));
    assert_eq!(next(&mut rx).await, PodEvent::Gone(ns1.clone()));
    let resumed = watches(&server);
    assert!(resumed.len() > watches_before, "{resumed:?}");
    assert!(
        resumed.last().unwrap().contains("resourceVersion="),
        "{resumed:?}"
    );

    // While the watch is away, pod 2 goes and pod 5 comes; then every
    // resourceVersion expires (410 Gone): the relist finds exactly that.
    let ns5 = procs.spawn(500, UID5, false);
    server.put_silently(vec![
        pod("pod-1", UID1, NODE, &[]),
        meshed("pod-5", UID5, &[(ports, "9000")]),
    ]);
    server.expire();
    assert_eq!(
        next(&mut rx).await,
        described(&ns5, "pod-5", excluding(&[9000]))
    );
    assert_eq!(next(&mut rx).await, PodEvent::Gone(ns2));
    assert_eq!(next(&mut rx).await, PodEvent::Present(vec![ns5]));
    quiet(&mut rx).await;

    // Every request asked for this node's pods only.
    let requests = server.requests();
    assert!(requests.len() >= 4, "{requests:?}");
    for request in &requests {
        assert!(
            request.contains("fieldSelector=spec.nodeName%3Dnode-a"),
            "{request}"
        );
    }
    task.abort();
}

fn watches(server: &ApiServer) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.contains("watch=true"))
        .collect()
}
