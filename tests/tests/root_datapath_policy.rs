//! What the data path leaves alone, what it bounds, and the opt-in DNS
//! redirect. Needs root and iproute2.

use std::path::Path;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use netns_ebpf::{MeshSettings, OriginalDst, counter, names};
use netns_tests::mesh::{
    Mesh, POD_A, POD_A_TO_B, POD_A_TO_B6, POD_A6, Place, Proc, SVC, SVC6, field,
};

const MESHTEST: &str = env!("CARGO_BIN_EXE_meshtest");

/// Did the sidecar get this connection (1000 bytes, checked end to end)?
fn captured(mesh: &Mesh, sidecar: &mut Proc, target: &str, extra: &[&str]) -> bool {
    let mut args = vec!["--size", "1000"];
    args.extend_from_slice(extra);
    mesh.dial(sidecar, target, &args, Duration::from_millis(500))
        .1
        .is_some()
}

#[test]
fn root_bypass_mark_excluded_port_and_cidr_and_unmeshed_pod_connect_directly() {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let (plain, port_excluded) = (format!("{SVC}:8080"), format!("{SVC}:9090"));
    let cidr_excluded = format!("[{SVC6}]:8080");
    let _s1 = mesh.start(Place::Svc, None, &["serve", "--listen", &plain]);
    let _s2 = mesh.start(Place::Svc, None, &["serve", "--listen", &port_excluded]);
    let _s3 = mesh.start(Place::Svc, None, &["serve", "--listen", &cidr_excluded]);
    let mut sidecar = mesh.start(
        Place::PodA,
        Some(1337),
        &[
            "sidecar",
            "--listen",
            "127.0.0.1:15001",
            "--listen",
            "[::1]:15001",
        ],
    );
    mesh.datapath().exclude_port(9090).unwrap();
    mesh.datapath()
        .exclude_cidr("fd00:77::".parse().unwrap(), 64)
        .unwrap();

    assert!(
        captured(&mesh, &mut sidecar, &plain, &[]),
        "control: plain traffic is captured"
    );
    let before = mesh.datapath().counters().unwrap();
    assert!(
        !captured(&mesh, &mut sidecar, &plain, &["--mark", "1337"]),
        "bypass mark: {:?}",
        sidecar.seen
    );
    assert!(
        !captured(&mesh, &mut sidecar, &port_excluded, &[]),
        "excluded port"
    );
    assert!(
        !captured(&mesh, &mut sidecar, &cidr_excluded, &[]),
        "excluded CIDR"
    );

    let pod_a = mesh.cookie_a;
    let addrs: Vec<std::net::IpAddr> = [POD_A, POD_A_TO_B, POD_A6, POD_A_TO_B6]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    mesh.datapath().remove_pod(pod_a, &addrs).unwrap();
    assert!(
        !captured(&mesh, &mut sidecar, &plain, &[]),
        "pod out of the mesh"
    );
    mesh.datapath().add_pod(pod_a, &addrs).unwrap();
    assert!(
        captured(&mesh, &mut sidecar, &plain, &[]),
        "pod back in the mesh"
    );

    let after = mesh.datapath().counters().unwrap();
    let redirected = after[counter::REDIRECTED_OUTBOUND as usize]
        - before[counter::REDIRECTED_OUTBOUND as usize];
    assert_eq!(redirected, 1, "only the last connection was redirected");
    assert_eq!(
        after[counter::BYPASSED_MARK as usize] - before[counter::BYPASSED_MARK as usize],
        1
    );
}

fn entries<K: aya::Pod>(pin: &Path) -> usize {
    let data = MapData::from_pin(pin).expect("open pinned map");
    let map: BpfHashMap<MapData, K, OriginalDst> =
        BpfHashMap::try_from(Map::LruHashMap(data)).unwrap();
    map.keys().filter_map(Result::ok).count()
}

