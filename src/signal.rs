//! Stopping a troupe process cleanly (feature `http`, which every deployable binary has):
//! SIGTERM, what Kubernetes sends before it kills a pod, and Ctrl-C both cancel one token,
//! and the runner then drains in-flight work.

use troupe_core::CancellationToken;

/// Cancels `shutdown` on the first SIGTERM or Ctrl-C (SIGINT), from a background task.
/// Must be called inside a Tokio runtime.
pub fn cancel_on_signal(shutdown: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: finishing in-flight work");
        shutdown.cancel();
    });
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                return;
            }
            Err(error) => tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops this process"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
