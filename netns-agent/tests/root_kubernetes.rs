//! The agent with `--pod-source kubernetes` against the replaying API server
//! (`tests/support/kube_api.rs`), with a real pod: a network namespace and a
//! process in a cgroup named after the pod's UID, as the kubelet's systemd
//! cgroup driver names it. What is asserted comes from the kernel: the
//! agent's pinned maps hold the pod (by the netns cookie a probe of the
//! test's own learned) with its annotations' settings in its own entries,
//! follow an annotation change (an include list: a monitor sees a dial
//! outside it left alone as `not_included`, with the pod's Kubernetes name),
//! and drop the pod when a relist after 410 Gone no longer lists it. Needs
//! root.

// The stand-in API server the Kubernetes tests share.
#[path = "support/kube_api.rs"]
#[allow(dead_code, unreachable_pub)]
mod kube_api;

use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap, Map};
use kube_api::{ApiServer, pod};
use netns_core::NetNs;
use netns_datapath::CookieProbe;
use netns_ebpf::{POD_CIDR_COOKIE_BITS, PodCidr, PodFlags, PodPort, names};
use netns_tests::agent::{MonitorProcess, Running, private, run_command};
use netns_tests::cni::Chain;

const AGENT: &str = env!("CARGO_BIN_EXE_netns-agent");
const PLUGIN: &str = env!("CARGO_BIN_EXE_netns-cni");
const NODE: &str = "node-a";
const UID: &str = "6a0d2c4e-8f1b-4d3a-9c5e-7b2f4a6c8e01";
/// The CNI test's pod: another UID, so that neither test's agent finds the
/// other's pod process when both run at once.
const CNI_UID: &str = "8c2f4e6a-0b3d-4f5e-a7c9-1d3f5b7d9e23";
const STATUS: (&str, &str) = (
    "sidecar.istio.io/status",
    "{\"containers\":[\"istio-proxy\"]}",
);
const PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
const RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
const PROXY_UID: &str = "sidecar.istio.io/proxyUID";
const INCLUDE: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";

/// A process of the pod: in its namespace and in a cgroup named after its
/// UID. Killed (by its PID) and its cgroup removed on drop.
struct PodProcess {
    child: Child,
    cgroup: PathBuf,
}

impl PodProcess {
    fn start(parent: &Path, ns: &NetNs) -> PodProcess {
        let cgroup = parent.join(format!(
            "kubepods-besteffort-pod{}.slice",
            UID.replace('-', "_")
        ));
        std::fs::create_dir(&cgroup).unwrap();
        let procs = cgroup.join("cgroup.procs");
        let netns = std::fs::File::open(ns.path()).unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("echo $$ > {} && exec sleep 600", procs.display()))
            .stdin(Stdio::null());
        let fd = netns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open in the
        // parent until after the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd.spawn().unwrap();
        drop(netns);
        // Until the shell has moved itself.
        let pid = child.id().to_string();
        wait_until("the pod process in its cgroup", || {
            std::fs::read_to_string(&procs).is_ok_and(|p| p.lines().any(|l| l == pid))
        });
        PodProcess { child, cgroup }
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// Dials `to` from a short-lived process of the pod: in the pod's cgroup
/// (it moves itself there, as the pod's processes are) and namespace; the
/// connect does not wait (nothing answers there).
fn dial_from_pod(cgroup: &Path, ns: &NetNs, to: std::net::SocketAddrV4) {
    use std::os::unix::ffi::OsStrExt as _;
    let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
    let netns = std::fs::File::open(ns.path()).unwrap();
    let fd = netns.as_raw_fd();
    let addr = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap(),
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let mut cmd = Command::new("sh");
    cmd.args(["-c", ":"]).stdin(Stdio::null());
    // SAFETY: only raw system calls between fork and exec, on memory made
    // before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            // "0" moves the writer itself into the cgroup.
            let cg = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if cg < 0 || libc::write(cg, b"0".as_ptr().cast(), 1) != 1 {
                return fail();
            }
            libc::close(cg);
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return fail();
            }
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            if s < 0 {
                return fail();
            }
            // EINPROGRESS or ENETUNREACH: connect4 has decided either way.
            libc::connect(
                s,
                (&raw const addr).cast(),
                libc::socklen_t::try_from(std::mem::size_of_val(&addr)).unwrap_or(0),
            );
            libc::close(s);
            Ok(())
        });
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "the dialing process: {status:?}");
    drop(netns);
}

/// A monitor of the agent at `socket`, once the agent has switched the
/// programs' reports on for it.
fn monitor(socket: &Path, args: &[&str]) -> MonitorProcess {
    let monitor = MonitorProcess::start(AGENT, socket, args);
    let first = monitor
        .next_line(Duration::from_secs(20))
        .expect("the monitor's first line");
    assert!(first.contains("\"subscribed\""), "{first}");
    // The agent switches the programs' reports on within a tick.
    wait_until("decisions reported", || {
        let out = Command::new(AGENT)
            .args(["status", "--json", "--control-socket"])
            .arg(socket)
            .output()
            .unwrap();
        serde_json::from_slice::<netns_agent::status::Status>(&out.stdout)
            .is_ok_and(|s| s.monitor.reporting)
    });
    monitor
}

