//! Two pods attached through the real chain (loopback, bridge with
//! host-local, netns-cni) are meshed for real: pod 1's app dials pod 2's
//! app on its bridge address; the connection is captured to pod 1's sidecar,
//! which learns the original destination from `SO_ORIGINAL_DST` and dials it
//! (bypass mark); pod 2's inbound capture hands that to pod 2's sidecar,
//! which learns it too. The app sees the answer of both sidecars, never of
//! pod 2's app. Its own test binary: this process joins the captured cgroup
//! (its threads are the apps and sidecars). Needs root, iproute2 and
//! containernetworking-plugins.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};

use netns_core::NetNs;
use netns_ebpf::defaults::BYPASS_MARK;
use netns_tests::cni::Chain;

const AGENT: &str = env!("CARGO_BIN_EXE_netns-agent");
const PLUGIN: &str = env!("CARGO_BIN_EXE_netns-cni");

fn ipv4_of(result: &serde_json::Value) -> IpAddr {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip["address"].as_str().unwrap().split('/').next().unwrap())
        .find_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .unwrap()
        .into()
}

/// Answers every connection of `listener` with `answer(conn)` on a thread.
fn serve(listener: TcpListener, answer: impl Fn(&TcpStream) -> String + Send + 'static) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let line = answer(&conn);
            let _ = writeln!(conn, "{line}");
        }
    });
}

fn read_line(conn: TcpStream) -> String {
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).unwrap();
    line.trim().to_owned()
}

#[test]
fn root_cni_pods_are_captured_both_ways_through_the_real_chain() {
    let mut chain = Chain::new(AGENT, PLUGIN, "traffic");
    chain.start_agent();
    let pod1 = chain.pod("pod-1");
    let pod2 = chain.pod("pod-2");
    let (prev1, add1) = chain.add("c1", &pod1);
    assert_eq!(add1.exit, 0, "{add1:?}");
    let (prev2, add2) = chain.add("c2", &pod2);
    assert_eq!(add2.exit, 0, "{add2:?}");
    let target = SocketAddr::new(ipv4_of(&prev2), 8080);

    // From here on, sockets this process makes are in the captured cgroup.
    chain.cgroup.add_process(std::process::id()).unwrap();
    let sidecar1 = pod1
        .sockets()
        .tcp_listener("127.0.0.1:15001".parse().unwrap())
        .unwrap();
    let dialer: NetNs = pod1.clone();
    serve(sidecar1, move |conn| {
        let orig = match netns_core::original_dst(conn) {
            Ok(orig) => orig,
            Err(e) => return format!("sidecar1 error={e}"),
        };
        let upstream = dialer.sockets().mark(BYPASS_MARK).tcp_connect(orig);
        match upstream {
            Ok(upstream) => format!("sidecar1 orig={orig} | {}", read_line(upstream)),
            Err(e) => format!("sidecar1 orig={orig} dial_error={e}"),
        }
    });
    let sidecar2 = pod2
        .sockets()
        .tcp_listener("0.0.0.0:15006".parse().unwrap())
        .unwrap();
    serve(sidecar2, |conn| {
        netns_core::original_dst(conn).map_or_else(
            |e| format!("sidecar2 error={e}"),
            |orig| format!("sidecar2 orig={orig}"),
        )
    });
    let app2 = pod2
        .sockets()
        .tcp_listener("0.0.0.0:8080".parse().unwrap())
        .unwrap();
    serve(app2, |_| "app2".to_owned());

    for _ in 0..5 {
        let conn = pod1.sockets().tcp_connect(target).unwrap();
        assert_eq!(
            conn.peer_addr().unwrap(),
            target,
            "the app sees what it dialed"
        );
        let answer = read_line(conn);
        assert_eq!(
            answer,
            format!("sidecar1 orig={target} | sidecar2 orig={target}"),
            "{}",
            chain.logs()
        );
    }

    let netns1 = pod1.path().to_str().unwrap().to_owned();
    let netns2 = pod2.path().to_str().unwrap().to_owned();
    // netns-cni's DEL alone (the interfaces stay): out of the mesh, the app
    // reaches pod 2's app directly.
    for (container, netns, prev) in [("c1", &netns1, &prev1), ("c2", &netns2, &prev2)] {
        let del = chain.plugin("DEL", container, netns, &chain.plugin_config(Some(prev)));
        assert_eq!(del.exit, 0, "{del:?}");
    }
    let conn = pod1.sockets().tcp_connect(target).unwrap();
    assert_eq!(read_line(conn), "app2");
    // Then the whole chain's DEL.
    assert_eq!(chain.del("c1", &netns1, &prev1).exit, 0);
    assert_eq!(chain.del("c2", &netns2, &prev2).exit, 0);
}
