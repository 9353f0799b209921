//! Pods cannot be told, or steer, one another's original destinations.
//!
//! Every meshed pod's apps are sent to the same sidecar address
//! (127.0.0.1:15001 in its own namespace), so two pods can produce connections
//! with the very same 4-tuple. These tests make them on purpose (apps that bind
//! their source port) and check, through `SO_ORIGINAL_DST` as the sidecar asks
//! it, that each sidecar only ever learns its own pod's destination, and that a
//! process that is not a sidecar learns nothing. Needs root and iproute2.

use std::time::Duration;

use netns_ebpf::{MeshSettings, names};
use netns_tests::mesh::{Mesh, POD_A_TO_B, Place, Proc, SVC, SVC6, field, learned_nothing};

const MESHTEST: &str = env!("CARGO_BIN_EXE_meshtest");
const ROUNDS: u16 = 24;
const WAIT: Duration = Duration::from_secs(10);

/// Starts a `hold` app in `place` from `bind_port` to `target`; returns once
/// it is connected (to its pod's sidecar, or wherever the kernel sent it).
fn hold(mesh: &mut Mesh, place: Place, uid: Option<u32>, target: &str, bind_port: u16) -> Proc {
    let port = bind_port.to_string();
    let role = ["hold", "--connect", target, "--bind-port", &port];
    mesh.start_until(place, uid, &role, "connected")
}

/// Asks `probe` to accept one connection; returns what it learned.
fn accept(probe: &mut Proc) -> String {
    probe.send("accept");
    probe
        .wait_for("accepted", WAIT)
        .unwrap_or_else(|| panic!("probe accepted nothing: {:?}", probe.seen))
}

/// Two pods, equal bound source ports, both connected before either sidecar
/// accepts, in alternating orders: each sidecar must see its own pod's
/// destination, every round.
fn equal_source_ports(family_v6: bool) {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let (svc, listen) = if family_v6 {
        (format!("[{SVC6}]"), "[::1]:15001")
    } else {
        (SVC.to_owned(), "127.0.0.1:15001")
    };
    let mut probe_a = mesh.start(Place::PodA, Some(1337), &["probe", "--listen", listen]);
    let mut probe_b = mesh.start(Place::PodB, Some(1337), &["probe", "--listen", listen]);
    let dst_a = format!("{svc}:8000");
    let dst_b = format!("{svc}:8001");
    for round in 0..ROUNDS {
        let port = 41_000 + round;
        let a_first = round % 2 == 0;
        let (first, second) = if a_first {
            ((Place::PodA, &dst_a), (Place::PodB, &dst_b))
        } else {
            ((Place::PodB, &dst_b), (Place::PodA, &dst_a))
        };
        let _app1 = hold(&mut mesh, first.0, None, first.1, port);
        let _app2 = hold(&mut mesh, second.0, None, second.1, port);
        // Accept in the order that hurts: the pod that connected first asks last.
        let (seen_a, seen_b) = if a_first {
            let b = accept(&mut probe_b);
            (accept(&mut probe_a), b)
        } else {
            let a = accept(&mut probe_a);
            (a, accept(&mut probe_b))
        };
        for (pod, seen, dst) in [("A", &seen_a, &dst_a), ("B", &seen_b, &dst_b)] {
            assert!(
                field(seen, "peer").is_some_and(|p| p.ends_with(&format!(":{port}"))),
                "round {round}: pod {pod}'s sidecar got its app's connection: {seen}"
            );
            assert_eq!(
                field(seen, "orig"),
                Some(dst.as_str()),
                "round {round}: pod {pod}'s sidecar was told another destination: {seen}"
            );
        }
    }
}

#[test]
fn root_pods_with_equal_source_ports_each_get_their_own_destination_ipv4() {
    equal_source_ports(false);
}

#[test]
fn root_pods_with_equal_source_ports_each_get_their_own_destination_ipv6() {
    equal_source_ports(true);
}

