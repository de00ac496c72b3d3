//! After both sides answered `101 Switching Protocols`, bytes flow both ways untouched.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where tunnels run: tracked, so shutdown waits for them to close, and closed when the
/// server stops (an upgraded connection has no request to finish).
#[derive(Clone, Default)]
pub struct Tunnels {
    pub tracker: TaskTracker,
    pub stop: CancellationToken,
}

impl Tunnels {
    /// Joins the client's and the backend's upgraded connections in a task of their own.
    pub fn open(&self, client: OnUpgrade, backend: OnUpgrade) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            let (client, backend) = match tokio::try_join!(client, backend) {
                Ok(both) => both,
                Err(e) => {
                    tracing::warn!(error = %e, "upgrade failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut backend = TokioIo::new(backend);
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut backend) => match copied {
                    Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
                    Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
                },
                () = stop.cancelled() => tracing::debug!("upgraded connection closed: shutting down"),
            }
        });
    }
}
