//! Who is calling: the one seam from a request to a [`dataflow::Context`].
//!
//! Every channel builds the context of a call here and nowhere else. The
//! context carries a request id on every channel; with authentication on,
//! the verified identity (`crate::auth`) gives the actor, tenant and roles,
//! and nothing else does. Without it, a tenant comes only from where the
//! operator said: `--tenant` / `--as` on the in-process CLI, and the
//! `X-Tenant-ID` header when the app is built with
//! `trust_tenant_header(true)` (behind a gateway that authenticates);
//! without that option the header is ignored.

use crate::auth::Identity;
use axum::http::HeaderMap;
use dataflow::{Context, Error, ErrorCode, Result};

/// The header a trusted gateway names the tenant in.
pub(crate) const TENANT_HEADER: &str = "x-tenant-id";

/// The header a caller may correlate a request with.
pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest tenant or request id taken from a header.
const MAX_ID_CHARS: usize = 128;

/// The context of an HTTP request (the API, or MCP over HTTP); `headers`
/// is `None` where there are none (MCP over stdio). `identity` is what
/// authentication verified (with auth on, every request but MCP over stdio
/// has one): its tenant is the only one, the `X-Tenant-ID` header is ignored.
pub(crate) fn from_request(
    channel: &str,
    trust_tenant_header: bool,
    headers: Option<&HeaderMap>,
    identity: Option<&Identity>,
) -> Result<Context> {
    let header = |name: &str| -> Result<Option<String>> {
        let Some(value) = headers.and_then(|h| h.get(name)) else {
            return Ok(None);
        };
        let text = value.to_str().ok().filter(|s| valid_id(s)).ok_or_else(|| {
            Error::new(
                ErrorCode::Validation,
                format!("the {name} header must be 1 to {MAX_ID_CHARS} visible ASCII characters"),
            )
            .with_field(name)
        })?;
        Ok(Some(text.to_string()))
    };
    let mut ctx = Context::new().channel(channel);
    ctx = ctx.request_id(header(REQUEST_ID_HEADER)?.unwrap_or_else(dataflow::new_run_id));
    if let Some(who) = identity {
        ctx = ctx
            .actor(who.actor.clone())
            .roles(who.roles.iter().cloned());
        if let Some(tenant) = &who.tenant {
            ctx = ctx.tenant(tenant.clone());
        }
        return Ok(ctx);
    }
    if trust_tenant_header {
        if let Some(tenant) = header(TENANT_HEADER)? {
            ctx = ctx.tenant(tenant);
        }
    }
    Ok(ctx)
}

/// The context of an in-process CLI run: `--tenant`, `--as` (the actor)
/// and `--role` (roles to try the app's policy with).
pub(crate) fn from_cli(
    tenant: Option<&str>,
    actor: Option<&str>,
    roles: &[String],
) -> Result<Context> {
    let mut ctx = Context::new()
        .channel("cli")
        .request_id(dataflow::new_run_id());
    let roles_given = roles.iter().map(|r| ("--role", Some(r.as_str())));
    for (flag, value) in [("--tenant", tenant), ("--as", actor)]
        .into_iter()
        .chain(roles_given)
    {
        if value.is_some_and(|v| !valid_id(v)) {
            return Err(Error::new(
                ErrorCode::Validation,
                format!("{flag} must be 1 to {MAX_ID_CHARS} visible ASCII characters"),
            )
            .with_field(flag.trim_start_matches('-')));
        }
    }
    if let Some(t) = tenant {
        ctx = ctx.tenant(t);
    }
    if let Some(a) = actor {
        ctx = ctx.actor(a);
    }
    Ok(ctx.roles(roles))
}

fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_CHARS && s.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_tenant_header_counts_only_when_trusted() {
        let h = headers(&[("x-tenant-id", "acme"), ("x-request-id", "r-1")]);
        let ignored = from_request("http", false, Some(&h), None).unwrap();
        assert_eq!(
            (ignored.tenant, ignored.request_id.as_deref()),
            (None, Some("r-1"))
        );
        let trusted = from_request("http", true, Some(&h), None).unwrap();
        assert_eq!(trusted.tenant.as_deref(), Some("acme"));
        let e = from_request(
            "http",
            true,
            Some(&headers(&[("x-tenant-id", "a b")])),
            None,
        )
        .unwrap_err();
        assert_eq!(
            (e.code(), e.field()),
            (ErrorCode::Validation, Some("x-tenant-id"))
        );
        let e = from_request(
            "http",
            true,
            Some(&headers(&[("x-tenant-id", &"a".repeat(129))])),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation);
        let none = from_request("mcp", true, None, None).unwrap();
        assert!(none.tenant.is_none() && none.request_id.is_some());
    }

    #[test]
    fn an_identity_is_the_only_source_of_tenant_actor_and_roles() {
        let h = headers(&[("x-tenant-id", "evil"), ("x-request-id", "r-2")]);
        let who = Identity {
            actor: "user:1".into(),
            tenant: Some("acme".into()),
            roles: vec!["reader".into()],
        };
        let ctx = from_request("http", true, Some(&h), Some(&who)).unwrap();
        assert_eq!(
            (
                ctx.actor.as_deref(),
                ctx.tenant.as_deref(),
                ctx.roles.clone()
            ),
            (Some("user:1"), Some("acme"), vec!["reader".to_string()])
        );
        let no_tenant = Identity {
            tenant: None,
            ..who
        };
        let ctx = from_request("http", true, Some(&h), Some(&no_tenant)).unwrap();
        assert_eq!(
            ctx.tenant, None,
            "the header never adds a tenant to an identity"
        );
        assert_eq!(ctx.request_id.as_deref(), Some("r-2"));
    }

    #[test]
    fn cli_flags_name_tenant_and_actor() {
        let ctx = from_cli(Some("acme"), Some("ops"), &["reader".into()]).unwrap();
        assert_eq!(ctx.roles, ["reader"]);
        assert_eq!(
            (ctx.tenant.as_deref(), ctx.actor.as_deref()),
            (Some("acme"), Some("ops"))
        );
        assert!(from_cli(Some(""), None, &[]).is_err());
        assert!(from_cli(None, None, &["a b".into()]).is_err());
    }
}
