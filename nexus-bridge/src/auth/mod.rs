//! Authentication (`enable_auth(true)`): who is calling, from a JWT, an
//! API key or an OAuth2 client-credentials token, as an [`Identity`] that
//! becomes the call's [`dataflow::Context`] (actor, tenant, roles).
//!
//! One middleware guards both listeners (the HTTP API and MCP over
//! streamable HTTP), before routing: `/health`, `/ready`, the token endpoint
//! and the `/.well-known` metadata are open; `/metrics` needs a role
//! (`metrics` by default); `/openapi.json` needs an identity unless made
//! public; everything else needs an identity. A request without credentials
//! is 401 `unauthenticated` with `WWW-Authenticate: Bearer realm="nexus"`;
//! one with credentials that do not verify adds `error="invalid_token"` and
//! a description. Failed attempts (credentials presented but refused) are
//! limited per client address: past the limit the address is answered 429
//! `rate_limited` with `Retry-After` until it may try again.
//!
//! The in-process CLI and MCP over stdio are the operator's (whoever can run
//! the program can read its database): they take no credentials.

mod cache;
pub(crate) mod jwt;
pub(crate) mod keys;
pub(crate) mod oauth;

use crate::channel::http_error;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use dataflow::{DataFlow, Error, ErrorCode, Result};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where identities come from and what the servers leave open: the
/// credential sources (at least one), the JWT rules, and the limits.
///
/// ```
/// use std::time::Duration;
/// let auth = nexus::Auth::new()
///     .jwt_hs256("a secret of at least 32 bytes, from the environment")
///     .jwt_issuer("https://id.example.com")
///     .jwt_audience("orders-api")
///     .jwt_leeway(Duration::from_secs(30))
///     .tenant_claim("org")
///     .api_keys(true);
/// # let _ = auth;
/// ```
///
/// Hand it to [`NexusBuilder::auth`](crate::NexusBuilder::auth). Secrets
/// are never printed (its `Debug` redacts them).
#[derive(Clone)]
pub struct Auth {
    pub(crate) hs256: Option<Vec<u8>>,
    pub(crate) pems: Vec<(jsonwebtoken::Algorithm, Vec<u8>)>,
    pub(crate) jwks: Option<PathBuf>,
    pub(crate) jwks_reload: Duration,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
    pub(crate) leeway: Duration,
    pub(crate) tenant_claim: String,
    pub(crate) roles_claim: String,
    pub(crate) api_keys: bool,
    pub(crate) api_key_cache: Duration,
    pub(crate) jwt_cache: Duration,
    pub(crate) token_lifetime: Duration,
    pub(crate) metrics_role: Option<String>,
    pub(crate) public_openapi: bool,
    pub(crate) failed_per_minute: u32,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("hs256", &self.hs256.as_ref().map(|_| "<redacted>"))
            .field(
                "pems",
                &self.pems.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
            )
            .field("jwks", &self.jwks)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("tenant_claim", &self.tenant_claim)
            .field("roles_claim", &self.roles_claim)
            .field("api_keys", &self.api_keys)
            .field("metrics_role", &self.metrics_role)
            .field("public_openapi", &self.public_openapi)
            .finish_non_exhaustive()
    }
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            hs256: None,
            pems: Vec::new(),
            jwks: None,
            jwks_reload: Duration::from_secs(300),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            tenant_claim: "tenant".into(),
            roles_claim: "roles".into(),
            api_keys: false,
            api_key_cache: Duration::from_secs(30),
            jwt_cache: Duration::from_secs(60),
            token_lifetime: Duration::from_secs(900),
            metrics_role: Some("metrics".into()),
            public_openapi: false,
            failed_per_minute: 20,
        }
    }
}

impl Auth {
    /// No credential source yet (add at least one), the defaults otherwise.
    pub fn new() -> Self {
        Auth::default()
    }

    /// Accepts JWTs signed with HS256 and this shared secret (32 bytes or
    /// more); OAuth tokens nexus issues are signed with it too.
    pub fn jwt_hs256(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.hs256 = Some(secret.into());
        self
    }

