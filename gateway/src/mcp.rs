//! `/mcp`: the pipeline as tools of the Model Context Protocol, over Streamable HTTP.
//!
//! Each tool is declared in a JSON file (see [`McpTools`]): its name, what it does, the
//! route a call travels and the JSON Schema of its input. `tools/call` checks the
//! arguments against that schema (input that does not match is refused, naming each
//! mismatch), submits them as the payload of a task, reports the task's events as
//! `notifications/progress` while it runs (each streamed token among them) and returns its
//! result, or its error as a tool error the model can read.
//!
//! The server is stateless (no MCP session is kept between requests), so any replica of
//! the gateway answers any request.
//!
//! ```
//! let tools = troupe_gateway::mcp::McpTools::from_json(r#"{"tools": [{
//!     "name": "summarize",
//!     "description": "Summarizes a document",
//!     "route": ["fetch", "summarize"],
//!     "input_schema": {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]},
//!     "timeout": "2m"
//! }]}"#).unwrap();
//! assert_eq!(tools.len(), 1);
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ProgressToken, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, Peer, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use troupe_core::{QueueAdmin, Transport};

use crate::api::{Api, submit_task, wait_for};
use crate::record::StoredEvent;
use crate::state::{TaskState, Update};

/// Why a tools file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum McpConfigError {
    /// The file could not be read.
    #[error("MCP tools file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a tools file.
    #[error("MCP tools file: {0}")]
    Format(String),
    /// A tool is declared wrongly.
    #[error("MCP tool {tool:?}: {problem}")]
    Tool {
        /// The tool.
        tool: String,
        /// What is wrong.
        problem: String,
    },
}

/// The file: `{"tools": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolsFile {
    tools: Vec<ToolSpec>,
}

/// One tool as declared.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolSpec {
    /// The name clients call it by.
    name: String,
    /// What it does, for the model choosing tools.
    description: String,
    /// The actors a call visits, in order.
    route: Vec<String>,
    /// The JSON Schema of its input (an object); any object when left out.
    #[serde(default = "any_object")]
    input_schema: Value,
    /// How long a call may take; past it the task is canceled and the call fails.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
}

fn any_object() -> Value {
    json!({"type": "object"})
}

/// How long a tool call may take when its declaration does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// One tool, ready to serve.
struct Entry {
    spec: ToolSpec,
    tool: Tool,
    validator: jsonschema::Validator,
}

/// The tools `/mcp` offers.
#[derive(Default)]
pub struct McpTools {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for McpTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.spec.name))
            .finish()
    }
}

impl McpTools {
    /// Reads the tools file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, McpConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| McpConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Reads a tools file's text: `{"tools": [{"name", "description", "route",
    /// "input_schema"?, "timeout"?}]}`.
    pub fn from_json(text: &str) -> Result<Self, McpConfigError> {
        let file: ToolsFile =
            serde_json::from_str(text).map_err(|e| McpConfigError::Format(e.to_string()))?;
        let mut names = BTreeSet::new();
        let mut entries = Vec::with_capacity(file.tools.len());
        for spec in file.tools {
            let problem = |problem: String| McpConfigError::Tool {
                tool: spec.name.clone(),
                problem,
            };
            if !names.insert(spec.name.clone()) {
                return Err(problem("declared twice".into()));
            }
            if spec.route.is_empty() {
                return Err(problem("the route is empty".into()));
            }
            let Value::Object(schema) = &spec.input_schema else {
                return Err(problem("input_schema must be a JSON Schema object".into()));
            };
            let validator = jsonschema::validator_for(&spec.input_schema)
                .map_err(|e| problem(format!("input_schema is not a valid JSON Schema: {e}")))?;
            let tool = Tool::new(
                spec.name.clone(),
                spec.description.clone(),
                Arc::new(schema.clone()),
            );
            entries.push(Entry {
                spec,
                tool,
                validator,
            });
        }
        Ok(Self { entries })
    }

    /// How many tools there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.spec.name == name)
    }
}

/// The MCP server of one gateway.
pub struct McpServer<T> {
    api: Arc<Api<T>>,
    tools: Arc<McpTools>,
}

impl<T> McpServer<T> {
    /// A server offering `tools` over `api`'s pipeline.
    pub fn new(api: Arc<Api<T>>, tools: Arc<McpTools>) -> Self {
        Self { api, tools }
    }
}

