//! Finds the eBPF object to embed: `NETNS_EBPF_OBJECT`, or the path that
//! `cargo xtask build-ebpf` writes (target/ebpf/netns-ebpf.o).
//!
//! Without one (a fresh clone, `cargo check`, rust-analyzer) the crate embeds
//! an empty stub and says so: the workspace still checks, lints and documents,
//! and the binary tells at run time what to run
//! (`DataPathError::NoObject`). `./x build-ebpf` stays the explicit verb.

use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=NETNS_EBPF_OBJECT");
    let object = std::env::var_os("NETNS_EBPF_OBJECT").map_or_else(
        || {
            let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest.join("../target/ebpf/netns-ebpf.o")
        },
        PathBuf::from,
    );
    println!("cargo::rerun-if-changed={}", object.display());
    let embedded = if object.is_file() {
        object
    } else {
        println!(
            "cargo::warning=no eBPF object at {}: netns-datapath embeds an empty stub and cannot \
             attach the data path; run `./x build-ebpf` for a working agent",
            object.display()
        );
        let stub = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("netns-ebpf-stub.o");
        std::fs::write(&stub, b"").expect("write the stub object");
        stub
    };
    println!("cargo::rustc-env=NETNS_EBPF_OBJECT={}", embedded.display());
}
