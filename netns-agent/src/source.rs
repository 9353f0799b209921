//! Where pods come from. A [`PodSource`] tells the agent that a namespace
//! appeared or went away; the agent does the rest (see [`crate::daemon`]).
//! Sources: a watched directory of namespace files ([`NetnsDir`],
//! `/run/netns` by default, where `ip netns add` puts them), and the
//! `netns-cni` plugin's requests ([`Cni`]), and the API server's pods of this
//! node ([`Kubernetes`]).

pub mod cni;
pub mod kubernetes;
mod netns_dir;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

pub use cni::Cni;
pub use kubernetes::Kubernetes;
pub use netns_dir::NetnsDir;

/// What a source reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodEvent {
    /// A namespace file appeared (it may not be bind-mounted yet: `ip netns
    /// add` creates the file first).
    Appeared(PathBuf),
    /// A namespace file went away.
    Gone(PathBuf),
    /// Every namespace file that exists now: sent at start, after the
    /// watch lost events (queue overflow), and periodically.
    Present(Vec<PathBuf>),
    /// A pod its source knows more of than its namespace (Kubernetes): taken
    /// on if new, its settings applied if they changed.
    Described(DescribedPod),
}

/// A pod as a source that knows its name and settings describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedPod {
    /// Its network namespace.
    pub path: PathBuf,
    /// Its name (`namespace/name` for Kubernetes).
    pub name: String,
    /// Its settings.
    pub settings: netns_datapath::settings::PodSettings,
}

/// A boxed future a source runs as.
pub type SourceTask = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A producer of [`PodEvent`]s.
pub trait PodSource: Send {
    /// The name `--pod-source` selects it by.
    fn name(&self) -> &'static str;
    /// Runs until the receiver is gone or the source fails.
    fn run(self: Box<Self>, events: tokio::sync::mpsc::Sender<PodEvent>) -> SourceTask;
    /// A fresh copy to run again after this one failed.
    fn clone_box(&self) -> Box<dyn PodSource>;
}
