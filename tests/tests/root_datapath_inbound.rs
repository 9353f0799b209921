//! Inbound capture: connections from outside a meshed pod (the svc namespace
//! over a veth, standing in for another node) to any port of the pod's
//! address are handed to the sidecar's inbound listener by the `sk_lookup`
//! program attached to the pod's namespace; the sidecar learns the original
//! destination from getsockname and SO_ORIGINAL_DST, reaches the app without
//! being captured again, and the pod's pass ports go straight to the app.
//! What is asserted comes from the kernel and the processes: the sidecar's
//! `accepted` lines (getsockname, SO_ORIGINAL_DST), the app's byte counts
//! and hashes, the client's peer address, `BPF_PROG_QUERY` on the namespace.
//! Needs root and iproute2.

use std::net::SocketAddr;
use std::time::Duration;

use netns_datapath::{InboundCapture, attached_inbound_ids};
use netns_ebpf::{MeshSettings, counter};
use netns_tests::mesh::{Mesh, POD_A, POD_A6, Place, Proc, field};

const MESHTEST: &str = env!("CARGO_BIN_EXE_meshtest");
const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(400);
/// The sidecar's own ports besides 15001/15006, and one excluded app port.
const PASS_PORTS: [u16; 4] = [15020, 15021, 15090, 9090];

/// Pod A with inbound capture attached, an app on `[::]:8080` and `[::]:9090`
/// (dual-stack), nothing else started.
fn inbound_mesh() -> (Mesh, Proc, Proc) {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let Mesh {
        datapath,
        pod_a,
        cookie_a,
        ..
    } = &mut mesh;
    let done = datapath
        .as_mut()
        .unwrap()
        .capture_inbound(pod_a, *cookie_a, &PASS_PORTS)
        .unwrap_or_else(|e| panic!("capture inbound: {}", netns_tests::mesh::error_chain(&e)));
    assert_eq!(done, InboundCapture::Attached);
    let app = mesh.start(Place::PodA, None, &["serve", "--listen", "[::]:8080"]);
    let excluded = mesh.start(Place::PodA, None, &["serve", "--listen", "[::]:9090"]);
    (mesh, app, excluded)
}

/// Pod A's sidecar (uid 1337) on the inbound port, with extra dial flags.
fn start_sidecar(mesh: &mut Mesh, listen: &str, extra: &[&str]) -> Proc {
    let mut role = vec!["sidecar", "--listen", listen];
    role.extend_from_slice(extra);
    mesh.start(Place::PodA, Some(1337), &role)
}

/// One blocking client in svc sends `size` bytes to `target`; the app's hash
/// matches and the client saw `target` as its peer.
fn send_from_outside(mesh: &Mesh, target: &str, size: usize) -> String {
    let out = mesh.run(
        Place::Svc,
        None,
        &["client", "--connect", target, "--size", &size.to_string()],
    );
    let done = out.into_iter().find(|l| l.starts_with("done")).unwrap();
    assert_eq!(field(&done, "ok"), Some("true"), "{target}: {done}");
    assert_eq!(field(&done, "peer"), Some(target), "{done}");
    assert!(!done.contains("eagain"), "{done}");
    done
}

/// The sidecar's next `accepted` line says it got a connection for `target`,
/// with `target` both as its local address and as SO_ORIGINAL_DST.
fn expect_captured(sidecar: &mut Proc, target: &str) {
    let accepted = sidecar.wait_for("accepted", WAIT).unwrap_or_else(|| {
        panic!(
            "the sidecar got no connection for {target}: {:?}",
            sidecar.seen
        )
    });
    // A dual-stack listener shows an IPv4 connection as ::ffff:a.b.c.d.
    let canonical = |a: &str| {
        let a: SocketAddr = a.parse().unwrap();
        SocketAddr::new(a.ip().to_canonical(), a.port())
    };
    let want = canonical(target);
    assert_eq!(
        field(&accepted, "local").map(canonical),
        Some(want),
        "getsockname: {accepted}"
    );
    assert_eq!(
        field(&accepted, "orig"),
        Some(target),
        "SO_ORIGINAL_DST: {accepted}"
    );
    assert!(
        field(&accepted, "peer")
            .is_some_and(|p| p.contains("198.18.0.2") || p.contains("fd00:77::2")),
        "the remote client: {accepted}"
    );
}

