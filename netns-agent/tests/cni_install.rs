//! `netns-cni install` / `uninstall` / `install --watch` on a config
//! directory of the test's own: our entry goes at the end of the node's
//! network config and nowhere else, every write is a rename (new inode, no
//! temporary file left), nothing is written when nothing changed, the watch
//! puts the entry back after another writer drops it without rewriting in a
//! loop, and SIGTERM uninstalls.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const PLUGIN: &str = env!("CARGO_BIN_EXE_netns-cni");

struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn new(tag: &str) -> Dirs {
        let root = PathBuf::from(format!(
            "/tmp/netns-cni-install-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("net.d")).unwrap();
        Dirs { root }
    }
    fn conf(&self) -> PathBuf {
        self.root.join("net.d")
    }
    fn bin(&self) -> PathBuf {
        self.root.join("bin")
    }
    fn run(&self, verb: &str) -> std::process::Output {
        Command::new(PLUGIN)
            .arg(verb)
            .arg("--conf-dir")
            .arg(self.conf())
            .arg("--bin-dir")
            .arg(self.bin())
            .env_remove("CNI_COMMAND")
            .output()
            .unwrap()
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn bridge_list() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "198.18.64.0/24"}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

fn write(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn types(list: &Value) -> Vec<String> {
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_owned())
        .collect()
}

fn hidden_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn install_appends_to_the_first_network_only_and_uninstall_restores_it() {
    let dirs = Dirs::new("once");
    let primary = dirs.conf().join("10-bridge.conflist");
    let other = dirs.conf().join("99-other.conflist");
    write(&primary, &bridge_list());
    write(&other, &bridge_list());
    let other_bytes = std::fs::read(&other).unwrap();
    let inode = std::fs::metadata(&primary).unwrap().ino();

    let out = dirs.run("install");
    assert!(out.status.success(), "{out:?}");
    let installed = read(&primary);
    assert_eq!(types(&installed), ["bridge", "portmap", "netns-cni"]);
    assert_eq!(
        installed["plugins"][0],
        bridge_list()["plugins"][0],
        "others untouched"
    );
    assert_eq!(installed["plugins"][2]["agentUnreachable"], "fail");
    assert_ne!(
        std::fs::metadata(&primary).unwrap().ino(),
        inode,
        "replaced by rename"
    );
    assert_eq!(
        std::fs::read(&other).unwrap(),
        other_bytes,
        "only the first network"
    );
    assert_eq!(hidden_files(&dirs.conf()), Vec::<String>::new());
    let binary = dirs.bin().join("netns-cni");
    assert_eq!(
        std::fs::read(&binary).unwrap(),
        std::fs::read(PLUGIN).unwrap()
    );
    assert_eq!(std::fs::metadata(&binary).unwrap().mode() & 0o777, 0o755);

    // Again: nothing to do, nothing written.
    let inode = std::fs::metadata(&primary).unwrap().ino();
    let out = dirs.run("install");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already installed"));
    assert_eq!(std::fs::metadata(&primary).unwrap().ino(), inode);

    let out = dirs.run("uninstall");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read(&primary), bridge_list());
    assert!(!binary.exists());
}

#[test]
fn install_turns_a_single_plugin_conf_into_a_list_and_refuses_an_empty_dir() {
    let dirs = Dirs::new("conf");
    let out = dirs.run("install");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has no network config") && err.contains("net.d"),
        "{err}"
    );

    let conf = dirs.conf().join("10-bridge.conf");
    write(
        &conf,
        &json!({"cniVersion": "0.4.0", "name": "podnet", "type": "bridge", "bridge": "cni0"}),
    );
    let out = dirs.run("install");
    assert!(out.status.success(), "{out:?}");
    assert!(!conf.exists());
    let list = read(&dirs.conf().join("10-bridge.conflist"));
    assert_eq!(list["cniVersion"], "0.4.0");
    assert_eq!(list["name"], "podnet");
    assert_eq!(types(&list), ["bridge", "netns-cni"]);
    assert_eq!(
        list["plugins"][0],
        json!({"type": "bridge", "bridge": "cni0"})
    );
}

#[test]
fn install_watch_puts_the_entry_back_without_polling_and_sigterm_uninstalls() {
    let dirs = Dirs::new("watch");
    let primary = dirs.conf().join("10-bridge.conflist");
    write(&primary, &bridge_list());
    let mut child = Command::new(PLUGIN)
        .arg("install")
        .arg("--watch")
        .arg("--conf-dir")
        .arg(dirs.conf())
        .arg("--bin-dir")
        .arg(dirs.bin())
        .env_remove("CNI_COMMAND")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let has_entry = || types(&read(&primary)).last().map(String::as_str) == Some("netns-cni");
    wait_for("installed", &has_entry);

    // Idle: the file is not rewritten (no loop).
    let inode = std::fs::metadata(&primary).unwrap().ino();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        std::fs::metadata(&primary).unwrap().ino(),
        inode,
        "rewritten while idle"
    );

    // Another component rewrites the network config without our entry.
    for _ in 0..3 {
        let tmp = dirs.conf().join(".writer.tmp");
        write(&tmp, &bridge_list());
        std::fs::rename(&tmp, &primary).unwrap();
        wait_for("entry put back", &has_entry);
        assert_eq!(types(&read(&primary)), ["bridge", "portmap", "netns-cni"]);
    }

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(read(&primary), bridge_list(), "uninstalled at SIGTERM");
    assert!(!dirs.bin().join("netns-cni").exists());
}
