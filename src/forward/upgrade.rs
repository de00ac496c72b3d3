//! After both sides answered `101 Switching Protocols`, bytes flow both ways untouched.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Joins the client's and the backend's upgraded connections in a task of their own.
pub fn tunnel(client: OnUpgrade, backend: OnUpgrade) {
    tokio::spawn(async move {
        match tokio::try_join!(client, backend) {
            Ok((client, backend)) => {
                let mut client = TokioIo::new(client);
                let mut backend = TokioIo::new(backend);
                match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                    Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
                    Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "upgrade failed"),
        }
    });
}
