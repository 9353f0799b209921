//! Regression tests for two ways the per-thread record of "the namespace this
//! thread is in" could be wrong, each found by an independent check. Both
//! assert the kernel's view (`/proc/thread-self/ns/net`). Needs root.

use std::os::fd::AsFd;
use std::process::Command;

use netns_core::{NetNs, NsType, TempNetNs, setns};
use netns_tests::{require_root, thread_netns_ino};

const CHILD: &str = "NETNS_TEST_PIDNS_CHILD";
const CLONE_NEWNET: i32 = 0x4000_0000;

/// `setns` with C's "any type" (`Other(0)`) or a hand-built
/// `Other(CLONE_NEWNET)` moves the thread: the record must not survive it, or
/// a later `run` into the real home thinks it is already there.
#[test]
fn root_setns_with_any_type_drops_the_thread_record() {
    require_root();
    for nstype in [NsType::Other(0), NsType::Other(CLONE_NEWNET)] {
        std::thread::spawn(move || {
            let home = NetNs::current().unwrap();
            let away = TempNetNs::new("regress").unwrap();
            // Fills the record with `home` on the way back.
            away.run(|_| ()).unwrap();
            setns(away.as_fd(), Some(nstype)).unwrap();
            assert_eq!(thread_netns_ino(), away.id().ino, "{nstype}: moved");
            let seen = home.run(|_| thread_netns_ino()).unwrap();
            assert_eq!(seen, home.id().ino, "{nstype}: the closure ran at home");
            setns(home.as_fd(), Some(NsType::Net)).unwrap();
        })
        .join()
        .unwrap();
    }
}

/// Run by the test below inside `unshare --pid --fork --net` without
/// `--mount-proc`: this process is pid 1 of its pid namespace, but `/proc` is
/// the host's, where `/proc/1/task/1` is the host's init.
#[test]
#[ignore = "the child of root_current_is_right_in_a_pid_namespace_with_the_hosts_proc"]
fn root_pidns_child() {
    assert!(
        std::env::var_os(CHILD).is_some(),
        "started only by its parent test"
    );
    let here = thread_netns_ino();
    assert_eq!(NetNs::current().unwrap().id().ino, here, "current()");
    let away = TempNetNs::new("regress-pidns").unwrap();
    let (inside, home) = away
        .run(|host| (thread_netns_ino(), host.id().ino))
        .unwrap();
    assert_eq!((inside, home), (away.id().ino, here), "run() and its host");
    assert_eq!(thread_netns_ino(), here, "back where it started");
    println!("PIDNS-CHILD-OK");
}

#[test]
fn root_current_is_right_in_a_pid_namespace_with_the_hosts_proc() {
    require_root();
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--net", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "root_pidns_child", "--ignored", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .expect("unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("PIDNS-CHILD-OK"),
        "{}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
