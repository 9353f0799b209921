//! An app is never sent to a sidecar that is not listening, and is captured
//! again as soon as one listens: before redirecting, connect looks the
//! sidecar's listener up in the pod's own namespace (docs/security.md,
//! "When the sidecar is not listening"). Both orders, the sidecar going away,
//! a sidecar for one family only, DNS, and the fail-closed mode
//! (`FLAG_REDIRECT_WITHOUT_LISTENER`). Where a connection went is read from
//! the kernel: the local address the app's socket got (the pod's address when
//! it went straight out, loopback when it went to the sidecar), the service's
//! and the sidecar's own reports. Needs root and iproute2.

use std::time::Duration;

use netns_ebpf::{MeshSettings, counter};
use netns_tests::mesh::{Mesh, POD_A, POD_A6, Place, Proc, SVC, SVC6, field};

const MESHTEST: &str = env!("CARGO_BIN_EXE_meshtest");
const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

/// Where a connection went, as the app's own socket shows it.
#[derive(Debug, PartialEq, Eq)]
enum Went {
    /// Straight to its destination: the kernel chose the pod's address.
    Direct,
    /// To the sidecar: the kernel chose loopback.
    Sidecar,
}

/// One blocking connection from pod A's app to `target`: the bytes arrive
/// intact and the app sees `target` as its peer either way.
fn dial(mesh: &Mesh, target: &str) -> Went {
    let out = mesh.run(Place::PodA, None, &["client", "--connect", target]);
    let done = out.iter().find(|l| l.starts_with("done")).unwrap();
    assert_eq!(field(done, "ok"), Some("true"), "{done}");
    assert_eq!(field(done, "peer"), Some(target), "{done}");
    let local = field(done, "local").unwrap();
    if local.starts_with(&format!("{POD_A}:")) || local.starts_with(&format!("[{POD_A6}]:")) {
        Went::Direct
    } else if local.starts_with("127.0.0.1:") || local.starts_with("[::1]:") {
        Went::Sidecar
    } else {
        panic!("unexpected local address: {done}")
    }
}

/// A mesh whose settings are Istio's with `flags`.
fn mesh_with(flags: u16) -> Mesh {
    let mut settings = MeshSettings::istio();
    settings.flags = flags;
    Mesh::new(MESHTEST, settings)
}

/// One connection to `target` goes to `sidecar`, which learns `target`.
fn captured_by(mesh: &Mesh, sidecar: &mut Proc, target: &str) {
    assert_eq!(dial(mesh, target), Went::Sidecar);
    let accepted = sidecar.wait_for("accepted", WAIT).expect("sidecar got it");
    assert_eq!(field(&accepted, "orig"), Some(target), "{accepted}");
}

/// Three connections from pod A's app to `target` all fail with
/// ECONNREFUSED, and none reaches `service` around the sidecar.
fn three_refused(mesh: &Mesh, target: &str, service: &mut Proc) {
    let out = mesh.run(
        Place::PodA,
        None,
        &["churn", "--connect", target, "--count", "3"],
    );
    let done = out.iter().find(|l| l.starts_with("done")).unwrap();
    assert_eq!(field(done, "failed"), Some("3"), "{done}");
    assert!(
        field(done, "first_error").is_some_and(|e| e.contains("os_error_111")),
        "ECONNREFUSED: {done}"
    );
    assert!(
        service.wait_for("eof", QUIET).is_none(),
        "nothing reached the service around the sidecar: {:?}",
        service.seen
    );
}

fn counters(mesh: &mut Mesh) -> [u64; counter::COUNT as usize] {
    mesh.datapath().counters().unwrap()
}

/// The app starts first: its connections go straight to the service (no
/// ECONNREFUSED), the sidecar starts and the very next connection is
/// captured, the sidecar goes away and connections go straight out again.
#[test]
fn root_app_first_goes_direct_until_the_sidecar_listens_then_is_captured() {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let target = format!("{SVC}:8080");
    let mut service = mesh.start(Place::Svc, None, &["serve", "--listen", &target]);

    assert_eq!(dial(&mesh, &target), Went::Direct);
    assert!(
        service.wait_for("eof", WAIT).is_some(),
        "the service got it"
    );
    let c = counters(&mut mesh);
    assert_eq!(c[counter::SIDECAR_NOT_LISTENING as usize], 1, "{c:?}");
    assert_eq!(c[counter::REDIRECTED_OUTBOUND as usize], 0, "{c:?}");

    let mut sidecar = mesh.start(
        Place::PodA,
        Some(1337),
        &["sidecar", "--listen", "127.0.0.1:15001"],
    );
    captured_by(&mesh, &mut sidecar, &target);

    mesh.stop(sidecar);
    assert_eq!(dial(&mesh, &target), Went::Direct);
    let c = counters(&mut mesh);
    assert_eq!(c[counter::SIDECAR_NOT_LISTENING as usize], 2, "{c:?}");
    assert_eq!(c[counter::REDIRECTED_OUTBOUND as usize], 1, "{c:?}");
}

/// The sidecar starts first: the app's first connection is captured.
#[test]
fn root_sidecar_first_captures_the_first_connection() {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let (_service, mut sidecar, target) = mesh.start_service_and_sidecar();
    captured_by(&mesh, &mut sidecar, &target);
    let c = counters(&mut mesh);
    assert_eq!(c[counter::SIDECAR_NOT_LISTENING as usize], 0, "{c:?}");
}