/// Pod A's app is redirected and waits, not yet accepted. A process in pod B
/// that is not a sidecar rebuilds the very same 4-tuple on its own loopback
/// (a listener on 15001, a connection from the same source port) and asks
/// `SO_ORIGINAL_DST`: it must learn nothing. The app's own socket learns
/// nothing either. Then pod A's sidecar still gets the right answer.
#[test]
fn root_a_process_that_is_not_the_sidecar_learns_nothing() {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let listen = "127.0.0.1:15001";
    let mut sidecar_a = mesh.start(Place::PodA, Some(1337), &["probe", "--listen", listen]);
    // uid 1000: an ordinary process of pod B.
    let mut thief = mesh.start(Place::PodB, Some(1000), &["probe", "--listen", listen]);
    let dst_a = format!("{SVC}:8000");
    for round in 0..ROUNDS {
        let port = 42_000 + round;
        let _app_a = hold(&mut mesh, Place::PodA, None, &dst_a, port);
        // Loopback is never captured: this goes straight to the thief.
        let _twin = hold(&mut mesh, Place::PodB, Some(1000), listen, port);
        let stolen = accept(&mut thief);
        assert_eq!(
            field(&stolen, "peer"),
            Some(format!("127.0.0.1:{port}").as_str()),
            "round {round}: the same 4-tuple as pod A's connection: {stolen}"
        );
        assert!(
            learned_nothing(&stolen),
            "round {round}: pod B learned something: {stolen}"
        );
        let own = accept(&mut sidecar_a);
        assert_eq!(
            field(&own, "orig"),
            Some(dst_a.as_str()),
            "round {round}: {own}"
        );
    }
    // The app side of a redirected connection has no original destination.
    let asked = mesh.run(
        Place::PodA,
        None,
        &["ask", "--connect", &format!("{SVC}:8002")],
    );
    let asked = asked.iter().find(|l| l.starts_with("asked")).unwrap();
    assert!(learned_nothing(asked), "{asked}");
    let own = accept(&mut sidecar_a);
    assert_eq!(
        field(&own, "orig"),
        Some(format!("{SVC}:8002").as_str()),
        "{own}"
    );
}

/// Files a forged original destination for the socket `forger` made (in its
/// own storage, where connect would have), lets it connect, and returns what the
/// probe behind `target` is told.
fn forged(mesh: &mut Mesh, from: Place, target: &str, claim: &str, probe: &mut Proc) -> String {
    let mark = MeshSettings::istio().bypass_mark.to_string();
    // The bypass mark keeps connect from redirecting it; sock_ops still writes
    // the option for a socket that has an entry.
    let pin = mesh.map_pin(names::DIALED_DST).display().to_string();
    let role = [
        "forge",
        "--connect",
        target,
        "--mark",
        &mark,
        "--claim",
        claim,
        "--dialed-map",
        &pin,
    ];
    let mut forger = mesh.start_until(from, None, &role, "filed");
    forger.send("go");
    assert!(
        forger.wait_for("connected", WAIT).is_some(),
        "forger connected: {:?}",
        forger.seen
    );
    accept(probe)
}

/// A SYN can carry any option its sender likes (a process with `CAP_NET_RAW` in
/// its own namespace can write one). Sidecars believe the option only where
/// it cannot mislead: on the outbound port from their own pod's loopback,
/// and on the inbound port only about their own address. A forged option
/// from another pod is ignored: the sidecar learns nothing, and so cannot be
/// steered. The positive controls (the same forgery where it is believed)
/// show the option did travel.
#[test]
fn root_another_pod_cannot_steer_a_sidecar_with_a_forged_syn_option() {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let mut outbound = mesh.start(
        Place::PodA,
        Some(1337),
        &["probe", "--listen", "0.0.0.0:15001"],
    );
    let mut inbound = mesh.start(
        Place::PodA,
        Some(1337),
        &["probe", "--listen", "0.0.0.0:15006"],
    );
    let elsewhere = format!("{SVC}:9999");
    let own = format!("{POD_A_TO_B}:8080");

    // Pod B to pod A's outbound port, claiming a destination elsewhere.
    let seen = forged(
        &mut mesh,
        Place::PodB,
        &format!("{POD_A_TO_B}:15001"),
        &elsewhere,
        &mut outbound,
    );
    assert!(learned_nothing(&seen), "believed from pod B: {seen}");
    // Pod B to pod A's inbound port, claiming another host.
    let seen = forged(
        &mut mesh,
        Place::PodB,
        &format!("{POD_A_TO_B}:15006"),
        &elsewhere,
        &mut inbound,
    );
    assert!(learned_nothing(&seen), "believed another host: {seen}");

    // Controls: the same option where it is believed.
    let seen = forged(
        &mut mesh,
        Place::PodA,
        "127.0.0.1:15001",
        &elsewhere,
        &mut outbound,
    );
    assert_eq!(field(&seen, "orig"), Some(elsewhere.as_str()), "{seen}");
    let seen = forged(
        &mut mesh,
        Place::PodB,
        &format!("{POD_A_TO_B}:15006"),
        &own,
        &mut inbound,
    );
    assert_eq!(field(&seen, "orig"), Some(own.as_str()), "{seen}");
}