/// Removes the agent's pins, the pod's namespace mount and the directory,
/// also when the test fails.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = netns_datapath::cleanup(&self.0.join("bpf"));
        let _ = nix::mount::umount2(&self.0.join("pod"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    netns_tests::wait_until(what, Duration::from_secs(10), done);
}

/// One pod's entries, read from the agent's pinned maps.
#[derive(Debug, PartialEq, Eq)]
struct Entries {
    flags: Option<PodFlags>,
    ports: Vec<u16>,
    ranges: Vec<(IpAddr, u32)>,
}

fn entries(bpffs: &Path, cookie: u64) -> Entries {
    let pin = |name: &str| netns_tests::pins::map(bpffs, name);
    let meshed: HashMap<_, u64, PodFlags> =
        HashMap::try_from(Map::HashMap(pin(names::MESHED_NETNS))).unwrap();
    let ports: HashMap<_, PodPort, u8> =
        HashMap::try_from(Map::HashMap(pin(names::POD_EXCLUDED_PORTS))).unwrap();
    let ranges: LpmTrie<_, PodCidr, u8> =
        LpmTrie::try_from(Map::LpmTrie(pin(names::POD_EXCLUDED_CIDRS))).unwrap();
    let mut ports: Vec<u16> = ports
        .keys()
        .map(Result::unwrap)
        .filter(|k| k.netns_cookie == cookie)
        .map(|k| k.port)
        .collect();
    ports.sort_unstable();
    let ranges = ranges
        .keys()
        .map(Result::unwrap)
        .filter(|k| k.data()[..8] == cookie.to_ne_bytes())
        .map(|k| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&k.data()[8..]);
            let v6 = std::net::Ipv6Addr::from(octets);
            let bits = k.prefix_len() - POD_CIDR_COOKIE_BITS;
            match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), bits - 96),
                None => (IpAddr::V6(v6), bits),
            }
        })
        .collect();
    Entries {
        flags: meshed.get(&cookie, 0).ok(),
        ports,
        ranges,
    }
}

/// Only the included ranges: a dial outside them is left alone, and a
/// monitor sees it, with the pod's Kubernetes name.
fn included_only(
    server: &ApiServer,
    dir: &Path,
    cookie: u64,
    process: &PodProcess,
    pod_ns: &NetNs,
) {
    server.put(pod(
        "reviews",
        UID,
        NODE,
        &[STATUS, (INCLUDE, "198.18.96.0/24")],
    ));
    wait_until("the include-only flag", || {
        entries(&dir.join("bpf"), cookie)
            .flags
            .is_some_and(|f| f.bits & PodFlags::FLAG_INCLUDE_ONLY != 0)
    });
    let monitor = monitor(&dir.join("agent.sock"), &["--verdict", "not_included"]);
    dial_from_pod(&process.cgroup, pod_ns, "198.18.99.1:80".parse().unwrap());
    let line = monitor
        .next_line(Duration::from_secs(20))
        .expect("a not_included decision");
    let decision: netns_agent::monitor::MonitorLine = serde_json::from_str(&line).unwrap();
    let netns_agent::monitor::MonitorLine::Decision(d) = decision else {
        panic!("not a decision: {line}");
    };
    assert_eq!(
        (d.pod.as_str(), d.verdict.as_str(), d.destination.as_str()),
        ("default/reviews", "not_included", "198.18.99.1:80"),
        "{d:?}"
    );
    drop(monitor);
}

