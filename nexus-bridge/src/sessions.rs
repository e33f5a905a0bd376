//! Sessions (`enable_sessions(true)`): JSON data kept in the application's
//! own database, table `nexus_sessions`, made on one channel and used on
//! any other, by any instance on the same database.
//!
//! A session id is `nxs_` and 48 hex digits (192 random bits from the OS):
//! unguessable, so knowing it is what lets a caller name it. A session
//! belongs to the caller that made it (its actor and tenant, as the
//! caller's context says); any other caller gets `not_found`, the same as
//! for an id that never existed or has expired, so nothing leaks whether
//! it exists. The operator (the in-process CLI without `--role`, MCP over
//! stdio, `Nexus::execute`) reaches every session, as it reaches the
//! database.
//!
//! A session expires `session_ttl` after it was made (use does not extend
//! it): it then answers `not_found`, and rows past their expiry are
//! deleted on a later `create` (at most once per `session_ttl`, and at
//! least once a minute while sessions are made).
//!
//! The table is created on first use with `CREATE TABLE IF NOT EXISTS`
//! through [`DataFlow::raw_execute`] (bound values; times as Unix
//! milliseconds, so SQLite and PostgreSQL store the same). Two processes
//! booting at once on PostgreSQL can both try to create it; the loser's
//! error is retried, and then finds the table. It is not a model:
//! migrations neither plan nor drop it.
//!
//! Writes are read-modify-write under a version number (optimistic): two
//! concurrent patches of one session both land, one after the other.

use crate::channel::{Caller, Origin};
use dataflow::{DataFlow, Error, ErrorCode, Result, SessionData};
use serde_json::{json, Map, Value};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CREATE: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS nexus_sessions (\
     id VARCHAR(64) PRIMARY KEY, \
     actor TEXT NOT NULL, \
     tenant TEXT NOT NULL, \
     data TEXT NOT NULL, \
     version BIGINT NOT NULL, \
     created BIGINT NOT NULL, \
     expires BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS nexus_sessions_expires ON nexus_sessions (expires)",
];

const ID_PREFIX: &str = "nxs_";

/// The largest session data, as JSON text.
pub const MAX_SESSION_BYTES: usize = 256 << 10;

/// How often a conflicting concurrent write is retried before `conflict`.
const WRITE_ATTEMPTS: usize = 8;

/// The MCP tools sessions add (and the workflow names they reserve).
pub(crate) const TOOLS: [&str; 4] = [
    "session_create",
    "session_get",
    "session_set",
    "session_delete",
];

/// The HTTP header (also accepted on MCP over HTTP) naming a run's session.
pub(crate) const HEADER: &str = "x-session-id";

