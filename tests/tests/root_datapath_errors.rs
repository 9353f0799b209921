//! Bad input to the loader gets an error naming the path or mode, and leaves
//! nothing attached or pinned. Needs root.

use std::path::PathBuf;

use netns_agent::cgroup::{ChildCgroup, cgroup2_mount};
use netns_agent::datapath::{DataPath, DataPathConfig, DataPathError};
use netns_ebpf::MeshSettings;
use netns_tests::kernel::cgroup_program_ids;
use netns_tests::require_root;

fn config(cgroup: PathBuf, tag: &str) -> DataPathConfig {
    DataPathConfig {
        cgroup,
        pin_dir: PathBuf::from(format!("/tmp/netns-errors-{}-{tag}", std::process::id())),
        settings: MeshSettings::istio(),
    }
}

#[test]
fn root_a_path_that_is_not_cgroup_v2_is_refused_before_anything_happens() {
    require_root();
    for path in ["/tmp", "/proc", "/no/such/cgroup"] {
        let cfg = config(path.into(), "notcg");
        let err = DataPath::attach(netns_agent::EBPF_OBJECT, &cfg).unwrap_err();
        assert!(matches!(err, DataPathError::Cgroup(_)), "{path}: {err:?}");
        assert!(err.to_string().contains(path), "{err}");
        assert!(!cfg.pin_dir.exists(), "nothing pinned for {path}");
    }
}

#[test]
fn root_a_failure_half_way_leaves_nothing_attached() {
    require_root();
    let cgroup = ChildCgroup::create(
        &cgroup2_mount().unwrap(),
        &format!("netns-errors-{}", std::process::id()),
    )
    .unwrap();
    let cfg = config(cgroup.path().to_owned(), "halfway");
    // A stale pin where a map will go: pinning fails after loading, mid-way.
    netns_agent::bpffs::ensure(&cfg.pin_dir).unwrap();
    std::fs::create_dir_all(cfg.pin_dir.join("maps")).unwrap();
    std::fs::create_dir(cfg.pin_dir.join("maps/COUNTERS")).unwrap();
    let err = DataPath::attach(netns_agent::EBPF_OBJECT, &cfg).unwrap_err();
    assert!(
        matches!(
            err,
            DataPathError::Pin {
                what: "COUNTERS",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        cgroup_program_ids(cgroup.path()).is_empty(),
        "nothing attached"
    );
    let left: Vec<_> = std::fs::read_dir(cfg.pin_dir.join("maps"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["COUNTERS"], "only the stale entry is left");
    std::fs::remove_dir(cfg.pin_dir.join("maps/COUNTERS")).unwrap();
    std::fs::remove_dir(cfg.pin_dir.join("maps")).unwrap();
    nix::mount::umount(&cfg.pin_dir).unwrap();
    std::fs::remove_dir(&cfg.pin_dir).unwrap();
}

#[test]
fn root_modes_not_attached_cannot_be_switched_on_later() {
    require_root();
    let cgroup = ChildCgroup::create(
        &cgroup2_mount().unwrap(),
        &format!("netns-modes-{}", std::process::id()),
    )
    .unwrap();
    let cfg = config(cgroup.path().to_owned(), "modes");
    let mut datapath = DataPath::attach(netns_agent::EBPF_OBJECT, &cfg).unwrap();
    let mut settings = MeshSettings::istio();
    settings.flags = MeshSettings::FLAG_SOCKMAP;
    let err = datapath.set_settings(settings).unwrap_err();
    assert!(
        matches!(err, DataPathError::ModeNotAttached { mode: "sockmap" }),
        "{err:?}"
    );
    settings.flags = MeshSettings::FLAG_DNS_REDIRECT;
    let err = datapath.set_settings(settings).unwrap_err();
    assert!(
        matches!(
            err,
            DataPathError::ModeNotAttached {
                mode: "DNS redirect"
            }
        ),
        "{err:?}"
    );
    settings.flags = 0;
    settings.outbound_port = 16001;
    datapath.set_settings(settings).unwrap();
    datapath.detach().unwrap();
}
