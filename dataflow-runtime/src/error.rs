//! One error type with stable codes. Servers map each code to one HTTP
//! status / MCP error / CLI exit code; messages are plain text that name the
//! model, the field and what was expected.

use std::fmt;
use std::sync::Arc;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The stable, machine-readable kind of an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Input does not match the node's schema (missing/unknown field, wrong type, bad filter).
    Validation,
    /// No record matched an id or filter that must match one.
    NotFound,
    /// A unique constraint refused the write.
    UniqueViolation,
    /// A foreign key refused the write (missing parent, or children still referencing).
    FkViolation,
    /// A destructive operation needs `confirmed: true`.
    ConfirmationRequired,
    /// The database cannot be reached or the pool timed out.
    Connection,
    /// The configuration is invalid (bad URL, unsupported option).
    Config,
    /// The node type is not registered.
    UnknownNode,
    /// The operation is not allowed on this model (e.g. updates on an append-only model).
    NotAllowed,
    /// A feature that is configured on is not available in this build.
    NotSupported,
    /// The database reported an error the caller did not cause.
    Database,
    /// A workflow run exceeded its timeout.
    Timeout,
    /// A schema change needs review (risky operations, drift, a held lock).
    MigrationBlocked,
    /// A bug or an unexpected state inside the framework.
    Internal,
    /// A tenant-scoped model was used without a tenant in the context
    /// (never "all tenants").
    TenantRequired,
    /// The input is larger than a channel accepts (an HTTP body, a CLI
    /// `--inputs` document, MCP tool arguments).
    TooLarge,
    /// A server refused the request: its `Host` or `Origin` is not allowed.
    Forbidden,
    /// A server is at a configured capacity (concurrent async runs, MCP
    /// sessions); retry after a moment.
    Overloaded,
    /// A server route exists but not with this HTTP method.
    MethodNotAllowed,
    /// The record changed since the caller read it: its `version` is not
    /// the `expected_version` (optimistic locking). Nothing was written.
    Conflict,
    /// A server with authentication on could not tell who is calling: no
    /// credentials, or ones it does not accept (bad signature, expired,
    /// revoked, wrong issuer or audience).
    Unauthenticated,
    /// A rate limit refused the call: per caller, per workflow or for the
    /// whole instance, or too many failed sign-ins from one client address;
    /// the answer says when to retry (`Retry-After`).
    RateLimited,
    /// A bulk write would change more rows than its `max_affected` allows;
    /// nothing was changed, and the message says how many it would have.
    TooManyRows,
    /// An `Idempotency-Key` the caller already used with a different
    /// request (another workflow or other inputs): nothing ran; send the
    /// first request again, or use a new key.
    IdempotencyMismatch,
}

impl ErrorCode {
    /// Every code, for tables (status mappings, documentation, tests).
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::Validation,
        ErrorCode::NotFound,
        ErrorCode::UniqueViolation,
        ErrorCode::FkViolation,
        ErrorCode::ConfirmationRequired,
        ErrorCode::Connection,
        ErrorCode::Config,
        ErrorCode::UnknownNode,
        ErrorCode::NotAllowed,
        ErrorCode::NotSupported,
        ErrorCode::Database,
        ErrorCode::Timeout,
        ErrorCode::MigrationBlocked,
        ErrorCode::Internal,
        ErrorCode::TenantRequired,
        ErrorCode::TooLarge,
        ErrorCode::Forbidden,
        ErrorCode::Overloaded,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::Unauthenticated,
        ErrorCode::RateLimited,
        ErrorCode::TooManyRows,
        ErrorCode::IdempotencyMismatch,
    ];

    /// The code named `s` (the inverse of [`as_str`](Self::as_str)).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The stable name: `"validation"`, `"not_found"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Validation => "validation",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UniqueViolation => "unique_violation",
            ErrorCode::FkViolation => "fk_violation",
            ErrorCode::ConfirmationRequired => "confirmation_required",
            ErrorCode::Connection => "connection",
            ErrorCode::Config => "config",
            ErrorCode::UnknownNode => "unknown_node",
            ErrorCode::NotAllowed => "not_allowed",
            ErrorCode::NotSupported => "not_supported",
            ErrorCode::Database => "database",
            ErrorCode::Timeout => "timeout",
            ErrorCode::MigrationBlocked => "migration_blocked",
            ErrorCode::Internal => "internal",
            ErrorCode::TenantRequired => "tenant_required",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyRows => "too_many_rows",
            ErrorCode::IdempotencyMismatch => "idempotency_mismatch",
        }
    }
}

