//! netns-agent as a library: the pieces the node agent is made of, usable on
//! their own (the integration tests and the benchmark use them).
//!
//! The data path itself (the loader, its pins and maps) is the
//! `netns-datapath` crate; this one drives it.
//!
//! - [`cni`]: the `netns-cni` chained plugin and what it asks the agent.
//! - [`daemon`]: the long-running agent (`netns-agent run`), wiring
//!   [`source`] (where pods come from), [`pod`] (per-pod work inside each
//!   namespace), [`addr_watch`] (address changes inside pods, from netlink),
//!   [`control`] (the root-only control socket), [`http`]
//!   (health, readiness, metrics) and [`status`] (what `status` shows).

#![deny(missing_docs)]

pub mod addr_watch;
pub mod cni;
pub mod control;
pub mod daemon;
pub mod http;
pub mod instance;
pub mod metrics;
pub mod monitor;
pub mod pod;
pub mod protocol;
pub mod sidecar;
pub mod source;
pub mod status;
mod sys;

/// An error with its chain of causes on one line, `a: b: c`.
#[must_use]
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