#[test]
fn root_agent_meshes_api_server_pods_with_their_settings() {
    let p = private("kube");
    let _cleanup = Cleanup(p.dir.clone());
    let server = ApiServer::start();
    let kubeconfig = p.dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    let bpffs = p.dir.join("bpf");
    let pod_ns = NetNs::create_at(&p.dir.join("pod")).unwrap();
    // The cookie as the kernel's programs see it, learned on our own; the
    // probe stays attached so the agent's never switches inet_create's
    // static branch (see netns_tests::cni::Chain).
    let mut probe = CookieProbe::start(netns_datapath::EBPF_OBJECT, p.cgroup.path()).unwrap();
    let cookie = probe.cookie(&pod_ns).unwrap();
    let process = PodProcess::start(p.cgroup.path(), &pod_ns);
    server.put(pod(
        "reviews",
        UID,
        NODE,
        &[
            STATUS,
            (PORTS, "5432"),
            (RANGES, "198.18.9.0/24"),
            (PROXY_UID, "1500"),
        ],
    ));

    let mut cmd = run_command(AGENT, &p.dir, p.cgroup.path(), p.metrics);
    cmd.args(["--pod-source", "kubernetes", "--node-name", NODE])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null());
    let mut agent = Running::start(
        cmd,
        &p.dir.join("agent.log"),
        p.metrics,
        Duration::from_secs(60),
    );

    // Ready means listed: the pod is in, with its settings.
    let own_uid = PodFlags {
        bits: PodFlags::FLAG_OWN_SIDECAR_UID,
        sidecar_uid: 1500,
    };
    assert_eq!(
        entries(&bpffs, cookie),
        Entries {
            flags: Some(own_uid),
            ports: vec![5432],
            ranges: vec![("198.18.9.0".parse().unwrap(), 24)],
        },
        "{}",
        agent.logs()
    );

    // status names the pod as the API server does, with its settings.
    let out = Command::new(AGENT)
        .args(["status", "--json", "--control-socket"])
        .arg(p.dir.join("agent.sock"))
        .output()
        .unwrap();
    let status: netns_agent::status::Status = serde_json::from_slice(&out.stdout).unwrap();
    let shown: Vec<(&str, u64, String)> = status
        .pods
        .iter()
        .map(|p| (p.name.as_str(), p.cookie, p.settings.to_string()))
        .collect();
    assert_eq!(
        shown,
        [(
            "default/reviews",
            cookie,
            "exclude-outbound-ports=5432 exclude-outbound-cidrs=198.18.9.0/24 sidecar-uid=1500"
                .to_owned()
        )]
    );

    // The annotations change: exactly the new settings are held.
    server.put(pod("reviews", UID, NODE, &[STATUS, (PORTS, "6379,8125")]));
    let changed = Entries {
        flags: Some(PodFlags::default()),
        ports: vec![6379, 8125],
        ranges: vec![],
    };
    wait_until("the changed settings", || {
        entries(&bpffs, cookie) == changed
    });

    included_only(&server, &p.dir, cookie, &process, &pod_ns);

    // The pod goes while the watch is away and its resourceVersion expires:
    // the relist drops it, and nothing of it stays.
    server.put_silently(vec![]);
    server.expire();
    let none = Entries {
        flags: None,
        ports: vec![],
        ranges: vec![],
    };
    wait_until("the pod's entries to go", || {
        entries(&bpffs, cookie) == none
    });

    assert!(agent.stop().success(), "{}", agent.logs());
    drop(process);
    drop(probe);
}

/// With netns-cni in the chain, the kubernetes source takes each pod's
/// namespace from ADD (no process of the pod exists yet) and meshes exactly
/// the pods the API server says have a sidecar, with their settings, before
/// ADD returns; a pod the watch does not know is "try again later".
#[test]
fn root_cni_add_meshes_the_annotated_pods_with_their_settings() {
    let mut chain = Chain::new(AGENT, PLUGIN, "kube");
    let server = ApiServer::start();
    let kubeconfig = chain.dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig);
    // Chain's CNI_ARGS name the pod after its container, in `default`.
    server.put(pod("c-meshed", CNI_UID, NODE, &[STATUS, (PORTS, "5432")]));
    server.put(pod(
        "c-plain",
        "7b1e3d5f-9a2c-4e4b-8d6f-8c3a5b7d9f12",
        NODE,
        &[],
    ));
    chain.start_agent_with(
        &["--pod-source", "kubernetes", "--node-name", NODE],
        &[("KUBECONFIG", &kubeconfig)],
    );
    let bpffs = chain.bpffs();

    let meshed = chain.pod("meshed");
    let (prev, run) = chain.add("c-meshed", &meshed);
    assert_eq!(run.exit, 0, "{run:?}\n{}", chain.logs());
    assert_eq!(run.out, prev, "prevResult passed through");
    let cookie = chain.cookie(&meshed);
    let held = Entries {
        flags: Some(PodFlags::default()),
        ports: vec![5432],
        ranges: vec![],
    };
    assert_eq!(entries(&bpffs, cookie), held, "meshed when ADD returned");

    let plain = chain.pod("plain");
    let (_, run) = chain.add("c-plain", &plain);
    assert_eq!(run.exit, 0, "{run:?}");
    assert_eq!(
        entries(&bpffs, chain.cookie(&plain)).flags,
        None,
        "no sidecar: left alone"
    );

    let unknown = chain.pod("unknown");
    let (_, run) = chain.add("c-unknown", &unknown);
    assert_eq!(run.code(), Some(11), "{run:?}");
    assert_eq!(entries(&bpffs, chain.cookie(&unknown)).flags, None);

    // The settings follow the API server; DEL takes the pod out.
    server.put(pod("c-meshed", CNI_UID, NODE, &[STATUS, (PORTS, "6379")]));
    let changed = Entries {
        flags: Some(PodFlags::default()),
        ports: vec![6379],
        ranges: vec![],
    };
    wait_until("the changed settings", || {
        entries(&bpffs, cookie) == changed
    });
    let run = chain.del("c-meshed", meshed.path().to_str().unwrap(), &prev);
    assert_eq!(run.exit, 0, "{run:?}");
    let none = Entries {
        flags: None,
        ports: vec![],
        ranges: vec![],
    };
    assert_eq!(entries(&bpffs, cookie), none);
}
