//! Messages JetStream gave up on (`max_deliver` reached) go to a dead-letter queue.
//!
//! With `max_deliver` set, the server stops delivering a message after that many attempts
//! and announces it on `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`;
//! in a work-queue stream the message then stays stored, unseen, forever. Every transport
//! process listens for these advisories and moves each such message, wrapped as an
//! `x-sump` envelope (reason `RedeliveryLimit`, original bytes kept), to the configured
//! dead-letter queue, then deletes it from the stream. Several processes may handle one
//! advisory: the dead-letter publish carries a `Nats-Msg-Id` derived from the stream
//! sequence, so the stream stores it once, and a second delete finds nothing.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use troupe_core::Reason;

/// The part of the advisory this needs.
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    #[serde(default)]
    consumer: String,
    #[serde(default)]
    deliveries: u64,
}

/// Handles max-deliveries advisories of `stream` until `stop`, resubscribing if the
/// subscription ends.
pub(crate) async fn supervise(
    js: jetstream::Context,
    stream: stream::Stream,
    stream_name: String,
    dead_letter_subject: String,
    stop: CancellationToken,
) {
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream_name}.*");
    let client = js.client();
    loop {
        let subscribed = tokio::select! {
            () = stop.cancelled() => return,
            s = client.subscribe(subject.clone()) => s,
        };
        match subscribed {
            Ok(mut advisories) => loop {
                let advisory = tokio::select! {
                    () = stop.cancelled() => return,
                    a = advisories.next() => a,
                };
                let Some(advisory) = advisory else { break };
                match serde_json::from_slice::<MaxDeliveries>(&advisory.payload) {
                    Ok(a) => dead_letter(&js, &stream, &dead_letter_subject, &a).await,
                    Err(error) => tracing::warn!(%error, "max-deliveries advisory not understood"),
                }
            },
            Err(error) => tracing::warn!(%error, subject, "cannot subscribe to max-deliveries advisories"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn dead_letter(
    js: &jetstream::Context,
    stream: &stream::Stream,
    dead_letter_subject: &str,
    advisory: &MaxDeliveries,
) {
    let seq = advisory.stream_seq;
    let message = match stream.get_raw_message(seq).await {
        Ok(m) => m,
        // Another process already moved it.
        Err(error) => {
            tracing::debug!(%error, seq, "max-deliveries: message already gone");
            return;
        }
    };
    let wrapped = troupe_core::sump::wrap_body(
        &message.payload,
        Reason::RedeliveryLimit,
        "MaxDeliveriesExceeded",
        &format!(
            "the broker stopped delivering this message after {} attempts (max_deliver)",
            advisory.deliveries
        ),
        &advisory.consumer,
    );
    let mut headers = HeaderMap::new();
    let id = format!("max-deliveries/{}/{seq}", stream.cached_info().config.name);
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    let published = match js
        .publish_with_headers(dead_letter_subject.to_owned(), headers, wrapped.to_vec().into())
        .await
    {
        Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match published {
        // Deleted only once the dead-letter queue holds it.
        Ok(()) => {
            if let Err(error) = stream.delete_message(seq).await {
                tracing::debug!(%error, seq, "max-deliveries: delete failed (already deleted?)");
            } else {
                tracing::warn!(seq, consumer = %advisory.consumer, deliveries = advisory.deliveries,
                    dead_letter = dead_letter_subject, "message exceeded max_deliver; moved to the dead-letter queue");
            }
        }
        Err(error) => {
            tracing::error!(%error, seq, "max-deliveries: cannot publish to the dead-letter queue; the message stays in the stream")
        }
    }
}
