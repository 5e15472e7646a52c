//! How an actor process learns canceled and paused tasks (features `cli` and `http`): it
//! asks the gateway every [`POLL_EVERY`] (`GET /api/v1/control?since=...`), whatever its
//! broker, and hands the answer to the runner's [`Control`]. The worst-case delay from a
//! cancel to every actor knowing it is one interval plus one request.

use std::time::Duration;

use troupe_core::{CancellationToken, Control, ControlState};

/// How often the gateway is asked.
pub const POLL_EVERY: Duration = Duration::from_millis(500);

/// How far back each question reaches before the previous answer's time: commits and
/// clocks are not perfectly ordered, and a cancel learned twice is harmless.
const OVERLAP_MS: i64 = 5_000;

/// Where the gateway is, and the key it asks for.
#[derive(Clone)]
pub struct GatewayLink {
    /// `http://host:port`.
    pub url: String,
    /// Sent as `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for GatewayLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayLink")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Polls the gateway until `shutdown`, applying each answer to `control`.
pub async fn poll(gateway: GatewayLink, control: Control, shutdown: CancellationToken) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let url = format!("{}/api/v1/control", gateway.url.trim_end_matches('/'));
    // What the logs may show: a password in the URL is not.
    let shown = troupe_core::redact::redact_url(&url);
    // The first question reaches back to every cancel the gateway still keeps: envelopes of
    // tasks canceled before this process started may be waiting in its queue.
    let mut since = 0i64;
    let mut failing = false;
    loop {
        let answer = async {
            let mut request = client.get(&url).query(&[("since", since)]);
            if let Some(key) = &gateway.api_key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await?;
            response.error_for_status()?.json::<ControlState>().await
        };
        match answer.await {
            Ok(state) => {
                if failing {
                    tracing::info!(url = %shown, "the gateway answers again: cancel and pause reach this actor");
                    failing = false;
                }
                control.apply(&state);
                since = state.now_ms - OVERLAP_MS;
            }
            Err(error) => {
                if !failing {
                    let error = troupe_core::redact::scrub(&error.to_string(), &url);
                    tracing::warn!(url = %shown, %error, "cannot ask the gateway for canceled and paused tasks; they run on until it answers");
                    failing = true;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL_EVERY) => {}
        }
    }
}