fn no_more_accepted(sidecar: &mut Proc, why: &str) {
    let extra = sidecar.wait_for("accepted", QUIET);
    assert!(
        extra.is_none(),
        "{why}: {extra:?} (all: {:?})",
        sidecar.seen
    );
    let errors: Vec<&String> = sidecar
        .drain()
        .iter()
        .filter(|l| l.starts_with("error"))
        .collect();
    assert!(errors.is_empty(), "sidecar errors: {errors:?}");
}

fn counters(mesh: &mut Mesh) -> [u64; counter::COUNT as usize] {
    mesh.datapath().counters().unwrap()
}

/// IPv4 and IPv6, 1 B to 16 MiB: each connection reaches the sidecar once,
/// with its original destination, and the app through it (the sidecar's own
/// dial from the pod's address is not captured again: one `accepted` each).
#[test]
fn root_inbound_ipv4_and_ipv6_reach_the_app_through_the_sidecar() {
    let (mut mesh, mut app, _excluded) = inbound_mesh();
    let mut sidecar = start_sidecar(&mut mesh, "[::]:15006", &[]);
    for target in [format!("{POD_A}:8080"), format!("[{POD_A6}]:8080")] {
        for size in [1, 65_536, 16 << 20] {
            send_from_outside(&mesh, &target, size);
            expect_captured(&mut sidecar, &target);
            let eof = app.wait_for("eof", WAIT).expect("the app got the bytes");
            assert_eq!(
                field(&eof, "bytes"),
                Some(size.to_string().as_str()),
                "{eof}"
            );
        }
    }
    no_more_accepted(
        &mut sidecar,
        "the sidecar's own dial to the app was captured again",
    );
    let c = counters(&mut mesh);
    assert!(c[counter::INBOUND_CAPTURED as usize] >= 6, "{c:?}");
    assert_eq!(c[counter::INBOUND_REFUSED as usize], 0, "{c:?}");
}

/// Istio's way to the app: from 127.0.0.6 to the pod's address; and the
/// other one: to loopback. Neither is captured again.
#[test]
fn root_inbound_sidecar_reaches_the_app_from_127_0_0_6_and_via_loopback() {
    let (mut mesh, mut app, _excluded) = inbound_mesh();
    let target = format!("{POD_A}:8080");
    for flags in [&["--bind", "127.0.0.6"][..], &["--to-loopback"][..]] {
        let mut sidecar = start_sidecar(&mut mesh, "0.0.0.0:15006", flags);
        for _ in 0..3 {
            send_from_outside(&mesh, &target, 4096);
            expect_captured(&mut sidecar, &target);
            assert!(app.wait_for("eof bytes=4096", WAIT).is_some());
        }
        no_more_accepted(&mut sidecar, &format!("{flags:?}: re-captured"));
        mesh.stop(sidecar);
    }
}

/// The pod's excluded port and the sidecar's own ports are never captured;
/// a pod address that is no longer meshed is not either (the program stays
/// attached but finds no pod).
#[test]
fn root_inbound_pass_ports_and_unmeshed_addresses_go_straight_to_the_app() {
    let (mut mesh, mut app, mut excluded) = inbound_mesh();
    let mut sidecar = start_sidecar(&mut mesh, "[::]:15006", &[]);
    let mut health = mesh.start(Place::PodA, None, &["serve", "--listen", "0.0.0.0:15021"]);

    send_from_outside(&mesh, &format!("{POD_A}:9090"), 100);
    assert!(excluded.wait_for("eof bytes=100", WAIT).is_some());
    send_from_outside(&mesh, &format!("[{POD_A6}]:9090"), 100);
    assert!(excluded.wait_for("eof bytes=100", WAIT).is_some());
    send_from_outside(&mesh, &format!("{POD_A}:15021"), 7);
    assert!(health.wait_for("eof bytes=7", WAIT).is_some());
    no_more_accepted(&mut sidecar, "a pass port was captured");

    // Control: port 8080 is captured.
    let target = format!("{POD_A}:8080");
    send_from_outside(&mesh, &target, 10);
    expect_captured(&mut sidecar, &target);
    assert!(app.wait_for("eof bytes=10", WAIT).is_some());

    let cookie = mesh.cookie_a;
    let addrs: Vec<std::net::IpAddr> = [POD_A, POD_A6].iter().map(|a| a.parse().unwrap()).collect();
    mesh.datapath().remove_pod(cookie, &addrs).unwrap();
    send_from_outside(&mesh, &target, 11);
    assert!(app.wait_for("eof bytes=11", WAIT).is_some());
    no_more_accepted(&mut sidecar, "an unmeshed address was captured");
}

