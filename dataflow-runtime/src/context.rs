//! Who is acting, for which tenant, with which roles, in which request:
//! the execution context every node, workflow run and channel carries.

use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The execution context of a call: its actor (audit: who), tenant
/// (multi-tenancy: whose data), roles (nexus RBAC) and request id
/// (correlation in logs, audit rows and events).
///
/// Built with chained setters and attached with [`DataFlow::with_context`]:
///
/// ```
/// # async fn f(db: dataflow::DataFlow) -> dataflow::Result<()> {
/// let ctx = dataflow::Context::new()
///     .actor("user:42")
///     .tenant("acme")
///     .roles(["editor"])
///     .request_id("01J...");
/// let scoped = db.with_context(ctx); // cheap: same pool, same writer
/// assert_eq!(scoped.context().tenant.as_deref(), Some("acme"));
/// # Ok(()) }
/// ```
///
/// The fields are public to read; a context is made with the setters, so
/// fields added later are not a breaking change.
///
/// [`DataFlow::with_context`]: crate::DataFlow::with_context
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Context {
    /// Who is acting (`"user:42"`, `"apikey:ci"`), if known.
    pub actor: Option<String>,
    /// Whose data the call may see and change, if any.
    pub tenant: Option<String>,
    /// The caller's roles (nexus checks them against a workflow's).
    pub roles: Vec<String>,
    /// The request this call belongs to, for correlation.
    pub request_id: Option<String>,
    /// The channel the call came through (`"http"`, `"cli"`, `"mcp"`),
    /// recorded in audit rows; `None` for direct calls from Rust.
    pub channel: Option<String>,
    /// [`Context::system`]: an operator's tool, which may act across tenants.
    pub system: bool,
    /// The caller's session data (nexus sessions), which workflow templates
    /// read as `{{session.<key>}}`. Never serialized (audit rows, events).
    #[serde(skip)]
    pub session: Option<SessionData>,
}

/// A session's data as a run sees it: a JSON object, cheap to clone. Its
/// `Debug` names the keys only, so logging a context never prints what a
/// session holds.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SessionData(Arc<Map<String, Value>>);

impl SessionData {
    /// The data `map`.
    pub fn new(map: Map<String, Value>) -> Self {
        SessionData(Arc::new(map))
    }

    /// The data.
    pub fn data(&self) -> &Map<String, Value> {
        &self.0
    }
}

impl std::fmt::Debug for SessionData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Context {
    /// The empty context: no actor, no tenant, no roles.
    pub fn new() -> Self {
        Context::default()
    }

    /// The explicit escape hatch for admin tools: acts as `system` and may
    /// read across tenants; writes to tenant-scoped models must still name
    /// the tenant ([`tenant`](Self::tenant)).
    pub fn system() -> Self {
        Context {
            actor: Some("system".into()),
            system: true,
            ..Context::default()
        }
    }

    /// Sets who is acting.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Sets the tenant whose data the call may see and change.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Sets the caller's roles.
    pub fn roles<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the request id.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Sets the channel the call came through (`"http"`, `"cli"`, `"mcp"`),
    /// which audit rows record.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// Attaches session data, read by templates as `{{session.<key>}}`.
    pub fn session(mut self, data: SessionData) -> Self {
        self.session = Some(data);
        self
    }

    /// Whether the caller has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}
