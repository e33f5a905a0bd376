//! JWT bearer tokens: the keys that may have signed one, checked with
//! `jsonwebtoken`, and the tokens the OAuth endpoint issues.
//!
//! The token's `alg` picks the candidate keys, and each key is tried only
//! with its own algorithm: an HS256 token is checked against the HS256
//! secret alone, never against an RSA or EC public key (the "algorithm
//! confusion" attack), and `alg: none` is no algorithm at all.

use super::cache::{self, Proof, Source, Verified};
use super::{invalid, Auth, Identity, Refusal};
use dataflow::{Error, ErrorCode, Result};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

/// The issuer of tokens nexus signs when no `jwt_issuer` is configured.
const DEFAULT_ISSUER: &str = "nexus";

pub(super) struct Jwt {
    /// The HS256 keys: the configured secret, else one made at start for
    /// the tokens this process issues.
    hs256: DecodingKey,
    issue_key: EncodingKey,
    pems: Vec<(Algorithm, DecodingKey)>,
    jwks: Option<JwksFile>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    tenant_claim: String,
    roles_claim: String,
    /// The rules for each accepted algorithm, made once.
    validations: Vec<(Algorithm, Validation)>,
    /// Verified tokens, until their `exp` (plus leeway) or the TTL.
    cache: Verified,
}

impl Jwt {
    pub(super) fn new(auth: &Auth) -> Result<Jwt> {
        let config = |what: &str, e: jsonwebtoken::errors::Error| {
            Error::new(ErrorCode::Config, format!("{what}: {e}"))
        };
        let secret = match &auth.hs256 {
            Some(s) if s.len() < 32 => {
                return Err(Error::new(
                    ErrorCode::Config,
                    "jwt_hs256: the secret must be at least 32 bytes (RFC 7518 §3.2)",
                ))
            }
            Some(s) => s.clone(),
            None => random_bytes::<32>()?.to_vec(),
        };
        let hs256 = DecodingKey::from_secret(&secret).map_err(|e| config("jwt_hs256", e))?;
        let issue_key = EncodingKey::from_secret(&secret).map_err(|e| config("jwt_hs256", e))?;
        let mut pems = Vec::new();
        for (alg, pem) in &auth.pems {
            let key = match alg {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(pem)
                    .map_err(|e| config("jwt_rs256_pem: not an RSA public key in PEM", e))?,
                _ => DecodingKey::from_ec_pem(pem)
                    .map_err(|e| config("jwt_es256_pem: not a P-256 public key in PEM", e))?,
            };
            pems.push((*alg, key));
        }
        let jwks = match &auth.jwks {
            Some(path) => Some(JwksFile::open(path.clone(), auth.jwks_reload)?),
            None => None,
        };
        let mut jwt = Jwt {
            hs256,
            issue_key,
            pems,
            jwks,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            leeway: auth.leeway.as_secs(),
            tenant_claim: auth.tenant_claim.clone(),
            roles_claim: auth.roles_claim.clone(),
            validations: Vec::new(),
            cache: Verified::new(auth.jwt_cache),
        };
        jwt.validations = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256]
            .into_iter()
            .map(|alg| (alg, jwt.validation(alg)))
            .collect();
        Ok(jwt)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.validate_aud = self.audience.is_some();
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }

    /// The identity a JWT proves, or why it proves none: remembered when
    /// this token verified within the cache's TTL and is still before its
    /// `exp` (plus leeway), else verified now.
    pub(super) fn verify(&self, token: &str) -> std::result::Result<(Identity, Source), Refusal> {
        if let Some(jwks) = &self.jwks {
            if jwks.refresh() {
                // A key may be gone: what it proved is forgotten.
                self.cache.clear();
            }
        }
        let digest = cache::digest(token);
        if let Some(hit) = self.cache.get(&digest) {
            return Ok((hit, Source::Remembered));
        }
        let generation = self.cache.generation();
        let proof = self.verify_now(token)?;
        self.cache.insert(digest, &proof, generation);
        Ok((proof.0, Source::Verified))
    }

    /// Verifies a JWT: its signature with a key of its algorithm, then its
    /// claims.
    fn verify_now(&self, token: &str) -> std::result::Result<Proof, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the token is not a JWT with a supported algorithm"))?;
        let alg = header.alg;
        let mut keys: Vec<DecodingKey> = match alg {
            Algorithm::HS256 => vec![self.hs256.clone()],
            Algorithm::RS256 | Algorithm::ES256 => self
                .pems
                .iter()
                .filter(|(a, _)| *a == alg)
                .map(|(_, k)| k.clone())
                .collect(),
            _ => Vec::new(),
        };
        if let Some(jwks) = &self.jwks {
            if matches!(alg, Algorithm::RS256 | Algorithm::ES256) {
                keys.extend(jwks.keys(alg, header.kid.as_deref()));
            }
        }
        if keys.is_empty() {
            return Err(invalid(format!(
                "tokens signed with {alg:?} are not accepted here"
            )));
        }
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == alg) else {
            return Err(invalid(format!(
                "tokens signed with {alg:?} are not accepted here"
            )));
        };
        let mut last = None;
        for key in &keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
                Ok(data) => {
                    // Valid while `exp >= now - leeway` (as jsonwebtoken
                    // checks it): refused from the second after. An `exp`
                    // that is not a whole number would not have verified.
                    let deadline = data
                        .claims
                        .get("exp")
                        .and_then(Value::as_i64)
                        .map_or(i64::MIN, |exp| {
                            exp.saturating_add_unsigned(self.leeway).saturating_add(1)
                        });
                    return Ok((self.identity(data.claims)?, Some(deadline)));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(invalid(match last.as_ref().map(|e| e.kind()) {
            Some(ErrorKind::ExpiredSignature) => "the token has expired".to_string(),
            Some(ErrorKind::ImmatureSignature) => "the token is not valid yet (nbf)".into(),
            Some(ErrorKind::InvalidSignature) => "the token's signature does not verify".into(),
            Some(ErrorKind::InvalidIssuer) => "the token's issuer (iss) is not accepted".into(),
            Some(ErrorKind::InvalidAudience) => "the token's audience (aud) is not accepted".into(),
            Some(ErrorKind::InvalidAlgorithm) => {
                "the token's algorithm does not match its key".into()
            }
            Some(ErrorKind::MissingRequiredClaim(c)) => format!("the token has no `{c}` claim"),
            _ => "the token is malformed".into(),
        }))
    }

    fn identity(&self, mut claims: Map<String, Value>) -> std::result::Result<Identity, Refusal> {
        let actor = match claims.remove("sub") {
            Some(Value::String(s)) if super::keys::valid_text(&s) => s,
            _ => {
                return Err(invalid(
                    "the token's `sub` must be 1 to 128 visible characters",
                ))
            }
        };
        let tenant = match claims.remove(&self.tenant_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if super::keys::valid_text(&s) => Some(s),
            _ => {
                return Err(invalid(format!(
                    "the token's `{}` claim must be a tenant id (1 to 128 visible characters)",
                    self.tenant_claim
                )))
            }
        };
        let roles = match claims.remove(&self.roles_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            Some(Value::Array(items)) => {
                let mut roles = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => roles.push(s),
                        _ => {
                            return Err(invalid(format!(
                                "the token's `{}` claim must list strings",
                                self.roles_claim
                            )))
                        }
                    }
                }
                roles
            }
            Some(_) => {
                return Err(invalid(format!(
                    "the token's `{}` claim must be a list of strings",
                    self.roles_claim
                )))
            }
        };
        Ok(Identity {
            actor,
            tenant,
            roles,
        })
    }

    /// An HS256 access token for `identity`, valid for `lifetime`.
    pub(super) fn issue(&self, identity: &Identity, lifetime: Duration) -> Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = json!({
            "sub": identity.actor,
            "iss": self.issuer.as_deref().unwrap_or(DEFAULT_ISSUER),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime.as_secs(),
        });
        if let Some(aud) = &self.audience {
            claims["aud"] = json!(aud);
        }
        if let Some(t) = &identity.tenant {
            claims[self.tenant_claim.as_str()] = json!(t);
        }
        claims[self.roles_claim.as_str()] = json!(identity.roles);
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.issue_key)
            .map_err(|e| Error::new(ErrorCode::Internal, format!("signing an access token: {e}")))
    }
}

