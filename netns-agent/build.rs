//! Finds the eBPF object to embed: `NETNS_EBPF_OBJECT`, or the path that
//! `cargo xtask build-ebpf` writes (target/ebpf/netns-ebpf.o).

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
    assert!(
        object.is_file(),
        "netns-agent embeds the eBPF object {}, which does not exist yet: run `./x build-ebpf` \
         (`./x test` and `./x run` do it for you), or set NETNS_EBPF_OBJECT",
        object.display()
    );
    println!("cargo::rustc-env=NETNS_EBPF_OBJECT={}", object.display());
}
