//! `netns-agent demo` (`./x run -- demo`: the data path in one process)
//! works and leaves nothing behind. Needs root and a real kernel.

use std::process::Command;

#[test]
fn root_demo_redirects_through_the_sidecar_and_cleans_up() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root: run ./x test"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_netns-agent"))
        .args(["demo", "--requests", "3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The demo's lines are what the sidecar and the app learned from the
    // kernel (SO_ORIGINAL_DST, getpeername), printed as they got them: the
    // text the README shows a newcomer.
    assert_eq!(
        stdout
            .matches("SO_ORIGINAL_DST says 198.18.96.10:80")
            .count(),
        3,
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("getpeername() = 198.18.96.10:80").count(),
        3,
        "{stdout}"
    );
    assert!(
        stdout.contains("redirected_outbound=3 original_dst_answered=3"),
        "{stdout}"
    );
    let cgroup = stdout
        .lines()
        .find_map(|l| l.split("demo cgroup ").nth(1))
        .expect("demo cgroup line");
    assert!(!std::path::Path::new(cgroup).exists(), "{cgroup} removed");
    let pins = stdout
        .lines()
        .find_map(|l| l.strip_prefix("maps and links pinned under "))
        .expect("pin line");
    assert!(!std::path::Path::new(pins).exists(), "{pins} removed");
}

#[test]
fn help_teaches_the_demo() {
    let out = Command::new(env!("CARGO_BIN_EXE_netns-agent"))
        .args(["demo", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("never the root") && help.contains("Example: netns-agent demo"),
        "{help}"
    );
}
