//! Which programs the data path has, where they attach, and what kernel each needs.

use netns_ebpf::names::prog;

/// What a program attaches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    /// A cgroup sock_addr hook.
    SockAddr,
    /// A cgroup sock hook (`post_bind4/6`).
    Sock,
    /// cgroup/getsockopt.
    Sockopt,
    /// cgroup sock_ops.
    SockOps,
    /// The sidecar sockhash.
    SkMsg,
}

/// When a program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    Always,
    DnsRedirect,
    Sockmap,
}

/// One program of the object.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProgramSpec {
    pub(crate) name: &'static str,
    pub(crate) hook: Hook,
    pub(crate) when: When,
    /// The oldest kernel with everything the program uses.
    pub(crate) min_kernel: &'static str,
}

const fn spec(name: &'static str, hook: Hook, when: When, min_kernel: &'static str) -> ProgramSpec {
    ProgramSpec {
        name,
        hook,
        when,
        min_kernel,
    }
}

/// Every program, in attach order: bookkeeping first, so that no connection is
/// redirected before its original destination can be recorded.
pub(crate) const PROGRAMS: [ProgramSpec; 13] = [
    spec(prog::POST_BIND4, Hook::Sock, When::Always, "5.7"),
    spec(prog::POST_BIND6, Hook::Sock, When::Always, "5.7"),
    spec(prog::SOCKOPS, Hook::SockOps, When::Always, "5.10"),
    spec(prog::GETSOCKOPT, Hook::Sockopt, When::Always, "5.3"),
    spec(prog::GETPEERNAME4, Hook::SockAddr, When::Always, "5.8"),
    spec(prog::GETPEERNAME6, Hook::SockAddr, When::Always, "5.8"),
    spec(prog::CONNECT4, Hook::SockAddr, When::Always, "5.7"),
    spec(prog::CONNECT6, Hook::SockAddr, When::Always, "5.7"),
    spec(prog::SENDMSG4, Hook::SockAddr, When::DnsRedirect, "5.7"),
    spec(prog::SENDMSG6, Hook::SockAddr, When::DnsRedirect, "5.7"),
    spec(prog::RECVMSG4, Hook::SockAddr, When::DnsRedirect, "5.7"),
    spec(prog::RECVMSG6, Hook::SockAddr, When::DnsRedirect, "5.7"),
    spec(prog::SK_MSG, Hook::SkMsg, When::Sockmap, "5.10"),
];
