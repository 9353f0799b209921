//! Per-pod settings in the data path: two pods on one node with different
//! excluded ports, excluded and included CIDRs and sidecar uids, each applied
//! to its own pod only, read back from the kernel's maps, changed and cleared.
//! Needs root and iproute2.

use std::net::IpAddr;
use std::time::Duration;

use netns_datapath::pod_flags;
use netns_datapath::settings::{PodSettings, parse_cidr};
use netns_ebpf::{MeshSettings, PodFlags};
use netns_tests::mesh::{Mesh, POD_A_TO_B, POD_A_TO_B6, Place, Proc, SVC, SVC6};

const MESHTEST: &str = env!("CARGO_BIN_EXE_meshtest");
const SIDECAR: [&str; 5] = [
    "sidecar",
    "--listen",
    "127.0.0.1:15001",
    "--listen",
    "[::1]:15001",
];

/// Two meshed pods with a sidecar each (pod A's as `uid_a`, pod B's as
/// 1337), and where they dial.
struct Fixture {
    mesh: Mesh,
    _servers: Vec<Proc>,
    sidecar_a: Proc,
    sidecar_b: Proc,
    /// The service, plain.
    svc: String,
    /// The service on port 9090.
    svc_port: String,
    /// The service over IPv6.
    svc_v6: String,
    /// Pod A's port 9090, dialed from pod B.
    pod_a_port: String,
    /// The same over IPv6.
    pod_a_port_v6: String,
}

impl Fixture {
    fn new(uid_a: u32) -> Fixture {
        let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
        let svc = format!("{SVC}:8080");
        let svc_port = format!("{SVC}:9090");
        let svc_v6 = format!("[{SVC6}]:8080");
        let pod_a_port = format!("{POD_A_TO_B}:9090");
        let pod_a_port_v6 = format!("[{POD_A_TO_B6}]:9090");
        // Pod B's sidecar dialing pod A (a local meshed pod) is sent to pod
        // A's inbound port: a plain server stands in for pod A's sidecar.
        let pod_a_inbound = format!("{POD_A_TO_B}:15006");
        let mut servers = Vec::new();
        for (place, listen) in [
            (Place::Svc, &svc),
            (Place::Svc, &svc_port),
            (Place::Svc, &svc_v6),
            (Place::PodAUncaptured, &pod_a_port),
            (Place::PodAUncaptured, &pod_a_port_v6),
            (Place::PodAUncaptured, &pod_a_inbound),
        ] {
            servers.push(mesh.start(place, None, &["serve", "--listen", listen]));
        }
        let sidecar_a = mesh.start(Place::PodA, Some(uid_a), &SIDECAR);
        let sidecar_b = mesh.start(Place::PodB, Some(1337), &SIDECAR);
        Fixture {
            mesh,
            _servers: servers,
            sidecar_a,
            sidecar_b,
            svc,
            svc_port,
            svc_v6,
            pod_a_port,
            pod_a_port_v6,
        }
    }

    /// Did pod A's sidecar get a connection from pod A as `uid` to `target`
    /// (1000 bytes checked end to end, getpeername = target either way)?
    fn a_captured(&mut self, uid: Option<u32>, target: &str) -> bool {
        captured(&self.mesh, Place::PodA, uid, &mut self.sidecar_a, target)
    }

    /// The same for pod B and its sidecar.
    fn b_captured(&mut self, uid: Option<u32>, target: &str) -> bool {
        captured(&self.mesh, Place::PodB, uid, &mut self.sidecar_b, target)
    }
}

fn captured(mesh: &Mesh, place: Place, uid: Option<u32>, sidecar: &mut Proc, target: &str) -> bool {
    let wait = Duration::from_millis(500);
    let dial = mesh.dial_as(place, uid, sidecar, target, &["--size", "1000"], wait);
    dial.1.is_some()
}

fn cidr(text: &str) -> (IpAddr, u8) {
    parse_cidr(text).unwrap()
}