/// Fail closed: with the sidecar gone, connections are refused (never the
/// app uncaptured); the next sidecar's listener is filed when it listens,
/// so the first connection after that is captured.
#[test]
fn root_inbound_refuses_while_the_sidecar_is_away_and_captures_its_successor_at_once() {
    let (mut mesh, mut app, _excluded) = inbound_mesh();
    let target = format!("{POD_A}:8080");

    let churn = |mesh: &Mesh| {
        let out = mesh.run(
            Place::Svc,
            None,
            &["churn", "--connect", &target, "--count", "20"],
        );
        out.into_iter().find(|l| l.starts_with("done")).unwrap()
    };
    // Before any sidecar ran.
    let done = churn(&mesh);
    assert_eq!(field(&done, "ok"), Some("0"), "{done}");
    assert!(done.contains("refused"), "{done}");

    for round in 0..3 {
        let mut sidecar = start_sidecar(&mut mesh, "[::]:15006", &[]);
        send_from_outside(&mesh, &target, 64);
        expect_captured(&mut sidecar, &target);
        assert!(app.wait_for("eof bytes=64", WAIT).is_some());
        mesh.stop(sidecar);
        let done = churn(&mesh);
        assert_eq!(field(&done, "ok"), Some("0"), "round {round}: {done}");
        assert!(done.contains("refused"), "round {round}: {done}");
    }
    let seen = app.drain().to_vec();
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("eof")).count(),
        3,
        "the app got only what came through a sidecar: {seen:?}"
    );
    let c = counters(&mut mesh);
    assert!(c[counter::INBOUND_REFUSED as usize] >= 80, "{c:?}");
}

/// An IPv4-only sidecar: IPv6 connections are refused, IPv4 ones captured.
#[test]
fn root_inbound_family_without_a_listener_is_refused() {
    let (mut mesh, _app, _excluded) = inbound_mesh();
    let mut sidecar = start_sidecar(&mut mesh, "0.0.0.0:15006", &[]);
    let v6 = format!("[{POD_A6}]:8080");
    let out = mesh.run(
        Place::Svc,
        None,
        &["churn", "--connect", &v6, "--count", "3"],
    );
    let done = out.into_iter().find(|l| l.starts_with("done")).unwrap();
    assert_eq!(field(&done, "ok"), Some("0"), "{done}");
    let v4 = format!("{POD_A}:8080");
    send_from_outside(&mesh, &v4, 5);
    expect_captured(&mut sidecar, &v4);
}

/// Attach and detach are exact, as `BPF_PROG_QUERY` on each namespace shows:
/// pod A's program only on pod A, pod B's only on pod B, and releasing one
/// leaves the other; a second capture of the same pod adopts its link.
#[test]
fn root_inbound_attach_and_detach_are_exact_per_namespace() {
    let (mut mesh, _app, _excluded) = inbound_mesh();
    let ids_a = attached_inbound_ids(&mesh.pod_a).unwrap();
    assert_eq!(ids_a.len(), 1, "{ids_a:?}");
    assert_eq!(
        attached_inbound_ids(&mesh.pod_b).unwrap(),
        Vec::<u32>::new()
    );
    assert_eq!(attached_inbound_ids(&mesh.svc).unwrap(), Vec::<u32>::new());

    let Mesh {
        datapath,
        pod_a,
        pod_b,
        cookie_a,
        cookie_b,
        ..
    } = &mut mesh;
    let dp = datapath.as_mut().unwrap();
    assert_eq!(
        dp.capture_inbound(pod_a, *cookie_a, &PASS_PORTS).unwrap(),
        InboundCapture::Adopted
    );
    assert_eq!(
        dp.capture_inbound(pod_b, *cookie_b, &[]).unwrap(),
        InboundCapture::Attached
    );
    let pin_a = dp.inbound_pin(*cookie_a);
    assert!(pin_a.exists());
    assert_eq!(attached_inbound_ids(pod_a).unwrap(), ids_a);
    assert_eq!(attached_inbound_ids(pod_b).unwrap().len(), 1);

    dp.release_inbound(*cookie_a, &PASS_PORTS).unwrap();
    assert_eq!(attached_inbound_ids(pod_a).unwrap(), Vec::<u32>::new());
    assert_eq!(attached_inbound_ids(pod_b).unwrap().len(), 1);
    assert!(!pin_a.exists());
    // Idempotent.
    dp.release_inbound(*cookie_a, &PASS_PORTS).unwrap();

    // Teardown detaches what is left.
    let pod_b_path = pod_b.path().to_owned();
    mesh.datapath.take().unwrap().detach().unwrap();
    let pod_b = netns_core::NetNs::open(&pod_b_path).unwrap();
    assert_eq!(attached_inbound_ids(&pod_b).unwrap(), Vec::<u32>::new());
}