impl ErrorCode {
    /// The process exit code a command-line channel uses for this error
    /// (one table for every CLI; 0 is success, 2 is a usage error).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorCode::Validation
            | ErrorCode::ConfirmationRequired
            | ErrorCode::TooLarge
            | ErrorCode::TooManyRows
            | ErrorCode::IdempotencyMismatch => 3,
            ErrorCode::NotFound | ErrorCode::UnknownNode | ErrorCode::MethodNotAllowed => 4,
            ErrorCode::UniqueViolation
            | ErrorCode::FkViolation
            | ErrorCode::NotAllowed
            | ErrorCode::Forbidden
            | ErrorCode::Conflict => 5,
            ErrorCode::MigrationBlocked => 6,
            ErrorCode::Connection
            | ErrorCode::Timeout
            | ErrorCode::Overloaded
            | ErrorCode::RateLimited => 7,
            ErrorCode::Config | ErrorCode::NotSupported => 8,
            ErrorCode::Unauthenticated => 9,
            ErrorCode::Database | ErrorCode::Internal => 1,
            ErrorCode::TenantRequired => 5,
        }
    }

    /// The HTTP status a server answers with for this error. With
    /// [`exit_code`](Self::exit_code) this is the one table every channel
    /// maps codes through: a caller's mistake is a 4xx, never a 500, and an
    /// error is never a 2xx. Exhaustive, so a new code must pick its status.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Validation
            | ErrorCode::ConfirmationRequired
            | ErrorCode::TooManyRows
            | ErrorCode::IdempotencyMismatch => 422,
            ErrorCode::NotFound | ErrorCode::UnknownNode => 404,
            ErrorCode::UniqueViolation
            | ErrorCode::FkViolation
            | ErrorCode::NotAllowed
            | ErrorCode::MigrationBlocked
            | ErrorCode::Conflict => 409,
            ErrorCode::Connection | ErrorCode::Overloaded => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::TooLarge => 413,
            ErrorCode::Forbidden => 403,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::RateLimited => 429,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Config | ErrorCode::NotSupported => 501,
            ErrorCode::Database | ErrorCode::Internal => 500,
            ErrorCode::TenantRequired => 403,
        }
    }
}

/// Codes compare with their names, so `assert_eq!(err.code(), "not_found")` reads well.
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every failure of `dataflow`: a code, what went wrong, and where.
///
/// Where it applies lives in fields (model, field, node, item index), not
/// in the message text: [`message`](Self::message) and `Display` compose
/// the text from them, so callers never parse a message to find the node.
/// The underlying diesel / r2d2 / io error is kept as the
/// [`source`](std::error::Error::source).
#[derive(Debug, Clone)]
pub struct Error {
    // Boxed: `Result<T>` stays small on the success path.
    inner: Box<Inner>,
}

#[derive(Debug, Clone)]
struct Inner {
    code: ErrorCode,
    /// What went wrong, without where.
    detail: String,
    model: Option<String>,
    field: Option<String>,
    node: Option<String>,
    /// The error was raised inside `node`'s run: its name leads the message.
    inside_node: bool,
    /// The detail is about `model.field`, which the message names first.
    about_field: bool,
    /// Which item of a bulk input (`data[i]`) the error is about.
    index: Option<usize>,
    /// The workflow node whose failure this is: `(id, node type)`.
    step: Option<(String, String)>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.inner.code == other.inner.code
            && self.inner.detail == other.inner.detail
            && self.inner.model == other.inner.model
            && self.inner.field == other.inner.field
            && self.inner.node == other.inner.node
            && self.inner.inside_node == other.inner.inside_node
            && self.inner.about_field == other.inner.about_field
            && self.inner.index == other.inner.index
            && self.inner.step == other.inner.step
    }
}

