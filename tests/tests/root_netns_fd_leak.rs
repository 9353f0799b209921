//! No descriptor leaks: the count in /proc/self/fd is the same before and after
//! 10,000 calls. Alone in its binary, so that no other test opens files meanwhile.
//! Needs root and a real kernel.

use netns_core::{NetNs, TempNetNs, with_netns_path};
use netns_tests::{open_fd_count, require_root, thread_netns_ino};

#[test]
fn root_ten_thousand_calls_leak_no_descriptor() {
    require_root();
    let named = TempNetNs::new("fdleak").unwrap();
    let anonymous = NetNs::new_anonymous().unwrap();
    let path = named.path().to_owned();
    let home = thread_netns_ino();

    let before = open_fd_count();
    // On a fresh thread: its record of its namespace is opened and closed with it.
    // Joined, not left to the scope: a scope stops waiting once the closure has
    // returned, before the thread's TLS destructors close that record (seen under
    // QEMU/TCG); `join` waits for the thread to exit.
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            for i in 0..10_000 {
                let ns = if i % 2 == 0 { &anonymous } else { &*named };
                ns.run(|_| ()).unwrap();
                let guard = ns.enter().unwrap();
                drop(guard);
            }
            for _ in 0..10_000 {
                with_netns_path(&path, |_| ()).unwrap();
                NetNs::open(&path).unwrap().close().unwrap();
            }
            for _ in 0..1_000 {
                drop(
                    anonymous
                        .sockets()
                        .mark(1)
                        .udp_socket("127.0.0.1:0".parse().unwrap()),
                );
            }
        });
        worker.join().unwrap();
    });
    assert_eq!(open_fd_count(), before, "descriptors leaked");

    // And on this thread, once it holds its record, the count stays put.
    let ns = NetNs::new_anonymous().unwrap();
    ns.run(|_| ()).unwrap();
    let warm = open_fd_count();
    for _ in 0..10_000 {
        ns.run(|_| ()).unwrap();
    }
    assert_eq!(open_fd_count(), warm, "descriptors leaked");
    assert_eq!(thread_netns_ino(), home);
}
