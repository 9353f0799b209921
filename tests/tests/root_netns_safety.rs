//! What netns-core promises beyond the Go package, checked against the kernel.
//! Needs root and a real kernel.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use netns_core::{NetNs, NsError, NsType, TempNetNs};
use netns_tests::{require_root, socket_inode, socket_inodes_in_thread_netns, thread_netns_ino};

fn scratch() -> NetNs {
    require_root();
    let ns = NetNs::new_anonymous().expect("create a test namespace");
    ns.set_loopback_up().expect("lo up");
    ns
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

#[test]
fn root_panic_inside_the_closure_leaves_the_thread_where_it_was() {
    let ns = scratch();
    let before = thread_netns_ino();
    let caught = catch_unwind(AssertUnwindSafe(|| {
        ns.run(|_| {
            assert_eq!(thread_netns_ino(), ns.id().ino);
            panic!("boom inside the namespace");
        })
    }));
    assert!(caught.is_err());
    assert_eq!(thread_netns_ino(), before);
    // The thread's record is right too: the next switch lands and returns.
    assert_eq!(ns.run(|_| thread_netns_ino()).unwrap(), ns.id().ino);
    assert_eq!(thread_netns_ino(), before);
}

#[test]
fn root_guard_restores_on_drop_and_nested_guards_unwind_in_order() {
    let (a, b) = (scratch(), scratch());
    let home = thread_netns_ino();
    {
        let outer = a.enter().unwrap();
        assert_eq!(thread_netns_ino(), a.id().ino);
        assert_eq!(outer.origin().id().ino, home);
        {
            let inner = b.enter().unwrap();
            assert_eq!(thread_netns_ino(), b.id().ino);
            assert_eq!(inner.origin().id(), a.id());
        }
        assert_eq!(thread_netns_ino(), a.id().ino);
    }
    assert_eq!(thread_netns_ino(), home);
}

#[test]
fn root_entering_the_namespace_the_thread_is_in_switches_nothing() {
    let ns = scratch();
    ns.run(|_| {
        let again = NetNs::open("/proc/thread-self/ns/net").unwrap();
        assert_eq!(again, ns, "same namespace by (dev, inode), other path");
        let host = again.run(NetNs::id).unwrap();
        assert_eq!(host, ns.id(), "already inside: origin is the target itself");
        assert_eq!(thread_netns_ino(), ns.id().ino);
    })
    .unwrap();
}

#[test]
fn root_set_moves_the_thread_for_good_and_current_reports_it() {
    let ns = scratch();
    let inside = std::thread::spawn({
        let ns = ns.clone();
        move || {
            ns.set().unwrap();
            (thread_netns_ino(), NetNs::current().unwrap().id())
        }
    })
    .join()
    .unwrap();
    assert_eq!(inside, (ns.id().ino, ns.id()));
}

#[test]
fn root_raw_setns_then_run_returns_to_where_raw_setns_put_the_thread() {
    let (a, b) = (scratch(), scratch());
    std::thread::spawn(move || {
        let home = NetNs::current().unwrap();
        b.run(|_| ()).unwrap(); // the thread now has a record of its namespace
        netns_core::setns(&a, Some(NsType::Net)).unwrap();
        assert_eq!(thread_netns_ino(), a.id().ino);
        assert_eq!(b.run(NetNs::id).unwrap(), a.id());
        assert_eq!(
            thread_netns_ino(),
            a.id().ino,
            "back in a, not in the old home"
        );
        netns_core::setns(&home, None).unwrap();
        assert_eq!(thread_netns_ino(), home.id().ino);
    })
    .join()
    .unwrap();
}

#[test]
fn root_tokio_tasks_never_see_a_foreign_namespace_on_any_worker() {
    let namespaces: Vec<NetNs> = (0..4).map(|_| scratch()).collect();
    let home = thread_netns_ino();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let observations = rt.block_on(async {
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let ns = namespaces[i % namespaces.len()].clone();
                tokio::spawn(async move {
                    let before = thread_netns_ino();
                    let inside = ns.run(|_| thread_netns_ino()).unwrap();
                    tokio::task::yield_now().await;
                    let after = thread_netns_ino();
                    (before, inside, ns.id().ino, after)
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.push(task.await.unwrap());
        }
        all
    });
    assert_eq!(observations.len(), 1000);
    for (before, inside, target, after) in observations {
        assert_eq!(before, home, "a worker was left in a foreign namespace");
        assert_eq!(inside, target);
        assert_eq!(after, home, "a worker was left in a foreign namespace");
    }
}

#[test]
fn root_run_async_drives_the_future_inside_the_namespace() {
    let ns = scratch();
    let home = thread_netns_ino();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (inos, echoed) = rt
        .block_on(ns.run_async(|| async {
            let mut inos = vec![thread_netns_ino()];
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client = tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(b"ping").await.unwrap();
                let mut buf = [0; 4];
                s.read_exact(&mut buf).await.unwrap();
                buf
            });
            let (mut conn, _) = listener.accept().await.unwrap();
            inos.push(thread_netns_ino());
            let mut buf = [0; 4];
            tokio::io::AsyncReadExt::read_exact(&mut conn, &mut buf)
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut conn, &buf)
                .await
                .unwrap();
            (inos, client.await.unwrap())
        }))
        .unwrap();
    assert!(inos.iter().all(|&ino| ino == ns.id().ino), "{inos:?}");
    assert_eq!(&echoed, b"ping");
    assert_eq!(thread_netns_ino(), home);
}

