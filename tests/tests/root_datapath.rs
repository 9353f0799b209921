//! The eBPF data path on the real kernel: attached to a throw-away child cgroup,
//! with apps, sidecars and services as separate processes in throw-away
//! namespaces (see `netns_tests::mesh`). Needs root and iproute2.

use std::path::PathBuf;
use std::time::Duration;

use netns_datapath::cgroup::{ChildCgroup, cgroup2_mount};
use netns_datapath::{DataPath, DataPathConfig};
use netns_ebpf::{MeshSettings, counter, names};
use netns_tests::kernel::{cgroup_program_ids, program_exists};
use netns_tests::mesh::{Mesh, POD_B, Place, SVC, SVC6, error_chain, field, gone};
use netns_tests::require_root;

const MESHTEST: &str = env!("CARGO_BIN_EXE_meshtest");

fn counters(mesh: &mut Mesh) -> [u64; counter::COUNT as usize] {
    mesh.datapath().counters().unwrap()
}

#[test]
fn root_every_program_passes_the_verifier_and_detach_leaves_nothing() {
    // No mesh: this must run on every kernel, also those that cannot mesh pods.
    require_root();
    let tag = std::process::id();
    let cgroup =
        ChildCgroup::create(&cgroup2_mount().unwrap(), &format!("netns-verifier-{tag}")).unwrap();
    let mut settings = MeshSettings::istio();
    settings.flags = MeshSettings::FLAG_SOCKMAP | MeshSettings::FLAG_DNS_REDIRECT;
    let config = DataPathConfig {
        cgroup: cgroup.path().to_owned(),
        pin_dir: PathBuf::from(format!("/tmp/netns-verifier-{tag}")),
        settings,
    };
    let datapath = DataPath::attach(netns_datapath::EBPF_OBJECT, &config)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let ours: Vec<u32> = datapath.programs().iter().map(|p| p.id).collect();
    // Both optional modes are on: every program of the object is attached.
    let mut attached_names: Vec<&str> = datapath.programs().iter().map(|p| p.name).collect();
    let mut all = names::prog::ALL.to_vec();
    attached_names.sort_unstable();
    all.sort_unstable();
    assert_eq!(attached_names, all, "{:?}", datapath.programs());
    let attached = cgroup_program_ids(cgroup.path());
    for p in datapath.programs() {
        if p.name == names::prog::SK_MSG {
            assert!(program_exists(p.id), "sk_msg program {} loaded", p.id);
        } else {
            assert!(
                attached.contains(&p.id),
                "{} ({}) attached: {attached:?}",
                p.name,
                p.id
            );
        }
    }
    assert!(datapath.map_pin(names::SETTINGS).exists());

    datapath.detach().unwrap();
    let attached = cgroup_program_ids(cgroup.path());
    assert!(
        ours.iter().all(|id| !attached.contains(id)),
        "still attached: {attached:?}"
    );
    assert!(
        gone(&config.pin_dir),
        "{} removed",
        config.pin_dir.display()
    );
    // Programs are freed when their last descriptor closes, which the kernel
    // may finish a moment later (RCU): allow it that moment, not more.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while ours.iter().any(|id| program_exists(*id)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for id in ours {
        assert!(!program_exists(id), "program {id} unloaded");
    }
}

/// App in pod A dials the service; the sidecar (uid 1337) in pod A gets it,
/// learns the original destination, dials onward; bytes verified end to end.
fn redirect_end_to_end(svc: &str, sidecar_listen: &str, sidecar_args: &[&str]) {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let target = format!("{svc}:8080");
    let _service = mesh.start(Place::Svc, None, &["serve", "--listen", &target]);
    let mut role = vec!["sidecar", "--listen", sidecar_listen];
    role.extend_from_slice(sidecar_args);
    let uid = if sidecar_args.is_empty() {
        Some(1337)
    } else {
        None
    };
    let mut sidecar = mesh.start(Place::PodA, uid, &role);

    let sizes = ["1", "1000", "65536", "1048576", "16777216"];
    for size in sizes {
        let (done, accepted) = mesh.dial(
            &mut sidecar,
            &target,
            &["--size", size],
            Duration::from_secs(5),
        );
        let accepted = accepted.unwrap_or_else(|| {
            panic!("size {size}: sidecar saw no connection: {:?}", sidecar.seen)
        });
        assert_eq!(
            field(&accepted, "orig"),
            Some(target.as_str()),
            "{accepted}"
        );
        assert_eq!(
            field(&accepted, "local"),
            Some(sidecar_listen),
            "{accepted}"
        );
        // The sidecar's peer is the app's own socket.
        assert_eq!(
            field(&accepted, "peer"),
            field(&done, "local"),
            "{accepted} / {done}"
        );
    }
    let c = counters(&mut mesh);
    assert!(
        c[counter::REDIRECTED_OUTBOUND as usize] >= sizes.len() as u64,
        "{c:?}"
    );
    assert!(
        c[counter::ORIGINAL_DST_ANSWERED as usize] >= sizes.len() as u64,
        "{c:?}"
    );
    assert!(
        sidecar.drain().iter().all(|l| !l.starts_with("error")),
        "{:?}",
        sidecar.seen
    );
}

