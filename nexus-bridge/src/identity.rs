//! Who is calling: the one seam from a request to a [`dataflow::Context`].
//!
//! Every channel builds the context of a call here and nowhere else, so
//! authentication (JWT, API keys) replaces one function. Today the context
//! carries a request id on every channel, and a tenant only where the
//! operator said where it comes from: `--tenant` / `--as` on the in-process
//! CLI, and the `X-Tenant-ID` header when the app is built with
//! `trust_tenant_header(true)` (behind a gateway that authenticates);
//! without that option the header is ignored.

use axum::http::HeaderMap;
use dataflow::{Context, Error, ErrorCode, Result};

/// The header a trusted gateway names the tenant in.
pub(crate) const TENANT_HEADER: &str = "x-tenant-id";

/// The header a caller may correlate a request with.
pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest tenant or request id taken from a header.
const MAX_ID_CHARS: usize = 128;

/// The context of an HTTP request (the API, or MCP over HTTP); `headers`
/// is `None` where there are none (MCP over stdio).
pub(crate) fn from_request(
    channel: &str,
    trust_tenant_header: bool,
    headers: Option<&HeaderMap>,
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
        let ignored = from_request("http", false, Some(&h)).unwrap();
        assert_eq!(
            (ignored.tenant, ignored.request_id.as_deref()),
            (None, Some("r-1"))
        );
        let trusted = from_request("http", true, Some(&h)).unwrap();
        assert_eq!(trusted.tenant.as_deref(), Some("acme"));
        let e = from_request("http", true, Some(&headers(&[("x-tenant-id", "a b")]))).unwrap_err();
        assert_eq!(
            (e.code(), e.field()),
            (ErrorCode::Validation, Some("x-tenant-id"))
        );
        let e = from_request(
            "http",
            true,
            Some(&headers(&[("x-tenant-id", &"a".repeat(129))])),
        )
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation);
        let none = from_request("mcp", true, None).unwrap();
        assert!(none.tenant.is_none() && none.request_id.is_some());
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
