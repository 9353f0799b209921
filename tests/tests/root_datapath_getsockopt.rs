//! The getsockopt program runs for every getsockopt of every process in the
//! captured cgroup. Calls that are not `SO_ORIGINAL_DST` must pass through
//! untouched, including those whose answer is larger than the page the
//! kernel shows programs: iptables-legacy reads its whole table with one
//! `IPT_SO_GET_ENTRIES` (a pod's init container runs exactly this). Before
//! Linux 6.5, a program that leaves such a call's length alone makes it fail
//! with EFAULT. Needs root, iproute2 and iptables (installed by `./x test`).

use netns_ebpf::MeshSettings;
use netns_tests::mesh::{Mesh, Place};

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
        rules.push_str(&format!(
            "-A BIG -s {source} -p tcp --dport {} -j ACCEPT\n",
            10_000 + i
        ));
    }
    rules.push_str("COMMIT\n");
    rules
}

fn iptables_in_pod(v6: bool) {
    let Some(mesh) = Mesh::new_or_skip(MESHTEST, MeshSettings::istio()) else {
        return;
    };
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
    let file = std::env::temp_dir().join(format!(
        "netns-getsockopt-{}-{}.rules",
        std::process::id(),
        u8::from(v6)
    ));
    std::fs::write(&file, ruleset(v6)).unwrap();
    let file_arg = file.display().to_string();
    // Loaded from inside the captured cgroup: setsockopt and getsockopt both pass.
    mesh.run(Place::PodA, None, &["exec", restore, "-w", "5", &file_arg]);
    let _ = std::fs::remove_file(&file);

    let captured = mesh.run(Place::PodA, None, &["exec", save, "-t", "filter"]);
    let uncaptured = mesh.run(Place::PodAUncaptured, None, &["exec", save, "-t", "filter"]);
    let rules = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with("-A BIG"))
            .cloned()
            .collect()
    };
    assert_eq!(rules(&captured).len(), RULES, "{captured:?}");
    assert_eq!(rules(&captured), rules(&uncaptured));
    let listed = mesh.run(Place::PodA, None, &["exec", list, "-w", "-L", "BIG", "-n"]);
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