/// IPv6 apps are sent to `[::1]:15001`. A sidecar listening on 127.0.0.1
/// only is not there, so IPv6 connections go straight out (never refused)
/// while IPv4 ones are captured.
#[test]
fn root_ipv4_only_sidecar_lets_ipv6_apps_through_and_captures_ipv4() {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let v4 = format!("{SVC}:8080");
    let v6 = format!("[{SVC6}]:8080");
    let _service4 = mesh.start(Place::Svc, None, &["serve", "--listen", &v4]);
    let mut service6 = mesh.start(Place::Svc, None, &["serve", "--listen", &v6]);
    let mut sidecar = mesh.start(
        Place::PodA,
        Some(1337),
        &["sidecar", "--listen", "127.0.0.1:15001"],
    );
    assert_eq!(dial(&mesh, &v6), Went::Direct);
    assert!(service6.wait_for("eof", WAIT).is_some(), "service got it");
    assert!(sidecar.wait_for("accepted", QUIET).is_none());
    assert_eq!(dial(&mesh, &v4), Went::Sidecar);
    assert!(sidecar.wait_for("accepted", WAIT).is_some());
}

/// DNS is redirected only while something is bound to the sidecar's DNS
/// port; before, the query reaches the server it was sent to.
#[test]
fn root_dns_goes_to_the_server_until_the_local_resolver_is_bound() {
    let mut mesh = mesh_with(MeshSettings::FLAG_DNS_REDIRECT);
    let server = format!("{SVC}:53");
    let _server = mesh.start(Place::Svc, None, &["udp-echo", "--listen", &server]);
    let query = |mesh: &Mesh| {
        let out = mesh.run(
            Place::PodA,
            None,
            &["udp-query", "--server", &server, "--payload", "q"],
        );
        let reply = out.iter().find(|l| l.starts_with("reply")).cloned();
        let reply = reply.expect("an answer");
        assert_eq!(field(&reply, "from"), Some(server.as_str()), "{reply}");
    };
    query(&mesh);
    let c = counters(&mut mesh);
    assert_eq!(c[counter::DNS_REDIRECTED as usize], 0, "{c:?}");
    assert!(c[counter::SIDECAR_NOT_LISTENING as usize] >= 1, "{c:?}");

    let _resolver = mesh.start(
        Place::PodA,
        Some(1337),
        &["udp-echo", "--listen", "127.0.0.1:15053"],
    );
    query(&mesh);
    let c = counters(&mut mesh);
    assert!(c[counter::DNS_REDIRECTED as usize] >= 1, "{c:?}");
}

/// The fail-closed mode, as behind Istio's iptables: with nothing listening
/// the app is still sent to the sidecar's port and gets ECONNREFUSED; nothing
/// reaches the service around the sidecar.
#[test]
fn root_fail_closed_mode_refuses_apps_while_no_sidecar_listens() {
    let mut mesh = mesh_with(MeshSettings::FLAG_REDIRECT_WITHOUT_LISTENER);
    let target = format!("{SVC}:8080");
    let mut service = mesh.start(Place::Svc, None, &["serve", "--listen", &target]);
    three_refused(&mesh, &target, &mut service);
    let c = counters(&mut mesh);
    assert_eq!(c[counter::REDIRECTED_OUTBOUND as usize], 3, "{c:?}");
    assert_eq!(c[counter::SIDECAR_NOT_LISTENING as usize], 0, "{c:?}");
}

/// The agent's default policy (`FLAG_REFUSE_ONCE_LISTENED`, `--sidecar-absent
/// auto`): an app that starts before its pod's sidecar goes straight out
/// (never refused); once the sidecar has bound its port, its absence (a
/// restart) refuses the app's connections with ECONNREFUSED and lets none
/// around it; when it listens again the next connection is captured.
#[test]
fn root_auto_policy_passes_before_the_sidecar_and_refuses_once_it_listened() {
    let mut mesh = mesh_with(MeshSettings::FLAG_REFUSE_ONCE_LISTENED);
    let target = format!("{SVC}:8080");
    let mut service = mesh.start(Place::Svc, None, &["serve", "--listen", &target]);
    assert_eq!(dial(&mesh, &target), Went::Direct, "before any sidecar");
    assert!(
        service.wait_for("eof", WAIT).is_some(),
        "the service got it"
    );

    let mut sidecar = mesh.start(
        Place::PodA,
        Some(1337),
        &["sidecar", "--listen", "127.0.0.1:15001"],
    );
    captured_by(&mesh, &mut sidecar, &target);
    assert!(
        service.wait_for("eof", WAIT).is_some(),
        "the sidecar forwarded it"
    );
    mesh.stop(sidecar);
    service.drain();

    three_refused(&mesh, &target, &mut service);
    let c = counters(&mut mesh);
    assert_eq!(c[counter::SIDECAR_ABSENT_REFUSED as usize], 3, "{c:?}");
    assert_eq!(c[counter::SIDECAR_NOT_LISTENING as usize], 1, "{c:?}");

    let mut again = mesh.start(
        Place::PodA,
        Some(1337),
        &["sidecar", "--listen", "127.0.0.1:15001"],
    );
    captured_by(&mesh, &mut again, &target);
}