impl Error {
    /// An error with `code` and a message that says what went wrong; add
    /// where with the `with_*` / [`in_node`](Self::in_node) methods.
    ///
    /// A message longer than [`MAX_MESSAGE_CHARS`](Self::MAX_MESSAGE_CHARS)
    /// is cut there: messages travel to every client, and input echoed
    /// into them must not come back whole.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            inner: Box::new(Inner {
                code,
                detail: clip(message.into(), Self::MAX_MESSAGE_CHARS),
                model: None,
                field: None,
                node: None,
                inside_node: false,
                about_field: false,
                index: None,
                step: None,
                source: None,
            }),
        }
    }

    /// How much of a caller's value a message quotes ([`Error::echo`]).
    pub const MAX_ECHO_CHARS: usize = 64;

    /// The longest message (and so the longest `error.message` any channel
    /// answers); longer ones end in `…`.
    pub const MAX_MESSAGE_CHARS: usize = 2_000;

    /// A caller's value as a message quotes it: whole up to
    /// [`MAX_ECHO_CHARS`](Self::MAX_ECHO_CHARS) characters, beyond that its
    /// start, `…` and its length, so a 1 MB id does not come back in its
    /// 404 and secrets in input are not repeated in full.
    pub fn echo(value: &str) -> std::borrow::Cow<'_, str> {
        match value.char_indices().nth(Self::MAX_ECHO_CHARS) {
            None => std::borrow::Cow::Borrowed(value),
            Some((end, _)) => {
                std::borrow::Cow::Owned(format!("{}… ({} bytes)", &value[..end], value.len()))
            }
        }
    }

    pub(crate) fn validation(model: &str, field: Option<&str>, message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Validation, message)
            .with_model(model)
            .with_field_opt(field)
    }

    /// A validation error about the value of `model.field`: the message
    /// reads `"{model}.{field}: {detail}"`.
    pub(crate) fn invalid_field(model: &str, field: &str, detail: impl Into<String>) -> Self {
        let mut e = Error::validation(model, Some(field), detail);
        e.inner.about_field = true;
        e
    }

    /// The same error, reported against node parameter `param` (its `field`
    /// becomes the parameter; a model field it named stays in the message).
    pub(crate) fn for_param(mut self, param: &str) -> Self {
        if self.inner.about_field {
            let detail = self.message();
            self.inner.detail = detail;
            self.inner.about_field = false;
        }
        self.with_field(param)
    }

    /// The same error (code, where, source) saying what went wrong in other words.
    pub(crate) fn reworded(mut self, detail: impl Into<String>) -> Self {
        self.inner.detail = detail.into();
        self
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, message)
    }

    /// Names the model the error is about.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.inner.model = Some(model.into());
        self
    }

    /// Names the field (or parameter, or workflow input) the error is about.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.inner.field = Some(clip(field.into(), Self::MAX_ECHO_CHARS));
        self
    }

    pub(crate) fn with_field_opt(mut self, field: Option<&str>) -> Self {
        self.inner.field = field.map(|f| clip(f.to_string(), Self::MAX_ECHO_CHARS));
        self
    }

    /// Names the node (type name, or id in a workflow) the error is about,
    /// without changing the message.
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.inner.node = Some(clip(node.into(), Self::MAX_ECHO_CHARS));
        self
    }

    /// Marks the error as raised while running `node`: it is named in the
    /// `node` field and leads the message (`"UserCreateNode: ..."`). A no-op
    /// when the error was already raised inside a node.
    pub fn in_node(mut self, node: impl Into<String>) -> Self {
        if !self.inner.inside_node {
            self.inner.node = Some(clip(node.into(), Self::MAX_ECHO_CHARS));
            self.inner.inside_node = true;
        }
        self
    }

    /// Marks the error as being about item `index` of a bulk input
    /// (`"data[3]: ..."`).
    pub fn at_item(mut self, index: usize) -> Self {
        self.inner.index = Some(index);
        self
    }

    /// Marks the error as the failure of workflow node `id` (of type
    /// `node_type`): `node` becomes the id and the message says which node
    /// failed. A no-op when the error already names its workflow node.
    pub fn in_step(mut self, id: &str, node_type: &str) -> Self {
        if self.inner.step.is_none() {
            self.inner.step = Some((id.to_string(), node_type.to_string()));
        }
        self
    }

    /// Keeps the error that caused this one, for [`std::error::Error::source`].
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.inner.source = Some(Arc::new(source));
        self
    }

    /// The stable code: match on it, or `code().as_str()` for `"validation"`, `"not_found"`, ...
    pub fn code(&self) -> ErrorCode {
        self.inner.code
    }

    /// The whole message, as every channel shows it: where (the workflow
    /// node, the node, the item) followed by what went wrong.
    pub fn message(&self) -> String {
        let mut m = String::new();
        if let Some(step) = &self.inner.step {
            m.push_str(&format!("node `{}` ({}) failed: ", step.0, step.1));
        }
        // Inside a workflow step the step already names the node type.
        let named_by_step = self
            .inner
            .step
            .as_ref()
            .is_some_and(|s| Some(&s.1) == self.inner.node.as_ref());
        if let (true, false, Some(node)) = (self.inner.inside_node, named_by_step, &self.inner.node)
        {
            m.push_str(node);
            m.push_str(": ");
        }
        if let Some(i) = self.inner.index {
            m.push_str(&format!("data[{i}]: "));
        }
        if let (true, Some(model), Some(field)) =
            (self.inner.about_field, &self.inner.model, &self.inner.field)
        {
            m.push_str(&format!("{model}.{field}: "));
        }
        m.push_str(&self.inner.detail);
        m
    }

    /// What went wrong, without where (the message without its prefixes).
    pub fn detail(&self) -> &str {
        &self.inner.detail
    }

    /// The model the error is about.
    pub fn model(&self) -> Option<&str> {
        self.inner.model.as_deref()
    }

    /// The field, parameter or workflow input the error is about.
    pub fn field(&self) -> Option<&str> {
        self.inner.field.as_deref()
    }

    /// The node the error is about: in a workflow the node id, otherwise the node type.
    pub fn node(&self) -> Option<&str> {
        match &self.inner.step {
            Some(step) => Some(&step.0),
            None => self.inner.node.as_deref(),
        }
    }

    /// Which item of a bulk input the error is about.
    pub fn index(&self) -> Option<usize> {
        self.inner.index
    }

    /// The JSON form every channel uses: `{"code", "message", "model", "field", "node"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("code".into(), self.inner.code.as_str().into());
        m.insert("message".into(), self.message().into());
        for (k, v) in [
            ("model", self.model()),
            ("field", self.field()),
            ("node", self.node()),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v.into());
            }
        }
        serde_json::Value::Object(m)
    }

    /// The inverse of [`to_json`](Self::to_json): an error received from
    /// another process (e.g. a remote server's error body). `None` when `v`
    /// is not an error object with a known code.
    pub fn from_json(v: &serde_json::Value) -> Option<Error> {
        let code = ErrorCode::parse(v.get("code")?.as_str()?)?;
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let mut e = Error::new(code, text("message").unwrap_or_default());
        e.inner.model = text("model");
        e.inner.field = text("field");
        e.inner.node = text("node");
        Some(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.code, self.message())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
fn clip(s: String, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s,
        Some((end, _)) => {
            let mut s = s;
            s.truncate(end);
            s.push('…');
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_composed_from_where_and_what() {
        let e = Error::invalid_field("User", "email", "expected a string, got an integer")
            .at_item(3)
            .in_node("UserBulkCreateNode");
        assert_eq!(
            e.message(),
            "UserBulkCreateNode: data[3]: User.email: expected a string, got an integer"
        );
        assert_eq!(e.detail(), "expected a string, got an integer");
        assert_eq!(
            (e.code(), e.model(), e.field(), e.node(), e.index()),
            (
                ErrorCode::Validation,
                Some("User"),
                Some("email"),
                Some("UserBulkCreateNode"),
                Some(3)
            )
        );
        // A second node context does not stack.
        assert_eq!(e.clone().in_node("Other").message(), e.message());
        let failed = e.in_step("create", "UserBulkCreateNode");
        assert_eq!(failed.node(), Some("create"));
        assert!(failed
            .message()
            .starts_with("node `create` (UserBulkCreateNode) failed: data[3]"));
        assert_eq!(
            failed.to_json(),
            serde_json::json!({
                "code": "validation",
                "message": failed.message(),
                "model": "User",
                "field": "email",
                "node": "create",
            })
        );
        assert_eq!(
            failed.to_string(),
            format!("validation: {}", failed.message())
        );
    }

    #[test]
    fn the_cause_is_kept_as_the_source() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Error::new(ErrorCode::Config, "cannot read config").with_source(io);
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "no such file");
        assert!(std::error::Error::source(&Error::internal("x")).is_none());
    }

    #[test]
    fn codes_read_as_their_names() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(code, code.as_str());
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
