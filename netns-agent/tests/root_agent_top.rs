//! `netns-agent top` as a person uses it: in a terminal (a tmux pane), read
//! off the screen. A row for the pod with its connections captured per
//! second while an app dials, and the reason for one that was not. Its own
//! test binary: this process joins the captured cgroup. Needs root and tmux
//! (`./x test` installs it, and copies it into the VM guests).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use netns_tests::agent::OnePod;
use netns_tests::pod_traffic::{connect_once, serve_sidecar_and_app};

const AGENT: &str = env!("CARGO_BIN_EXE_netns-agent");

/// A tmux session of ours, killed on drop.
struct Tmux(String);

impl Tmux {
    fn start(name: &str, command: &str) -> Tmux {
        let status = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "180",
                "-y",
                "30",
                command,
            ])
            .status()
            .expect("run tmux (installed by ./x test)");
        assert!(status.success(), "tmux new-session");
        Tmux(name.to_owned())
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[test]
fn root_top_shows_a_row_per_pod_in_a_terminal() {
    let one = OnePod::start(AGENT, "top");
    let _sidecar = serve_sidecar_and_app(&one.pod);
    let service: SocketAddr = "198.18.96.10:80".parse().unwrap();
    let session = format!("netns-top-{}", std::process::id());
    let command = format!(
        "{AGENT} top --control-socket {}; sleep 30",
        one.socket().display()
    );
    let tmux = Tmux::start(&session, &command);

    // An app dials once to loopback (never captured: the reason shows),
    // then through the sidecar for a few seconds; the screen is read
    // while it dials.
    std::thread::sleep(Duration::from_millis(500));
    let _ = one
        .pod
        .sockets()
        .tcp_connect("127.0.0.1:9".parse().unwrap());
    let app = {
        let pod = one.pod.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(4);
            let mut made = 0u32;
            while Instant::now() < until {
                connect_once(&pod, service).expect("captured");
                made += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            made
        })
    };
    std::thread::sleep(Duration::from_millis(2500));
    let screen = tmux.screen();
    let made = app.join().unwrap();
    println!("{made} connections; the screen:\n{screen}");
    assert!(screen.contains("CAPTURED/s"), "{screen}");
    let row: Vec<&str> = screen
        .lines()
        .find(|l| l.starts_with("pod "))
        .unwrap_or_else(|| panic!("no row for the pod:\n{screen}"))
        .split_whitespace()
        .collect();
    // The last full second had captures, and the loopback dial is a reason.
    let captured: u64 = row[1].parse().unwrap();
    assert!(captured > 0, "{screen}");
    assert!(screen.contains("loopback 1"), "{screen}");
}
