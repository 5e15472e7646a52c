//! What a handler answers ([`Outcome`], [`HandlerError`]) and what the layer stack hands the
//! runner to publish ([`Dispatch`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::Envelope;
use crate::status::ErrorInfo;

/// A handler's successful answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Pass these envelopes on. One is the usual case; several is a fan-out (§2.5). Each
    /// may have its own rewrite of `route.next`; `prev` and `curr` must stay as received.
    Forward(Vec<Envelope>),
    /// End the pipeline here: the envelope goes to `x-sink` as succeeded, its route not
    /// advanced (§2.4). Boxed to keep `Outcome` small; build it with [`Outcome::end`].
    End(Box<Envelope>),
    /// The handler has already published every output itself, as it produced them (a
    /// streaming runtime routes each frame the moment it arrives); nothing is left to
    /// publish. Such a handler builds each publication with the route layer's
    /// `route_output`, so the routing rules are the same as for [`Outcome::Forward`].
    Published,
    /// The merge of a fan-in (see [`crate::fan_in`]): it continues the route past this
    /// actor under its own id (the fan-out origin's), not the input's, or goes to `x-sump`
    /// when its status says it failed. Only an aggregator answers this.
    Merged(Box<Envelope>),
    /// The envelope cannot be processed at all (the runtime could not parse it): it goes to
    /// `x-sump` with this error, without a retry (§2.7). Build it with
    /// [`Outcome::unprocessable`].
    Unprocessable {
        /// The envelope as received.
        envelope: Box<Envelope>,
        /// Why it cannot be processed.
        error: ErrorInfo,
    },
}

impl Outcome {
    /// Pass one envelope on.
    pub fn forward(envelope: Envelope) -> Self {
        Outcome::Forward(vec![envelope])
    }

    /// End the pipeline with this envelope.
    pub fn end(envelope: Envelope) -> Self {
        Outcome::End(Box::new(envelope))
    }

    /// Set this envelope aside in `x-sump`: it cannot be processed.
    pub fn unprocessable(envelope: Envelope, error: ErrorInfo) -> Self {
        Outcome::Unprocessable {
            envelope: Box::new(envelope),
            error,
        }
    }
}

/// A handler failure, matched by retry rules on its type name and ancestry (`mro`).
///
/// ```
/// use troupe_core::HandlerError;
/// let e = HandlerError::new("ConnectionError", "model server refused")
///     .with_mro(["ConnectionError", "OSError", "Exception"]);
/// assert!(e.is_a("OSError"));
/// assert!(!e.is_a("ValueError"));
/// ```
///
/// A failure of the machinery around the handler rather than of the handler on this
/// envelope (its runtime process is down, say) is [`HandlerError::unavailable`]: the retry
/// layer does not spend an attempt on it but hands it to the runner, which holds the
/// delivery (and takes no new work) until the handler is reachable again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", info.type_name, info.message)]
pub struct HandlerError {
    info: ErrorInfo,
    unavailable: bool,
}

impl HandlerError {
    /// Error type name used by the deadline layer when a call runs out of time.
    pub const TIMEOUT: &'static str = "TimeoutError";

    /// A failure of type `type_name`.
    pub fn new(type_name: impl Into<String>, message: impl Into<String>) -> Self {
        let type_name = type_name.into();
        Self {
            info: ErrorInfo {
                message: message.into(),
                mro: vec![type_name.clone()],
                type_name,
                traceback: None,
            },
            unavailable: false,
        }
    }

