//! `netns-agent demo`: the per-pod work of the agent, on pods it makes itself.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;

use anyhow::{Context, bail};
use netns_core::{NetNs, TempNetNs};

/// What one pod reported, each value read back from the kernel.
struct PodReport {
    name: String,
    netns_ino: u64,
    listener: SocketAddr,
    mark: u32,
    echoed: usize,
}

pub(crate) fn run(pods: u8, mark: u32) -> anyhow::Result<()> {
    let host_ino = NetNs::current()
        .context("open this thread's network namespace")?
        .id()
        .ino;
    println!("host network namespace: net:[{host_ino}]");
    // Every pod is removed when `made` drops, also on an error half-way.
    let mut made = Vec::new();
    for _ in 0..pods {
        made.push(TempNetNs::new("netns-demo-pod").context("create a pod namespace")?);
    }
    println!(
        "{:<28} {:>16} {:>18} {:>8} {:>7}",
        "pod", "netns", "listener", "mark", "echoed"
    );
    for pod in &made {
        let report = pod_work(pod, mark).with_context(|| format!("pod {}", pod.name()))?;
        if report.netns_ino == host_ino {
            bail!("pod {} reports the host's namespace", report.name);
        }
        println!(
            "{:<28} {:>16} {:>18} {:>#8x} {:>7}",
            report.name,
            format!("net:[{}]", report.netns_ino),
            report.listener,
            report.mark,
            report.echoed
        );
    }
    let paths: Vec<_> = made.iter().map(|pod| pod.path().to_owned()).collect();
    drop(made);
    if let Some(left) = paths.iter().find(|p| p.exists()) {
        bail!("pod namespace {} was not removed", left.display());
    }
    println!("all {pods} pods removed; this thread is still in net:[{host_ino}]");
    Ok(())
}

fn pod_work(pod: &TempNetNs, mark: u32) -> anyhow::Result<PodReport> {
    pod.set_loopback_up()?;
    let listener = pod
        .sockets()
        .mark(mark)
        .tcp_listener(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let addr = listener.local_addr().context("listener address")?;
    let mut client = pod.sockets().tcp_connect(addr)?;
    let (mut served, _) = listener.accept().context("accept inside the pod")?;
    let greeting = format!("hello from {}", pod.name());
    client.write_all(greeting.as_bytes()).context("send")?;
    let mut buf = vec![0; greeting.len()];
    served.read_exact(&mut buf).context("receive")?;
    if buf != greeting.as_bytes() {
        bail!("bytes changed on the way");
    }
    let netns_ino = pod
        .run(|_| std::fs::metadata("/proc/thread-self/ns/net"))??
        .ino();
    Ok(PodReport {
        name: pod.name().to_owned(),
        netns_ino,
        listener: addr,
        mark: netns_core::mark(&listener).context("read SO_MARK back")?,
        echoed: buf.len(),
    })
}