#[test]
fn root_each_pods_exclusions_apply_to_that_pod_only() {
    let mut f = Fixture::new(1337);
    let (a, b) = (f.mesh.cookie_a, f.mesh.cookie_b);
    // Pod A: its own excluded port and IPv6 range. Pod B: only 198.18.1.0/24.
    let settings_a = PodSettings {
        exclude_outbound_ports: vec![9090],
        exclude_outbound_cidrs: vec![cidr("fd00:77::/64")],
        ..PodSettings::default()
    };
    let settings_b = PodSettings {
        include_outbound_cidrs: Some(vec![cidr("198.18.1.0/24")]),
        ..PodSettings::default()
    };
    let dp = f.mesh.datapath();
    dp.set_pod_settings(a, &PodSettings::default(), &settings_a)
        .unwrap();
    dp.set_pod_settings(b, &PodSettings::default(), &settings_b)
        .unwrap();

    // What the kernel holds, per pod.
    let held_a = dp.pod_entries(a).unwrap();
    assert_eq!(held_a.exclude_ports, [9090]);
    assert_eq!(held_a.exclude_cidrs, [cidr("fd00:77::/64")]);
    assert_eq!(held_a.include_cidrs, []);
    assert_eq!(held_a.flags, Some(PodFlags::default()));
    let held_b = dp.pod_entries(b).unwrap();
    assert_eq!(
        (held_b.exclude_ports.len(), held_b.exclude_cidrs.len()),
        (0, 0)
    );
    assert_eq!(held_b.include_cidrs, [cidr("198.18.1.0/24")]);
    assert_eq!(held_b.flags.unwrap().bits, PodFlags::FLAG_INCLUDE_ONLY);

    let (svc, svc_port, svc_v6) = (f.svc.clone(), f.svc_port.clone(), f.svc_v6.clone());
    let (a_port, a_port_v6) = (f.pod_a_port.clone(), f.pod_a_port_v6.clone());
    assert!(f.a_captured(None, &svc), "A: plain");
    assert!(!f.a_captured(None, &svc_port), "A: its excluded port");
    assert!(!f.a_captured(None, &svc_v6), "A: its excluded range");
    // Pod A's exclusions are not pod B's: B's port 9090 is captured.
    assert!(
        f.b_captured(None, &a_port),
        "B: port 9090, in its include list"
    );
    assert!(
        !f.b_captured(None, &a_port_v6),
        "B: outside its include list"
    );

    // Changed: A excludes nothing of its own; exactly the old entries go.
    let dp = f.mesh.datapath();
    dp.set_pod_settings(a, &settings_a, &PodSettings::default())
        .unwrap();
    let held_a = dp.pod_entries(a).unwrap();
    assert_eq!(
        (held_a.exclude_ports.len(), held_a.exclude_cidrs.len()),
        (0, 0)
    );
    assert_eq!(held_a.flags, Some(PodFlags::default()));
    assert_eq!(dp.pod_entries(b).unwrap(), held_b, "B untouched");
    assert!(f.a_captured(None, &svc_port), "A: port 9090 captured again");
    assert!(f.a_captured(None, &svc_v6), "A: range captured again");

    // B cleared (as with its pod): nothing of it stays.
    let dp = f.mesh.datapath();
    dp.clear_pod_settings(b, &settings_b).unwrap();
    assert_eq!(dp.pod_entries(b).unwrap().include_cidrs, []);
}

#[test]
fn root_a_pods_own_sidecar_uid_is_its_alone() {
    let mut f = Fixture::new(1500);
    let a = f.mesh.cookie_a;
    let (svc, a_port) = (f.svc.clone(), f.pod_a_port.clone());
    // Pod A's sidecar runs as 1500: 1337 is an app there, not in pod B.
    let own_uid = PodSettings {
        sidecar_uid: Some(1500),
        ..PodSettings::default()
    };
    let dp = f.mesh.datapath();
    dp.set_pod_settings(a, &PodSettings::default(), &own_uid)
        .unwrap();
    let flags = dp.pod_entries(a).unwrap().flags.unwrap();
    assert_eq!(flags, pod_flags(&own_uid));
    assert_eq!(
        (flags.bits, flags.sidecar_uid),
        (PodFlags::FLAG_OWN_SIDECAR_UID, 1500)
    );
    assert!(f.a_captured(Some(1337), &svc), "A: uid 1337 is an app now");
    assert!(
        !f.a_captured(Some(1500), &svc),
        "A: uid 1500 is its sidecar"
    );
    assert!(
        !f.b_captured(Some(1337), &a_port),
        "B: 1337 is still its sidecar"
    );
    assert!(f.b_captured(Some(1500), &a_port), "B: 1500 is an app there");
}