/// Every redirected connection files its original destination twice: by the
/// app socket's cookie (for getpeername) and in the sidecar socket's own
/// storage (for `SO_ORIGINAL_DST`). The first is removed when the app's socket
/// closes, not left to LRU eviction; the second dies with the sidecar's socket
/// (the kernel frees socket storage with the socket).
#[test]
fn root_original_destinations_are_removed_when_connections_close() {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let _sink = mesh.start(
        Place::PodA,
        Some(1337),
        &["sink", "--listen", "127.0.0.1:15001"],
    );
    let target = format!("{SVC}:8080");
    let baseline = entries::<u64>(&mesh.map_pin(names::COOKIE_ORIG_DST));
    let out = mesh.run(
        Place::PodA,
        None,
        &["churn", "--connect", &target, "--count", "100000"],
    );
    let done = out
        .iter()
        .find(|l| l.starts_with("done"))
        .expect("churn result");
    assert_eq!(field(done, "failed"), Some("0"), "{done}");
    assert_eq!(field(done, "ok"), Some("100000"), "{done}");

    // Every socket of the churn is closed (reset) by now: nothing is pending.
    let by_cookie = entries::<u64>(&mesh.map_pin(names::COOKIE_ORIG_DST));
    println!("after 100000 connections: {by_cookie} cookie entries (baseline {baseline})");
    assert_eq!(
        by_cookie, baseline,
        "entries left behind by closed connections"
    );
    let c = mesh.datapath().counters().unwrap();
    assert_eq!(c[counter::REDIRECTED_OUTBOUND as usize], 100_000, "{c:?}");
    // Each of them that the sidecar side established got its destination. On
    // a slow guest the sink's accept queue can overflow: the kernel then drops
    // the handshake's last ACK and the app's reset ends a connection that
    // never existed on the sidecar side. A handful, never more.
    let received = c[counter::ORIGINAL_DST_RECEIVED as usize];
    assert!((99_900..=100_000).contains(&received), "{c:?}");
    assert_eq!(c[counter::ORIGINAL_DST_NO_ROOM as usize], 0, "{c:?}");
}

#[test]
fn root_dns_redirect_reaches_the_local_resolver_and_answers_from_the_server() {
    let mut settings = MeshSettings::istio();
    settings.flags = MeshSettings::FLAG_DNS_REDIRECT;
    let mut mesh = Mesh::new(MESHTEST, settings);
    let _resolver = mesh.start(
        Place::PodA,
        Some(1337),
        &["udp-echo", "--listen", "127.0.0.1:15053"],
    );
    let server = format!("{SVC}:53");
    for (payload, mode) in [("query-1", None), ("query-2", Some("--connected"))] {
        let mut role = vec!["udp-query", "--server", &server, "--payload", payload];
        role.extend(mode);
        let out = mesh.run(Place::PodA, None, &role);
        let reply = out
            .iter()
            .find(|l| l.starts_with("reply"))
            .expect("an answer");
        // The local resolver answered (it echoes), and the app sees the server it asked.
        assert_eq!(field(reply, "reply"), Some(payload), "{reply}");
        assert_eq!(field(reply, "from"), Some(server.as_str()), "{reply}");
    }
    let c = mesh.datapath().counters().unwrap();
    assert_eq!(c[counter::DNS_REDIRECTED as usize], 2, "{c:?}");
}

/// `SO_MARK` needs `CAP_NET_ADMIN`: an ordinary app cannot put the bypass
/// mark on its socket, and its connection stays captured.
#[test]
fn root_an_app_without_cap_net_admin_cannot_set_the_bypass_mark() {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let (_service, mut sidecar, target) = mesh.start_service_and_sidecar();
    let mark = MeshSettings::istio().bypass_mark.to_string();
    let out = mesh
        .command(
            Place::PodA,
            Some(1000),
            &["client", "--connect", &target, "--mark", &mark],
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "uid 1000 set SO_MARK");
    assert!(
        stderr.contains("Operation not permitted"),
        "EPERM: {stderr}"
    );
    // Without the mark the same app is captured.
    let out = mesh.run(Place::PodA, Some(1000), &["client", "--connect", &target]);
    assert!(
        out.iter()
            .any(|l| l.starts_with("done") && l.contains("ok=true")),
        "{out:?}"
    );
    assert!(
        sidecar
            .wait_for("accepted", Duration::from_secs(5))
            .is_some()
    );
}
