//! Sidecars of every common shape, against the data path: what works, and
//! what fails in a way the docs name (docs/security.md, "What a sidecar must
//! do"). Needs root and iproute2.

use std::time::Duration;

use netns_ebpf::MeshSettings;
use netns_tests::mesh::{Mesh, Place, SVC, SVC6, field, learned_nothing};

const MESHTEST: &str = env!("CARGO_BIN_EXE_meshtest");
const WAIT: Duration = Duration::from_secs(5);

/// nginx's and many proxies' default: one dual-stack listener on `[::]:15001`
/// (`IPV6_V6ONLY` off). An IPv4 app's connection arrives as `::ffff:127.0.0.1`,
/// the sidecar asks `IP6T_SO_ORIGINAL_DST` on its IPv6 socket and gets the IPv4
/// destination as a mapped address; both families reach their services.
#[test]
fn root_dual_stack_sidecar_gets_ipv4_and_ipv6_destinations() {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let v4 = format!("{SVC}:8080");
    let v6 = format!("[{SVC6}]:8080");
    let _service4 = mesh.start(Place::Svc, None, &["serve", "--listen", &v4]);
    let _service6 = mesh.start(Place::Svc, None, &["serve", "--listen", &v6]);
    let mut sidecar = mesh.start(
        Place::PodA,
        Some(1337),
        &["sidecar", "--listen", "[::]:15001"],
    );
    for (target, peer_prefix) in [(&v4, "[::ffff:127.0.0.1]:"), (&v6, "[::1]:")] {
        let (_, accepted) = mesh.dial(&mut sidecar, target, &["--size", "65536"], WAIT);
        let accepted = accepted.expect("the sidecar got the connection");
        assert_eq!(
            field(&accepted, "orig"),
            Some(target.as_str()),
            "{accepted}"
        );
        assert!(
            field(&accepted, "peer").is_some_and(|p| p.starts_with(peer_prefix)),
            "{accepted}"
        );
    }
    assert!(
        sidecar.drain().iter().all(|l| !l.starts_with("error")),
        "{:?}",
        sidecar.seen
    );
}

/// The sidecar's accepted socket belongs to its listener's cgroup. A sidecar
/// outside the captured cgroup is never seen by the programs: its
/// `SO_ORIGINAL_DST` fails (ENOENT, or ENOPROTOOPT without conntrack). The requirement is documented; this
/// pins the symptom a user sees.
#[test]
fn root_sidecar_outside_the_captured_cgroup_gets_enoent() {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let mut probe = mesh.start(
        Place::PodAUncaptured,
        Some(1337),
        &["probe", "--listen", "127.0.0.1:15001"],
    );
    let target = format!("{SVC}:8080");
    let _app = mesh.start_until(
        Place::PodA,
        None,
        &["hold", "--connect", &target, "--bind-port", "43000"],
        "connected",
    );
    probe.send("accept");
    let seen = probe.wait_for("accepted", WAIT).expect("probe accepted");
    assert!(learned_nothing(&seen), "{seen}");
}
