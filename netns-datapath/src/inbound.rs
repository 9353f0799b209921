//! Inbound capture, per pod: the `sk_lookup` program attached to the pod's
//! network namespace through a link pinned at `<pin_dir>/inbound/<netns
//! cookie>`, and the pod's pass ports (the sidecar's own ports and the pod's
//! excluded inbound ports) in [`names::INBOUND_PASS_PORTS`].
//!
//! The pinned link outlives the agent: a restart finds it, checks with the
//! kernel that it still serves the pod's namespace, and keeps it (the adopt
//! step has already put the new build's program into it in place), so a pod
//! is never without inbound capture across a restart. Removing a pod detaches
//! its link at once (`BPF_LINK_DETACH`) and removes exactly its entries.

use std::io;
use std::os::fd::AsFd as _;
use std::path::PathBuf;

use aya::maps::{HashMap, MapData, SockHash};
use aya::programs::SkLookup;
use aya::programs::links::FdLink;
use netns_core::NetNs;
use netns_ebpf::{PodListener, PodPort, names};

use super::{
    DataPath, DataPathError, LoadInfo as _, map_error, pin_error, pins_in, remove, remove_present,
};
use crate::sys;

/// `BPF_SK_LOOKUP` of `enum bpf_attach_type`.
const ATTACH_SK_LOOKUP: u32 = 36;

/// The program, and the oldest kernel with `sk_lookup` programs.
const PROGRAM: &str = names::prog::INBOUND;
const MIN_KERNEL: &str = "5.9";

fn load_error(source: aya::programs::ProgramError) -> DataPathError {
    DataPathError::Load {
        program: PROGRAM,
        min_kernel: MIN_KERNEL,
        source,
    }
}

/// What [`DataPath::capture_inbound`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundCapture {
    /// Attached now.
    Attached,
    /// A link from an earlier run already served this namespace: kept.
    Adopted,
}

impl DataPath {
    /// Where the inbound link of the pod with this netns cookie is pinned.
    #[must_use]
    pub fn inbound_pin(&self, netns_cookie: u64) -> PathBuf {
        self.pin_dir.join("inbound").join(netns_cookie.to_string())
    }

    /// Captures connections into the pod `ns` (netns cookie `netns_cookie`,
    /// already added with [`DataPath::add_pod`]) for its sidecar's inbound
    /// listener, except to `pass_ports`. Linux 5.9+. On failure, call
    /// [`DataPath::release_inbound`] to undo what was done.
    pub fn capture_inbound(
        &mut self,
        ns: &NetNs,
        netns_cookie: u64,
        pass_ports: &[u16],
    ) -> Result<InboundCapture, DataPathError> {
        let op = format!("add the pass ports of pod (netns cookie {netns_cookie}) to");
        let mut map: HashMap<_, PodPort, u8> = self.hash(names::INBOUND_PASS_PORTS)?;
        for port in pass_ports {
            map.insert(&pod_port(netns_cookie, *port), &1, 0)
                .map_err(|e| map_error(names::INBOUND_PASS_PORTS, &op, e))?;
        }
        let pin = self.inbound_pin(netns_cookie);
        if pin.exists() {
            let serves = sys::pinned_netns_link(&pin)
                .is_ok_and(|info| u64::from(info.netns_ino) == ns.id().ino);
            if serves {
                return Ok(InboundCapture::Adopted);
            }
            unpin_inbound_link(&pin)?;
        }
        let dir = self.pin_dir.join("inbound");
        super::make_dir(&dir)?;
        let program = self.inbound_program()?;
        let attach_error = |source| DataPathError::Attach {
            program: PROGRAM,
            target: ns.path().to_owned(),
            source: Box::new(source),
        };
        let link_id = program.attach(ns.as_fd()).map_err(attach_error)?;
        let link = program.take_link(link_id).map_err(attach_error)?;
        FdLink::from(link)
            .pin(&pin)
            .map_err(|e| pin_error(PROGRAM, &pin, e))?;
        // The pin holds the link; this process keeps no descriptor of it.
        Ok(InboundCapture::Attached)
    }

    /// Files `listener` (the agent's descriptor of a sidecar's inbound
    /// listener that predates the agent, taken from the sidecar) as pod
    /// `netns_cookie`'s inbound listener of `family`, as sock_ops files one
    /// at `listen()`.
    pub fn file_inbound_listener(
        &mut self,
        netns_cookie: u64,
        family: u16,
        listener: &impl std::os::fd::AsRawFd,
    ) -> Result<(), DataPathError> {
        let name = names::INBOUND_LISTENERS;
        let mut map: SockHash<&mut MapData, PodListener> =
            SockHash::try_from(self.map_mut(name)?).map_err(|e| map_error(name, "open", e))?;
        let key = PodListener {
            netns_cookie,
            family,
            pad: [0; 3],
        };
        map.insert(&key, listener.as_raw_fd(), 0).map_err(|e| {
            map_error(
                name,
                &format!("file the inbound listener of pod (netns cookie {netns_cookie}) in"),
                e,
            )
        })
    }

