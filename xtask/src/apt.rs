//! Installing Debian packages the verbs need, saying what is installed and why.

use std::process::Command;

use anyhow::Context;

use crate::cmd;

/// Installs those of `packages` that are not installed yet, with `apt-get`.
pub(crate) fn ensure(packages: &[&str], why: &str) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {} ({why})", missing.join(" "));
    cmd::quiet(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update (are you root?)")?;
    cmd::quiet(
        Command::new("apt-get")
            // Never remove a package that is there to make room (apt would
            // otherwise resolve a version conflict by removing one).
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "--no-remove",
            ])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}
