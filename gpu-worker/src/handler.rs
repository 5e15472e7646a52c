//! The inference handler: the [`tower::Service`] the runner's layer stack calls for each
//! envelope. It reads the input tensor from the payload ([`CodecConfig::decode`]), runs it
//! in whatever batch the [`Batcher`](crate::batcher::Batcher) forms, and writes the output
//! row back into the payload ([`CodecConfig::encode`]).
//!
//! Failures stay with their envelope:
//!
//! - an input the codec rejects (malformed, wrong shape or dtype) never reaches the batcher;
//!   the envelope goes to `x-sump` with `status.error` saying what was expected, without a
//!   retry, since the same input would fail again ([`Outcome::Unprocessable`]);
//! - a model failure fails the requests of that one batch, and a batch holds one input shape,
//!   so a shape the model cannot take fails only envelopes of that shape. It is an
//!   `InferenceError` for the retry layer;
//! - a stopped batcher is [`HandlerError::unavailable`]: the delivery goes back to the queue
//!   without spending an attempt.
//!
//! Decoding and encoding run on the runner's async tasks; the model runs on the blocking
//! pool, so the two overlap.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use troupe::core::ErrorInfo;
use troupe::{Envelope, HandlerError, Outcome};

use crate::batcher::{BatcherHandle, InferError};
use crate::codec::{CodecConfig, CodecError};

/// Error type name of an input the codec rejects (`status.error.type`).
pub const INPUT_ERROR: &str = "InputError";
/// Error type name of an output the codec cannot write (a NaN for the JSON codec, say).
pub const OUTPUT_ERROR: &str = "OutputError";
/// Error type name of a failed forward pass, for retry rules.
pub const INFERENCE_ERROR: &str = "InferenceError";

/// Runs each envelope's input through the dynamic batcher. Cheap to clone.
#[derive(Clone, Debug)]
pub struct InferenceHandler {
    codec: Arc<CodecConfig>,
    batcher: BatcherHandle,
}

impl InferenceHandler {
    /// A handler reading and writing payloads with `codec`, inferring through `batcher`.
    pub fn new(codec: CodecConfig, batcher: BatcherHandle) -> Self {
        Self {
            codec: Arc::new(codec),
            batcher,
        }
    }
}

impl tower::Service<Envelope> for InferenceHandler {
    type Response = Outcome;
    type Error = HandlerError;
    type Future = BoxFuture<'static, Result<Outcome, HandlerError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        // Back-pressure is `infer` waiting for room in the batcher's queue; the runner's
        // concurrency bounds how many calls wait there.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut envelope: Envelope) -> Self::Future {
        let codec = Arc::clone(&self.codec);
        let batcher = self.batcher.clone();
        Box::pin(async move {
            let input = match codec.decode(&envelope.payload) {
                Ok(input) => input,
                Err(error) => {
                    tracing::warn!(envelope.id = %envelope.id, %error, "input rejected");
                    return Ok(Outcome::unprocessable(envelope, codec_error(INPUT_ERROR, &error)));
                }
            };
            let output = batcher.infer(input).await.map_err(|error| {
                tracing::warn!(envelope.id = %envelope.id, %error, "inference failed");
                infer_error(&error)
            })?;
            if let Err(error) = codec.encode(&mut envelope.payload, &output) {
                tracing::warn!(envelope.id = %envelope.id, %error, "output cannot be written");
                return Ok(Outcome::unprocessable(
                    envelope,
                    codec_error(OUTPUT_ERROR, &error),
                ));
            }
            Ok(Outcome::forward(envelope))
        })
    }
}

fn codec_error(type_name: &str, error: &CodecError) -> ErrorInfo {
    ErrorInfo {
        message: error.to_string(),
        type_name: type_name.to_owned(),
        mro: vec![
            type_name.to_owned(),
            "ValueError".to_owned(),
            "Exception".to_owned(),
        ],
        traceback: None,
    }
}