    /// Accepts JWTs signed with RS256 by the private half of this PEM
    /// public key (`-----BEGIN PUBLIC KEY-----`); may be called again to
    /// accept several keys.
    pub fn jwt_rs256_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.pems.push((jsonwebtoken::Algorithm::RS256, pem.into()));
        self
    }

    /// Accepts JWTs signed with ES256 (P-256) by the private half of this
    /// PEM public key; may be called again to accept several keys.
    pub fn jwt_es256_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.pems.push((jsonwebtoken::Algorithm::ES256, pem.into()));
        self
    }

    /// Accepts JWTs signed by the RS256 / ES256 keys of this JWKS file
    /// (`{"keys": [...]}`, matched by `kid`). The file is read at build
    /// (a missing or invalid file is a `config` error), re-read within a
    /// second of a change to it, and every
    /// [`jwks_reload_interval`](Self::jwks_reload_interval); it is never fetched over the network.
    pub fn jwks_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.jwks = Some(path.into());
        self
    }

    /// How often the JWKS file is re-read even when unchanged (default 5 min).
    pub fn jwks_reload_interval(mut self, every: Duration) -> Self {
        self.jwks_reload = every;
        self
    }

    /// Only JWTs whose `iss` is this are accepted (and `iss` is required).
    pub fn jwt_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Only JWTs whose `aud` names this are accepted (and `aud` is required).
    pub fn jwt_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Clock skew allowed on `exp` and `nbf` (default 30 s).
    pub fn jwt_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The claim naming the caller's tenant (default `tenant`).
    pub fn tenant_claim(mut self, claim: impl Into<String>) -> Self {
        self.tenant_claim = claim.into();
        self
    }

    /// The claim listing the caller's roles (default `roles`): an array of
    /// strings, or one string of space-separated roles.
    pub fn roles_claim(mut self, claim: impl Into<String>) -> Self {
        self.roles_claim = claim.into();
        self
    }

    /// Accepts API keys (and OAuth client credentials) stored in the
    /// application's database, table `nexus_api_keys`, made with
    /// `myapp keys create` (default off).
    pub fn api_keys(mut self, on: bool) -> Self {
        self.api_keys = on;
        self
    }

    /// How long a verified API key is remembered, so Argon2 is not paid on
    /// every request (default 30 s; never past the key's expiry): a key
    /// revoked from another process is refused here at the latest this long
    /// after. Concurrent first uses of one key run Argon2 once; past the TTL
    /// the key's row is read again, but a key that matched that row's hash
    /// is not hashed again.
    pub fn api_key_cache_ttl(mut self, ttl: Duration) -> Self {
        self.api_key_cache = ttl;
        self
    }

    /// How long a verified JWT is remembered (default 60 s), so its
    /// signature and claims are not checked again on every request: under
    /// the SHA-256 of the token, at most 10 000 tokens, and never past its
    /// `exp` plus the leeway (a remembered token is refused from the same
    /// second as a fresh one). A changed JWKS file forgets every token.
    /// Zero turns the cache off.
    pub fn jwt_cache_ttl(mut self, ttl: Duration) -> Self {
        self.jwt_cache = ttl;
        self
    }

    /// The lifetime of the tokens `POST /oauth/token` issues (default 15 min).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// The role `/metrics` requires (default `metrics`); `None` lets any
    /// authenticated caller read it.
    pub fn metrics_role(mut self, role: Option<&str>) -> Self {
        self.metrics_role = role.map(str::to_string);
        self
    }

    /// Whether `/openapi.json` is served without credentials (default off).
    pub fn public_openapi(mut self, on: bool) -> Self {
        self.public_openapi = on;
        self
    }

    /// Failed sign-ins one client address may make per minute (in a burst
    /// or spread out; default 20) before it is answered 429 `rate_limited`.
    pub fn failed_attempts_per_minute(mut self, n: u32) -> Self {
        self.failed_per_minute = n;
        self
    }
}

/// Who a request comes from, once its credentials verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    /// `sub` of a JWT, `apikey:<name>` for an API key.
    pub(crate) actor: String,
    pub(crate) tenant: Option<String>,
    pub(crate) roles: Vec<String>,
}

/// Why a request has no identity: no credentials, refused ones, or a
/// store that could not be asked (fails closed, as that error: a database
/// outage is a 503, not a wrong password).
#[derive(Debug, Clone)]
pub(crate) enum Refusal {
    Missing,
    Invalid(String),
    Unavailable(Error),
}

/// The authentication of one application: credential checks and the
/// failed-attempt limit.
pub(crate) struct Authenticator {
    jwt: jwt::Jwt,
    pub(crate) keys: Option<keys::Keys>,
    pub(crate) metrics_role: Option<String>,
    pub(crate) public_openapi: bool,
    pub(crate) token_lifetime: Duration,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    metrics: Metrics,
}

/// How credentials were checked, for `/metrics`: per kind (`jwt`,
/// `api_key`) verified (signature or Argon2id paid by this request),
/// remembered (a cache hit, or the shared outcome of a concurrent
/// verification) or refused; and the Argon2id verifications run.
struct Metrics {
    checks: prometheus::IntCounterVec,
    argon2: prometheus::IntCounter,
    /// `checks` resolved: [jwt, api_key] × [verified, remembered, refused].
    counters: [[prometheus::IntCounter; 3]; 2],
}

