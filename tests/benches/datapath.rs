//! The data path benchmark: connection rate, request/response latency (p50,
//! p99) and bulk throughput between test namespaces, for
//!
//! - `direct`: the app dials the service, nothing captures it;
//! - `limit`: no capture at all, but the same sidecar: the app dials the
//!   sidecar on loopback and the sidecar knows the destination by
//!   configuration (`--upstream`, no `SO_ORIGINAL_DST`). The floor any
//!   capture mechanism can reach;
//! - `iptables`: Istio's default capture, the `nat OUTPUT` rules of
//!   istio-iptables (outbound part) REDIRECT to the sidecar on 15001, which asks
//!   `SO_ORIGINAL_DST` (answered by conntrack) and dials onward;
//! - `bpf`: our default programs (connect4 redirect, getsockopt answer,
//!   bookkeeping sock_ops) take the app to the same sidecar;
//! - `inbound_iptables` / `inbound_bpf` (selector `inbound`): a client in the
//!   svc namespace (another node, over a veth) dials pod A's app on its pod
//!   address; Istio's inbound rules (`PREROUTING ... REDIRECT --to-ports
//!   15006`, conntrack answers `SO_ORIGINAL_DST`) or our per-pod `sk_lookup`
//!   program hand it to the sidecar on 15006, which dials the app from
//!   127.0.0.6 as Istio's does;
//! - `leg_bpf` / `leg_sockmap`: where the opt-in sockmap mode applies, the
//!   sidecar-to-sidecar leg (app A, sidecar A, sidecar B, app B on pod B's
//!   inbound port 15006), with sockmap off and on in one mesh (the settings flag
//!   is flipped between measurements; every measurement opens new connections).
//!
//! Each capture path lives where it would in production: `iptables` in its own
//! mesh whose pod A has the rules (so conntrack runs there) and no eBPF
//! attached; `direct` and `bpf` in a mesh whose pod A has no netfilter rules
//! (no conntrack); the sidecar is the same program (`meshtest sidecar`, a tokio
//! current-thread relay, uid 1337) in both, so the ratios isolate the capture.
//! Latency is measured inside the client process (an `Instant` per round
//! trip); every client is a fresh process, the servers and sidecars stay up.
//! Pod namespaces get the full port range and `tcp_tw_reuse=1`, so that tens
//! of thousands of closed connections do not turn `connect()` into a port hunt.
//!
//! Rounds interleave the paths (their order rotates every round) so machine
//! noise hits them alike; a warm-up round is discarded; figures are medians
//! over rounds. Pinned mode (the default) puts this process, and so every
//! process it starts, on one CPU: unpinned loopback round trips on these
//! machines vary ~3x with where the scheduler puts the three processes.
//!
//! CPU cost: every process of the benchmark lives under one cgroup; each
//! client reads that cgroup's `cpu.stat` `usage_usec` (and the run time of
//! the pinned CPU's `ksoftirqd`) right before and after its timed part, so
//! the figures are the CPU time all processes of the path spent per
//! connection, per request and per MB, startup excluded. Unlike wall-clock
//! figures they do not depend on who else the hypervisor runs (steal time
//! is not charged with `CONFIG_PARAVIRT_TIME_ACCOUNTING`). The ratios between
//! paths are paired by round; their verdicts use the median and its
//! distribution-free 95 % interval, and say "undecided" when it straddles
//! the target.
//!
//! Afterwards, with run-time statistics switched on through `BPF_ENABLE_STATS`
//! (an fd: off again when it closes; the sysctl is never touched), it reports
//! what our programs cost per connection and per request.
//!
//! Run with `./x bench-datapath` (root; installs iptables). Environment:
//! `NETNS_BENCH_ROUNDS` (21), `NETNS_BENCH_PIN` (1|0), `NETNS_BENCH_CPU` (the
//! CPU when pinned; default the last one), `NETNS_BENCH_RR_COUNT` (5000 round
//! trips), `NETNS_BENCH_RR_SIZE` (64 bytes), `NETNS_BENCH_CONNS` (1000),
//! `NETNS_BENCH_BULK_MIB` (1024: shorter transfers vary ~9 % in CPU per MB between rounds, 1 GiB ~2 %), `NETNS_BENCH_PATHS` (comma list of `direct`, `limit`,
//! `iptables`, `bpf`, `inbound`, `sockmap`; default all), `NETNS_BENCH_KINDS` (`rr`,
//! `conn`, `bulk`), `NETNS_BENCH_COST` (1|0), `NETNS_BENCH_VERBOSE` (set: every
//! client's result line on stderr).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use netns_datapath::cgroup::{ChildCgroup, cgroup2_mount};
use netns_ebpf::{MeshSettings, counter};
use netns_tests::bench::{env_flag, env_list, env_u32, median, ratio_range};
use netns_tests::mesh::{Mesh, POD_A, POD_B, Place, Proc, SVC, field};

const MESHTEST: &str = env!("CARGO_BIN_EXE_meshtest");
const SIDECAR_UID: u32 = MeshSettings::istio().sidecar_uid;
const ECHO_PORT: u16 = 8080;
const DRAIN_PORT: u16 = 9000;
/// The limit's sidecars, each configured with the service port it stands for.
const LIMIT_ECHO_PORT: u16 = 15_011;
const LIMIT_DRAIN_PORT: u16 = 15_012;
/// The sidecar's own ports, never captured inbound (Istio's list).
const ISTIO_SIDECAR_PORTS: [u16; 4] = [15008, 15090, 15021, 15020];

// The figures, per path: medians over rounds.
const RR_P50: &str = "rr_p50_us";
const RR_P99: &str = "rr_p99_us";
const CONN_RATE: &str = "conn_rate_per_s";
const CONN_P50: &str = "conn_p50_us";
const BULK: &str = "bulk_mb_per_s";
// CPU time per unit of work, of every process of the path together (see `cpu_accounting`).
const CPU_CONN: &str = "cpu_us_per_conn";
const CPU_REQUEST: &str = "cpu_us_per_request";
const CPU_MB: &str = "cpu_us_per_mb";
/// ksoftirqd's run time as a share of the cgroup's, in percent.
const KSOFTIRQD_SHARE: &str = "ksoftirqd_share_pct";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Path {
    Direct,
    Limit,
    Iptables,
    Bpf,
    InboundIptables,
    InboundBpf,
    LegBpf,
    LegSockmap,
}

