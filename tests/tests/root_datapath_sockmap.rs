//! The opt-in sockmap mode: sidecar-to-sidecar legs go through the sockhash
//! (counted), data arrives intact both ways, and no application socket ever
//! joins the map. Needs root and iproute2.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aya::maps::{Map, MapData, SockHash};
use netns_ebpf::{MeshSettings, SockPair, counter, names};
use netns_tests::mesh::{Mesh, POD_B, Place, field};

const MESHTEST: &str = env!("CARGO_BIN_EXE_meshtest");

/// Every key in the pinned sidecar sockhash right now, as the kernel lists them.
fn sockmap_keys(pin: &std::path::Path) -> Vec<SockPair> {
    let data = MapData::from_pin(pin).expect("open pinned sockhash");
    let map: SockHash<MapData, SockPair> = SockHash::try_from(Map::SockHash(data)).unwrap();
    map.keys().filter_map(Result::ok).collect()
}

#[test]
fn root_sockmap_mode_accelerates_only_sidecar_to_sidecar_legs() {
    let mut settings = MeshSettings::istio();
    settings.flags = MeshSettings::FLAG_SOCKMAP;
    let mut mesh = Mesh::new(MESHTEST, settings);
    let target = format!("{POD_B}:8080");
    // App B and both sidecars; app B and sidecar B are in pod B's cgroup too.
    let _app_b = mesh.start(Place::PodB, None, &["serve", "--listen", &target]);
    let mut sidecar_a = mesh.start(
        Place::PodA,
        Some(1337),
        &["sidecar", "--listen", "127.0.0.1:15001"],
    );
    let mut sidecar_b = mesh.start(
        Place::PodB,
        Some(1337),
        &["sidecar", "--listen", "0.0.0.0:15006"],
    );

    // Watch the sockhash while traffic flows.
    let pin = mesh.map_pin(names::SIDECAR_SOCKS);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seen = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                for key in sockmap_keys(&pin) {
                    seen.insert((key.client_port, key.server_port, key.family));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            seen
        })
    };
    for size in ["1", "1000", "65536", "1048576", "16777216"] {
        let out = mesh.run(
            Place::PodA,
            None,
            &[
                "client",
                "--connect",
                &target,
                "--size",
                size,
                "--hold-ms",
                "100",
            ],
        );
        let done = out
            .iter()
            .find(|l| l.starts_with("done"))
            .expect("client result");
        assert_eq!(field(done, "ok"), Some("true"), "size {size}: {done}");
        assert_eq!(field(done, "peer"), Some(target.as_str()), "{done}");
        let a = sidecar_a
            .wait_for("accepted", Duration::from_secs(5))
            .expect("outbound sidecar");
        assert_eq!(field(&a, "orig"), Some(target.as_str()));
        let b = sidecar_b
            .wait_for("accepted", Duration::from_secs(5))
            .expect("inbound sidecar");
        assert_eq!(field(&b, "orig"), Some(target.as_str()));
    }
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();

    assert!(
        !seen.is_empty(),
        "the sidecar leg never joined the sockhash"
    );
    for (client_port, server_port, _) in &seen {
        assert!(
            *client_port == 15006 || *server_port == 15006,
            "a socket that is not on the sidecar-to-sidecar leg joined: {client_port} -> {server_port}"
        );
        for app_port in [15001, 8080] {
            assert!(
                *client_port != app_port && *server_port != app_port,
                "application socket joined"
            );
        }
    }
    let c = mesh.datapath().counters().unwrap();
    println!("sockhash keys seen: {seen:?}; counters: {c:?}");
    assert!(
        c[counter::SOCKMAP_ADDED as usize] >= 10,
        "both ends of 5 legs: {c:?}"
    );
    assert!(c[counter::SOCKMAP_REDIRECTED as usize] > 0, "{c:?}");
    assert!(
        sidecar_a.drain().iter().all(|l| !l.starts_with("error")),
        "{:?}",
        sidecar_a.seen
    );
    assert!(
        sidecar_b.drain().iter().all(|l| !l.starts_with("error")),
        "{:?}",
        sidecar_b.seen
    );
}
