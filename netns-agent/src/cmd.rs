//! The commands: what `run`, `status`, `monitor`, `cleanup` and `exec` do with their
//! flags ([`crate::cli`]).

pub(crate) mod cleanup;
pub(crate) mod exec;
pub(crate) mod monitor;
pub(crate) mod run;
pub(crate) mod status;
pub(crate) mod top;

/// Writes `text` to stdout; a reader that went away (`status | head -1`) is
/// not an error: what it wanted it has.
pub(crate) fn print_all(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("write to stdout"))
        }
        _ => Ok(()),
    }
}
