//! The getsockopt program runs for every getsockopt of every process in the
//! captured cgroup. Calls that are not `SO_ORIGINAL_DST` must pass through
//! untouched, including those whose answer is larger than the page the
//! kernel shows programs: iptables-legacy reads its whole table with one
//! `IPT_SO_GET_ENTRIES` (a pod's init container runs exactly this). Kernels
//! without the 6.5 fix (29ebbba7d461) fail such a call with EFAULT unless the
//! program sets optlen to 0, which ours does; every kernel we test (Debian's
//! 5.10 and 6.1 carry the fix as a backport, 6.12, 6.18) passes with or
//! without that line, so this test guards the pass-through itself. Needs root
//! and iptables (installed by `./x test`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use netns_core::TempNetNs;
use netns_datapath::cgroup::{ChildCgroup, cgroup2_mount};
use netns_datapath::{DataPath, DataPathConfig};
use netns_ebpf::MeshSettings;
use netns_tests::mesh::error_chain;
use netns_tests::require_root;

const MESHTEST: &str = env!("CARGO_BIN_EXE_meshtest");
/// Enough rules that the table is many pages long.
const RULES: usize = 400;

fn ruleset(v6: bool) -> String {
    let mut rules = String::from("*filter\n:INPUT ACCEPT [0:0]\n:BIG - [0:0]\n");
    for i in 0..RULES {
        let source = if v6 {
            format!("2001:db8::{:x}/128", i + 1)
        } else {
            format!("192.0.2.{}/32", i % 250 + 1)
        };
        let _ = writeln!(
            rules,
            "-A BIG -s {source} -p tcp --dport {} -j ACCEPT",
            10_000 + i
        );
    }
    rules.push_str("COMMIT\n");
    rules
}

/// Runs `command` in `pod`, inside `cgroup` if given; returns its stdout lines.
fn run_in(pod: &TempNetNs, cgroup: Option<&ChildCgroup>, command: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(MESHTEST);
    if let Some(cgroup) = cgroup {
        cmd.arg("--cgroup").arg(cgroup.path());
    }
    let out = cmd
        .arg("--netns")
        .arg(pod.path())
        .arg("exec")
        .args(command)
        .output()
        .expect("run meshtest");
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// No pod needs to be meshed: the getsockopt program runs for every process
/// in the cgroup. So this runs on every kernel, 5.10 included.
fn iptables_in_pod(v6: bool) {
    require_root();
    let tag = format!("{}-{}", std::process::id(), u8::from(v6));
    let cgroup = ChildCgroup::create(
        &cgroup2_mount().unwrap(),
        &format!("netns-getsockopt-{tag}"),
    )
    .unwrap();
    let config = DataPathConfig {
        cgroup: cgroup.path().to_owned(),
        pin_dir: PathBuf::from(format!("/tmp/netns-getsockopt-{tag}")),
        settings: MeshSettings::istio(),
    };
    let _datapath = DataPath::attach(netns_datapath::EBPF_OBJECT, &config)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let pod = TempNetNs::new("getsockopt").unwrap();
    let (restore, save, list) = if v6 {
        (
            "ip6tables-legacy-restore",
            "ip6tables-legacy-save",
            "ip6tables-legacy",
        )
    } else {
        (
            "iptables-legacy-restore",
            "iptables-legacy-save",
            "iptables-legacy",
        )
    };
    let file = std::env::temp_dir().join(format!("netns-getsockopt-{tag}.rules"));
    std::fs::write(&file, ruleset(v6)).unwrap();
    let file_arg = file.display().to_string();
    // Loaded from inside the captured cgroup: setsockopt and getsockopt both pass.
    run_in(&pod, Some(&cgroup), &[restore, "-w", "5", &file_arg]);
    let _ = std::fs::remove_file(&file);

    let captured = run_in(&pod, Some(&cgroup), &[save, "-t", "filter"]);
    let uncaptured = run_in(&pod, None, &[save, "-t", "filter"]);
    let rules = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with("-A BIG"))
            .cloned()
            .collect()
    };
    assert_eq!(rules(&captured).len(), RULES, "{captured:?}");
    assert_eq!(rules(&captured), rules(&uncaptured));
    let listed = run_in(&pod, Some(&cgroup), &[list, "-w", "5", "-L", "BIG", "-n"]);
    assert_eq!(
        listed.iter().filter(|l| l.starts_with("ACCEPT")).count(),
        RULES,
        "{listed:?}"
    );
}

#[test]
fn root_iptables_legacy_lists_a_large_table_inside_a_captured_pod() {
    iptables_in_pod(false);
}

#[test]
fn root_ip6tables_legacy_lists_a_large_table_inside_a_captured_pod() {
    iptables_in_pod(true);
}
