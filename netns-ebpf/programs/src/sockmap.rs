//! sk_msg on the sidecar sockhash (opt-in sockmap mode): a message written on
//! one sidecar socket goes straight into its peer's receive queue. Only sockets
//! that sock_ops admitted (both ends sidecar-owned) are ever in the map.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, sk_action::SK_PASS},
    macros::sk_msg,
    programs::SkMsgContext,
};
use netns_ebpf::counter;

use crate::addr;
use crate::maps::{SIDECAR_SOCKS, count};

#[sk_msg]
pub fn sidecar_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: fields of the sk_msg context, readable in sk_msg programs.
    let (family, local, local_port, remote, remote_port) = unsafe {
        let md = ctx.msg;
        let Some(family) = addr::family((*md).family) else {
            return SK_PASS;
        };
        (
            family,
            addr::ctx_addr!(md, family, local_ip4, local_ip6),
            (*md).local_port as u16,
            addr::ctx_addr!(md, family, remote_ip4, remote_ip6),
            addr::remote_port((*md).remote_port),
        )
    };
    // The peer socket's own (local, remote) is our (remote, local).
    let mut peer = addr::pair(family, remote, remote_port, local, local_port);
    if SIDECAR_SOCKS.redirect_msg(&ctx, &mut peer, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS) {
        count(counter::SOCKMAP_REDIRECTED);
    }
    // Without a peer in the map the message simply goes the normal way.
    SK_PASS
}