impl<T: Transport + QueueAdmin> ServerHandler for McpServer<T> {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(
            self.tools.entries.iter().map(|e| e.tool.clone()).collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let Some(entry) = self.tools.find(&request.name) else {
            return Err(McpError::invalid_params(
                format!("no tool {:?}; tools/list names them", request.name),
                None,
            ));
        };
        let input = Value::Object(request.arguments.unwrap_or_default());
        let mismatches: Vec<String> = entry
            .validator
            .iter_errors(&input)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if !mismatches.is_empty() {
            return Ok(refusal(format!(
                "the input does not match the schema of tool {:?}: {}",
                entry.spec.name,
                mismatches.join("; ")
            )));
        }
        let call = Call {
            api: &self.api,
            peer: &context.peer,
            progress: context.meta.get_progress_token(),
        };
        // Subscribed before the task exists, so no wake-up is missed.
        let wake = self.api.live.subscribe();
        let timeout = entry.spec.timeout.as_secs_f64();
        let id = match submit_task(
            &self.api,
            entry.spec.route.clone(),
            input,
            Map::new(),
            Some(timeout),
        )
        .await
        {
            Ok(id) => id,
            Err(error) => return Ok(refusal(format!("the task was not submitted: {error}"))),
        };
        tracing::info!(task = %id, tool = %entry.spec.name, "MCP tool call submitted");
        let ending = tokio::select! {
            ending = call.follow(&id, wake) => ending,
            () = tokio::time::sleep(entry.spec.timeout) => Err(format!(
                "the task did not finish within the tool's timeout of {}; it was canceled",
                humantime::format_duration(entry.spec.timeout)
            )),
            () = context.ct.cancelled() => Err("the call was canceled by the client; so was the task".to_owned()),
        };
        match ending {
            Ok(result) => Ok(result.into()),
            // The request ended because this gateway is stopping (a rolling update): the
            // task is not the client's to lose; it goes on and can be followed elsewhere.
            Err(_) if self.api.closing.is_cancelled() => Ok(refusal(format!(
                "the gateway is shutting down; task {id} goes on: follow it at /api/v1/mesh/{id}"
            ))),
            Err(reason) => {
                if let Err(error) = self.api.store.command(id.clone(), Update::Cancel).await {
                    tracing::warn!(task = %id, %error, "could not cancel the task of an abandoned tool call");
                }
                Ok(refusal(format!("task {id}: {reason}")))
            }
        }
    }
}

/// A tool error the model reads.
fn refusal(text: String) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(text)]).into()
}

/// One tool call following its task.
struct Call<'a, T> {
    api: &'a Api<T>,
    peer: &'a Peer<RoleServer>,
    progress: Option<ProgressToken>,
}

impl<T> Call<'_, T> {
    /// Reports the task's events as progress until it finishes; its result, or why it
    /// could not be followed.
    async fn follow(
        &self,
        id: &str,
        mut wake: tokio::sync::broadcast::Receiver<String>,
    ) -> Result<CallToolResult, String> {
        let mut last = 0;
        let mut told = 0u32;
        loop {
            let events = self
                .api
                .store
                .events_after(id.to_owned(), last)
                .await
                .map_err(|e| e.to_string())?;
            for event in events {
                last = event.seq;
                if let Some(ending) = ending_of(id, &event) {
                    return Ok(ending);
                }
                told += 1;
                self.tell(&event, told).await;
            }
            // A wake-up only says "look"; a lost one costs at most a second.
            let _ = tokio::time::timeout(Duration::from_secs(1), wait_for(&mut wake, id)).await;
        }
    }

    /// Sends `event` as the `n`th progress notification, when the client asked for them.
    async fn tell(&self, event: &StoredEvent, n: u32) {
        let Some(token) = &self.progress else {
            return;
        };
        let message = match event.kind.as_str() {
            "fly" => event.data.get("data").map_or_else(String::new, Value::to_string),
            "status" => format!("status: {}", event.data["status"].as_str().unwrap_or("?")),
            "hop" | "started" => format!("{}: {}", event.data["actor"].as_str().unwrap_or("?"), event.kind),
            other => other.to_owned(),
        };
        let note = ProgressNotificationParam::new(token.clone(), f64::from(n)).with_message(message);
        if let Err(error) = self.peer.notify_progress(note).await {
            tracing::debug!(%error, "progress notification not delivered");
        }
    }
}

/// The tool's answer when `event` is the task's final status.
fn ending_of(id: &str, event: &StoredEvent) -> Option<CallToolResult> {
    if event.kind != "status" {
        return None;
    }
    let status: TaskState = serde_json::from_value(event.data["status"].clone()).ok()?;
    match status {
        TaskState::Succeeded => Some(CallToolResult::structured(json!({
            "id": id,
            "status": status,
            "result": event.data.get("result").cloned().unwrap_or(Value::Null),
        }))),
        TaskState::Failed => Some(CallToolResult::structured_error(json!({
            "id": id,
            "status": status,
            "error": event.data.get("error").cloned().unwrap_or(Value::Null),
        }))),
        TaskState::Canceled => Some(CallToolResult::error(vec![ContentBlock::text(format!(
            "task {id} was canceled"
        ))])),
        TaskState::Pending | TaskState::Running | TaskState::Paused => None,
    }
}
