//! Bad input to the loader gets an error naming the path or mode, and leaves
//! nothing attached or pinned. Needs root.

use std::path::PathBuf;

use netns_datapath::cgroup::{ChildCgroup, cgroup2_mount};
use netns_datapath::{DataPath, DataPathConfig, DataPathError};
use netns_ebpf::{MeshSettings, names};
use netns_tests::kernel::cgroup_program_ids;
use netns_tests::require_root;

/// The tests that load programs run one at a time: the half-way test counts
/// the programs loaded while it runs.
static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn loading_alone() -> std::sync::MutexGuard<'static, ()> {
    LOADING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

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
        let err = DataPath::attach(netns_datapath::EBPF_OBJECT, &cfg).unwrap_err();
        assert!(matches!(err, DataPathError::Cgroup(_)), "{path}: {err:?}");
        assert!(err.to_string().contains(path), "{err}");
        assert!(!cfg.pin_dir.exists(), "nothing pinned for {path}");
    }
}

/// A stale file where one of the pins will go makes the attach fail at that
/// step (a map's: pinning it; a link's: putting the program into it); whatever came before it (maps pinned, programs attached and their
/// links pinned) must be undone. Tried at three depths: the last map (before
/// any program), the getsockopt link (pinned by program id, after sock_ops is
/// attached), and the last cgroup link (after every other program).
#[test]
fn root_a_failure_half_way_leaves_nothing_attached() {
    require_root();
    let _alone = loading_alone();
    let cgroup = ChildCgroup::create(
        &cgroup2_mount().unwrap(),
        &format!("netns-errors-{}", std::process::id()),
    )
    .unwrap();
    for (dir, stale) in [
        ("maps", names::COUNTERS),
        ("links", names::prog::GETSOCKOPT),
        ("links", names::prog::CONNECT6),
    ] {
        let cfg = config(cgroup.path().to_owned(), &format!("halfway-{stale}"));
        netns_datapath::bpffs::ensure(&cfg.pin_dir).unwrap();
        std::fs::create_dir_all(cfg.pin_dir.join(dir)).unwrap();
        std::fs::create_dir(cfg.pin_dir.join(dir).join(stale)).unwrap();
        let before: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .collect();
        let err = DataPath::attach(netns_datapath::EBPF_OBJECT, &cfg).unwrap_err();
        // A stale map pin fails the pinning; a stale link pin is taken for
        // a pinned link and fails the update in place.
        assert!(
            matches!(&err, DataPathError::Pin { what, .. } if *what == stale)
                || matches!(&err, DataPathError::Update { program, .. } if *program == stale),
            "{stale}: {err:?}"
        );
        assert!(
            cgroup_program_ids(cgroup.path()).is_empty(),
            "{stale}: nothing stays attached"
        );
        // The programs it loaded are gone once their last reference is
        // (the kernel frees them a moment later, after RCU).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let leaked = || -> Vec<u32> {
            aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .filter(|p| {
                    p.name_as_str()
                        .is_some_and(|n| names::prog::ALL.contains(&n))
                })
                .map(|p| p.id())
                .filter(|id| !before.contains(id))
                .collect()
        };
        while !leaked().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(leaked(), Vec::<u32>::new(), "{stale}: programs left loaded");
        for sub in ["maps", "links"] {
            let left: Vec<String> = std::fs::read_dir(cfg.pin_dir.join(sub))
                .map(|entries| {
                    entries
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let expected: Vec<String> = if sub == dir {
                vec![stale.to_owned()]
            } else {
                Vec::new()
            };
            assert_eq!(
                left, expected,
                "{stale}: only the stale entry is left in {sub}"
            );
        }
        std::fs::remove_dir(cfg.pin_dir.join(dir).join(stale)).unwrap();
        let _ = std::fs::remove_dir(cfg.pin_dir.join("maps"));
        let _ = std::fs::remove_dir(cfg.pin_dir.join("links"));
        nix::mount::umount(&cfg.pin_dir).unwrap();
        std::fs::remove_dir(&cfg.pin_dir).unwrap();
    }
}

#[test]
fn root_modes_not_attached_cannot_be_switched_on_later() {
    require_root();
    let _alone = loading_alone();
    let cgroup = ChildCgroup::create(
        &cgroup2_mount().unwrap(),
        &format!("netns-modes-{}", std::process::id()),
    )
    .unwrap();
    let cfg = config(cgroup.path().to_owned(), "modes");
    let mut datapath = DataPath::attach(netns_datapath::EBPF_OBJECT, &cfg).unwrap();
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

/// A cgroup removed and made again under the same path (a node's pod
/// parent recreated by its runtime) leaves the pinned links defunct: the
/// kernel refuses to put a new program into them (`ENOLINK`). Taking over
/// the pins attaches every program anew to the new cgroup, as
/// `BPF_PROG_QUERY` on it shows, and re-pins the links.
#[test]
fn root_adopting_links_of_a_recreated_cgroup_attaches_anew() {
    require_root();
    let _alone = loading_alone();
    let parent = cgroup2_mount().unwrap();
    let name = format!("netns-errors-recreated-{}", std::process::id());
    let cgroup = ChildCgroup::create(&parent, &name).unwrap();
    let cfg = config(cgroup.path().to_owned(), "recreated");
    let first = DataPath::attach(netns_datapath::EBPF_OBJECT, &cfg).unwrap();
    let attached = first.programs().len();
    first.keep();
    assert_eq!(cgroup_program_ids(cgroup.path()).len(), attached);
    drop(cgroup);
    let cgroup = ChildCgroup::create(&parent, &name).unwrap();
    assert!(
        cgroup_program_ids(cgroup.path()).is_empty(),
        "a new cgroup starts empty"
    );
    let (second, adopted) = DataPath::adopt(netns_datapath::EBPF_OBJECT, &cfg).unwrap();
    assert!(adopted, "the pins were taken over");
    let mut want: Vec<u32> = second
        .programs()
        .iter()
        .filter(|p| p.name != names::prog::SK_MSG)
        .map(|p| p.id)
        .collect();
    want.sort_unstable();
    let mut now = cgroup_program_ids(cgroup.path());
    now.sort_unstable();
    assert_eq!(now, want, "every program attached to the new cgroup");
    second.detach().unwrap();
    assert_eq!(cgroup_program_ids(cgroup.path()), Vec::<u32>::new());
    assert!(!cfg.pin_dir.exists(), "pins removed");
}