#[test]
fn root_run_async_reports_a_panicking_future() {
    let ns = scratch();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = rt
        .block_on(ns.run_async(|| async { panic!("boom") }))
        .unwrap_err();
    assert!(matches!(err, NsError::Worker { .. }), "{err:?}");
}

#[test]
fn root_run_in_thread_never_moves_the_caller() {
    let ns = scratch();
    let home = thread_netns_ino();
    let inside = ns.run_in_thread(thread_netns_ino).unwrap();
    assert_eq!(inside, ns.id().ino);
    assert_eq!(thread_netns_ino(), home);
    let panicked = catch_unwind(AssertUnwindSafe(|| ns.run_in_thread(|| panic!("boom"))));
    assert!(panicked.is_err(), "the worker's panic reaches the caller");
}

#[test]
fn root_handle_keeps_working_after_its_bind_mount_is_removed() {
    require_root();
    let name = format!("unmounted-{}", std::process::id());
    let ns = NetNs::create_named(&name).unwrap();
    let path = ns.path().to_owned();
    NetNs::delete_named(&name).unwrap();
    assert!(!path.exists());
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(path.to_str().unwrap())
    );
    assert_eq!(ns.run(|_| thread_netns_ino()).unwrap(), ns.id().ino);
    ns.set_loopback_up().unwrap();
    let listener = ns.sockets().tcp_listener(loopback(0)).unwrap();
    let inode = socket_inode(&listener);
    assert!(
        ns.run(|_| socket_inodes_in_thread_netns().contains(&inode))
            .unwrap()
    );
}

#[test]
fn root_listener_made_inside_is_reachable_only_from_inside() {
    let ns = scratch();
    let listener = ns.sockets().mark(0x539).tcp_listener(loopback(0)).unwrap();
    let addr = listener.local_addr().unwrap();

    // The kernel lists the socket in the namespace's table, not in ours.
    let inode = socket_inode(&listener);
    assert!(
        ns.run(|_| socket_inodes_in_thread_netns().contains(&inode))
            .unwrap()
    );
    assert!(!socket_inodes_in_thread_netns().contains(&inode));

    // SO_MARK as the kernel reports it through getsockopt.
    assert_eq!(netns_core::mark(&listener).unwrap(), 0x539);

    // From the host's loopback, the listener never sees a connection.
    let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
    listener.set_nonblocking(true).unwrap();
    assert_eq!(listener.accept().unwrap_err().kind(), ErrorKind::WouldBlock);

    // From inside, it does, and bytes flow; the client socket is marked too.
    let mut client = ns.sockets().mark(7).tcp_connect(addr).unwrap();
    assert_eq!(netns_core::mark(&client).unwrap(), 7);
    listener.set_nonblocking(false).unwrap();
    let (mut served, peer) = listener.accept().unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    client.write_all(b"hello").unwrap();
    let mut buf = [0; 5];
    served.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
}

#[test]
fn root_udp_socket_made_inside_lives_in_the_namespace() {
    let ns = scratch();
    let server = ns.sockets().udp_socket(loopback(0)).unwrap();
    let client = ns.sockets().mark(0x42).udp_socket(loopback(0)).unwrap();
    assert_eq!(netns_core::mark(&client).unwrap(), 0x42);
    client
        .send_to(b"datagram", server.local_addr().unwrap())
        .unwrap();
    let mut buf = [0; 16];
    let (n, from) = server.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..n], from),
        (&b"datagram"[..], client.local_addr().unwrap())
    );
    let inode = socket_inode(&server);
    assert!(
        ns.run(|_| socket_inodes_in_thread_netns().contains(&inode))
            .unwrap()
    );
}

