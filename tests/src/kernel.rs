//! Asking the kernel through independent tools: `bpftool` for what is attached
//! to a cgroup, `/proc/net/sockstat` for TCP memory.

use std::path::Path;
use std::process::Command;

/// Program ids attached to `cgroup` (any attach type), per `bpftool cgroup show`.
#[must_use]
pub fn cgroup_program_ids(cgroup: &Path) -> Vec<u32> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("run bpftool (installed by ./x test)");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_numbers(&String::from_utf8_lossy(&out.stdout), "\"id\":")
}

/// Does a program with this id exist, per `bpftool prog show id`?
#[must_use]
pub fn program_exists(id: u32) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .expect("run bpftool")
        .status
        .success()
}

/// Can user space read a namespace's cookie (`SO_NETNS_COOKIE`, Linux 5.14)?
#[must_use]
pub fn has_netns_cookie() -> bool {
    netns_core::NetNs::current()
        .and_then(|ns| ns.cookie())
        .is_ok()
}

/// Every number that follows `key` in a JSON text (enough for bpftool's flat output).
fn json_numbers(json: &str, key: &str) -> Vec<u32> {
    json.match_indices(key)
        .filter_map(|(i, _)| {
            let rest = json[i + key.len()..].trim_start();
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Pages of memory TCP sockets hold, per the `TCP: ... mem N` line of the
/// calling thread's `/proc/thread-self/net/sockstat`.
#[must_use]
pub fn tcp_mem_pages() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/sockstat").expect("read sockstat");
    text.lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.windows(2).find(|w| w[0] == "mem").map(|w| w[1])
        })
        .and_then(|n| n.parse().ok())
        .expect("TCP mem in sockstat")
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_numbers_are_found() {
        let json = r#"[{"id":12,"attach_type":"connect4"},{"id": 7,"name":"x"}]"#;
        assert_eq!(super::json_numbers(json, "\"id\":"), vec![12, 7]);
    }
}
