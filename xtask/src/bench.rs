//! `./x bench`: the namespace-switch benchmark, with Go's `ns.Do` built from
//! Debian's containernetworking package as the anchor.

use std::process::Command;

use crate::{apt, cmd};

const GO_PACKAGES: &[&str] = &[
    "golang-go",
    "golang-github-containernetworking-plugins-dev",
    "golang-golang-x-sys-dev",
];

pub(crate) fn run(iters: u32, rounds: u32) -> anyhow::Result<()> {
    cmd::require_root("./x bench")?;
    apt::ensure(GO_PACKAGES, "Go's ns.Do is the benchmark's anchor")?;
    let root = cmd::workspace_root();
    let anchor = root.join("target/go-anchor");
    eprintln!("xtask: building the Go anchor");
    cmd::status(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&anchor)
            .arg(root.join("tests/benches/go-anchor/main.go"))
            .env("GOPATH", "/usr/share/gocode")
            .env("GO111MODULE", "off")
            .env("GOCACHE", root.join("target/go-cache")),
    )?;
    cmd::status(
        cmd::cargo(&["bench", "--package", "netns-tests", "--bench", "switch"])
            .env("NETNS_BENCH_GO_ANCHOR", &anchor)
            .env("NETNS_BENCH_ITERS", iters.to_string())
            .env("NETNS_BENCH_ROUNDS", rounds.to_string()),
    )
}