#[test]
fn root_ipv4_connection_reaches_the_sidecar_with_its_original_destination() {
    redirect_end_to_end(SVC, "127.0.0.1:15001", &[]);
}

#[test]
fn root_ipv6_connection_reaches_the_sidecar_with_its_original_destination() {
    redirect_end_to_end(&format!("[{SVC6}]"), "[::1]:15001", &[]);
}

#[test]
fn root_sidecar_with_the_bypass_mark_instead_of_the_uid() {
    redirect_end_to_end(SVC, "127.0.0.1:15001", &["--mark", "1337"]);
}

#[test]
fn root_sidecar_to_local_pod_goes_to_the_inbound_port() {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let target = format!("{POD_B}:8080");
    let _app_b = mesh.start(Place::PodB, None, &["serve", "--listen", &target]);
    let mut sidecar_b = mesh.start(
        Place::PodB,
        Some(1337),
        &["sidecar", "--listen", "0.0.0.0:15006"],
    );
    // The sidecar of pod A dials pod B directly (as the sidecar uid).
    let out = mesh.run(
        Place::PodA,
        Some(1337),
        &["client", "--connect", &target, "--size", "4096"],
    );
    let done = out.iter().find(|l| l.starts_with("done")).unwrap();
    assert_eq!(field(done, "ok"), Some("true"), "{done}");
    let accepted = sidecar_b
        .wait_for("accepted", Duration::from_secs(5))
        .expect("inbound sidecar");
    assert_eq!(
        field(&accepted, "local"),
        Some(format!("{POD_B}:15006").as_str())
    );
    assert_eq!(field(&accepted, "orig"), Some(target.as_str()));
    assert!(counters(&mut mesh)[counter::REDIRECTED_INBOUND as usize] >= 1);
}

#[test]
fn root_dual_stack_socket_dialing_ipv4_is_captured_as_ipv4() {
    let mut mesh = Mesh::new(MESHTEST, MeshSettings::istio());
    let (_service, mut sidecar, target) = mesh.start_service_and_sidecar();
    // An IPv6 socket dialing ::ffff:198.18.0.2, as Java does by default.
    let mapped = format!("[::ffff:{SVC}]:8080");
    for size in ["1", "1048576"] {
        let (_, accepted) = mesh.dial(
            &mut sidecar,
            &mapped,
            &["--size", size],
            Duration::from_secs(5),
        );
        let accepted = accepted.expect("the sidecar got the connection");
        // The sidecar's IPv4 socket gets the IPv4 original destination.
        assert_eq!(
            field(&accepted, "orig"),
            Some(target.as_str()),
            "{accepted}"
        );
    }
}

/// The data path learns a namespace's cookie on every kernel (a helper in a
/// probe cgroup, `bpf_get_netns_cookie` in `cgroup/sock_create`): the same
/// namespace twice gives the same cookie, two namespaces two cookies, and
/// where the kernel has `SO_NETNS_COOKIE` (5.14+) it agrees. The helper
/// returns to its own namespace after each question; dropping the probe
/// kills it and removes its cgroup.
#[test]
fn root_netns_cookies_are_learned_on_every_kernel() {
    require_root();
    let tag = std::process::id();
    let cgroup =
        ChildCgroup::create(&cgroup2_mount().unwrap(), &format!("netns-probe-{tag}")).unwrap();
    let a = netns_core::TempNetNs::new("probe-a").unwrap();
    let b = netns_core::TempNetNs::new("probe-b").unwrap();
    let mut probe = netns_datapath::CookieProbe::start(netns_datapath::EBPF_OBJECT, cgroup.path())
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let a1 = probe.cookie(&a).unwrap();
    let b1 = probe.cookie(&b).unwrap();
    let a2 = probe.cookie(&a).unwrap();
    assert_eq!(a1, a2, "the same namespace, the same cookie");
    assert_ne!(a1, b1, "two namespaces, two cookies");
    assert!(a1 != 0 && b1 != 0);
    if netns_tests::kernel::has_netns_cookie() {
        assert_eq!(a1, a.cookie().unwrap(), "SO_NETNS_COOKIE agrees");
        assert_eq!(b1, b.cookie().unwrap(), "SO_NETNS_COOKIE agrees");
    }
    let probe_cgroups = || -> Vec<PathBuf> {
        std::fs::read_dir(cgroup.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    };
    let dirs = probe_cgroups();
    assert_eq!(dirs.len(), 1, "one probe cgroup: {dirs:?}");
    let helpers = std::fs::read_to_string(dirs[0].join("cgroup.procs")).unwrap();
    assert_eq!(helpers.lines().count(), 1, "one helper: {helpers}");
    let helper: i32 = helpers.trim().parse().unwrap();
    // Between questions the helper is back home: it keeps no pod's
    // namespace (and its interfaces) alive.
    assert_eq!(
        std::fs::read_link(format!("/proc/{helper}/ns/net")).unwrap(),
        std::fs::read_link("/proc/self/ns/net").unwrap(),
        "the helper went back to its own namespace"
    );
    drop(probe);
    assert!(probe_cgroups().is_empty(), "probe cgroup removed");
    assert!(
        !PathBuf::from(format!("/proc/{helper}")).exists(),
        "helper {helper} gone"
    );
}
