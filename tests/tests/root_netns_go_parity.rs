//! Every scenario of containernetworking's `pkg/ns/ns_linux_test.go`, on netns-core.
//! Needs root and a real kernel. Checks the kernel's inode, not the crate's word.
//!
//! Two Go scenarios are compile-time guarantees in Rust and live as `compile_fail`
//! doctests on `NetNs::close`: "closing should prevent further operations"
//! (use after `close(self)` does not compile) and "close should only work once".

use std::sync::Arc;
use std::time::{Duration, Instant};

use netns_core::{NetNs, NsError, validate, with_netns_path};
use netns_tests::{all_threads_netns_inos, require_root, thread_netns_ino};

fn target() -> NetNs {
    require_root();
    NetNs::new_anonymous().expect("create a test namespace")
}

#[test]
fn root_run_executes_the_closure_inside_the_target() {
    let target = target();
    let before = thread_netns_ino();
    let inside = target.run(|_| thread_netns_ino()).unwrap();
    assert_eq!(inside, target.id().ino);
    assert_ne!(inside, before);
    assert_eq!(thread_netns_ino(), before, "thread came back");
}

#[test]
fn root_run_passes_the_original_namespace_to_the_closure() {
    let target = target();
    let original = NetNs::current().unwrap();
    original
        .run(|_| {
            let orig_ino = thread_netns_ino();
            target
                .run(|host| {
                    assert_eq!(host.id().ino, orig_ino);
                    // The handle is usable: entering it lands where we came from.
                    assert_eq!(host.run(|_| thread_netns_ino()).unwrap(), orig_ino);
                })
                .unwrap();
        })
        .unwrap();
}

#[test]
fn root_run_called_concurrently_200_times_passes_the_original_namespace() {
    let target = Arc::new(target());
    let orig_ino = thread_netns_ino();
    let workers: Vec<_> = (0..200)
        .map(|_| {
            let target = Arc::clone(&target);
            std::thread::spawn(move || {
                let (host, inside) = target
                    .run(|host| (host.id().ino, thread_netns_ino()))
                    .unwrap();
                (host, inside, thread_netns_ino())
            })
        })
        .collect();
    for worker in workers {
        let (host, inside, after) = worker.join().unwrap();
        assert_eq!(host, orig_ino);
        assert_eq!(inside, target.id().ino);
        assert_eq!(after, orig_ino);
    }
}

#[test]
fn root_closure_error_is_returned_and_the_thread_restored() {
    let target = target();
    let before = thread_netns_ino();
    let result = target.run(|_| Err::<(), _>("potato")).unwrap();
    assert_eq!(result, Err("potato"));
    assert_eq!(thread_netns_ino(), before);
}

#[test]
fn root_different_namespaces_have_different_inodes() {
    let target = target();
    let original = NetNs::current().unwrap();
    assert_ne!(target.id().ino, 0);
    assert_ne!(target.id(), original.id());
    assert_ne!(target, original);
}

#[test]
fn root_closed_namespace_leaks_onto_no_thread() {
    let created = target();
    let created_ino = created.id().ino;
    created.run(|_| ()).unwrap();
    created.run_in_thread(|| ()).unwrap();
    created.close().unwrap();
    // `join` returns when the worker's exit wakes it, before the kernel drops the
    // worker's namespaces: for a moment the exiting thread still shows the
    // namespace (seen often under QEMU/TCG). A leaked live thread stays for good.
    let deadline = Instant::now() + Duration::from_secs(5);
    while all_threads_netns_inos().contains(&created_ino) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for ino in all_threads_netns_inos() {
        assert_ne!(ino, created_ino);
    }
}

#[test]
fn regular_file_is_not_a_namespace() {
    let file = std::env::temp_dir().join(format!("nstest-{}", std::process::id()));
    std::fs::write(&file, b"").unwrap();
    let opened = NetNs::open(&file);
    let validated = validate(&file);
    std::fs::remove_file(&file).unwrap();
    for err in [opened.unwrap_err(), validated.unwrap_err()] {
        match err {
            NsError::NotNamespace { path, .. } => assert_eq!(path, file),
            other => panic!("expected NotNamespace, got {other:?}"),
        }
    }
}

#[test]
fn missing_path_is_not_found() {
    for err in [
        NetNs::open("/tmp/IDoNotExist").unwrap_err(),
        validate("/tmp/IDoNotExist").unwrap_err(),
        with_netns_path("/tmp/IDoNotExist", |_| ()).unwrap_err(),
    ] {
        assert!(
            matches!(&err, NsError::NotFound { path } if path.as_os_str() == "/tmp/IDoNotExist"),
            "{err:?}"
        );
        assert!(err.to_string().contains("/tmp/IDoNotExist"));
    }
}

#[test]
fn root_a_namespace_validates() {
    let created = netns_core::TempNetNs::new("parity").expect("create named namespace");
    validate(created.path()).unwrap();
    validate("/proc/self/ns/net").unwrap();
}

#[test]
fn root_with_netns_path_opens_runs_and_restores() {
    let created = netns_core::TempNetNs::new("parity").expect("create named namespace");
    let before = thread_netns_ino();
    let inside = with_netns_path(created.path(), |_| thread_netns_ino()).unwrap();
    assert_eq!(inside, created.id().ino);
    assert_eq!(thread_netns_ino(), before);
}