    /// The handler could not be reached at all (type `type_name`); the envelope is not at
    /// fault, so the runner holds it until the handler answers rather than retrying or
    /// failing it.
    pub fn unavailable(type_name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            unavailable: true,
            ..Self::new(type_name, message)
        }
    }

    /// Whether this is [`HandlerError::unavailable`].
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }

    /// Sets the ancestry (most specific first) used by retry rules.
    pub fn with_mro<I: IntoIterator<Item = S>, S: Into<String>>(mut self, mro: I) -> Self {
        self.info.mro = mro.into_iter().map(Into::into).collect();
        self
    }

    /// Attaches a traceback.
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.info.traceback = Some(traceback.into());
        self
    }

    /// The error's type name.
    pub fn type_name(&self) -> &str {
        &self.info.type_name
    }

    /// True if the error is of type `name` or has it in its ancestry. A dotted `name`
    /// (`requests.exceptions.Timeout`) must equal an entry; a plain one (`Timeout`) matches
    /// an entry's last dotted segment, so it names the class wherever it is defined.
    ///
    /// ```
    /// use troupe_core::HandlerError;
    /// let e = HandlerError::new("app.errors.Transient", "try again")
    ///     .with_mro(["app.errors.Transient", "ConnectionError", "Exception"]);
    /// assert!(e.is_a("Transient"));
    /// assert!(e.is_a("app.errors.Transient"));
    /// assert!(!e.is_a("other.Transient"));
    /// assert!(e.is_a("ConnectionError"));
    /// ```
    pub fn is_a(&self, name: &str) -> bool {
        let matches = |entry: &String| {
            if name.contains('.') {
                entry == name
            } else {
                entry.rsplit('.').next() == Some(name)
            }
        };
        std::iter::once(&self.info.type_name)
            .chain(&self.info.mro)
            .any(matches)
    }

    /// The protocol's error object.
    pub fn info(&self) -> &ErrorInfo {
        &self.info
    }

    /// Consumes the error into the protocol's error object.
    pub fn into_info(self) -> ErrorInfo {
        self.info
    }
}

impl From<ErrorInfo> for HandlerError {
    fn from(info: ErrorInfo) -> Self {
        Self {
            info,
            unavailable: false,
        }
    }
}

/// One message the runner must publish before it may acknowledge the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// The actor whose queue receives it (`x-sink`, `x-sump` included), overrides resolved.
    pub actor: String,
    /// The envelope to send.
    pub envelope: Envelope,
    /// Deliver no earlier than this (retries).
    pub delay: Option<Duration>,
}

impl Publication {
    /// An immediate publication.
    pub fn to(actor: impl Into<String>, envelope: Envelope) -> Self {
        Self {
            actor: actor.into(),
            envelope,
            delay: None,
        }
    }
}

/// A boxed future, as hooks return.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Work to do once every publication of a [`Dispatch`] is confirmed, before the ack
/// (e.g. the idempotency layer marks the hop as published, metrics count what was sent).
pub type PublishedHook = Box<dyn FnOnce() -> BoxFuture + Send>;

/// What the layer stack answers for one input: publish all of these, then run the hooks,
/// then acknowledge the input. An empty dispatch acknowledges without publishing (a duplicate
/// whose outputs were already published).
///
/// The publications are immutable once answered and shared by reference count, so a layer
/// that must keep them (the idempotency record) does not copy them.
pub struct Dispatch {
    publications: Arc<[Publication]>,
    hooks: Vec<PublishedHook>,
}

impl Default for Dispatch {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch")
            .field("publications", &self.publications)
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

impl Dispatch {
    /// A dispatch of these publications.
    pub fn new(publications: Vec<Publication>) -> Self {
        Self::shared(publications.into())
    }

    /// A dispatch of publications already shared (e.g. recorded earlier).
    pub fn shared(publications: Arc<[Publication]>) -> Self {
        Self {
            publications,
            hooks: Vec::new(),
        }
    }

    /// A dispatch of one publication.
    pub fn one(publication: Publication) -> Self {
        Self::new(vec![publication])
    }

    /// The messages to publish.
    pub fn publications(&self) -> &[Publication] {
        &self.publications
    }

    /// Another handle on the same publications (a reference count, not a copy).
    pub fn share_publications(&self) -> Arc<[Publication]> {
        self.publications.clone()
    }

    /// Adds work to run after every publication is confirmed.
    pub fn on_published(&mut self, hook: PublishedHook) {
        self.hooks.push(hook);
    }

    /// Takes the hooks out, leaving none.
    pub fn take_hooks(&mut self) -> Vec<PublishedHook> {
        std::mem::take(&mut self.hooks)
    }
}
