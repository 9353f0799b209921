//! `./x test`: what CI runs. Formatting, lints, docs, every test on this
//! kernel, then the kernel suite on every kernel of `xtask/vm-kernels.txt`.

use crate::cmd::{self, cargo};

pub(crate) fn run(with_vm: bool) -> anyhow::Result<()> {
    cmd::require_root("./x test")?;
    // Cheap checks first: a formatting slip fails in seconds, before any
    // install or build.
    eprintln!("xtask: cargo fmt --check");
    cmd::status(&mut cargo(&["fmt", "--all", "--", "--check"]))?;
    cmd::status(&mut cargo(&[
        "fmt",
        "--manifest-path",
        "netns-ebpf/programs/Cargo.toml",
        "--",
        "--check",
    ]))?;
    crate::apt::ensure(
        &[
            "iproute2",
            "bpftool",
            "python3",
            "tmux",
            "iptables",
            "containernetworking-plugins",
            "squid",
        ],
        "the kernel tests build namespaces with ip, run a Python client and iptables-legacy inside captured pods, run the reference CNI plugins (bridge, host-local, loopback) before netns-cni, and run squid as a real transparent proxy sidecar, read `netns-agent top` off a tmux pane; bpftool goes into the VM guests for inspection",
    )?;
    crate::ebpf::build()?;
    eprintln!("xtask: cargo clippy -D warnings");
    cmd::status(&mut cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    eprintln!("xtask: cargo clippy -D warnings on the eBPF programs (BPF target)");
    crate::ebpf::clippy()?;
    eprintln!("xtask: cargo doc (warnings are errors)");
    cmd::status(
        cargo(&[
            "doc",
            "--workspace",
            "--no-deps",
            "--all-features",
            "--quiet",
        ])
        .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    eprintln!("xtask: cargo test (root-only kernel tests included)");
    cmd::status(&mut cargo(&["test", "--workspace", "--all-features"]))?;
    if with_vm {
        eprintln!("xtask: the kernel suite on every kernel of xtask/vm-kernels.txt (QEMU)");
        crate::vm::run(&crate::vm::Args::all_kernels())?;
    }
    Ok(())
}
