//! OAuth 2.0 client credentials (RFC 6749 §4.4): `POST /oauth/token`
//! exchanges a client id and secret (from `keys create --client`) for a
//! short-lived JWT the middleware accepts; and the metadata that points
//! clients at it: `/.well-known/oauth-protected-resource` (RFC 9728, as the
//! MCP authorization specification asks) and
//! `/.well-known/oauth-authorization-server` (RFC 8414).
//!
//! Its errors are RFC 6749 §5.2 objects (`{"error": "invalid_client",
//! "error_description": ...}`), as OAuth clients expect, not nexus error bodies.

use super::{client_ip, too_many_failures, Authenticator, Refusal};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// The token endpoint.
pub(crate) const TOKEN_PATH: &str = "/oauth/token";
/// RFC 9728 protected-resource metadata.
pub(crate) const RESOURCE_METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
/// RFC 8414 authorization-server metadata.
const SERVER_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// The largest token request read.
const MAX_FORM_BYTES: usize = 16 << 10;

/// `http://<Host>`: where this listener is reached, from the request.
pub(crate) fn base_url(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    host.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        .then(|| format!("http://{host}"))
}

/// The routes of the token endpoint and the metadata, for either listener
/// (`resource_path` is what it protects: `""` for the API, `/mcp` for MCP).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(
    auth: Arc<Authenticator>,
    resource_path: &'static str,
) -> Router<S> {
    let protected = move |headers: HeaderMap| async move {
        let base = base_url(&headers).unwrap_or_default();
        Json(json!({
            "resource": format!("{base}{resource_path}"),
            "authorization_servers": [base],
            "bearer_methods_supported": ["header"],
        }))
    };
    let server = |headers: HeaderMap| async move {
        let base = base_url(&headers).unwrap_or_default();
        Json(json!({
            "issuer": base,
            "token_endpoint": format!("{base}{TOKEN_PATH}"),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": [],
        }))
    };
    let mut routes = Router::new()
        .route(RESOURCE_METADATA_PATH, get(protected))
        .route(SERVER_METADATA_PATH, get(server))
        .route(TOKEN_PATH, post(token).with_state(auth));
    if !resource_path.is_empty() {
        // RFC 9728 §3.1: the metadata of `/mcp` at the path with it appended.
        routes = routes.route(
            &format!("{RESOURCE_METADATA_PATH}{resource_path}"),
            get(protected),
        );
    }
    routes
}

/// An RFC 6749 §5.2 error.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    no_store(response.headers_mut());
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"nexus\""),
        );
    }
    response
}

fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// `POST /oauth/token`: form `grant_type=client_credentials`, the client
/// by HTTP Basic or `client_id` / `client_secret` in the form.
async fn token(State(auth): State<Arc<Authenticator>>, request: Request) -> Response {
    let ip = client_ip(&request);
    if let Some(seconds) = auth.blocked_for(ip) {
        return too_many_failures(seconds);
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request body is too large or broke off",
        );
    };
    let form_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send the parameters as application/x-www-form-urlencoded",
        );
    }
    let Ok(form) = serde_urlencoded_pairs(&bytes) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the form is malformed or repeats a parameter",
        );
    };
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only grant_type=client_credentials is supported",
            )
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            )
        }
    }
    let basic = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(basic_credentials);
    let (client_id, secret) =
        match (basic, form.get("client_id"), form.get("client_secret")) {
            (Some(creds), None, None) => creds,
            (None, Some(id), Some(secret)) => (id.clone(), secret.clone()),
            (Some(_), _, _) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "authenticate the client one way: HTTP Basic or the form, not both",
                )
            }
            _ => return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication is required (HTTP Basic, or client_id and client_secret)",
            ),
        };
    let identity = match &auth.keys {
        None => Err(Refusal::Invalid("no client is accepted here".into())),
        Some(keys) => keys.client(&client_id, &secret).await,
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(Refusal::Unavailable(_)) => {
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the client store cannot be read; retry later",
            )
        }
        Err(_) => {
            if let Some(seconds) = auth.failed(ip) {
                return too_many_failures(seconds);
            }
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "unknown client, wrong secret, or a revoked or expired client",
            );
        }
    };
    match auth.issue(&identity) {
        Ok(token) => {
            let mut response = Json(json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": auth.token_lifetime.as_secs(),
            }))
            .into_response();
            no_store(response.headers_mut());
            response
        }
        Err(_) => oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the token could not be signed",
        ),
    }
}

/// `Basic base64(id:secret)` (each form-urlencoded, RFC 6749 §2.3.1).
fn basic_credentials(value: &str) -> Option<(String, String)> {
    use base64::Engine;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// The pairs of a form body; a repeated parameter is an error (RFC 6749 §3.2).
fn serde_urlencoded_pairs(body: &[u8]) -> Result<HashMap<String, String>, ()> {
    let text = std::str::from_utf8(body).map_err(drop)?;
    let mut out = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (form_decode(k).ok_or(())?, form_decode(v).ok_or(())?);
        if out.insert(k, v).is_some() {
            return Err(());
        }
    }
    Ok(out)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn form_decode(s: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hi = (it.next()? as char).to_digit(16)?;
                let lo = (it.next()? as char).to_digit(16)?;
                bytes.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_and_refuse_repeats() {
        let form =
            serde_urlencoded_pairs(b"grant_type=client_credentials&client_id=a%2Bb+c").unwrap();
        assert_eq!(form["client_id"], "a+b c");
        assert!(serde_urlencoded_pairs(b"a=1&a=2").is_err());
        assert!(serde_urlencoded_pairs(b"a=%zz").is_err());
    }

    #[test]
    fn basic_credentials_decode() {
        use base64::Engine;
        let v = base64::engine::general_purpose::STANDARD.encode("id1:s%3Ac");
        assert_eq!(
            basic_credentials(&format!("Basic {v}")),
            Some(("id1".into(), "s:c".into()))
        );
        assert_eq!(basic_credentials("Bearer x"), None);
    }
}