impl Path {
    const ALL: [Path; 8] = [
        Path::Direct,
        Path::Limit,
        Path::Iptables,
        Path::Bpf,
        Path::InboundIptables,
        Path::InboundBpf,
        Path::LegBpf,
        Path::LegSockmap,
    ];

    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Limit => "limit",
            Path::Iptables => "iptables",
            Path::Bpf => "bpf",
            Path::InboundIptables => "inbound_iptables",
            Path::InboundBpf => "inbound_bpf",
            Path::LegBpf => "leg_bpf",
            Path::LegSockmap => "leg_sockmap",
        }
    }

    /// The name in `NETNS_BENCH_PATHS`.
    fn selector(self) -> &'static str {
        match self {
            Path::LegBpf | Path::LegSockmap => "sockmap",
            Path::InboundIptables | Path::InboundBpf => "inbound",
            other => other.name(),
        }
    }

    fn is_leg(self) -> bool {
        matches!(self, Path::LegBpf | Path::LegSockmap)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rr,
    Conn,
    Bulk,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Rr, Kind::Conn, Kind::Bulk];

    fn name(self) -> &'static str {
        match self {
            Kind::Rr => "rr",
            Kind::Conn => "conn",
            Kind::Bulk => "bulk",
        }
    }
}

#[derive(Debug)]
struct Config {
    rounds: u32,
    cpu: Option<usize>,
    rr_count: u32,
    rr_size: u32,
    conns: u32,
    bulk_mib: u32,
    paths: Vec<Path>,
    kinds: Vec<Kind>,
    cost: bool,
}

/// The members of `all` named in the comma-separated variable `var` (all of
/// them when it is unset), in `all`'s order; an unknown name is an error.
fn select<T: Copy>(var: &str, all: &[T], name: impl Fn(&T) -> &str) -> Vec<T> {
    let Some(names) = env_list(var) else {
        return all.to_vec();
    };
    for n in &names {
        let known: Vec<&str> = all.iter().map(&name).collect();
        assert!(
            known.contains(&n.as_str()),
            "{var}: unknown name {n:?} (one of {known:?})"
        );
    }
    all.iter()
        .copied()
        .filter(|x| names.iter().any(|n| n == name(x)))
        .collect()
}

impl Config {
    fn from_env() -> Config {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let cpu = env_flag("NETNS_BENCH_PIN", true).then(|| {
            let cpu = env_u32("NETNS_BENCH_CPU", u32::try_from(cpus - 1).unwrap_or(0));
            usize::try_from(cpu).expect("a CPU number")
        });
        let paths = select("NETNS_BENCH_PATHS", &Path::ALL, |p| p.selector());
        let kinds = select("NETNS_BENCH_KINDS", &Kind::ALL, |k| k.name());
        Config {
            rounds: env_u32("NETNS_BENCH_ROUNDS", 21).max(1),
            cpu,
            rr_count: env_u32("NETNS_BENCH_RR_COUNT", 5_000),
            rr_size: env_u32("NETNS_BENCH_RR_SIZE", 64),
            conns: env_u32("NETNS_BENCH_CONNS", 1_000),
            bulk_mib: env_u32("NETNS_BENCH_BULK_MIB", 1024),
            paths,
            kinds,
            cost: env_flag("NETNS_BENCH_COST", true),
        }
    }

    fn wants(&self, path: Path) -> bool {
        self.paths.contains(&path)
    }
}

/// Puts this process (and so everything it starts later) on `cpu`.
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .unwrap_or_else(|e| panic!("CPU {cpu} out of range: {e}"));
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .unwrap_or_else(|e| panic!("pin to CPU {cpu}: {e}"));
}

/// The meshes and their long-running processes (kept so their output pipes
/// stay open).
struct Setup {
    /// `direct` and `bpf`: default programs, no netfilter rules in pod A.
    main: Mesh,
    /// `iptables`: the rules in pod A, no eBPF attached.
    ipt: Mesh,
    /// The sidecar-to-sidecar leg, attached with the sockmap mode.
    leg: Option<Mesh>,
    /// Servers and sidecars, kept to read their error lines at the end.
    procs: Vec<Proc>,
    /// The cgroup holding every process of the benchmark (see [`Cpu`]).
    cpu_cgroup: PathBuf,
}

/// Runs `command...` inside `place`'s network namespace (meshtest `exec`).
fn exec_in(mesh: &Mesh, place: Place, command: &[&str]) {
    let mut role = vec!["exec"];
    role.extend_from_slice(command);
    mesh.run(place, None, &role);
}

/// The connection-rate runs open tens of thousands of connections to one
/// destination, and each leaves a `TIME_WAIT`: without help, `connect()` soon
/// scans the whole port range for a free port (rates collapse ~20x after
/// ~30,000 connections). All pod namespaces get the full port range and
/// `tcp_tw_reuse=1` (reuse a `TIME_WAIT` older than 1 s for a new outgoing
/// connection); per namespace, and only in the ones the benchmark made.
fn tune_ports(mesh: &Mesh, place: Place) {
    exec_in(
        mesh,
        place,
        &[
            "sh",
            "-c",
            "echo '1024 65535' > /proc/sys/net/ipv4/ip_local_port_range \
             && echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse",
        ],
    );
}

/// Istio's outbound capture as istio-iptables writes it by default (the
/// inbound `ISTIO_IN_REDIRECT` rule is left out: nothing here is inbound).
fn install_istio_rules(mesh: &Mesh) {
    let uid = SIDECAR_UID;
    let outbound = MeshSettings::istio().outbound_port;
    let rules = [
        "-N ISTIO_REDIRECT".to_owned(),
        "-N ISTIO_OUTPUT".to_owned(),
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT".to_owned(),
        "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN".to_owned(),
        format!("-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner {uid} -j RETURN"),
        format!("-A ISTIO_OUTPUT -m owner --uid-owner {uid} -j RETURN"),
        format!("-A ISTIO_OUTPUT -m owner --gid-owner {uid} -j RETURN"),
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN".to_owned(),
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT".to_owned(),
        format!("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {outbound}"),
    ];
    for rule in &rules {
        let mut command = vec!["iptables", "-w", "-t", "nat"];
        command.extend(rule.split_whitespace());
        exec_in(mesh, Place::PodAUncaptured, &command);
    }
}

/// Istio's inbound capture as istio-iptables writes it by default: every
/// TCP connection arriving at the pod, except to the sidecar's own ports,
/// is redirected to 15006. (Locally made connections, such as the sidecar's
/// from 127.0.0.6 to the app, never meet `nat PREROUTING`.)
fn install_istio_inbound_rules(mesh: &Mesh) {
    let inbound = MeshSettings::istio().inbound_port;
    let mut rules = vec![
        "-N ISTIO_INBOUND".to_owned(),
        "-N ISTIO_IN_REDIRECT".to_owned(),
        "-A PREROUTING -p tcp -j ISTIO_INBOUND".to_owned(),
    ];
    for port in ISTIO_SIDECAR_PORTS {
        rules.push(format!("-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN"));
    }
    rules.push("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".to_owned());
    rules.push(format!(
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {inbound}"
    ));
    for rule in &rules {
        let mut command = vec!["iptables", "-w", "-t", "nat"];
        command.extend(rule.split_whitespace());
        exec_in(mesh, Place::PodAUncaptured, &command);
    }
}

