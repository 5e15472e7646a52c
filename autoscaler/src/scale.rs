//! Actuation: the Deployment's `/scale` subresource, and nothing else of it.
//!
//! A write carries the `resourceVersion` it was decided on, so a concurrent change (a
//! person running `kubectl scale`, a rollout) makes it fail with 409 Conflict instead of
//! being overwritten blindly; the caller then reads again and decides again.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::Scale;
use kube::Api;
use kube::api::{Patch, PatchParams};

/// The field manager the autoscaler's writes are recorded under.
pub const FIELD_MANAGER: &str = "troupe-autoscaler";

/// A Deployment's scale as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentScale {
    /// `spec.replicas`: what the Deployment is asked to run.
    pub replicas: u32,
    /// The version the read saw, sent back with a write as a precondition.
    pub resource_version: Option<String>,
}

/// Why the scale could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// The Deployment does not exist.
    #[error("Deployment {namespace}/{name} (scaleTargetRef) does not exist")]
    NotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Someone else changed the scale between our read and our write.
    #[error("Deployment {namespace}/{name} was scaled by someone else meanwhile")]
    Conflict {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Any other API error.
    #[error("/scale of Deployment {namespace}/{name}: {source}")]
    Api {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// Reads and writes one namespace's Deployment scales.
#[derive(Clone)]
pub struct Scaler {
    api: Api<Deployment>,
    namespace: String,
}

impl Scaler {
    /// Deployments of `namespace`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
        }
    }

    fn error(&self, name: &str, source: kube::Error) -> ScaleError {
        let (namespace, name) = (self.namespace.clone(), name.to_owned());
        match &source {
            kube::Error::Api(status) if status.code == 404 => ScaleError::NotFound { namespace, name },
            kube::Error::Api(status) if status.code == 409 => ScaleError::Conflict { namespace, name },
            _ => ScaleError::Api {
                namespace,
                name,
                source,
            },
        }
    }

    /// The scale of Deployment `name`.
    pub async fn get(&self, name: &str) -> Result<CurrentScale, ScaleError> {
        let scale = self.api.get_scale(name).await.map_err(|e| self.error(name, e))?;
        Ok(current(&scale))
    }

    /// Sets Deployment `name` to `replicas`, on the condition that its scale is still at
    /// `seen.resource_version`.
    pub async fn set(
        &self,
        name: &str,
        seen: &CurrentScale,
        replicas: u32,
    ) -> Result<CurrentScale, ScaleError> {
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": seen.resource_version },
            "spec": { "replicas": replicas },
        });
        let scale = self
            .api
            .patch_scale(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Merge(&patch))
            .await
            .map_err(|e| self.error(name, e))?;
        Ok(current(&scale))
    }
}

fn current(scale: &Scale) -> CurrentScale {
    let replicas = scale
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0);
    CurrentScale {
        replicas,
        resource_version: scale.metadata.resource_version.clone(),
    }
}
