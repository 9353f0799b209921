//! Async work inside a namespace: a dedicated OS thread with its own
//! current-thread tokio runtime (feature `tokio`).

use std::future::Future;

use crate::{NetNs, Result};

impl NetNs {
    /// Runs the future made by `make` inside this namespace and returns its output.
    ///
    /// The future runs on a new OS thread that enters the namespace and drives it
    /// with a current-thread tokio runtime, so every `.await` resumes on that same
    /// thread, inside the namespace. The thread exits afterwards; the caller's
    /// threads never move. Use it for long async work in a pod (a proxy loop, a
    /// netlink conversation). For a socket or two, [`NetNs::sockets`] is cheaper.
    ///
    /// A panic in the future is reported as [`NsError::Worker`](crate::NsError::Worker).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let ns = netns_core::NetNs::open("/run/netns/blue")?;
    /// let listener = ns
    ///     .run_async(|| async {
    ///         let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    ///         l.local_addr()
    ///     })
    ///     .await??;
    /// # Ok(()) }
    /// ```
    pub async fn run_async<F, Fut>(&self, make: F) -> Result<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future,
        Fut::Output: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ns = self.clone();
        std::thread::Builder::new()
            .name("netns-async".into())
            .spawn(move || {
                let output = ns.enter_fresh_thread().and_then(|()| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| ns.worker_error(format!("could not build a runtime: {e}")))?;
                    Ok(rt.block_on(make()))
                });
                let _ = tx.send(output);
            })
            .map_err(|e| self.worker_error(format!("could not start: {e}")))?;
        rx.await
            .unwrap_or_else(|_| Err(self.worker_error("panicked".into())))
    }
}