fn start_servers(mesh: &mut Mesh, place: Place, addr: &str, procs: &mut Vec<Proc>) {
    let echo = format!("{addr}:{ECHO_PORT}");
    let drain = format!("{addr}:{DRAIN_PORT}");
    procs.push(mesh.start(place, None, &["echo", "--listen", &echo]));
    procs.push(mesh.start(place, None, &["drain", "--listen", &drain]));
}

fn start_sidecar(mesh: &mut Mesh, place: Place, listen: &str) -> Proc {
    mesh.start(
        place,
        Some(SIDECAR_UID),
        &["sidecar", "--listen", listen, "--quiet"],
    )
}

/// The sidecar's report of the first connection it accepted.
fn first_accepted(sidecar: &mut Proc, what: &str) -> String {
    sidecar
        .wait_for("accepted", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("{what}: the sidecar saw no connection: {:?}", sidecar.seen))
}

fn check_orig(line: &str, local: &str, orig: &str, what: &str) {
    assert_eq!(field(line, "local"), Some(local), "{what}: {line}");
    assert_eq!(field(line, "orig"), Some(orig), "{what}: {line}");
}

impl Setup {
    fn new(cfg: &Config, cpu_cgroup: &FsPath) -> Setup {
        let mut procs = Vec::new();
        let svc_echo = format!("{SVC}:{ECHO_PORT}");
        let outbound = format!("127.0.0.1:{}", MeshSettings::istio().outbound_port);

        let mut main = Mesh::new_under(MESHTEST, MeshSettings::istio(), cpu_cgroup);
        tune_ports(&main, Place::PodAUncaptured);
        start_servers(&mut main, Place::Svc, SVC, &mut procs);
        let mut sidecar = start_sidecar(&mut main, Place::PodA, &outbound);

        if cfg.wants(Path::Limit) {
            for (port, upstream) in [(LIMIT_ECHO_PORT, ECHO_PORT), (LIMIT_DRAIN_PORT, DRAIN_PORT)] {
                let listen = format!("127.0.0.1:{port}");
                let upstream = format!("{SVC}:{upstream}");
                procs.push(main.start(
                    Place::PodAUncaptured,
                    Some(SIDECAR_UID),
                    &[
                        "sidecar",
                        "--listen",
                        &listen,
                        "--quiet",
                        "--upstream",
                        &upstream,
                    ],
                ));
            }
        }

        let mut ipt = Mesh::new_under(MESHTEST, MeshSettings::istio(), cpu_cgroup);
        ipt.datapath
            .take()
            .expect("attached")
            .detach()
            .expect("detach the iptables mesh's data path");
        tune_ports(&ipt, Place::PodAUncaptured);
        install_istio_rules(&ipt);
        start_servers(&mut ipt, Place::Svc, SVC, &mut procs);
        let mut ipt_sidecar = start_sidecar(&mut ipt, Place::PodAUncaptured, &outbound);

        let mut setup = Setup {
            main,
            ipt,
            leg: None,
            procs: Vec::new(),
            cpu_cgroup: cpu_cgroup.to_owned(),
        };
        // Every path answers, and the capture paths reach the sidecar with the
        // original destination.
        for path in [Path::Direct, Path::Limit, Path::Bpf, Path::Iptables] {
            if cfg.wants(path) {
                setup.quick_check(path);
            }
        }
        if cfg.wants(Path::Bpf) {
            let line = first_accepted(&mut sidecar, "bpf");
            check_orig(&line, &outbound, &svc_echo, "bpf");
            println!("check_bpf: sidecar {line}");
        }
        if cfg.wants(Path::Iptables) {
            let line = first_accepted(&mut ipt_sidecar, "iptables");
            check_orig(&line, &outbound, &svc_echo, "iptables");
            let peer = field(&line, "peer").unwrap_or_default();
            assert!(
                peer.starts_with(&format!("{POD_A}:")),
                "REDIRECT keeps the app's source address: {line}"
            );
            println!("check_iptables: sidecar {line} (SO_ORIGINAL_DST answered by conntrack)");
        }
        procs.push(sidecar);
        procs.push(ipt_sidecar);
        if cfg.wants(Path::InboundBpf) {
            setup.start_inbound(&mut procs);
        }

        if cfg.wants(Path::LegSockmap) {
            let mut settings = MeshSettings::istio();
            settings.flags = MeshSettings::FLAG_SOCKMAP;
            let mut leg = Mesh::new_under(MESHTEST, settings, cpu_cgroup);
            tune_ports(&leg, Place::PodAUncaptured);
            tune_ports(&leg, Place::PodB);
            start_servers(&mut leg, Place::PodB, POD_B, &mut procs);
            let mut sidecar_a = start_sidecar(&mut leg, Place::PodA, &outbound);
            let inbound = format!("0.0.0.0:{}", MeshSettings::istio().inbound_port);
            let mut sidecar_b = start_sidecar(&mut leg, Place::PodB, &inbound);
            setup.leg = Some(leg);
            setup.quick_check(Path::LegSockmap);
            let pod_b_echo = format!("{POD_B}:{ECHO_PORT}");
            let line = first_accepted(&mut sidecar_a, "leg, sidecar A");
            check_orig(&line, &outbound, &pod_b_echo, "leg, sidecar A");
            println!("check_leg: sidecar A {line}");
            let line = first_accepted(&mut sidecar_b, "leg, sidecar B");
            let inbound_local = format!("{POD_B}:{}", MeshSettings::istio().inbound_port);
            check_orig(&line, &inbound_local, &pod_b_echo, "leg, sidecar B");
            println!("check_leg: sidecar B {line}");
            procs.push(sidecar_a);
            procs.push(sidecar_b);
        }
        setup.procs = procs;
        setup
    }