fn infer_error(error: &InferError) -> HandlerError {
    match error {
        InferError::Closed => HandlerError::unavailable(INFERENCE_ERROR, error.to_string()),
        InferError::QueueFull { .. }
        | InferError::Model { .. }
        | InferError::BatchOutput { .. }
        | InferError::Panicked { .. }
        | InferError::Stack(_) => HandlerError::new(INFERENCE_ERROR, error.to_string()).with_mro([
            INFERENCE_ERROR,
            "RuntimeError",
            "Exception",
        ]),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use tower::{Service, ServiceExt};
    use troupe::core::Route;

    use super::*;
    use crate::batcher::{Batcher, BatcherConfig, Model, ModelError};
    use crate::codec::CodecKind;
    use crate::tensor::Tensor;

    /// Doubles every value; fails on batches whose rows are 3 long.
    struct Double;

    impl Model for Double {
        fn forward(&self, batch: Tensor) -> Result<Tensor, ModelError> {
            if batch.shape().last() == Some(&3) {
                return Err(ModelError::new("rows of 3 are not supported"));
            }
            let values: Vec<f32> = batch
                .to_vec::<f32>()
                .map_err(|e| ModelError::new(e.to_string()))?
                .into_iter()
                .map(|x| x * 2.0)
                .collect();
            Tensor::from_vec(batch.shape().to_vec(), &values).map_err(|e| ModelError::new(e.to_string()))
        }
    }

    fn handler(shape: Option<&str>) -> InferenceHandler {
        let mut codec = CodecConfig::new(CodecKind::Json, "/input", "/output").expect("pointers");
        if let Some(shape) = shape {
            codec = codec.with_shape(shape.parse().expect("shape"));
        }
        let config = BatcherConfig {
            max_batch_size: 4,
            max_queue_delay: Duration::from_millis(20),
            ..BatcherConfig::default()
        };
        InferenceHandler::new(codec, Batcher::start(Double, config).expect("config"))
    }

    fn envelope(payload: serde_json::Value) -> Envelope {
        Envelope::new(Route::through(["infer", "next"]), payload)
    }

    async fn call(
        handler: &mut InferenceHandler,
        payload: serde_json::Value,
    ) -> Result<Outcome, HandlerError> {
        handler.ready().await?.call(envelope(payload)).await
    }

    #[tokio::test]
    async fn the_output_is_written_beside_the_rest_of_the_payload() {
        let mut h = handler(Some("[*]"));
        let outcome = call(&mut h, json!({"input": [1.5, 2], "keep": "me"})).await;
        let Ok(Outcome::Forward(out)) = outcome else {
            panic!("expected a forward, got {outcome:?}");
        };
        assert_eq!(
            out[0].payload,
            json!({"input": [1.5, 2], "keep": "me", "output": [3.0, 4.0]})
        );
    }

    #[tokio::test]
    async fn a_bad_input_fails_alone_while_its_batch_mates_succeed() {
        let h = handler(Some("[2]"));
        let payloads = [
            json!({"input": [1, 2]}),
            json!({"input": [1, 2, 3, 4]}),
            json!({"input": "nope"}),
            json!({"other": 1}),
            json!({"input": [3, 4]}),
        ];
        let calls = payloads.map(|p| {
            let mut h = h.clone();
            async move { h.call(envelope(p)).await }
        });
        let outcomes = futures_util::future::join_all(calls).await;
        let forwarded: Vec<_> = outcomes
            .iter()
            .filter_map(|o| match o {
                Ok(Outcome::Forward(out)) => Some(out[0].payload["output"].clone()),
                _ => None,
            })
            .collect();
        assert_eq!(forwarded, [json!([2.0, 4.0]), json!([6.0, 8.0])]);
        let messages: Vec<String> = outcomes
            .iter()
            .filter_map(|o| match o {
                Ok(Outcome::Unprocessable { error, .. }) => {
                    assert_eq!(error.type_name, INPUT_ERROR);
                    assert!(error.mro.iter().any(|t| t == "ValueError"), "{error:?}");
                    Some(error.message.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            messages,
            [
                "input at /input: expected shape [2] of float32, got [4]",
                "input at /input: /input is a string, expected a number",
                "input at /input: missing, expected a numeric array of shape [2] of float32",
            ]
        );
    }

    #[tokio::test]
    async fn a_model_failure_is_an_inference_error_for_the_retry_layer() {
        let mut h = handler(None);
        let error = call(&mut h, json!({"input": [1, 2, 3]})).await.err();
        let error = error.expect("the model fails rows of 3");
        assert!(
            error.is_a(INFERENCE_ERROR) && error.is_a("RuntimeError"),
            "{error:?}"
        );
        assert!(!error.is_unavailable());
        assert!(
            error.to_string().contains("rows of 3 are not supported"),
            "{error}"
        );
        // Another shape is another batch: unaffected.
        assert!(matches!(
            call(&mut h, json!({"input": [1, 2]})).await,
            Ok(Outcome::Forward(_))
        ));
    }

    #[tokio::test]
    async fn an_output_json_cannot_carry_fails_its_envelope() {
        struct Nan;
        impl Model for Nan {
            fn forward(&self, batch: Tensor) -> Result<Tensor, ModelError> {
                Tensor::from_vec(vec![batch.shape()[0], 1], &vec![f32::NAN; batch.shape()[0]])
                    .map_err(|e| ModelError::new(e.to_string()))
            }
        }
        let codec = CodecConfig::new(CodecKind::Json, "/input", "/output").expect("pointers");
        let batcher = Batcher::start(Nan, BatcherConfig::default()).expect("config");
        let mut h = InferenceHandler::new(codec, batcher);
        let outcome = call(&mut h, json!({"input": [1]})).await;
        let Ok(Outcome::Unprocessable { error, .. }) = outcome else {
            panic!("expected unprocessable, got {outcome:?}");
        };
        assert_eq!(error.type_name, OUTPUT_ERROR);
        assert!(
            error.message.contains("use the base64 codec"),
            "{}",
            error.message
        );
    }
}
