//! The plugin's side of the control socket: one request, one answer, in
//! the plugin's time (`timeoutMs`), with the agent's budget derived from it.

use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use super::plugin::CniError;
use super::{CniReply, CniRequest, code};
use crate::protocol::{ReplyError, Request, parse_reply};

/// The agent's control socket.
pub(super) struct Agent {
    pub(super) socket: PathBuf,
    pub(super) timeout: Duration,
}

impl Agent {
    pub(super) fn ask(&self, request: &CniRequest) -> Result<CniReply, CniError> {
        // The agent must answer before we stop waiting: it gets our time less
        // a margin for the exchange itself, and never starts work it cannot
        // finish in it.
        let margin = (self.timeout / 10).min(Duration::from_millis(500));
        let budget = self.timeout.saturating_sub(margin);
        let line = self.exchange(&Request::Cni(request.clone()).to_line(Some(budget)))?;
        parse_reply(&line).map_err(|e| match e {
            // Refused as a request (too large, malformed): trying again
            // would not help.
            ReplyError::Refused(error) => CniError::new(
                code::INVALID_CONFIG,
                "the netns agent refused the request",
                error,
            ),
            ReplyError::Unreadable(what) => CniError::new(
                code::TRY_AGAIN_LATER,
                "unreadable answer from the netns agent",
                what,
            ),
        })
    }

    /// Sends one line, reads one line back.
    pub(super) fn exchange(&self, line: &[u8]) -> Result<String, CniError> {
        let unreachable = |e: std::io::Error| {
            let msg = if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                "the netns agent did not answer in time"
            } else {
                "the netns agent is unreachable"
            };
            CniError::new(
                code::TRY_AGAIN_LATER,
                msg,
                format!("{} ({:?}): {e}", self.socket.display(), self.timeout),
            )
        };
        let mut conn = UnixStream::connect(&self.socket).map_err(unreachable)?;
        conn.set_read_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        conn.set_write_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        conn.write_all(line).map_err(unreachable)?;
        let mut line = String::new();
        BufReader::new(conn)
            .read_line(&mut line)
            .map_err(unreachable)?;
        if line.is_empty() {
            return Err(unreachable(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(line)
    }
}