impl Metrics {
    fn new() -> Metrics {
        let checks = prometheus::IntCounterVec::new(
            prometheus::opts!(
                "nexus_auth_checks_total",
                "Credentials checked by kind (jwt, api_key) and outcome \
                 (verified, remembered, refused)"
            ),
            &["credential", "outcome"],
        )
        .expect("valid metric");
        let argon2 = prometheus::IntCounter::new(
            "nexus_auth_argon2_verifications_total",
            "Argon2id verifications of API keys and OAuth client secrets",
        )
        .expect("valid metric");
        let counters = ["jwt", "api_key"].map(|credential| {
            ["verified", "remembered", "refused"]
                .map(|outcome| checks.with_label_values(&[credential, outcome]))
        });
        Metrics {
            checks,
            argon2,
            counters,
        }
    }
}

impl Authenticator {
    /// Checks the options: at least one credential source, keys that parse.
    pub(crate) fn new(auth: Option<&Auth>, db: &DataFlow) -> Result<Authenticator> {
        let auth = auth.cloned().unwrap_or_default();
        if auth.hs256.is_none() && auth.pems.is_empty() && auth.jwks.is_none() && !auth.api_keys {
            return Err(Error::new(
                ErrorCode::Config,
                "enable_auth(true) has no credential source: give `.auth(nexus::Auth::new()...)` \
                 a JWT key (jwt_hs256, jwt_rs256_pem, jwt_es256_pem, jwks_file) or api_keys(true)",
            ));
        }
        let per_minute = NonZeroU32::new(auth.failed_per_minute).ok_or_else(|| {
            Error::new(
                ErrorCode::Config,
                "failed_attempts_per_minute must be more than zero",
            )
        })?;
        if auth.token_lifetime.is_zero() || auth.jwks_reload.is_zero() {
            return Err(Error::new(
                ErrorCode::Config,
                "token_lifetime and jwks_reload_interval must be more than zero",
            ));
        }
        let metrics = Metrics::new();
        Ok(Authenticator {
            jwt: jwt::Jwt::new(&auth)?,
            keys: auth
                .api_keys
                .then(|| keys::Keys::new(db.clone(), auth.api_key_cache, metrics.argon2.clone())),
            metrics_role: auth.metrics_role,
            public_openapi: auth.public_openapi,
            token_lifetime: auth.token_lifetime,
            failures: governor::RateLimiter::keyed(Quota::per_minute(per_minute)),
            blocked: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Adds the authentication metrics to a server's registry.
    pub(crate) fn register(&self, registry: &prometheus::Registry) -> Result<()> {
        for m in [
            Box::new(self.metrics.checks.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.metrics.argon2.clone()),
        ] {
            registry.register(m).map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("registering auth metrics: {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// The identity the request's credentials prove: `Authorization:
    /// Bearer <JWT or API key>` or `X-API-Key: <API key>`.
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> std::result::Result<Identity, Refusal> {
        let bearer = match headers.get(axum::http::header::AUTHORIZATION) {
            None => None,
            Some(v) => {
                let text = v
                    .to_str()
                    .map_err(|_| invalid("the Authorization header is not text"))?;
                let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Err(invalid("the Authorization header must be `Bearer <token>`"));
                }
                Some(token.trim())
            }
        };
        let api_key = headers
            .get(&X_API_KEY)
            .map(|v| {
                v.to_str()
                    .map_err(|_| invalid("the X-API-Key header is not text"))
            })
            .transpose()?;
        let (kind, checked) = match (bearer, api_key) {
            (None, None) => return Err(Refusal::Missing),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "send one credential: Authorization or X-API-Key, not both",
                ))
            }
            (None, Some(key)) => (1, self.api_key(key).await),
            (Some(token), None) if keys::looks_like_key(token) => (1, self.api_key(token).await),
            (Some(token), None) => (0, self.jwt.verify(token)),
        };
        let outcome = match &checked {
            Ok((_, cache::Source::Verified)) => 0,
            Ok((_, cache::Source::Remembered)) => 1,
            Err(_) => 2,
        };
        self.metrics.counters[kind][outcome].inc();
        checked.map(|(identity, _)| identity)
    }

    async fn api_key(&self, key: &str) -> std::result::Result<(Identity, cache::Source), Refusal> {
        match &self.keys {
            Some(keys) => keys.verify(key).await,
            None => Err(invalid("API keys are not accepted by this server")),
        }
    }

    /// Signs an access token for an OAuth client (`POST /oauth/token`).
    pub(crate) fn issue(&self, identity: &Identity) -> Result<String> {
        self.jwt.issue(identity, self.token_lifetime)
    }

    /// Whether `ip` is waiting out its failed-attempt limit: the seconds left.
    fn blocked_for(&self, ip: IpAddr) -> Option<u64> {
        let mut blocked = lock(&self.blocked);
        match blocked.get(&ip) {
            Some(until) if *until > Instant::now() => {
                Some((*until - Instant::now()).as_secs().max(1))
            }
            Some(_) => {
                blocked.remove(&ip);
                None
            }
            None => None,
        }
    }

    /// Counts a failed attempt from `ip`: past the limit, the seconds until
    /// it may try again.
    pub(crate) fn failed(&self, ip: IpAddr) -> Option<u64> {
        if self.failures.len() > 100_000 {
            self.failures.retain_recent();
        }
        let wait = self
            .failures
            .check_key(&ip)
            .err()?
            .wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
        let mut blocked = lock(&self.blocked);
        if blocked.len() > 100_000 {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
        }
        blocked.insert(ip, Instant::now() + wait);
        Some(wait.as_secs().max(1))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The header an API key may come in.
static X_API_KEY: axum::http::HeaderName = axum::http::HeaderName::from_static("x-api-key");

pub(crate) fn invalid(why: impl Into<String>) -> Refusal {
    Refusal::Invalid(why.into())
}

/// The client address of a request (serve.rs hands it over); a router
/// mounted in a server that does not is one address for all.
pub(crate) fn client_ip(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// 429 `rate_limited` for an address past its failed-attempt limit.
pub(crate) fn too_many_failures(seconds: u64) -> Response {
    let mut response = http_error(&Error::new(
        ErrorCode::RateLimited,
        format!("too many failed sign-ins from this address; retry in {seconds} s"),
    ));
    response
        .headers_mut()
        .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// 401 `unauthenticated` with the RFC 6750 challenge (and, per RFC 9728,
/// where the protected-resource metadata is).
pub(crate) fn unauthenticated(refusal: &Refusal, headers: &HeaderMap) -> Response {
    let message = match refusal {
        Refusal::Missing => "authentication required: send `Authorization: Bearer <token>` \
                             (a JWT or an API key) or `X-API-Key: <key>`"
            .to_string(),
        Refusal::Invalid(why) => format!("invalid credentials: {why}"),
        Refusal::Unavailable(e) => return http_error(e),
    };
    let mut response = http_error(&Error::new(ErrorCode::Unauthenticated, message));
    let mut challenge = String::from("Bearer realm=\"nexus\"");
    if let Refusal::Invalid(why) = refusal {
        let why: String = why
            .chars()
            .filter(|c| *c != '"' && *c != '\\' && (' '..='~').contains(c))
            .collect();
        challenge.push_str(&format!(
            ", error=\"invalid_token\", error_description=\"{why}\""
        ));
    }
    if let Some(base) = oauth::base_url(headers) {
        challenge.push_str(&format!(
            ", resource_metadata=\"{base}{}\"",
            oauth::RESOURCE_METADATA_PATH
        ));
    }
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(axum::http::header::WWW_AUTHENTICATE, v);
    }
    response
}

/// What a path needs.
enum Guard {
    Open,
    Identity,
    Role(String),
}

fn guard(auth: &Authenticator, path: &str, query: Option<&str>) -> Guard {
    // `/health?verbose` reports the pool, slow statements and migrations:
    // for the same callers as `/metrics`.
    let verbose = query.is_some_and(|q| q.split('&').any(|p| p.starts_with("verbose")));
    let metrics = || match &auth.metrics_role {
        Some(role) => Guard::Role(role.clone()),
        None => Guard::Identity,
    };
    match path {
        "/health" if verbose => metrics(),
        "/health" | "/ready" | oauth::TOKEN_PATH => Guard::Open,
        p if p.starts_with("/.well-known/") => Guard::Open,
        "/openapi.json" if auth.public_openapi => Guard::Open,
        "/metrics" => metrics(),
        _ => Guard::Identity,
    }
}

/// The middleware of both listeners: the request's [`Identity`] into its
/// extensions, or the refusal.
pub(crate) async fn middleware(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    let need = guard(&auth, request.uri().path(), request.uri().query());
    if matches!(need, Guard::Open) {
        return next.run(request).await;
    }
    let ip = client_ip(&request);
    if let Some(seconds) = auth.blocked_for(ip) {
        return too_many_failures(seconds);
    }
    let identity = match auth.authenticate(request.headers()).await {
        Ok(identity) => identity,
        Err(Refusal::Unavailable(e)) => return http_error(&e),
        Err(refusal) => {
            if matches!(refusal, Refusal::Invalid(_)) {
                if let Some(seconds) = auth.failed(ip) {
                    return too_many_failures(seconds);
                }
            }
            return unauthenticated(&refusal, request.headers());
        }
    };
    if let Guard::Role(role) = need {
        if !identity.roles.contains(&role) {
            return http_error(&Error::new(
                ErrorCode::Forbidden,
                format!("{} needs the role `{role}`", request.uri().path()),
            ));
        }
    }
    request.extensions_mut().insert(identity);
    next.run(request).await
}
