//! API keys (and OAuth client secrets) stored in the application's own
//! database, table `nexus_api_keys`.
//!
//! A key reads `nxk_<prefix>_<secret>`: the prefix (16 hex digits) finds its
//! row, the whole key is checked against the row's Argon2id hash (a
//! constant-time comparison), and only the hash is stored: a key is shown
//! once, when it is made. A verified key is remembered for a short while
//! (under the SHA-256 of the key, never the key) so Argon2 is not paid on
//! every request.
//!
//! The table is created on first use with `CREATE TABLE IF NOT EXISTS`
//! through [`DataFlow::raw_execute`] (bound values; times as Unix seconds,
//! so SQLite and PostgreSQL store the same). It is not a model: migrations
//! neither plan nor drop it.

use super::cache::{self, Source, Verified};
use super::{invalid, Identity, Refusal};
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use dataflow::{DataFlow, Error, ErrorCode, Result};
use serde_json::{json, Value};
use std::time::Duration;

const CREATE: &str = "CREATE TABLE IF NOT EXISTS nexus_api_keys (\
    id VARCHAR(32) PRIMARY KEY, \
    prefix VARCHAR(32) NOT NULL UNIQUE, \
    hash TEXT NOT NULL, \
    name TEXT NOT NULL, \
    roles TEXT NOT NULL, \
    tenant TEXT, \
    client BIGINT NOT NULL, \
    created BIGINT NOT NULL, \
    last_used BIGINT, \
    expires BIGINT, \
    revoked BIGINT)";

const KEY_PREFIX: &str = "nxk_";

/// The most keys remembered as matching their row's hash.
const PROVEN_MAX: usize = 10_000;

/// Whether a bearer token is one of our API keys rather than a JWT.
pub(crate) fn looks_like_key(token: &str) -> bool {
    token.starts_with(KEY_PREFIX)
}

