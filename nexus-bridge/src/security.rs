//! What both listeners (the HTTP API and MCP) apply before routing, as one
//! policy: the allowed `Host` and `Origin` rule against DNS rebinding, the
//! CORS policy, and `X-Content-Type-Options: nosniff` on every response.
//!
//! A request whose `Host` is not an allowed host, or whose `Origin` (when a
//! browser sends one) is neither on an allowed host nor a CORS origin, is
//! refused with 403 `forbidden`: a web page on `evil.com` that rebinds its
//! name to 127.0.0.1 reaches the socket but runs nothing. The loopback names
//! are always allowed, and by default the `host` the server is bound to
//! (unless it is `0.0.0.0` / `::`: the names clients use for such a server
//! are unknown, so they must be listed with `allowed_hosts`).

use crate::channel::http_error;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use dataflow::{Error, ErrorCode, Result};
use std::sync::Arc;

/// Host names always accepted: a request for them did not come through a
/// rebound foreign name.
pub(crate) const LOCAL_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The rule both listeners apply (see the module documentation).
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    /// `None`: every host (`allowed_hosts(["*"])`).
    hosts: Option<Vec<HostRule>>,
    /// `None`: CORS off. `Some(None)`: any origin. Else these origins.
    cors: Option<Option<Vec<Origin>>>,
}

/// An allowed host, with a port or any port.
#[derive(Clone, Debug, PartialEq)]
struct HostRule {
    host: String,
    port: Option<u16>,
}

/// A browser origin: `scheme://host:port` (the port made explicit).
#[derive(Clone, Debug, PartialEq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn parse(text: &str) -> Option<Origin> {
        let uri: axum::http::Uri = text.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let only_origin = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
        if !only_origin || text.ends_with('/') {
            return None;
        }
        Some(Origin {
            host: bare(uri.host()?),
            port: uri.port_u16().unwrap_or(default),
            scheme,
        })
    }
}

/// A host in lower case, without an IPv6 literal's brackets.
fn bare(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

impl HostRule {
    /// `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
    fn parse(text: &str) -> Option<HostRule> {
        if text.parse::<std::net::Ipv6Addr>().is_ok() {
            return Some(HostRule {
                host: text.to_ascii_lowercase(),
                port: None,
            });
        }
        let authority: axum::http::uri::Authority = text.parse().ok()?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return None;
        }
        Some(HostRule {
            host: bare(authority.host()),
            port: authority.port_u16(),
        })
    }

    fn admits(&self, host: &str, port: Option<u16>) -> bool {
        self.host == host && (self.port.is_none() || self.port == port)
    }
}

