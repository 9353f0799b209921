//! `netns-cni`: the chained CNI plugin that hands each new pod to the netns
//! agent. A container runtime runs it with `CNI_COMMAND` and friends in the
//! environment and the network config on stdin; see
//! `netns_agent::cni::plugin` for the config fields and behaviour.
//!
//! Run by hand (what the `DaemonSet`'s container does), it installs itself:
//!
//! ```text
//! netns-cni install --conf-dir /etc/cni/net.d --bin-dir /opt/cni/bin --watch
//! netns-cni uninstall --conf-dir /etc/cni/net.d --bin-dir /opt/cni/bin
//! ```

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use netns_agent::cni::install::{self, Install};
use netns_agent::cni::plugin::{self, DEFAULT_AGENT_SOCKET, Env, MAX_CONFIG};

/// Installs netns-cni into the node's CNI config (when not run as a plugin).
#[derive(Debug, Parser)]
#[command(name = "netns-cni", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy this binary into --bin-dir and append netns-cni to the end of
    /// the node's network config (the first *.conflist/*.conf/*.json in
    /// --conf-dir), atomically. With --watch, keep it there (inotify, no
    /// polling) until SIGTERM/SIGINT, then uninstall.
    Install {
        /// The CNI config directory.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The CNI bin directory (the binary is copied there).
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// The agent's control socket, as the plugin will reach it.
        #[arg(long, default_value = DEFAULT_AGENT_SOCKET)]
        agent_socket: PathBuf,
        /// ADD while no agent answers: fail (the runtime retries; the pod
        /// never runs uncaptured) or allow (the pod starts unmeshed).
        #[arg(long, default_value = "fail", value_parser = ["fail", "allow"])]
        agent_unreachable: String,
        /// A Kubernetes namespace whose pods are never meshed (repeat, or
        /// comma-separated).
        #[arg(
            long = "exclude-namespace",
            value_delimiter = ',',
            default_value = "kube-system"
        )]
        exclude_namespaces: Vec<String>,
        /// Stay and keep the entry in place; uninstall on SIGTERM/SIGINT.
        #[arg(long)]
        watch: bool,
    },
    /// Take netns-cni out of every *.conflist in --conf-dir, and the binary
    /// out of --bin-dir.
    Uninstall {
        /// The CNI config directory.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The CNI bin directory.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
    },
}

fn main() {
    if std::env::var_os("CNI_COMMAND").is_none() && std::env::args_os().len() > 1 {
        if let Err(e) = installer(Cli::parse()) {
            eprintln!("netns-cni: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let mut stdin = Vec::new();
    // One byte more than the limit, so that an oversized config is told apart.
    let read = std::io::stdin()
        .take(MAX_CONFIG as u64 + 1)
        .read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => plugin::run(&Env::from_process(), &stdin),
        Err(e) => plugin::Outcome {
            stdout: serde_json::json!({
                "cniVersion": "1.1.0",
                "code": netns_agent::cni::code::IO,
                "msg": "cannot read the network config from stdin",
                "details": e.to_string(),
            })
            .to_string(),
            stderr: String::new(),
            exit: 1,
        },
    };
    let _ = std::io::stdout().write_all(outcome.stdout.as_bytes());
    let _ = std::io::stderr().write_all(outcome.stderr.as_bytes());
    std::process::exit(outcome.exit);
}

fn installer(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Install {
            conf_dir,
            bin_dir,
            agent_socket,
            agent_unreachable,
            exclude_namespaces,
            watch,
        } => {
            let cfg = Install {
                conf_dir,
                bin_dir: Some(bin_dir),
                entry: Install::entry(&agent_socket, &agent_unreachable, &exclude_namespaces),
            };
            let binary = std::env::current_exe()?;
            if watch {
                return install::watch(&cfg, &binary);
            }
            match install::install(&cfg, &binary)? {
                Some(file) => eprintln!("netns-cni: installed in {}", file.display()),
                None => eprintln!("netns-cni: already installed"),
            }
            Ok(())
        }
        Command::Uninstall { conf_dir, bin_dir } => {
            for file in install::uninstall(&conf_dir, Some(&bin_dir))? {
                eprintln!("netns-cni: removed from {}", file.display());
            }
            Ok(())
        }
    }
}
