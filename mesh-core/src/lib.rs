//! Troupe core: the envelope model and its route, queue naming, the transport contract and
//! the actor runner. No broker client lives here; transports implement [`Transport`].
//!
//! The data path: a [`Transport`] yields [`Delivery`]s; the [`Runner`] decodes each into an
//! [`Envelope`], calls the layer stack (any `tower::Service<Envelope, Response = Dispatch>`),
//! publishes every [`Publication`] of the answer and acknowledges the input only once all
//! of them are confirmed.

#![forbid(unsafe_code)]

pub mod availability;
pub mod control;
pub mod decode;
pub mod envelope;
pub mod event;
pub mod fan_in;
pub mod handler;
pub mod headers;
pub mod naming;
pub mod outcome;
pub mod payload;
pub mod redact;
pub mod route;
pub mod runner;
pub mod setup;
pub mod status;
pub mod sump;
pub mod tls;
pub mod transport;
pub mod wire;

pub use availability::{Availability, Unavailable, unavailable_dependency};
pub use control::{Control, ControlState};
pub use decode::{DecodeError, DecodeLimits};
pub use envelope::{Envelope, assign_fan_out_ids, fan_out_id};
pub use event::{EventSink, TaskEvent};
pub use fan_in::FanIn;
pub use handler::{HandlerFn, PayloadFn, handler_fn, payload_fn};
pub use naming::{NameError, QueueNaming, SINK, SUMP, validate_name};
pub use outcome::{Dispatch, HandlerError, Outcome, Publication, PublishedHook};
pub use payload::Payload;
pub use route::{Route, RouteError};
pub use runner::{RunReport, Runner, RunnerConfig, RunnerError, publish_one};
pub use setup::{QueueSetupError, ensure_actor_queues};
pub use status::{ErrorInfo, Phase, Reason, Status};
pub use tokio_util::sync::CancellationToken;
pub use transport::{
    ConsumeOptions, Consumer, Delivery, PublishOptions, QueueAdmin, QueueDepth, Transport, TransportError,
};
pub use wire::EVENTS;