    /// The kernel id of the `sk_lookup` program, once loaded (at the first
    /// [`DataPath::capture_inbound`]).
    #[must_use]
    pub fn inbound_program_id(&self) -> Option<u32> {
        let program: &SkLookup = self.ebpf.program(PROGRAM)?.try_into().ok()?;
        program.info().ok().map(|info| info.id())
    }

    /// Undoes [`DataPath::capture_inbound`]: detaches the pod's link now and
    /// removes its pass ports. Idempotent.
    pub fn release_inbound(
        &mut self,
        netns_cookie: u64,
        pass_ports: &[u16],
    ) -> Result<(), DataPathError> {
        let pin = self.inbound_pin(netns_cookie);
        let unpinned = unpin_inbound_link(&pin);
        self.remove_pass_ports(netns_cookie, pass_ports)?;
        unpinned
    }

    /// Removes some of a pod's pass ports (its capture stays attached).
    pub fn remove_pass_ports(
        &mut self,
        netns_cookie: u64,
        pass_ports: &[u16],
    ) -> Result<(), DataPathError> {
        let op = format!("remove the pass ports of pod (netns cookie {netns_cookie}) from");
        let mut map: HashMap<_, PodPort, u8> = self.hash(names::INBOUND_PASS_PORTS)?;
        for port in pass_ports {
            remove_present(
                map.remove(&pod_port(netns_cookie, *port)),
                names::INBOUND_PASS_PORTS,
                &op,
            )?;
        }
        Ok(())
    }

    /// Removes inbound links and pass ports of pods not in `cookies` (gone
    /// while no agent ran). Returns how many links and entries it removed.
    pub(crate) fn retain_inbound(&mut self, cookies: &[u64]) -> Result<usize, DataPathError> {
        let mut removed = 0;
        for pin in pins_in(&self.pin_dir.join("inbound"))? {
            let ours = pin
                .file_name()
                .and_then(|n| n.to_str()?.parse::<u64>().ok())
                .is_some_and(|c| cookies.contains(&c));
            if !ours {
                unpin_inbound_link(&pin)?;
                removed += 1;
            }
        }
        Ok(removed + self.retain_pod_ports(names::INBOUND_PASS_PORTS, cookies)?)
    }

    /// After an adopt: every inbound link an earlier run pinned gets this
    /// build's program in place; links whose namespace is gone are removed.
    pub(crate) fn take_over_inbound(&mut self) -> Result<(), DataPathError> {
        let pins = pins_in(&self.pin_dir.join("inbound"))?;
        if pins.is_empty() {
            return Ok(());
        }
        let fd = self.inbound_program()?.program_fd().map_err(load_error)?;
        for pin in pins {
            let alive = sys::pinned_netns_link(&pin).is_ok_and(|info| info.netns_ino != 0);
            if !alive || sys::update_pinned_link(&pin, &fd).is_err() {
                tracing::info!(pin = %pin.display(), "inbound link of a namespace that is gone: removed");
                unpin_inbound_link(&pin)?;
            }
        }
        Ok(())
    }

    /// Detaches and removes every inbound link (teardown, cleanup).
    pub(crate) fn release_all_inbound(&mut self) -> Result<(), DataPathError> {
        for pin in pins_in(&self.pin_dir.join("inbound"))? {
            unpin_inbound_link(&pin)?;
        }
        let dir = self.pin_dir.join("inbound");
        remove(&dir, std::fs::remove_dir(&dir))
    }

    /// The `sk_lookup` program, loaded at its first use.
    fn inbound_program(&mut self) -> Result<&mut SkLookup, DataPathError> {
        let program: &mut SkLookup = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or(DataPathError::Missing {
                kind: "program",
                name: PROGRAM,
            })?
            .try_into()
            .map_err(load_error)?;
        if program.fd().is_err() {
            program.load().map_err(load_error)?;
        }
        Ok(program)
    }
}

/// Detaches the link pinned at `pin` now and removes the pin. A pin that is
/// not there is not an error; a link whose namespace is gone just goes.
pub(crate) fn unpin_inbound_link(pin: &std::path::Path) -> Result<(), DataPathError> {
    match sys::detach_pinned_link(pin) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        // ENOLINK: already detached (its namespace went away).
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
        Err(source) => {
            return Err(DataPathError::Detach {
                program: PROGRAM,
                source,
            });
        }
        Ok(()) => {}
    }
    remove(pin, std::fs::remove_file(pin))
}

/// The program ids attached to namespace `ns` for `sk_lookup`, asked of the
/// kernel (`BPF_PROG_QUERY`).
pub fn attached_inbound_ids(ns: &NetNs) -> io::Result<Vec<u32>> {
    sys::query_attached(&ns.as_fd(), ATTACH_SK_LOOKUP)
}

fn pod_port(netns_cookie: u64, port: u16) -> PodPort {
    PodPort {
        netns_cookie,
        port,
        pad: [0; 3],
    }
}