impl Policy {
    /// The policy for a server bound to `bound`, from the builder's
    /// `allowed_hosts` and `cors` (each `None` when not set). A malformed
    /// entry is a `config` error naming it.
    pub(crate) fn new(
        bound: &str,
        allowed_hosts: Option<&[String]>,
        cors: Option<&[String]>,
    ) -> Result<Policy> {
        let config = |what: &str| Error::new(ErrorCode::Config, what.to_string());
        let hosts = if allowed_hosts.is_some_and(|h| h.iter().any(|h| h == "*")) {
            None
        } else {
            let mut rules: Vec<HostRule> = LOCAL_HOSTS
                .iter()
                .filter_map(|h| HostRule::parse(h))
                .collect();
            let unspecified = bound
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified());
            if !unspecified {
                rules.extend(HostRule::parse(bound));
            }
            for h in allowed_hosts.unwrap_or_default() {
                rules.push(HostRule::parse(h).ok_or_else(|| {
                    config(&format!(
                        "allowed_hosts: `{h}` is not a host name, `host:port` or IP address"
                    ))
                })?);
            }
            rules.dedup();
            Some(rules)
        };
        let cors = match cors {
            None => None,
            Some(origins) if origins.iter().any(|o| o == "*") => Some(None),
            Some(origins) => Some(Some(
                origins
                    .iter()
                    .map(|o| {
                        Origin::parse(o).ok_or_else(|| {
                            config(&format!(
                                "cors: `{o}` is not an origin like `https://app.example.com` or `http://localhost:5173`"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            )),
        };
        Ok(Policy { hosts, cors })
    }

    /// The loopback names and `extra` hosts (`"*"`: any), CORS off: what
    /// [`mcp::router`](crate::mcp::router) applies on its own.
    pub(crate) fn hosts(extra: &[String]) -> Policy {
        let valid: Vec<String> = extra
            .iter()
            .filter(|h| h.as_str() == "*" || HostRule::parse(h).is_some())
            .cloned()
            .collect();
        Policy::new("localhost", Some(&valid), None).expect("only valid hosts are kept")
    }

    /// `router` behind this policy: `nosniff` on every response, the Host /
    /// Origin rule, then CORS (when on) around the routes.
    pub(crate) fn apply(self, router: Router) -> Router {
        let cors = self.cors_layer();
        let router = match cors {
            Some(cors) => router.layer(cors),
            None => router,
        };
        router
            .layer(axum::middleware::from_fn_with_state(Arc::new(self), guard))
            .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ))
    }

    fn cors_layer(&self) -> Option<tower_http::cors::CorsLayer> {
        use tower_http::cors::{AllowOrigin, CorsLayer};
        let origins = self.cors.as_ref()?;
        let allow = match origins {
            None => AllowOrigin::any(),
            Some(list) => {
                let list = list.clone();
                AllowOrigin::predicate(move |origin, _| {
                    origin
                        .to_str()
                        .ok()
                        .and_then(Origin::parse)
                        .is_some_and(|o| list.contains(&o))
                })
            }
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
                .allow_headers([
                    header::CONTENT_TYPE,
                    header::ACCEPT,
                    header::AUTHORIZATION,
                    HeaderName::from_static("last-event-id"),
                    HeaderName::from_static("x-session-id"),
                    HeaderName::from_static("mcp-session-id"),
                    HeaderName::from_static("mcp-protocol-version"),
                ])
                .expose_headers([
                    header::RETRY_AFTER,
                    HeaderName::from_static("mcp-session-id"),
                ])
                .max_age(std::time::Duration::from_secs(600)),
        )
    }

    fn host_allowed(&self, host: &str, port: Option<u16>) -> bool {
        match &self.hosts {
            None => true,
            Some(rules) => rules.iter().any(|r| r.admits(host, port)),
        }
    }

    fn allowed_list(&self) -> String {
        match &self.hosts {
            None => "any".into(),
            Some(rules) => rules
                .iter()
                .map(|r| match r.port {
                    Some(p) => format!("{}:{p}", r.host),
                    None => r.host.clone(),
                })
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Refuses a request whose `Host` or `Origin` this policy does not allow.
    fn check(&self, headers: &HeaderMap) -> Result<()> {
        let forbidden = |what: String| Error::new(ErrorCode::Forbidden, what);
        if self.hosts.is_some() {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            let parsed = HostRule::parse(host);
            if !parsed.is_some_and(|h| self.host_allowed(&h.host, h.port)) {
                return Err(forbidden(format!(
                    "Host `{host}` is not allowed here (allowed: {}); a server reached under \
                     another name lists it with `allowed_hosts([...])`",
                    self.allowed_list()
                )));
            }
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let text = origin.to_str().unwrap_or_default();
        let allowed = Origin::parse(text).is_some_and(|o| {
            let cors = match &self.cors {
                Some(None) => true,
                Some(Some(list)) => list.contains(&o),
                None => false,
            };
            cors || self.host_allowed(&o.host, Some(o.port))
        });
        if allowed {
            Ok(())
        } else {
            Err(forbidden(format!(
                "Origin `{text}` is not allowed here: a page on another site may not call this \
                 server; allow it with `cors([...])` or `allowed_hosts([...])`"
            )))
        }
    }
}

async fn guard(State(policy): State<Arc<Policy>>, request: Request, next: Next) -> Response {
    match policy.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => http_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::try_from(*k).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn hosts_and_origins() {
        let p = Policy::new(
            "127.0.0.1",
            Some(&["api.example.com".into(), "mcp.internal:9000".into()]),
            Some(&["https://app.example.com".into()]),
        )
        .unwrap();
        let ok = |h: &[(&str, &str)]| p.check(&headers(h)).is_ok();
        assert!(ok(&[("host", "127.0.0.1:8000")]));
        assert!(ok(&[("host", "LOCALHOST")]));
        assert!(ok(&[("host", "[::1]:8000")]));
        assert!(ok(&[("host", "api.example.com")]));
        assert!(ok(&[("host", "mcp.internal:9000")]));
        assert!(!ok(&[("host", "mcp.internal:9001")]));
        assert!(!ok(&[("host", "evil.com")]));
        assert!(!ok(&[]), "no Host: refused");
        assert!(!ok(&[("host", "user@localhost")]));
        assert!(ok(&[
            ("host", "localhost"),
            ("origin", "http://localhost:5173")
        ]));
        assert!(ok(&[
            ("host", "localhost"),
            ("origin", "https://app.example.com")
        ]));
        assert!(ok(&[
            ("host", "localhost"),
            ("origin", "https://app.example.com:443")
        ]));
        assert!(!ok(&[
            ("host", "localhost"),
            ("origin", "http://app.example.com")
        ]));
        assert!(!ok(&[("host", "localhost"), ("origin", "http://evil.com")]));
        assert!(!ok(&[("host", "localhost"), ("origin", "null")]));
        assert!(!ok(&[("host", "localhost"), ("origin", "file://")]));
    }

    #[test]
    fn unspecified_binds_allow_only_loopback_names_and_any_is_explicit() {
        let p = Policy::new("0.0.0.0", None, None).unwrap();
        assert!(p.check(&headers(&[("host", "0.0.0.0:8000")])).is_err());
        assert!(p.check(&headers(&[("host", "localhost:8000")])).is_ok());
        let any = Policy::new("0.0.0.0", Some(&["*".into()]), None).unwrap();
        assert!(any.check(&headers(&[("host", "whatever:1")])).is_ok());
        assert!(any.check(&headers(&[])).is_ok());
    }

    #[test]
    fn malformed_entries_are_config_errors() {
        let e = Policy::new("127.0.0.1", Some(&["http://x/".into()]), None).unwrap_err();
        assert_eq!(e.code(), "config");
        assert!(e.message().contains("http://x/"), "{e}");
        let e = Policy::new("127.0.0.1", None, Some(&["app.example.com".into()])).unwrap_err();
        assert_eq!(e.code(), "config");
        assert!(e.message().contains("app.example.com"), "{e}");
    }
}
