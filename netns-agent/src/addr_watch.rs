//! Address changes inside pods, as the kernel announces them: one
//! `NETLINK_ROUTE` socket per pod, made inside the pod's namespace (through
//! netns-core's socket factory) and subscribed to the IPv4 and IPv6 address
//! groups, all waited on by one thread with epoll. Nothing is polled: a pod
//! whose addresses never change costs one idle descriptor.
//!
//! The subscription is made before the pod's addresses are first read, so a
//! change can never fall between the read and the watch. A socket whose
//! receive queue overflowed (`ENOBUFS`) is ready too: either way the pod's
//! addresses are simply read again.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use netns_core::NetNs;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{NetlinkAddr, bind};
use socket2::{Domain, Protocol, Type};

/// `RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR`.
const ADDRESS_GROUPS: u32 = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;

/// A pod's subscription: closing it (drop) ends the watch.
#[derive(Debug)]
pub struct Subscription(OwnedFd);

/// Opens a subscription to address changes inside `ns`.
pub fn subscribe(ns: &NetNs) -> Result<Subscription, netns_core::NsError> {
    let socket = ns.sockets().raw(
        Domain::from(libc::AF_NETLINK),
        Type::RAW.nonblocking(),
        Some(Protocol::from(libc::NETLINK_ROUTE)),
    )?;
    let fd: OwnedFd = socket.into();
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, ADDRESS_GROUPS)).map_err(|e| {
        netns_core::NsError::Socket {
            path: ns.path().to_owned(),
            op: "subscribe to address changes (NETLINK_ROUTE)".into(),
            source: e.into(),
        }
    })?;
    Ok(Subscription(fd))
}

/// The epoll set all subscriptions are registered in, each with a token,
/// and an eventfd that [`Watcher::stop`] signals.
#[derive(Debug)]
pub struct Watcher {
    epoll: Epoll,
    stop: EventFd,
}

/// The token of the stop eventfd (a netns cookie is never `u64::MAX`).
const STOP: u64 = u64::MAX;

impl Watcher {
    /// A new, empty set.
    pub fn new() -> io::Result<Watcher> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        epoll.add(stop.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, STOP))?;
        Ok(Watcher { epoll, stop })
    }

    /// Watches `sub`, reporting `token` when it has news. Closing the
    /// subscription removes it from the set.
    ///
    /// Edge-triggered: `token` is reported once per arrival of news, not
    /// again and again until someone drains the subscription. The waiting
    /// thread only passes tokens on (to the pod worker, which drains and
    /// reads the addresses in its turn); level-triggered, it would report
    /// the same news in a loop until then, flooding the worker with
    /// re-reads (seen in an emulated 5.10 guest: the worker busy for over a
    /// minute after one address change).
    pub fn add(&self, sub: &Subscription, token: u64) -> io::Result<()> {
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
        self.epoll
            .add(sub.0.as_fd(), EpollEvent::new(flags, token))
            .map_err(io::Error::from)
    }

    /// Waits for news and returns the tokens of subscriptions that have
    /// some (each one's queue is drained by [`Subscription::drain`]);
    /// `None` once [`Watcher::stop`] was called.
    pub fn wait(&self) -> io::Result<Option<Vec<u64>>> {
        let mut events = [EpollEvent::empty(); 64];
        let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        let tokens: Vec<u64> = events[..n].iter().map(EpollEvent::data).collect();
        if tokens.contains(&STOP) {
            return Ok(None);
        }
        Ok(Some(tokens))
    }

    /// Ends every [`Watcher::wait`], now and later.
    pub fn stop(&self) {
        // Never read back: the eventfd stays readable.
        let _ = self.stop.write(1);
    }
}

impl Subscription {
    /// The cookie of the pod's namespace, read from the subscription's own
    /// socket (`SO_NETNS_COOKIE`, Linux 5.14+; an error on older kernels).
    pub fn netns_cookie(&self) -> io::Result<u64> {
        netns_core::netns_cookie(&self.0)
    }

    /// Reads and discards what is queued (the news is only that something
    /// changed: the caller reads the addresses again).
    pub fn drain(&self) {
        let mut buf = [0u8; 8192];
        loop {
            match nix::sys::socket::recv(
                self.0.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) | Err(nix::errno::Errno::EAGAIN) => return,
                // ENOBUFS: messages were lost; the re-read covers them.
                Ok(_) | Err(nix::errno::Errno::ENOBUFS | nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }
}