/// The MCP `_meta` key naming a tool call's session.
pub const MCP_META_KEY: &str = "nexus/session";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rfc3339(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// The error for a session this caller may not see: the same whether it
/// never existed, expired, or belongs to someone else.
fn not_found(id: &str) -> Error {
    Error::new(
        ErrorCode::NotFound,
        format!(
            "no session `{}`: it does not exist, has expired, or belongs to another caller",
            Error::echo(id)
        ),
    )
    .with_field("session")
}

/// Who a session belongs to: the caller's actor and tenant (`""` for none).
fn owner(caller: &Caller) -> (String, String) {
    let c = &caller.context;
    (
        c.actor.clone().unwrap_or_default(),
        c.tenant.clone().unwrap_or_default(),
    )
}

/// Whether `caller` may use a session owned by `(actor, tenant)`.
fn may_use(caller: &Caller, actor: &str, tenant: &str) -> bool {
    if caller.origin == Origin::Operator || caller.context.system {
        return true;
    }
    let (a, t) = owner(caller);
    a == actor && t == tenant
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes a
/// key, anything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// A session row as this module reads it.
struct Row {
    data: Map<String, Value>,
    version: i64,
    created: i64,
    expires: i64,
}

/// The sessions of one application.
pub(crate) struct Sessions {
    db: DataFlow,
    ttl: Duration,
    ready: tokio::sync::OnceCell<()>,
    last_purge: Mutex<Option<Instant>>,
}

impl Sessions {
    pub(crate) fn new(db: DataFlow, ttl: Duration) -> Sessions {
        Sessions {
            db,
            ttl,
            ready: tokio::sync::OnceCell::new(),
            last_purge: Mutex::new(None),
        }
    }

    /// Creates the table once per process (every instance may try).
    pub(crate) async fn ensure_table(&self) -> Result<()> {
        self.ready
            .get_or_try_init(|| async {
                for statement in CREATE {
                    let mut attempt = 0;
                    loop {
                        match self.db.raw_execute(statement, vec![]).await {
                            Ok(_) => break,
                            // Another process created it at the same moment
                            // (PostgreSQL's catalog says so with a unique
                            // violation): the next try sees it.
                            Err(_) if attempt < 3 => {
                                attempt += 1;
                                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(())
            })
            .await
            .map(drop)
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// The data a session may hold: an object within [`MAX_SESSION_BYTES`].
    fn checked(data: Value, what: &str) -> Result<(Map<String, Value>, String)> {
        let Value::Object(map) = data else {
            return Err(Error::new(
                ErrorCode::Validation,
                format!("{what}: a session's data is a JSON object"),
            )
            .with_field("data"));
        };
        let text = serde_json::to_string(&map).unwrap_or_default();
        if text.len() > MAX_SESSION_BYTES {
            return Err(crate::channel::too_large_over(
                &format!("{what}: session data"),
                MAX_SESSION_BYTES,
            ));
        }
        Ok((map, text))
    }

    /// A new session of `caller`'s with `data` (an object; `null` is empty).
    pub(crate) async fn create(&self, caller: &Caller, data: Value) -> Result<Value> {
        let data = if data.is_null() {
            Value::Object(Map::new())
        } else {
            data
        };
        let (data, text) = Self::checked(data, "session create")?;
        self.ensure_table().await?;
        self.purge_now_and_then().await;
        let id = format!(
            "{ID_PREFIX}{}",
            crate::auth::jwt::random_bytes::<24>()?
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let (actor, tenant) = owner(caller);
        let created = now_ms();
        let expires = created.saturating_add(self.ttl_ms());
        self.db
            .raw_execute(
                "INSERT INTO nexus_sessions (id, actor, tenant, data, version, created, expires) \
                 VALUES (?, ?, ?, ?, 1, ?, ?)",
                vec![
                    json!(id),
                    json!(actor),
                    json!(tenant),
                    json!(text),
                    json!(created),
                    json!(expires),
                ],
            )
            .await?;
        Ok(Self::answer(
            &id,
            &Row {
                data,
                version: 1,
                created,
                expires,
            },
        ))
    }

    fn answer(id: &str, row: &Row) -> Value {
        json!({"id": id, "data": row.data, "created": rfc3339(row.created), "expires": rfc3339(row.expires)})
    }

    /// The live row of session `id` if `caller` may use it.
    async fn row(&self, caller: &Caller, id: &str) -> Result<Row> {
        let well_formed = id
            .strip_prefix(ID_PREFIX)
            .is_some_and(|h| h.len() == 48 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !well_formed {
            return Err(not_found(id));
        }
        self.ensure_table().await?;
        let rows = self
            .db
            .raw_query(
                "SELECT actor, tenant, data, version, created, expires FROM nexus_sessions \
                 WHERE id = ? AND expires > ?",
                vec![json!(id), json!(now_ms())],
            )
            .await?;
        let Some(r) = rows.into_iter().next() else {
            return Err(not_found(id));
        };
        let text = |i: usize| r[i].as_str().unwrap_or_default();
        if !may_use(caller, text(0), text(1)) {
            return Err(not_found(id));
        }
        let data = match serde_json::from_str(text(2)) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(Error::new(
                    ErrorCode::Internal,
                    format!("session `{id}`: unreadable data"),
                ))
            }
        };
        Ok(Row {
            data,
            version: r[3].as_i64().unwrap_or(0),
            created: r[4].as_i64().unwrap_or(0),
            expires: r[5].as_i64().unwrap_or(0),
        })
    }

    /// `{"id", "data", "created", "expires"}` of session `id`.
    pub(crate) async fn get(&self, caller: &Caller, id: &str) -> Result<Value> {
        Ok(Self::answer(id, &self.row(caller, id).await?))
    }

    /// The data of session `id`, for a run.
    pub(crate) async fn data(&self, caller: &Caller, id: &str) -> Result<SessionData> {
        Ok(SessionData::new(self.row(caller, id).await?.data))
    }

    /// Applies an RFC 7386 merge patch (an object) to session `id`'s data.
    pub(crate) async fn patch(&self, caller: &Caller, id: &str, patch: Value) -> Result<Value> {
        if !patch.is_object() {
            return Err(Error::new(
                ErrorCode::Validation,
                "session patch: send a JSON object (an RFC 7386 merge patch: keys set, `null` removes)",
            )
            .with_field("data"));
        }
        for _ in 0..WRITE_ATTEMPTS {
            let row = self.row(caller, id).await?;
            let mut data = Value::Object(row.data);
            merge_patch(&mut data, &patch);
            let (data, text) = Self::checked(data, "session patch")?;
            let changed = self
                .db
                .raw_execute(
                    "UPDATE nexus_sessions SET data = ?, version = version + 1 \
                     WHERE id = ? AND version = ? AND expires > ?",
                    vec![json!(text), json!(id), json!(row.version), json!(now_ms())],
                )
                .await?;
            if changed == 1 {
                return Ok(Self::answer(
                    id,
                    &Row {
                        data,
                        version: row.version + 1,
                        ..row
                    },
                ));
            }
        }
        Err(Error::new(
            ErrorCode::Conflict,
            format!("session `{id}` changed {WRITE_ATTEMPTS} times while being written; retry"),
        ))
    }

    /// Deletes session `id`.
    pub(crate) async fn delete(&self, caller: &Caller, id: &str) -> Result<()> {
        self.row(caller, id).await?;
        self.db
            .raw_execute("DELETE FROM nexus_sessions WHERE id = ?", vec![json!(id)])
            .await?;
        Ok(())
    }

    /// Deletes expired rows, at most once per `min(ttl, 1 minute)`.
    async fn purge_now_and_then(&self) {
        let every = self.ttl.min(Duration::from_secs(60));
        {
            let mut last = self.last_purge.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < every) {
                return;
            }
            *last = Some(Instant::now());
        }
        // A failed purge is retried next time; expired rows answer
        // `not_found` meanwhile.
        let _ = self.purge().await;
    }

    /// Deletes every expired session now; how many.
    pub(crate) async fn purge(&self) -> Result<u64> {
        self.ensure_table().await?;
        self.db
            .raw_execute(
                "DELETE FROM nexus_sessions WHERE expires <= ?",
                vec![json!(now_ms())],
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The RFC's own example (section 3).
        let mut doc = json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"}, "tags": ["example", "sample"], "content": "This will be unchanged"});
        let patch = json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890", "author": {"familyName": null}, "tags": ["example"]});
        merge_patch(&mut doc, &patch);
        assert_eq!(
            doc,
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"], "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
        let mut scalar = json!({"a": 1});
        merge_patch(&mut scalar, &json!({"a": {"b": null, "c": 2}}));
        assert_eq!(scalar, json!({"a": {"c": 2}}));
    }

    #[test]
    fn only_the_owner_and_the_operator_may_use_a_session() {
        let ann = Caller::new(
            dataflow::Context::new().actor("ann").tenant("acme"),
            Origin::Remote(None),
        );
        assert!(may_use(&ann, "ann", "acme"));
        assert!(!may_use(&ann, "ann", "other"));
        assert!(!may_use(&ann, "bob", "acme"));
        let anonymous = Caller::new(dataflow::Context::new(), Origin::Remote(None));
        assert!(!may_use(&anonymous, "ann", "acme"));
        assert!(may_use(&anonymous, "", ""));
        let operator = Caller::new(dataflow::Context::new(), Origin::Operator);
        assert!(may_use(&operator, "ann", "acme"));
    }
}