/// 1 to 128 visible ASCII characters (names, roles, tenants, subjects).
pub(crate) fn valid_text(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// What `keys create` makes.
#[derive(Debug, Clone)]
pub(crate) struct NewKey {
    pub(crate) name: String,
    pub(crate) roles: Vec<String>,
    pub(crate) tenant: Option<String>,
    pub(crate) expires_in: Option<Duration>,
    /// An OAuth client: its secret is for `POST /oauth/token` only.
    pub(crate) client: bool,
}

/// A row as the token endpoint and the cache need it.
struct Row {
    id: String,
    hash: String,
    identity: Identity,
    client: bool,
    expires: Option<i64>,
}

/// The key store of one application.
pub(crate) struct Keys {
    db: DataFlow,
    ready: tokio::sync::OnceCell<()>,
    /// Verified API keys (not client secrets: the token endpoint always
    /// verifies), one verification for concurrent first uses.
    cache: Verified,
    /// Keys whose Argon2id verification succeeded (by SHA-256) and the
    /// hash they matched: once the cache's entry expires, the row is read
    /// again (revoked? expired?) but a key that matched this very hash
    /// before is not hashed again.
    proven: std::sync::Mutex<std::collections::HashMap<[u8; 32], String>>,
    /// Argon2id verifications run (keys and client secrets): a metric.
    argon2_runs: prometheus::IntCounter,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Keys {
    pub(crate) fn new(db: DataFlow, ttl: Duration, argon2_runs: prometheus::IntCounter) -> Keys {
        Keys {
            db,
            ready: tokio::sync::OnceCell::new(),
            cache: Verified::new(ttl),
            proven: Default::default(),
            argon2_runs,
        }
    }

    async fn ensure_table(&self) -> Result<()> {
        self.ready
            .get_or_try_init(|| async { self.db.raw_execute(CREATE, vec![]).await.map(drop) })
            .await
            .map(drop)
    }

    /// Makes a key: its row and the key itself (shown once).
    pub(crate) async fn create(&self, new: NewKey) -> Result<Value> {
        for (what, value) in std::iter::once(("--name", &new.name))
            .chain(new.roles.iter().map(|r| ("--role", r)))
            .chain(new.tenant.iter().map(|t| ("--tenant", t)))
        {
            if !valid_text(value) {
                return Err(Error::new(
                    ErrorCode::Validation,
                    format!("{what} must be 1 to 128 visible ASCII characters"),
                )
                .with_field(what.trim_start_matches('-')));
            }
        }
        self.ensure_table().await?;
        let id = hex(&super::jwt::random_bytes::<6>()?);
        let prefix = hex(&super::jwt::random_bytes::<8>()?);
        let secret = hex(&super::jwt::random_bytes::<32>()?);
        let key = format!("{KEY_PREFIX}{prefix}_{secret}");
        let hash = hash_key(key.clone()).await?;
        let created = now();
        let expires = new
            .expires_in
            .map(|d| created.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
        let expires_sql = if expires.is_some() { "?" } else { "NULL" };
        let mut params = vec![
            json!(id),
            json!(prefix),
            json!(hash),
            json!(new.name),
            json!(new.roles.join(" ")),
            json!(new.tenant),
            json!(i64::from(new.client)),
            json!(created),
        ];
        if let Some(e) = expires {
            params.push(json!(e));
        }
        self.db
            .raw_execute(
                &format!(
                    "INSERT INTO nexus_api_keys (id, prefix, hash, name, roles, tenant, client, created, expires) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, {expires_sql})"
                ),
                params,
            )
            .await?;
        let mut out = json!({
            "id": id, "name": new.name, "roles": new.roles, "tenant": new.tenant,
            "created": rfc3339(Some(created)), "expires": rfc3339(expires),
        });
        if new.client {
            out["client_id"] = json!(id);
            out["client_secret"] = json!(key);
        } else {
            out["key"] = json!(key);
        }
        Ok(out)
    }

    /// Every key, newest first, without secrets.
    pub(crate) async fn list(&self) -> Result<Value> {
        self.ensure_table().await?;
        let rows = self
            .db
            .raw_query(
                "SELECT id, prefix, name, roles, tenant, client, created, last_used, expires, revoked \
                 FROM nexus_api_keys ORDER BY created DESC, id",
                vec![],
            )
            .await?;
        let keys: Vec<Value> = rows
            .into_iter()
            .map(|r| {
                let roles: Vec<&str> = r[3].as_str().unwrap_or("").split_whitespace().collect();
                json!({
                    "id": r[0], "prefix": format!("{KEY_PREFIX}{}", r[1].as_str().unwrap_or("")),
                    "name": r[2], "roles": roles, "tenant": r[4],
                    "client": r[5].as_i64() == Some(1),
                    "created": rfc3339(r[6].as_i64()), "last_used": rfc3339(r[7].as_i64()),
                    "expires": rfc3339(r[8].as_i64()), "revoked": rfc3339(r[9].as_i64()),
                })
            })
            .collect();
        Ok(Value::Array(keys))
    }

    /// Revokes the key `id`; this process forgets it at once.
    pub(crate) async fn revoke(&self, id: &str) -> Result<()> {
        self.ensure_table().await?;
        let n = self
            .db
            .raw_execute(
                "UPDATE nexus_api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
                vec![json!(now()), json!(id)],
            )
            .await?;
        if n == 0 {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!(
                    "no API key `{}` that is not revoked already",
                    Error::echo(id)
                ),
            ));
        }
        self.cache.clear();
        super::lock(&self.proven).clear();
        Ok(())
    }

    async fn row(&self, key: &str) -> std::result::Result<Row, Refusal> {
        let prefix = key
            .strip_prefix(KEY_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(p, _)| p)
            .filter(|p| p.len() == 16 && p.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| invalid("the API key is malformed"))?;
        self.ensure_table().await.map_err(Refusal::Unavailable)?;
        let rows = self
            .db
            .raw_query(
                "SELECT id, hash, name, roles, tenant, client, expires, revoked \
                 FROM nexus_api_keys WHERE prefix = ?",
                vec![json!(prefix)],
            )
            .await
            .map_err(Refusal::Unavailable)?;
        let r = rows
            .into_iter()
            .next()
            .ok_or_else(|| invalid("unknown API key"))?;
        if r[7].as_i64().is_some() {
            // Checked after the hash, so a guess learns nothing from it.
            let row_hash = r[1].as_str().unwrap_or_default().to_string();
            self.verify_key(key, row_hash).await?;
            return Err(invalid("the API key was revoked"));
        }
        Ok(Row {
            id: r[0].as_str().unwrap_or_default().to_string(),
            hash: r[1].as_str().unwrap_or_default().to_string(),
            identity: Identity {
                actor: format!(
                    "{}:{}",
                    if r[5].as_i64() == Some(1) {
                        "client"
                    } else {
                        "apikey"
                    },
                    r[2].as_str().unwrap_or_default()
                ),
                tenant: r[4].as_str().map(str::to_string),
                roles: r[3]
                    .as_str()
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_string)
                    .collect(),
            },
            client: r[5].as_i64() == Some(1),
            expires: r[6].as_i64(),
        })
    }

    /// The identity of an API key (not a client secret): remembered, or
    /// verified (once for all the requests that present it meanwhile).
    pub(crate) async fn verify(
        &self,
        key: &str,
    ) -> std::result::Result<(Identity, Source), Refusal> {
        self.cache
            .get_or_verify(cache::digest(key), || async {
                let row = self.checked(key).await?;
                if row.client {
                    return Err(invalid(
                        "an OAuth client secret is not an API key: exchange it at /oauth/token",
                    ));
                }
                Ok((row.identity, row.expires))
            })
            .await
    }

    /// The identity of OAuth client `client_id` with `secret`.
    pub(crate) async fn client(
        &self,
        client_id: &str,
        secret: &str,
    ) -> std::result::Result<Identity, Refusal> {
        let row = self.checked(secret).await?;
        if !row.client || row.id != client_id {
            return Err(invalid("unknown client or wrong secret"));
        }
        Ok(row.identity)
    }

    /// The row of `key` once its hash verified, not revoked nor expired;
    /// `last_used` is updated in the background.
    async fn checked(&self, key: &str) -> std::result::Result<Row, Refusal> {
        let row = self.row(key).await?;
        let digest = cache::digest(key);
        let proven = super::lock(&self.proven)
            .get(&digest)
            .is_some_and(|hash| *hash == row.hash);
        if !proven {
            self.verify_key(key, row.hash.clone()).await?;
            let mut known = super::lock(&self.proven);
            if known.len() >= PROVEN_MAX {
                known.clear();
            }
            known.insert(digest, row.hash.clone());
        }
        if row.expires.is_some_and(|e| e <= now()) {
            return Err(invalid("the API key has expired"));
        }
        let (db, id) = (self.db.clone(), row.id.clone());
        tokio::spawn(async move {
            let _ = db
                .raw_execute(
                    "UPDATE nexus_api_keys SET last_used = ? WHERE id = ?",
                    vec![json!(now()), json!(id)],
                )
                .await;
        });
        Ok(row)
    }

    /// Argon2id verification (constant-time comparison) on the blocking
    /// pool, never on the async workers.
    async fn verify_key(&self, key: &str, hash: String) -> std::result::Result<(), Refusal> {
        self.argon2_runs.inc();
        let key = key.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                argon2::Argon2::default()
                    .verify_password(key.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(invalid("unknown API key"))
        }
    }
}

async fn hash_key(key: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        argon2::Argon2::default()
            .hash_password(key.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| Error::new(ErrorCode::Internal, format!("hashing an API key: {e}")))
    })
    .await
    .map_err(|e| Error::new(ErrorCode::Internal, format!("hashing an API key: {e}")))?
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn rfc3339(secs: Option<i64>) -> Value {
    secs.and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
        .unwrap_or(Value::Null)
}