    /// The inbound paths: pod A's app on its pod address in both meshes,
    /// Istio's inbound rules in the iptables mesh, our `sk_lookup` program on
    /// pod A in the main one, and a sidecar on 15006 in each that dials the
    /// app from 127.0.0.6.
    fn start_inbound(&mut self, procs: &mut Vec<Proc>) {
        let inbound = format!("0.0.0.0:{}", MeshSettings::istio().inbound_port);
        let sidecar_role = [
            "sidecar",
            "--listen",
            &inbound,
            "--quiet",
            "--bind",
            "127.0.0.6",
        ];
        let app_echo = format!("{POD_A}:{ECHO_PORT}");

        let main = &mut self.main;
        tune_ports(main, Place::Svc);
        let Mesh {
            datapath,
            pod_a,
            cookie_a,
            ..
        } = main;
        datapath
            .as_mut()
            .expect("attached")
            .capture_inbound(pod_a, *cookie_a, &ISTIO_SIDECAR_PORTS)
            .expect("attach inbound capture to pod A");
        start_servers(main, Place::PodA, POD_A, procs);
        let mut sidecar = main.start(Place::PodA, Some(SIDECAR_UID), &sidecar_role);

        let ipt = &mut self.ipt;
        tune_ports(ipt, Place::Svc);
        install_istio_inbound_rules(ipt);
        start_servers(ipt, Place::PodAUncaptured, POD_A, procs);
        let mut ipt_sidecar = ipt.start(Place::PodAUncaptured, Some(SIDECAR_UID), &sidecar_role);

        self.quick_check(Path::InboundBpf);
        self.quick_check(Path::InboundIptables);
        let line = first_accepted(&mut sidecar, "inbound_bpf");
        check_orig(&line, &app_echo, &app_echo, "inbound_bpf");
        println!("check_inbound_bpf: sidecar {line} (getsockname is the original destination)");
        let line = first_accepted(&mut ipt_sidecar, "inbound_iptables");
        check_orig(
            &line,
            &format!("{POD_A}:{}", MeshSettings::istio().inbound_port),
            &app_echo,
            "inbound_iptables",
        );
        println!("check_inbound_iptables: sidecar {line} (SO_ORIGINAL_DST answered by conntrack)");
        procs.push(sidecar);
        procs.push(ipt_sidecar);
    }

    /// Error lines the servers and sidecars printed (connections they failed).
    fn errors(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for proc in &mut self.procs {
            errors.extend(
                proc.drain()
                    .iter()
                    .filter(|l| l.starts_with("error"))
                    .cloned(),
            );
        }
        errors
    }

    /// The mesh, place and address of the client of `path`.
    fn client(&mut self, path: Path) -> (&mut Mesh, Place, &'static str) {
        match path {
            Path::Direct => (&mut self.main, Place::PodAUncaptured, SVC),
            Path::Limit => (&mut self.main, Place::PodAUncaptured, "127.0.0.1"),
            Path::Bpf => (&mut self.main, Place::PodA, SVC),
            Path::Iptables => (&mut self.ipt, Place::PodAUncaptured, SVC),
            Path::InboundBpf => (&mut self.main, Place::Svc, POD_A),
            Path::InboundIptables => (&mut self.ipt, Place::Svc, POD_A),
            Path::LegBpf | Path::LegSockmap => {
                (self.leg.as_mut().expect("leg mesh"), Place::PodA, POD_B)
            }
        }
    }

    fn quick_check(&mut self, path: Path) {
        let done = self.run_client(path, &["rr", "--count", "10", "--warmup", "0"], ECHO_PORT);
        assert_eq!(field(&done, "ok"), Some("true"), "{}: {done}", path.name());
    }

    /// Runs one client role on `path` and returns its `done` line. Checks,
    /// from the data path's counters, that the capture happened as it should.
    fn run_client(&mut self, path: Path, role: &[&str], port: u16) -> String {
        let meter = self.cpu_cgroup.display().to_string();
        let (mesh, place, addr) = self.client(path);
        if path.is_leg() {
            let mut settings = MeshSettings::istio();
            if path == Path::LegSockmap {
                settings.flags = MeshSettings::FLAG_SOCKMAP;
            }
            mesh.datapath()
                .set_settings(settings)
                .expect("set settings");
        }
        let before = mesh
            .datapath
            .as_ref()
            .map(|d| d.counters().expect("counters"));
        // The limit's sidecars forward to the service port they stand for.
        let port = match (path, port) {
            (Path::Limit, ECHO_PORT) => LIMIT_ECHO_PORT,
            (Path::Limit, DRAIN_PORT) => LIMIT_DRAIN_PORT,
            (_, port) => port,
        };
        let target = format!("{addr}:{port}");
        let mut args = vec!["--cpu-meter", &meter, role[0], "--connect", &target];
        args.extend_from_slice(&role[1..]);
        let out = mesh.run(place, None, &args);
        let done = out
            .iter()
            .find(|l| l.starts_with("done"))
            .unwrap_or_else(|| panic!("{}: no result: {out:?}", path.name()))
            .clone();
        assert_eq!(field(&done, "ok"), Some("true"), "{}: {done}", path.name());
        if std::env::var_os("NETNS_BENCH_VERBOSE").is_some() {
            eprintln!("{} {}: {done}", path.name(), role[0]);
        }
        if let (Some(before), Some(dp)) = (before, mesh.datapath.as_ref()) {
            let after = dp.counters().expect("counters");
            let delta = |c: u32| after[c as usize] - before[c as usize];
            let redirected = delta(counter::REDIRECTED_OUTBOUND);
            let sockmap = delta(counter::SOCKMAP_ADDED);
            let inbound = delta(counter::REDIRECTED_INBOUND);
            let captured_inbound = delta(counter::INBOUND_CAPTURED);
            if path.is_leg() {
                assert!(inbound > 0, "{}: sidecar A not sent to 15006", path.name());
            }
            match path {
                Path::Direct | Path::Limit => {
                    assert_eq!(redirected, 0, "{} was captured", path.name());
                    assert_eq!(captured_inbound, 0, "{} was captured", path.name());
                }
                Path::Iptables | Path::InboundIptables => {
                    unreachable!("no data path in the iptables mesh")
                }
                Path::InboundBpf => {
                    assert!(captured_inbound > 0, "inbound_bpf: not captured");
                    assert_eq!(redirected, 0, "inbound_bpf: redirected outbound");
                }
                Path::Bpf | Path::LegBpf => {
                    assert!(redirected > 0, "{}: not redirected", path.name());
                    assert_eq!(sockmap, 0, "{}: sockets joined the sockhash", path.name());
                }
                Path::LegSockmap => {
                    assert!(redirected > 0, "leg_sockmap: not redirected");
                    assert!(sockmap > 0, "leg_sockmap: no socket joined the sockhash");
                }
            }
        }
        done
    }
}

