//! `netns-cni`: the chained CNI plugin that hands each new pod to the netns
//! agent. A container runtime runs it with `CNI_COMMAND` and friends in the
//! environment and the network config on stdin; see
//! `netns_agent::cni::plugin` for the config fields and behaviour.

use std::io::{Read, Write};

use netns_agent::cni::plugin::{self, Env, MAX_CONFIG};

fn main() {
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