#[test]
fn root_set_mark_on_a_host_socket_reads_back() {
    require_root();
    let sock = std::net::UdpSocket::bind(loopback(0)).unwrap();
    assert_eq!(netns_core::mark(&sock).unwrap(), 0);
    netns_core::set_mark(&sock, 0xdead_beef).unwrap();
    assert_eq!(netns_core::mark(&sock).unwrap(), 0xdead_beef);
    assert_eq!(netns_core::SO_MARK, libc_so_mark());
}

fn libc_so_mark() -> i32 {
    nix::libc::SO_MARK
}

#[test]
fn root_other_namespace_types_are_rejected_by_type() {
    require_root();
    for (path, found) in [
        ("/proc/self/ns/mnt", NsType::Mount),
        ("/proc/self/ns/pid", NsType::Pid),
        ("/proc/self/ns/uts", NsType::Uts),
        ("/proc/self/ns/user", NsType::User),
    ] {
        match NetNs::open(path) {
            Err(NsError::WrongType { path: p, found: f }) => {
                assert_eq!((p.to_str().unwrap(), f), (path, found));
            }
            other => panic!("{path}: expected WrongType, got {other:?}"),
        }
    }
    let msg = netns_core::validate("/proc/self/ns/mnt")
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "/proc/self/ns/mnt is a mount namespace, not a network namespace"
    );
}

#[test]
fn special_files_are_rejected_without_being_opened() {
    let fifo = std::env::temp_dir().join(format!("nsfifo-{}", std::process::id()));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // Opening a FIFO for reading would block forever; this must return at once.
    let fifo_err = NetNs::open(&fifo).unwrap_err();
    std::fs::remove_file(&fifo).unwrap();
    assert!(
        matches!(fifo_err, NsError::NotNamespace { what: "a FIFO", .. }),
        "{fifo_err:?}"
    );
    for (path, what) in [("/tmp", "a directory"), ("/dev/null", "a device")] {
        let err = NetNs::open(path).unwrap_err();
        assert!(
            matches!(&err, NsError::NotNamespace { what: w, .. } if *w == what),
            "{err:?}"
        );
        assert!(err.to_string().starts_with(path));
    }
}

#[test]
fn root_named_namespaces_are_created_and_deleted_like_ip_netns() {
    require_root();
    let name = format!("named-{}", std::process::id());
    let ns = NetNs::create_named(&name).unwrap();
    let path = format!("/run/netns/{name}");
    assert_eq!(ns.path().to_str(), Some(path.as_str()));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mountinfo.contains(&path), "bind mount present");
    assert_eq!(NetNs::open(&path).unwrap(), ns);
    assert!(matches!(
        NetNs::create_named(&name),
        Err(NsError::AlreadyExists { .. })
    ));
    NetNs::delete_named(&name).unwrap();
    assert!(!std::path::Path::new(&path).exists());
    assert!(matches!(
        NetNs::delete_named(&name),
        Err(NsError::NotFound { .. })
    ));
    for bad in ["", ".", "..", "a/b"] {
        assert!(
            matches!(NetNs::create_named(bad), Err(NsError::InvalidName { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn root_temp_namespace_removes_itself_on_drop() {
    require_root();
    let path = {
        let ns = TempNetNs::new("temp").unwrap();
        assert!(ns.path().exists());
        assert!(ns.name().starts_with("temp-"));
        ns.path().to_owned()
    };
    assert!(!path.exists());
}

#[test]
fn root_netns_cookie_identifies_the_namespace() {
    if !netns_tests::kernel::has_netns_cookie()
        && netns_tests::skip_in_vm("SO_NETNS_COOKIE (Linux 5.14) is missing")
    {
        return;
    }
    let (a, b) = (scratch(), scratch());
    let a_again = NetNs::open(a.path()).unwrap();
    assert_eq!(a.cookie().unwrap(), a_again.cookie().unwrap());
    assert_ne!(a.cookie().unwrap(), b.cookie().unwrap());
    // That it is the value bpf_get_netns_cookie sees is what the data path
    // tests show: pods are put in the mesh by this cookie.
}