fn number(line: &str, key: &str) -> f64 {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

/// Per path, per figure, one value per round.
#[derive(Default)]
struct Figures(BTreeMap<(Path, &'static str), Vec<f64>>);

impl Figures {
    fn push(&mut self, path: Path, figure: &'static str, value: f64) {
        self.0.entry((path, figure)).or_default().push(value);
    }

    fn last(&self, path: Path, figure: &'static str) -> Option<f64> {
        self.0.get(&(path, figure))?.last().copied()
    }

    /// Every round's value.
    fn all(&self, path: Path, figure: &'static str) -> Option<&[f64]> {
        self.0.get(&(path, figure)).map(Vec::as_slice)
    }

    fn median(&self, path: Path, figure: &'static str) -> Option<f64> {
        self.0.get(&(path, figure)).map(|v| median(v.clone()))
    }

    /// min and max over rounds of `a / b`, paired by round.
    fn round_ratio_range(&self, a: Path, b: Path, figure: &'static str) -> Option<(f64, f64)> {
        let (xs, ys) = (self.0.get(&(a, figure))?, self.0.get(&(b, figure))?);
        Some(ratio_range(xs, ys))
    }
}

fn measure(setup: &mut Setup, cfg: &Config, path: Path, kind: Kind, figures: &mut Figures) {
    let (count, size, conns, mib) = (
        cfg.rr_count.to_string(),
        cfg.rr_size.to_string(),
        cfg.conns.to_string(),
        cfg.bulk_mib.to_string(),
    );
    match kind {
        Kind::Rr => {
            let done =
                setup.run_client(path, &["rr", "--count", &count, "--size", &size], ECHO_PORT);
            figures.push(path, RR_P50, number(&done, "p50_us"));
            figures.push(path, RR_P99, number(&done, "p99_us"));
            push_cpu(figures, path, &done, CPU_REQUEST, f64::from(cfg.rr_count));
        }
        Kind::Conn => {
            let done = setup.run_client(path, &["connrate", "--count", &conns], ECHO_PORT);
            figures.push(path, CONN_RATE, number(&done, "conns_per_s"));
            figures.push(path, CONN_P50, number(&done, "p50_us"));
            push_cpu(figures, path, &done, CPU_CONN, f64::from(cfg.conns));
        }
        Kind::Bulk => {
            let done = setup.run_client(path, &["bulk", "--mib", &mib], DRAIN_PORT);
            figures.push(path, BULK, number(&done, "mb_per_s"));
            let mb = f64::from(cfg.bulk_mib) * 1.048_576;
            push_cpu(figures, path, &done, CPU_MB, mb);
        }
    }
}

/// The CPU time a client's `done` line reports, per `units` of work.
fn push_cpu(figures: &mut Figures, path: Path, done: &str, figure: &'static str, units: f64) {
    let (cgroup, softirqd) = (number(done, "cpu_us"), number(done, "ksoftirqd_us"));
    let cpu = cgroup + softirqd;
    figures.push(path, figure, cpu / units);
    figures.push(path, KSOFTIRQD_SHARE, 100.0 * softirqd / cpu.max(1.0));
}

fn run_rounds(setup: &mut Setup, cfg: &Config) -> Figures {
    let mut figures = Figures::default();
    // Round 0 warms up (page cache, sidecars, TCP metrics) and is discarded.
    for round in 0..=cfg.rounds {
        let mut order = cfg.paths.clone();
        let len = order.len();
        order.rotate_left(round as usize % len);
        let mut scratch = Figures::default();
        let sink = if round == 0 {
            &mut scratch
        } else {
            &mut figures
        };
        for &kind in &cfg.kinds {
            for &path in &order {
                measure(setup, cfg, path, kind, sink);
            }
        }
        let mut line = if round == 0 {
            "warm-up round:".to_owned()
        } else {
            format!("round {round}/{}:", cfg.rounds)
        };
        for &path in &cfg.paths {
            let _ = write!(line, " {}", path.name());
            for figure in [RR_P50, CONN_RATE, BULK] {
                if let Some(v) = sink.last(path, figure) {
                    let _ = write!(line, " {v:.1}");
                }
            }
        }
        eprintln!("{line} (rr_p50_us conn_per_s bulk_mb_per_s)");
    }
    figures
}

fn print_figures(cfg: &Config, figures: &Figures) {
    for &path in &cfg.paths {
        for figure in [RR_P50, RR_P99, CONN_RATE, CONN_P50, BULK] {
            if let Some(v) = figures.median(path, figure) {
                println!("{}_{figure}: {v:.2}", path.name());
            }
        }
    }
}

/// A ratio line: `name`, numerator path, denominator path, figure.
type Ratio = (&'static str, Path, Path, &'static str);

/// Informational ratios; `a_vs_b` is a over b. Latency: lower is better;
/// rates: higher is better.
const RATIOS: [Ratio; 11] = [
    ("bpf_vs_iptables_rr_p99", Path::Bpf, Path::Iptables, RR_P99),
    ("bpf_vs_direct_rr_p50", Path::Bpf, Path::Direct, RR_P50),
    (
        "bpf_vs_direct_conn_rate",
        Path::Bpf,
        Path::Direct,
        CONN_RATE,
    ),
    ("bpf_vs_direct_bulk", Path::Bpf, Path::Direct, BULK),
    (
        "iptables_vs_direct_rr_p50",
        Path::Iptables,
        Path::Direct,
        RR_P50,
    ),
    (
        "iptables_vs_direct_conn_rate",
        Path::Iptables,
        Path::Direct,
        CONN_RATE,
    ),
    (
        "iptables_vs_direct_bulk",
        Path::Iptables,
        Path::Direct,
        BULK,
    ),
    (
        "sockmap_vs_bpf_leg_rr_p50",
        Path::LegSockmap,
        Path::LegBpf,
        RR_P50,
    ),
    (
        "sockmap_vs_bpf_leg_rr_p99",
        Path::LegSockmap,
        Path::LegBpf,
        RR_P99,
    ),
    (
        "sockmap_vs_bpf_leg_conn_rate",
        Path::LegSockmap,
        Path::LegBpf,
        CONN_RATE,
    ),
    (
        "sockmap_vs_bpf_leg_bulk",
        Path::LegSockmap,
        Path::LegBpf,
        BULK,
    ),
];

/// The three headline ratios, printed last.
const HEADLINE: [Ratio; 3] = [
    ("bpf_vs_iptables_rr_p50", Path::Bpf, Path::Iptables, RR_P50),
    (
        "bpf_vs_iptables_conn_rate",
        Path::Bpf,
        Path::Iptables,
        CONN_RATE,
    ),
    ("bpf_vs_iptables_bulk", Path::Bpf, Path::Iptables, BULK),
];

/// Capture against no capture at all (the sidecar-only limit).
const LIMIT: [Ratio; 3] = [
    ("bpf_vs_limit_rr_p50", Path::Bpf, Path::Limit, RR_P50),
    ("bpf_vs_limit_conn_rate", Path::Bpf, Path::Limit, CONN_RATE),
    ("bpf_vs_limit_bulk", Path::Bpf, Path::Limit, BULK),
];

/// Inbound capture against Istio's inbound REDIRECT.
const INBOUND: [Ratio; 3] = [
    (
        "bpf_vs_iptables_inbound_rr_p50",
        Path::InboundBpf,
        Path::InboundIptables,
        RR_P50,
    ),
    (
        "bpf_vs_iptables_inbound_conn_rate",
        Path::InboundBpf,
        Path::InboundIptables,
        CONN_RATE,
    ),
    (
        "bpf_vs_iptables_inbound_bulk",
        Path::InboundBpf,
        Path::InboundIptables,
        BULK,
    ),
];

fn print_ratios(figures: &Figures) {
    let ratio =
        |(_, a, b, figure): &Ratio| Some(figures.median(*a, figure)? / figures.median(*b, figure)?);
    for r in &RATIOS {
        if let Some(v) = ratio(r) {
            println!("{}: {v:.2}", r.0);
        }
    }
    // How far single rounds stray (paired by round: drift cancels).
    for r @ (name, a, b, figure) in HEADLINE
        .iter()
        .chain(&LIMIT)
        .chain(&INBOUND)
        .chain(&RATIOS[7..])
    {
        if ratio(r).is_some() {
            let (lo, hi) = figures
                .round_ratio_range(*a, *b, figure)
                .expect("both paths");
            println!("{name}_per_round: {lo:.2}..{hi:.2}");
        }
    }
    for r in HEADLINE.iter().chain(&LIMIT).chain(&INBOUND) {
        if let Some(v) = ratio(r) {
            println!("{}: {v:.3}", r.0);
        }
    }
}

/// Run time and run count of each of `programs` (name, kernel id).
fn program_stats(programs: &[(&'static str, u32)]) -> BTreeMap<&'static str, (u64, u64)> {
    let mut stats = BTreeMap::new();
    for info in aya::programs::loaded_programs().filter_map(Result::ok) {
        if let Some((name, _)) = programs.iter().find(|(_, id)| *id == info.id()) {
            let ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            stats.insert(*name, (ns, info.run_count()));
        }
    }
    stats
}

/// Runs `role` on `path` and returns its `done` line and what each of our
/// programs spent meanwhile (run time in ns, runs), from the kernel's
/// per-program statistics.
fn run_with_stats(
    setup: &mut Setup,
    path: Path,
    role: &[&str],
    port: u16,
) -> (String, BTreeMap<&'static str, (u64, u64)>) {
    let datapath = setup.client(path).0.datapath();
    let mut programs: Vec<(&'static str, u32)> =
        datapath.programs().iter().map(|p| (p.name, p.id)).collect();
    if let Some(id) = datapath.inbound_program_id() {
        programs.push((netns_ebpf::names::prog::INBOUND, id));
    }
    let before = program_stats(&programs);
    let done = setup.run_client(path, role, port);
    let after = program_stats(&programs);
    let spent = after
        .into_iter()
        .map(|(name, (ns, runs))| {
            let (ns0, runs0) = before.get(name).copied().unwrap_or_default();
            (name, (ns - ns0, runs - runs0))
        })
        .collect();
    (done, spent)
}

/// What our programs cost while `path` runs `role` (`units` connections or
/// requests), from the kernel's per-program run-time statistics.
fn program_cost(setup: &mut Setup, path: Path, role: &[&str], port: u16, units: u32, unit: &str) {
    let (_, spent) = run_with_stats(setup, path, role, port);
    let units = f64::from(units);
    let mut total_ns = 0.0;
    let mut parts = Vec::new();
    for (name, (ns, runs)) in spent {
        if runs == 0 {
            continue;
        }
        // Small counts: exact in f64.
        #[allow(clippy::cast_precision_loss)]
        let (ns, runs) = (ns as f64, runs as f64);
        total_ns += ns;
        parts.push(format!("{name}={:.3}x{:.0}ns", runs / units, ns / runs));
    }
    println!(
        "{}_prog_ns_per_{unit}: {:.0} ({})",
        path.name(),
        total_ns / units,
        parts.join(" ")
    );
}

/// What the sidecar-listening check costs a connection: connect4's run time
/// per connection with the check (the default) and without it
/// (`FLAG_REDIRECT_WITHOUT_LISTENER`), interleaved over the rounds, and the
/// connection rate both ways.
fn measure_listener_check(setup: &mut Setup, cfg: &Config) {
    let conns = cfg.conns.to_string();
    let role = ["connrate", "--count", &conns, "--warmup", "0"];
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let (mut rate_with, mut rate_without) = (Vec::new(), Vec::new());
    for _ in 0..cfg.rounds {
        for (flags, ns_into, rate_into) in [
            (0, &mut with, &mut rate_with),
            (
                MeshSettings::FLAG_REDIRECT_WITHOUT_LISTENER,
                &mut without,
                &mut rate_without,
            ),
        ] {
            let mut settings = MeshSettings::istio();
            settings.flags = flags;
            setup
                .main
                .datapath()
                .set_settings(settings)
                .expect("set settings");
            let before = setup.main.datapath().counters().expect("counters");
            let (done, spent) = run_with_stats(setup, Path::Bpf, &role, ECHO_PORT);
            let after = setup.main.datapath().counters().expect("counters");
            let missed = counter::SIDECAR_NOT_LISTENING as usize;
            assert_eq!(after[missed], before[missed], "the sidecar listens");
            let (ns, runs) = spent
                .get(netns_ebpf::names::prog::CONNECT4)
                .copied()
                .unwrap_or_default();
            assert!(runs >= u64::from(cfg.conns), "connect4 ran {runs} times");
            #[allow(clippy::cast_precision_loss)]
            ns_into.push(ns as f64 / f64::from(cfg.conns));
            rate_into.push(number(&done, "conns_per_s"));
        }
    }
    setup
        .main
        .datapath()
        .set_settings(MeshSettings::istio())
        .expect("set settings");
    let (w, wo) = (median(with), median(without));
    println!("listener_check_connect4_ns_per_connection: with={w:.0} without={wo:.0}");
    println!("listener_check_cost_ns_per_connection: {:.0}", w - wo);
    let (rw, rwo) = (median(rate_with), median(rate_without));
    println!(
        "listener_check_conn_rate_ratio: {:.3} (with {rw:.0}/s, without {rwo:.0}/s)",
        rw / rwo
    );
}

/// What reporting decisions costs a connection (`netns-agent monitor`):
/// our programs' run time and the path's CPU time per connection with the
/// programs' switch off and on, interleaved over the rounds, while a reader
/// drains the ring buffer as the agent's does.
fn measure_monitor_cost(setup: &mut Setup, cfg: &Config) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let conns = cfg.conns.to_string();
    let role = ["connrate", "--count", &conns, "--warmup", "0"];
    let mut switch = setup
        .main
        .datapath()
        .decisions()
        .expect("open the decision switch");
    let pin = setup.main.map_pin(netns_ebpf::names::DECISIONS);
    let (stop, read) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let drain = {
        let (stop, read) = (Arc::clone(&stop), Arc::clone(&read));
        std::thread::spawn(move || {
            let data = aya::maps::MapData::from_pin(&pin).expect("open the pinned ring buffer");
            let mut ring =
                aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(data)).expect("a ring buffer");
            while !stop.load(Ordering::Relaxed) {
                while ring.next().is_some() {
                    read.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let (mut ns_off, mut ns_on, mut cpu_off, mut cpu_on) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cfg.rounds {
        for (on, ns_into, cpu_into) in [
            (false, &mut ns_off, &mut cpu_off),
            (true, &mut ns_on, &mut cpu_on),
        ] {
            switch.set_reporting(on).expect("switch reporting");
            let (done, spent) = run_with_stats(setup, Path::Bpf, &role, ECHO_PORT);
            let ns: u64 = spent.values().map(|(ns, _)| ns).sum();
            #[allow(clippy::cast_precision_loss)]
            ns_into.push(ns as f64 / f64::from(cfg.conns));
            cpu_into.push(
                (number(&done, "cpu_us") + number(&done, "ksoftirqd_us")) / f64::from(cfg.conns),
            );
        }
    }
    switch.set_reporting(false).expect("switch reporting off");
    stop.store(true, Ordering::Relaxed);
    drain.join().expect("the drain thread");
    let lost =
        setup.main.datapath().counters().expect("counters")[counter::DECISIONS_LOST as usize];
    let (lo, hi) = ratio_range(&ns_on, &ns_off);
    let (off, on) = (median(ns_off), median(ns_on));
    println!(
        "monitor_prog_ns_per_connection: off={off:.0} on={on:.0} (decisions read {}, lost {lost})",
        read.load(Ordering::Relaxed)
    );
    println!(
        "monitor_cost_prog_ns_per_connection: {:.0} (on/off per round {lo:.2}..{hi:.2})",
        on - off
    );
    let (lo, hi) = ratio_range(&cpu_on, &cpu_off);
    let (off, on) = (median(cpu_off), median(cpu_on));
    println!(
        "monitor_cpu_us_per_connection: off={off:.2} on={on:.2} ratio {:.3} (per round {lo:.3}..{hi:.3})",
        on / off
    );
}

fn measure_program_cost(setup: &mut Setup, cfg: &Config) {
    let stats = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => fd,
        Err(e) => {
            println!("prog_cost: unavailable (BPF_ENABLE_STATS: {e})");
            return;
        }
    };
    let warmup = "0";
    let (conns, count, size) = (
        cfg.conns.to_string(),
        cfg.rr_count.to_string(),
        cfg.rr_size.to_string(),
    );
    let conn_role = ["connrate", "--count", &conns, "--warmup", warmup];
    let rr_role = ["rr", "--count", &count, "--size", &size, "--warmup", warmup];
    for path in [Path::Bpf, Path::InboundBpf, Path::LegBpf, Path::LegSockmap] {
        if !cfg.wants(path) {
            continue;
        }
        program_cost(setup, path, &conn_role, ECHO_PORT, cfg.conns, "connection");
        // A request on an established connection: one rr connection is opened too.
        program_cost(setup, path, &rr_role, ECHO_PORT, cfg.rr_count, "request");
    }
    if cfg.wants(Path::Bpf) {
        measure_listener_check(setup, cfg);
        measure_monitor_cost(setup, cfg);
    }
    drop(stats);
}

/// What an unrelated `getsockopt` (`SO_RCVBUF`) costs a process in the
/// captured cgroup (the getsockopt program runs and passes it through)
/// against the same call outside it, interleaved over the rounds.
fn measure_unrelated_getsockopt(setup: &mut Setup, cfg: &Config) {
    let iters = "200000";
    let (mut captured, mut uncaptured) = (Vec::new(), Vec::new());
    for _ in 0..cfg.rounds {
        for (place, into) in [
            (Place::PodA, &mut captured),
            (Place::PodAUncaptured, &mut uncaptured),
        ] {
            let out = setup
                .main
                .run(place, None, &["sockopt-loop", "--iters", iters]);
            let done = out
                .iter()
                .find(|l| l.starts_with("done"))
                .expect("sockopt-loop result");
            into.push(number(done, "ns_per_call"));
        }
    }
    let (lo, hi) = ratio_range(&captured, &uncaptured);
    let (c, u) = (median(captured), median(uncaptured));
    println!("getsockopt_unrelated_captured_ns: {c:.1}");
    println!("getsockopt_unrelated_uncaptured_ns: {u:.1}");
    println!("getsockopt_unrelated_captured_vs_uncaptured: {:.2}", c / u);
    println!("getsockopt_unrelated_captured_vs_uncaptured_per_round: {lo:.2}..{hi:.2}");
}

/// The CPU-cost report: what every process of a path together spent per
/// connection, per request and per MB, and the ratios between paths.
mod cpu {
    use netns_tests::bench::{median_ci95, robust_sd};

    use super::{
        CPU_CONN, CPU_MB, CPU_REQUEST, Figures, KSOFTIRQD_SHARE, Path, median, ratio_range,
    };

    /// A ratio `a / b` of `figure`, and the most it may be (lower is better).
    struct Ratio {
        name: &'static str,
        a: Path,
        b: Path,
        figure: &'static str,
        target: Option<f64>,
    }

    const fn r(
        name: &'static str,
        a: Path,
        b: Path,
        figure: &'static str,
        target: Option<f64>,
    ) -> Ratio {
        Ratio {
            name,
            a,
            b,
            figure,
            target,
        }
    }

    /// The targets: outbound within 3 % of the sidecar-only limit per
    /// request and per MB, 5 % per connection; inbound and outbound at least
    /// 10 % cheaper than iptables per connection.
    const RATIOS: [Ratio; 9] = [
        r(
            "bpf_vs_limit_cpu_per_conn",
            Path::Bpf,
            Path::Limit,
            CPU_CONN,
            Some(1.05),
        ),
        r(
            "bpf_vs_limit_cpu_per_request",
            Path::Bpf,
            Path::Limit,
            CPU_REQUEST,
            Some(1.03),
        ),
        r(
            "bpf_vs_limit_cpu_per_mb",
            Path::Bpf,
            Path::Limit,
            CPU_MB,
            Some(1.03),
        ),
        r(
            "bpf_vs_iptables_cpu_per_conn",
            Path::Bpf,
            Path::Iptables,
            CPU_CONN,
            Some(0.90),
        ),
        r(
            "bpf_vs_iptables_cpu_per_request",
            Path::Bpf,
            Path::Iptables,
            CPU_REQUEST,
            None,
        ),
        r(
            "bpf_vs_iptables_cpu_per_mb",
            Path::Bpf,
            Path::Iptables,
            CPU_MB,
            None,
        ),
        r(
            "bpf_vs_iptables_inbound_cpu_per_conn",
            Path::InboundBpf,
            Path::InboundIptables,
            CPU_CONN,
            Some(0.90),
        ),
        r(
            "bpf_vs_iptables_inbound_cpu_per_request",
            Path::InboundBpf,
            Path::InboundIptables,
            CPU_REQUEST,
            None,
        ),
        r(
            "bpf_vs_iptables_inbound_cpu_per_mb",
            Path::InboundBpf,
            Path::InboundIptables,
            CPU_MB,
            None,
        ),
    ];

    /// Half the smallest difference the report should tell apart (3 %).
    const RESOLUTION: f64 = 0.015;

    /// What the kernel charges to a cgroup, from its build configuration.
    pub(super) fn accounting() -> String {
        let config = std::process::Command::new("sh")
            .args([
                "-c",
                "zcat /proc/config.gz 2>/dev/null || cat /boot/config-$(uname -r) 2>/dev/null",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let set = |name: &str| config.lines().any(|l| l == format!("{name}=y"));
        if config.is_empty() {
            return "unknown (no kernel config to read); cgroup usage_usec plus ksoftirqd".into();
        }
        let irq = if set("CONFIG_IRQ_TIME_ACCOUNTING") {
            "softirq work done on a task's way out of a system call is NOT in its cgroup's \
             usage (CONFIG_IRQ_TIME_ACCOUNTING=y): loopback receive work is missing below"
        } else {
            "softirq work done on a task's way out of a system call (a loopback packet's \
             receive path) is charged to that task's cgroup (CONFIG_IRQ_TIME_ACCOUNTING off)"
        };
        let steal = if set("CONFIG_PARAVIRT_TIME_ACCOUNTING") {
            "time the hypervisor stole is not charged (CONFIG_PARAVIRT_TIME_ACCOUNTING=y)"
        } else {
            "time the hypervisor stole IS charged (no CONFIG_PARAVIRT_TIME_ACCOUNTING)"
        };
        format!("cgroup usage_usec plus ksoftirqd; {irq}; {steal}")
    }

    /// The per-round ratios of `r`, paired by round.
    fn per_round(figures: &Figures, r: &Ratio) -> Option<Vec<f64>> {
        let (xs, ys) = (figures.all(r.a, r.figure)?, figures.all(r.b, r.figure)?);
        Some(xs.iter().zip(ys).map(|(x, y)| x / y).collect())
    }

    fn verdict(target: f64, lo: f64, hi: f64, ci: (f64, f64)) -> String {
        let (a, b) = ci;
        if hi <= target {
            format!("met (every round <= {target:.2})")
        } else if lo > target {
            format!("missed (every round > {target:.2})")
        } else if b <= target {
            format!(
                "met at 95 % (median's interval {a:.3}..{b:.3} <= {target:.2}; rounds straddle)"
            )
        } else if a > target {
            format!(
                "missed at 95 % (median's interval {a:.3}..{b:.3} > {target:.2}; rounds straddle)"
            )
        } else {
            format!("undecided (the median's interval {a:.3}..{b:.3} straddles {target:.2})")
        }
    }

    pub(super) fn print(paths: &[Path], figures: &Figures) {
        for &path in paths {
            for figure in [CPU_CONN, CPU_REQUEST, CPU_MB] {
                if let Some(v) = figures.median(path, figure) {
                    println!("{}_{figure}: {v:.2}", path.name());
                }
            }
        }
        let share = paths
            .iter()
            .filter_map(|&p| figures.all(p, KSOFTIRQD_SHARE))
            .flatten()
            .fold(0.0f64, |a, &b| a.max(b));
        println!(
            "ksoftirqd_share_max_pct: {share:.2} (of the cgroup's CPU time; any path, kind, round)"
        );
        for r in &RATIOS {
            let Some(ratios) = per_round(figures, r) else {
                continue;
            };
            let mid = median(ratios.clone());
            let ci = median_ci95(&ratios);
            let sd = robust_sd(&ratios);
            // The median needs ~(pi/2) times the rounds the mean would.
            let need = (1.96 * 1.2533 * sd / (RESOLUTION * mid))
                .powi(2)
                .ceil()
                .max(1.0);
            let (lo, hi) = ratio_range(
                figures.all(r.a, r.figure).expect("checked"),
                figures.all(r.b, r.figure).expect("checked"),
            );
            println!(
                "{}: {mid:.3} per_round {lo:.3}..{hi:.3} median_ci95 {:.3}..{:.3} robust_sd {:.1}% \
                 (rounds for a +-1.5 % interval: {need:.0})",
                r.name,
                ci.0,
                ci.1,
                100.0 * sd / mid,
            );
            if let Some(target) = r.target {
                println!("{}_target: {}", r.name, verdict(target, lo, hi, ci));
            }
        }
    }
}

fn main() {
    // `cargo bench` passes --bench; filters are not supported here.
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the data path benchmark needs root: run `./x bench-datapath`"
    );
    let cfg = Config::from_env();
    if let Some(cpu) = cfg.cpu {
        // Before any thread or child exists: all of them inherit it.
        pin_to(cpu);
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel: {}", kernel.trim());
    match cfg.cpu {
        Some(cpu) => println!("pinned_cpu: {cpu} (every process of the benchmark)"),
        None => println!("pinned_cpu: none"),
    }
    println!("rounds: {} (+1 warm-up, discarded)", cfg.rounds);
    println!(
        "per_round: rr {} requests of {} bytes on one connection; conn {} connections (1-byte echo); bulk {} MiB",
        cfg.rr_count, cfg.rr_size, cfg.conns, cfg.bulk_mib
    );
    let names: Vec<&str> = cfg.paths.iter().map(|p| p.name()).collect();
    println!("paths: {}", names.join(" "));
    println!("cpu_accounting: {}", cpu::accounting());
    // Every process of the benchmark lives under one cgroup, whose CPU time
    // the clients read around their timed part: this process in `harness`,
    // the captured pods in each mesh's cgroup, the rest inherit `harness`.
    let mount = cgroup2_mount().expect("cgroup v2 mounted");
    let bench_cgroup = ChildCgroup::create(&mount, &format!("netns-bench-{}", std::process::id()))
        .expect("create the benchmark's cgroup");
    let harness =
        ChildCgroup::create(bench_cgroup.path(), "harness").expect("create the harness cgroup");
    harness
        .add_process(std::process::id())
        .expect("move the benchmark into its cgroup");
    let mut setup = Setup::new(&cfg, bench_cgroup.path());
    let figures = run_rounds(&mut setup, &cfg);
    print_figures(&cfg, &figures);
    print_ratios(&figures);
    cpu::print(&cfg.paths, &figures);
    let errors = setup.errors();
    println!("server_and_sidecar_errors: {}", errors.len());
    for e in errors.iter().take(5) {
        println!("  {e}");
    }
    measure_unrelated_getsockopt(&mut setup, &cfg);
    if cfg.cost {
        measure_program_cost(&mut setup, &cfg);
    }
}
