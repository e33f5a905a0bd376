//! One error type with stable codes. Servers map each code to one HTTP
//! status / MCP error / CLI exit code; messages are plain text that name the
//! model, the field and what was expected.

use std::fmt;

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
}

impl ErrorCode {
    /// Every code, for tables (status mappings, documentation, tests).
    pub const ALL: [ErrorCode; 14] = [
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
    ];

    /// The code named `s` (the inverse of [`as_str`](Self::as_str)).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

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
        }
    }
}

impl ErrorCode {
    /// The process exit code a command-line channel uses for this error
    /// (one table for every CLI; 0 is success, 2 is a usage error).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorCode::Validation | ErrorCode::ConfirmationRequired => 3,
            ErrorCode::NotFound | ErrorCode::UnknownNode => 4,
            ErrorCode::UniqueViolation | ErrorCode::FkViolation | ErrorCode::NotAllowed => 5,
            ErrorCode::MigrationBlocked => 6,
            ErrorCode::Connection | ErrorCode::Timeout => 7,
            ErrorCode::Config | ErrorCode::NotSupported => 8,
            ErrorCode::Database | ErrorCode::Internal => 1,
        }
    }

    /// The HTTP status a server answers with for this error. With
    /// [`exit_code`](Self::exit_code) this is the one table every channel
    /// maps codes through: a caller's mistake is a 4xx, never a 500, and an
    /// error is never a 2xx. Exhaustive, so a new code must pick its status.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Validation | ErrorCode::ConfirmationRequired => 422,
            ErrorCode::NotFound | ErrorCode::UnknownNode => 404,
            ErrorCode::UniqueViolation
            | ErrorCode::FkViolation
            | ErrorCode::NotAllowed
            | ErrorCode::MigrationBlocked => 409,
            ErrorCode::Connection => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Config | ErrorCode::NotSupported => 501,
            ErrorCode::Database | ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every failure of `dataflow`: a code, a message, and where it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: ErrorCode,
    message: String,
    model: Option<String>,
    field: Option<String>,
    node: Option<String>,
    /// The outputs of the workflow nodes that completed before the failure.
    completed: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            model: None,
            field: None,
            node: None,
            completed: None,
        }
    }

    pub(crate) fn validation(model: &str, field: Option<&str>, message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Validation, message)
            .with_model(model)
            .with_field_opt(field)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, message)
    }

    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    fn with_field_opt(mut self, field: Option<&str>) -> Self {
        self.field = field.map(str::to_string);
        self
    }

    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    pub fn with_completed(mut self, results: serde_json::Map<String, serde_json::Value>) -> Self {
        self.completed = Some(Box::new(results));
        self
    }

    /// For a failed workflow run: the outputs of the nodes that did complete,
    /// keyed by node id.
    pub fn completed(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.completed.as_deref()
    }

    /// The stable code as a string: `"validation"`, `"not_found"`, ...
    pub fn code(&self) -> &'static str {
        self.code.as_str()
    }

    pub fn kind(&self) -> ErrorCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// The JSON form every channel uses: `{"code", "message", "model", "field", "node"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("code".into(), self.code().into());
        m.insert("message".into(), self.message.clone().into());
        for (k, v) in [
            ("model", &self.model),
            ("field", &self.field),
            ("node", &self.node),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v.clone().into());
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
        Some(Error {
            code,
            message: text("message").unwrap_or_default(),
            model: text("model"),
            field: text("field"),
            node: text("node"),
            completed: None,
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}