/// The sidecar's listener sits in a sockmap, but what it accepts are
/// ordinary TCP sockets (the kernel gives a listener's children their own
/// protocol back, `tcp_bpf_clone`): a blocking sidecar (plain `std::net`
/// reads) takes 20 uploads of 16 MiB with no EAGAIN and no close stall
/// against the same uploads going uncaptured to the excluded port, and the
/// sockhash holds the listener alone.
#[test]
fn root_inbound_accepted_sockets_are_ordinary_tcp_for_blocking_ends() {
    let (mut mesh, _app, mut excluded) = inbound_mesh();
    // The blocking "sidecar": reads each captured connection to EOF, answers.
    let mut sidecar = mesh.start(
        Place::PodA,
        Some(1337),
        &["serve", "--listen", "[::]:15006"],
    );
    let upload = |mesh: &Mesh, target: &str| -> Vec<String> {
        let role = [
            "client",
            "--connect",
            target,
            "--size",
            "16777216",
            "--count",
            "20",
        ];
        let out = mesh.run(Place::Svc, None, &role);
        let done: Vec<String> = out.into_iter().filter(|l| l.starts_with("done")).collect();
        assert_eq!(done.len(), 20, "{target}: {done:?}");
        for line in &done {
            assert_eq!(field(line, "ok"), Some("true"), "{target}: {line}");
            assert!(!line.contains("eagain"), "{target}: EAGAIN: {line}");
            assert_eq!(field(line, "peer"), Some(target), "{line}");
        }
        done
    };
    let worst = |lines: &[String], key: &str| {
        lines
            .iter()
            .filter_map(|l| field(l, key)?.parse::<f64>().ok())
            .fold(0.0, f64::max)
    };
    let fin_gaps = |server: &mut Proc| {
        let eofs: Vec<String> = (0..20)
            .map(|_| server.wait_for("eof", WAIT).expect("EOF seen"))
            .collect();
        for eof in &eofs {
            assert_eq!(field(eof, "bytes"), Some("16777216"), "{eof}");
        }
        worst(&eofs, "fin_gap_ms")
    };

    let direct = upload(&mesh, &format!("{POD_A}:9090"));
    let direct_gap = fin_gaps(&mut excluded);
    let captured = upload(&mesh, &format!("{POD_A}:8080"));
    let captured_gap = fin_gaps(&mut sidecar);
    let (direct_close, captured_close) = (worst(&direct, "close_ms"), worst(&captured, "close_ms"));
    println!(
        "worst FIN gap ms direct={direct_gap:.1} captured={captured_gap:.1}; \
         worst shutdown-to-answer ms direct={direct_close:.1} captured={captured_close:.1}"
    );
    assert!(
        captured_gap < direct_gap + 150.0,
        "close stall: {captured_gap} ms"
    );
    assert!(
        captured_close < direct_close + 150.0,
        "close stall: {captured_close} ms"
    );

    let c = counters(&mut mesh);
    assert!(c[counter::INBOUND_CAPTURED as usize] >= 20, "{c:?}");
    let pin = mesh.map_pin(netns_ebpf::names::INBOUND_LISTENERS);
    let map = aya::maps::SockHash::<_, netns_ebpf::PodListener>::try_from(
        aya::maps::Map::SockHash(aya::maps::MapData::from_pin(&pin).unwrap()),
    )
    .unwrap();
    let keys: Vec<netns_ebpf::PodListener> = map.keys().map(Result::unwrap).collect();
    assert_eq!(
        keys,
        [netns_ebpf::PodListener {
            netns_cookie: mesh.cookie_a,
            family: netns_ebpf::AF_INET6,
            pad: [0; 3],
        }],
        "the sockhash holds pod A's listener alone"
    );
}
