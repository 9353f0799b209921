//! `netns-agent demo`: the agent's data path end to end on a throw-away pod,
//! in one process, touching nothing outside what it creates.
//!
//! It makes a child cgroup (never the root), attaches the data path there,
//! creates a pod namespace, moves itself into the cgroup, and plays the pod's
//! app, sidecar and backend: the app dials a service address that exists
//! nowhere; the data path sends it to the sidecar, which learns the address
//! through `SO_ORIGINAL_DST` and forwards it, its own sockets marked with the
//! bypass mark. Then everything is taken down again.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use netns_core::{NetNs, TempNetNs};
use netns_datapath::cgroup::{ChildCgroup, cgroup2_mount};
use netns_datapath::{DataPath, DataPathConfig};
use netns_ebpf::{MeshSettings, counter};

/// The service address the app dials: routed nowhere, reachable only by capture.
const SERVICE_VIP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 96, 10)), 80);
/// Where the pod's backend really listens.
const BACKEND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

pub(crate) fn run(requests: u8) -> anyhow::Result<()> {
    let settings = MeshSettings::istio();
    let v2 = cgroup2_mount().context("find the cgroup v2 mount")?;
    let tag = std::process::id();
    let cgroup =
        ChildCgroup::create(&v2, &format!("netns-demo-{tag}")).context("create the demo cgroup")?;
    println!(
        "cgroup v2 at {}; demo cgroup {}",
        v2.display(),
        cgroup.path().display()
    );

    let config = DataPathConfig {
        cgroup: cgroup.path().to_owned(),
        pin_dir: PathBuf::from(format!("/tmp/netns-demo-{tag}")),
        settings,
    };
    let mut datapath = DataPath::attach(netns_datapath::EBPF_OBJECT, &config)
        .context("attach the data path to the demo cgroup")?;
    let names: Vec<String> = datapath
        .programs()
        .iter()
        .map(|p| format!("{}#{}", p.name, p.id))
        .collect();
    println!("data path attached: {}", names.join(" "));
    println!("maps and links pinned under {}", config.pin_dir.display());

    let pod = TempNetNs::new("netns-demo-pod").context("create the pod namespace")?;
    pod.set_loopback_up()?;
    let cookie = datapath.netns_cookie(&pod)?;
    datapath.add_pod(cookie, &[])?;
    println!(
        "pod {}: {}, netns cookie {cookie}, in the mesh",
        pod.name(),
        pod.id()
    );

    // From here on this process's new sockets belong to the demo cgroup (its
    // guard moves the process back out before removing it).
    cgroup.add_process(std::process::id())?;
    let result = serve_requests(&pod, &settings, requests);
    let counters = datapath.counters()?;
    datapath.detach().context("detach the data path")?;
    println!(
        "counters: redirected_outbound={} original_dst_answered={} bypassed_mark={}",
        counters[counter::REDIRECTED_OUTBOUND as usize],
        counters[counter::ORIGINAL_DST_ANSWERED as usize],
        counters[counter::BYPASSED_MARK as usize],
    );
    result?;
    drop(pod);
    drop(cgroup);
    if config.pin_dir.exists() {
        bail!("{} was not removed", config.pin_dir.display());
    }
    println!("detached, pins removed, pod and cgroup deleted");
    Ok(())
}

/// The app, the sidecar and the backend of one pod, as threads.
fn serve_requests(pod: &NetNs, settings: &MeshSettings, requests: u8) -> anyhow::Result<()> {
    let mark = settings.bypass_mark;
    let backend = pod.sockets().mark(mark).tcp_listener(BACKEND)?;
    let outbound = SocketAddr::from((Ipv4Addr::LOCALHOST, settings.outbound_port));
    let sidecar = pod.sockets().mark(mark).tcp_listener(outbound)?;
    std::thread::scope(|scope| {
        // The sidecar, and the backend it forwards to, on one thread.
        let sidecar_thread = scope.spawn(|| -> anyhow::Result<()> {
            for _ in 0..requests {
                let (mut app_side, peer) = sidecar.accept().context("sidecar accept")?;
                let orig = netns_core::original_dst(&app_side).context("SO_ORIGINAL_DST")?;
                println!(
                    "  sidecar accepted {peer} on {outbound}; SO_ORIGINAL_DST says {orig}; \
                     forwarding to {BACKEND} with SO_MARK {mark:#x}"
                );
                let mut upstream = pod.sockets().mark(mark).tcp_connect(BACKEND)?;
                let (mut served, _) = backend.accept().context("backend accept")?;
                served.write_all(b"hello from the backend")?;
                drop(served);
                let mut reply = Vec::new();
                upstream.read_to_end(&mut reply)?;
                app_side.write_all(&reply)?;
            }
            Ok(())
        });
        for i in 0..requests {
            println!(
                "app request {}: dials {SERVICE_VIP} (an address that exists nowhere)",
                i + 1
            );
            let mut app: TcpStream = pod.sockets().tcp_connect(SERVICE_VIP)?;
            app.set_read_timeout(Some(Duration::from_secs(5)))?;
            let peer = app.peer_addr()?;
            let mut reply = String::new();
            app.read_to_string(&mut reply)
                .with_context(|| format!("read the reply to request {}", i + 1))?;
            println!("  app: getpeername() = {peer}; reply {reply:?}");
            if peer != SERVICE_VIP {
                bail!("the app saw {peer}, not the address it dialed");
            }
        }
        sidecar_thread.join().expect("sidecar thread")
    })
}
