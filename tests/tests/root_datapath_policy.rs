//! What the data path leaves alone, what it bounds, and the opt-in DNS
//! redirect. Needs root and iproute2.

use std::time::Duration;

use netns_ebpf::{MeshSettings, counter};
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

/// A redirected connection's destination lives in its sockets' own storage:
/// the app socket's (getpeername answers from it) and the sidecar socket's
/// (`SO_ORIGINAL_DST`). The kernel frees both with their sockets, so closed
/// connections leave nothing behind and no capacity can run out. What the
/// kernel shows: a connection held open while 100,000 others open and close
/// (more than the 65,536 entries any connection map of ours could hold)
/// still shows the app its original peer.
#[test]
fn root_a_held_connection_keeps_its_destination_across_100000_others() {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let _sink = mesh.start(
        Place::PodA,
        Some(1337),
        &["sink", "--listen", "127.0.0.1:15001"],
    );
    let held_target = format!("{SVC}:8443");
    let mut held = mesh.start_until(
        Place::PodA,
        None,
        &[
            "hold",
            "--connect",
            &held_target,
            "--bind-port",
            "0",
            "--ask-peer",
        ],
        "connected",
    );
    let peer_now = |held: &mut Proc| {
        held.send("peer");
        held.wait_for("peer", Duration::from_secs(10))
            .expect("the held app answers")
    };
    let before = peer_now(&mut held);
    assert_eq!(
        field(&before, "now"),
        Some(held_target.as_str()),
        "{before}"
    );

    let target = format!("{SVC}:8080");
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

    let after = peer_now(&mut held);
    println!("held connection after 100000 others: {after}");
    assert_eq!(field(&after, "now"), Some(held_target.as_str()), "{after}");
    let c = mesh.datapath().counters().unwrap();
    assert_eq!(c[counter::REDIRECTED_OUTBOUND as usize], 100_001, "{c:?}");
    // Each of them that the sidecar side established got its destination. On
    // a slow guest the sink's accept queue can overflow: the kernel then drops
    // the handshake's last ACK and the app's reset ends a connection that
    // never existed on the sidecar side. A handful, never more.
    let received = c[counter::ORIGINAL_DST_RECEIVED as usize];
    assert!((99_900..=100_001).contains(&received), "{c:?}");
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