/// `N` bytes from the operating system's random source.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("the OS random source failed: {e}"),
        )
    })?;
    Ok(bytes)
}

/// A JWKS file and its keys, re-read when it changes.
struct JwksFile {
    path: PathBuf,
    reload: Duration,
    state: RwLock<JwksState>,
}

struct JwksState {
    keys: Vec<(Algorithm, Option<String>, DecodingKey)>,
    modified: Option<SystemTime>,
    loaded: Instant,
    checked: Instant,
}

/// How often the file's modification time is looked at.
const JWKS_CHECK: Duration = Duration::from_secs(1);

impl JwksFile {
    fn open(path: PathBuf, reload: Duration) -> Result<JwksFile> {
        let (keys, modified) = read_jwks(&path)?;
        Ok(JwksFile {
            path,
            reload,
            state: RwLock::new(JwksState {
                keys,
                modified,
                loaded: Instant::now(),
                checked: Instant::now(),
            }),
        })
    }

    /// The keys for `alg` (with `kid`, when the token names one).
    /// (The caller [`refresh`](Self::refresh)es first.)
    fn keys(&self, alg: Algorithm, kid: Option<&str>) -> Vec<DecodingKey> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state
            .keys
            .iter()
            .filter(|(a, k, _)| *a == alg && (kid.is_none() || k.as_deref() == kid))
            .map(|(_, _, key)| key.clone())
            .collect()
    }

    /// Re-reads the file when it changed or `reload` passed; a file that
    /// went bad keeps the last good keys (and is tried again later). True
    /// when the keys were read again.
    fn refresh(&self) -> bool {
        {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            if state.checked.elapsed() < JWKS_CHECK {
                return false;
            }
        }
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() < JWKS_CHECK {
            return false;
        }
        state.checked = Instant::now();
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified == state.modified && state.loaded.elapsed() < self.reload {
            return false;
        }
        match read_jwks(&self.path) {
            Ok((keys, modified)) => {
                state.keys = keys;
                state.modified = modified;
                state.loaded = Instant::now();
                true
            }
            Err(_) => false,
        }
    }
}

type JwksKeys = Vec<(Algorithm, Option<String>, DecodingKey)>;

fn read_jwks(path: &std::path::Path) -> Result<(JwksKeys, Option<SystemTime>)> {
    let bad = |why: String| {
        Error::new(
            ErrorCode::Config,
            format!("jwks_file {}: {why}", path.display()),
        )
    };
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| bad(format!("not a JWKS: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let alg = match jwk.common.key_algorithm {
            Some(jsonwebtoken::jwk::KeyAlgorithm::RS256) => Algorithm::RS256,
            Some(jsonwebtoken::jwk::KeyAlgorithm::ES256) => Algorithm::ES256,
            None => match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p)
                    if p.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => continue,
            },
            _ => continue,
        };
        keys.push((alg, jwk.common.key_id.clone(), key));
    }
    if keys.is_empty() {
        return Err(bad("it holds no RS256 or ES256 key".into()));
    }
    Ok((keys, modified))
}
