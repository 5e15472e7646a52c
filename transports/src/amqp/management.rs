//! Queue depth from the RabbitMQ management API (plugin `rabbitmq_management`).
//!
//! The AMQP passive declare counts only ready messages. The management API also counts
//! unacked ones across every consumer of every process, which a depth reader that does not
//! consume (the autoscaler) needs. Its figures are refreshed every
//! `collect_statistics_interval` (5 s by default), so they lag the broker by that much.

use std::time::Duration;

use serde::Deserialize;
use troupe_core::{QueueDepth, TransportError};

/// Where the management API is and how to log in. Its `Debug` shows no password.
#[derive(Clone, PartialEq, Eq)]
pub struct ManagementApi {
    /// Base URL, e.g. `http://127.0.0.1:15672`.
    pub url: String,
    /// User with at least the `monitoring` tag.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for ManagementApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementApi")
            .field("url", &troupe_core::redact::Redacted(&self.url))
            .field("user", &self.user)
            .field("password", &troupe_core::redact::MASK)
            .finish()
    }
}

impl Default for ManagementApi {
    /// `http://127.0.0.1:15672`, guest/guest.
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:15672".to_owned(),
            user: "guest".to_owned(),
            password: "guest".to_owned(),
        }
    }
}

#[derive(Deserialize)]
struct QueueStats {
    #[serde(default)]
    messages_ready: u64,
    #[serde(default)]
    messages_unacknowledged: u64,
}

#[derive(Deserialize)]
struct Page {
    items: Vec<NamedQueueStats>,
}

#[derive(Deserialize)]
struct NamedQueueStats {
    #[serde(default)]
    messages: u64,
}

/// A client of the management API for one vhost.
pub(crate) struct Management {
    api: ManagementApi,
    vhost: String,
    http: reqwest::Client,
}

fn unavailable(api: &ManagementApi, e: impl std::fmt::Display) -> TransportError {
    let mut error = troupe_core::redact::scrub(&e.to_string(), &api.url);
    if !api.password.is_empty() {
        error = error.replace(&api.password, troupe_core::redact::MASK);
    }
    TransportError::Disconnected {
        detail: format!(
            "RabbitMQ management API at {} failed: {error} (is the rabbitmq_management plugin enabled?)",
            troupe_core::redact::Redacted(&api.url)
        ),
    }
}

impl Management {
    pub(crate) fn new(api: ManagementApi, vhost: String) -> Result<Self, TransportError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| unavailable(&api, e))?;
        Ok(Self { api, vhost, http })
    }

    fn endpoint(&self, segments: &[&str]) -> Result<reqwest::Url, TransportError> {
        let mut url = reqwest::Url::parse(&self.api.url).map_err(|e| unavailable(&self.api, e))?;
        url.path_segments_mut()
            .map_err(|()| unavailable(&self.api, "the URL cannot have a path"))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    async fn get(
        &self,
        url: reqwest::Url,
        query: &[(&str, &str)],
    ) -> Result<reqwest::Response, TransportError> {
        self.http
            .get(url)
            .query(query)
            .basic_auth(&self.api.user, Some(&self.api.password))
            .send()
            .await
            .map_err(|e| unavailable(&self.api, e))
    }

    /// Ready and unacked messages of `queue`, and messages in its delay buckets.
    pub(crate) async fn depth(&self, queue: &str, bucket_prefix: &str) -> Result<QueueDepth, TransportError> {
        let url = self.endpoint(&["api", "queues", &self.vhost, queue])?;
        let response = self
            .get(url, &[("columns", "messages_ready,messages_unacknowledged")])
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(TransportError::NoSuchQueue {
                queue: queue.to_owned(),
            });
        }
        let stats: QueueStats = response
            .error_for_status()
            .map_err(|e| unavailable(&self.api, e))?
            .json()
            .await
            .map_err(|e| unavailable(&self.api, e))?;
        // Delay buckets of this queue, whoever declared them.
        let pattern = format!("^{}", regex_escape(bucket_prefix));
        let url = self.endpoint(&["api", "queues", &self.vhost])?;
        let page: Page = self
            .get(
                url,
                &[
                    ("page", "1"),
                    ("page_size", "500"),
                    ("name", pattern.as_str()),
                    ("use_regex", "true"),
                    ("columns", "name,messages"),
                ],
            )
            .await?
            .error_for_status()
            .map_err(|e| unavailable(&self.api, e))?
            .json()
            .await
            .map_err(|e| unavailable(&self.api, e))?;
        Ok(QueueDepth {
            ready: stats.messages_ready,
            in_flight: stats.messages_unacknowledged,
            delayed: page.items.iter().map(|q| q.messages).sum(),
        })
    }
}

/// Escapes regular-expression metacharacters (queue names may contain `.` and more).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_metacharacters_are_escaped() {
        assert_eq!(regex_escape("a.b+c"), "a\\.b\\+c");
        assert_eq!(regex_escape("plain-name_1"), "plain-name_1");
    }

    #[test]
    fn endpoint_percent_encodes_the_vhost_and_queue() {
        let m = Management::new(ManagementApi::default(), "/".to_owned()).unwrap();
        let url = m.endpoint(&["api", "queues", "/", "my queue"]).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:15672/api/queues/%2F/my%20queue");
    }
}
