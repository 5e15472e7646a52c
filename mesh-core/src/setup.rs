//! Setting up the queues an actor process needs before its runner starts.

use crate::naming::{NameError, QueueNaming, SINK, SUMP};
use crate::transport::{QueueAdmin, TransportError};

/// Why an actor's queues could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QueueSetupError {
    /// The actor's name cannot be part of a queue name.
    #[error("actor name is not usable: {0}")]
    Name(#[from] NameError),
    /// The broker refused to create or check a queue.
    #[error("cannot set up queue {queue:?}: {source}")]
    Queue {
        /// The queue.
        queue: String,
        /// What the transport said.
        #[source]
        source: TransportError,
    },
}

/// Creates, where missing, `actor`'s own queue and the two every actor may send to:
/// `x-sink` (finished envelopes) and `x-sump` (failed ones).
pub async fn ensure_actor_queues<A: QueueAdmin>(
    admin: &A,
    naming: &QueueNaming,
    actor: &str,
) -> Result<(), QueueSetupError> {
    for name in [actor, SINK, SUMP] {
        let queue = naming.queue_for(name)?;
        admin
            .ensure_queue(&queue)
            .await
            .map_err(|source| QueueSetupError::Queue { queue, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::transport::QueueDepth;

    /// Records what it is asked to create; refuses queues whose name contains "bad".
    #[derive(Default)]
    struct Record(Mutex<Vec<String>>);

    impl QueueAdmin for Record {
        async fn ensure_queue(&self, queue: &str) -> Result<(), TransportError> {
            if queue.contains("bad") {
                return Err(TransportError::Closed);
            }
            self.0
                .lock()
                .map_err(|_| TransportError::Closed)?
                .push(queue.to_owned());
            Ok(())
        }

        async fn depth(&self, _: &str) -> Result<QueueDepth, TransportError> {
            Ok(QueueDepth::default())
        }
    }

    #[tokio::test]
    async fn the_actor_queue_the_sink_and_the_sump_are_created() {
        let admin = Record::default();
        let naming = QueueNaming::new("asya", "prod").expect("naming");
        ensure_actor_queues(&admin, &naming, "infer")
            .await
            .expect("set up");
        let created = admin.0.lock().expect("lock").clone();
        assert_eq!(
            created,
            ["asya-prod-infer", "asya-prod-x-sink", "asya-prod-x-sump"]
        );
    }

    #[tokio::test]
    async fn a_refused_queue_is_named() {
        let naming = QueueNaming::default();
        let error = ensure_actor_queues(&Record::default(), &naming, "bad")
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.starts_with("cannot set up queue \"asya-default-bad\""),
            "{error}"
        );
        let error = ensure_actor_queues(&Record::default(), &naming, "no spaces")
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.starts_with("actor name is not usable"), "{error}");
    }
}
