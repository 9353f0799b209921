//! The control socket's second lock: the peer's credentials. Its mode (0600)
//! keeps a non-root client from connecting at all, so the check the agent
//! makes on every connection (`SO_PEERCRED`, uid 0 only) is only ever met
//! when the mode is wrong. This test makes it wrong on purpose (0666) and
//! connects from a thread that has dropped its own credentials to
//! nobody (65534): the agent must refuse it, say why, and go on answering
//! root. Needs root.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use netns_agent::protocol::Refusal;
use netns_agent::status::Status;
use netns_datapath::cgroup::ChildCgroup;
use netns_tests::agent::{Private, Running, private, run_command};

const AGENT: &str = env!("CARGO_BIN_EXE_netns-agent");
const WAIT: Duration = Duration::from_secs(10);
const NOBODY: u32 = 65534;

/// One agent on private paths; stopped and cleaned up on drop.
struct Fixture {
    agent: Option<Running>,
    dir: PathBuf,
    /// Removed after the agent is gone.
    _cgroup: ChildCgroup,
}

impl Fixture {
    fn start() -> Fixture {
        let Private {
            dir,
            cgroup,
            metrics,
        } = private("agent-test-control-peer");
        let mut cmd = run_command(AGENT, &dir, cgroup.path(), metrics);
        // A file, not a pipe: a full pipe would stall the agent's logging.
        cmd.stdout(Stdio::from(
            std::fs::File::create(dir.join("agent.out")).unwrap(),
        ));
        let agent = Running::start(cmd, &dir.join("agent.log"), metrics, WAIT);
        Fixture {
            agent: Some(agent),
            dir,
            _cgroup: cgroup,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Only the process this fixture started, by its PID.
        drop(self.agent.take());
        let _ = netns_datapath::cleanup(&self.dir.join("bpf"));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request line to the socket at `path`, and the first line of the
/// reply, read the way the agent's own clients read it. A refused client's
/// request is never read: the agent may answer before it is written (the
/// write then fails) and its close resets the connection once the reply has
/// been read (ECONNRESET after the data), so neither is an error here.
fn ask(path: &Path, request: &[u8]) -> std::io::Result<String> {
    let mut conn = UnixStream::connect(path)?;
    conn.set_read_timeout(Some(WAIT))?;
    let _ = conn.write_all(request);
    let mut reply = String::new();
    BufReader::new(conn).read_line(&mut reply)?;
    Ok(reply)
}

/// Runs `work` on a thread of its own that has first become nobody (no
/// supplementary groups, uid and gid 65534, real, effective and saved, and so
/// no capabilities). The raw system calls change the calling thread's
/// credentials only; glibc's `setuid` would change every thread of this
/// process (and the test harness's with them). The process as a whole only
/// becomes non-dumpable, which nothing here minds.
fn as_nobody<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: setgroups with a count of 0 reads nothing through its
        // (null) pointer; setresgid/setresuid take three plain integers. All
        // three change only this thread's credentials, and this thread ends
        // when `work` returns.
        let done = unsafe {
            [
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY),
                libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY),
            ]
        };
        assert_eq!(
            done,
            [0, 0, 0],
            "setgroups/setresgid/setresuid: {}",
            std::io::Error::last_os_error()
        );
        // What the kernel now says about this thread (glibc asks it anew).
        assert_eq!(nix::unistd::geteuid().as_raw(), NOBODY);
        assert_eq!(nix::unistd::getegid().as_raw(), NOBODY);
        work()
    })
    .join()
    .expect("the thread that became nobody")
}

#[test]
fn root_control_socket_refuses_a_non_root_peer_even_when_its_mode_lets_it_connect() {
    netns_tests::require_root();
    let mut f = Fixture::start();
    let socket = f.socket();
    // The private directory must let nobody reach the socket: only the
    // socket's own mode and the peer check stand in the way.
    std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o711)).unwrap();

    // First lock, as the agent made it: mode 0600, nobody cannot connect.
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let path = socket.clone();
    let err = as_nobody(move || UnixStream::connect(&path).map(drop))
        .expect_err("nobody connected to a 0600 socket of root's");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");

    // A wrongly set mode: now nobody can connect, and the peer check is all
    // that is left.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let path = socket.clone();
    let reply = as_nobody(move || ask(&path, b"{\"op\":\"status\"}\n"))
        .unwrap_or_else(|e| panic!("nobody's request: {e}\n{}", f.logs()));
    let refusal: Refusal = serde_json::from_str(reply.trim_end())
        .unwrap_or_else(|e| panic!("not a refusal ({e}): {reply}"));
    assert!(
        refusal.error.contains("permission denied") && refusal.error.contains("65534"),
        "{reply}"
    );
    assert!(
        !reply.contains("\"ready\""),
        "nobody was told the status: {reply}"
    );

    // Root is still answered, by the same agent.
    let reply = ask(&socket, b"{\"op\":\"status\"}\n").unwrap();
    let status: Status = serde_json::from_str(reply.trim_end())
        .unwrap_or_else(|e| panic!("no status for root ({e}): {reply}"));
    assert!(status.ready, "{reply}");

    let exit = f.agent.take().expect("agent running").stop();
    assert!(exit.success(), "{}", f.logs());
}
