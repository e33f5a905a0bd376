//! PostgreSQL row-level security for tenant-scoped tables
//! (`row_level_security(true)`): the policy the migrations create and the
//! settings the runtime makes per transaction, in one place.
//!
//! Every node statement already carries `tenant_id = ?`; the policy is a
//! second wall against a statement that would not (a bug, a hand-written
//! query on the runtime's connection). Tables are owned by the role that
//! connects, so the table gets `FORCE ROW LEVEL SECURITY` too: without it
//! the owner bypasses its own policies.
//!
//! - `dataflow.tenant`: the tenant whose rows are visible and writable.
//!   Empty or unset matches nothing (`NULLIF(.., '')`), so a connection
//!   that never set it sees no row.
//! - `dataflow.all_tenants = 'read'`: the escape of a system context reading
//!   across tenants ([`Context::system`](crate::Context::system) without a
//!   tenant). It opens `USING` (what rows are visible) but never `WITH
//!   CHECK` (what rows may be written), so even with it set a write must
//!   name its tenant. The runtime sets it only for such reads, and for the
//!   migration engine's own reads (`has_rows`); any session can set a
//!   custom setting, so the policy guards against application bugs, not
//!   against someone who runs SQL as the owning role (who could also
//!   `DISABLE ROW LEVEL SECURITY`).
//!
//! Both are set with `set_config(.., true)`: local to the transaction, gone
//! at its end, so a pooled connection carries nothing over.

use crate::backend::Conn;
use crate::context::Context;
use crate::error::{Error, ErrorCode, Result};
use crate::schema::Op;
use crate::sql::{quote, Sql};
use crate::value::{Cell, SqlValue};

/// The name of the policy on every tenant-scoped table.
pub(crate) const POLICY: &str = "dataflow_tenant";

/// What a transaction may see: one tenant's rows, or (a system read) all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope<'a> {
    /// One tenant: read and write its rows only.
    Tenant(&'a str),
    /// A system context reading across tenants.
    AllTenantsRead,
}

impl<'a> Scope<'a> {
    /// The scope a node runs in, or `None` when the node will refuse to run
    /// (no tenant: `tenant_required`, answered by the node itself).
    pub(crate) fn of(ctx: &'a Context, op: Op) -> Option<Scope<'a>> {
        match (ctx.tenant.as_deref(), ctx.system, op.writes()) {
            (Some(t), _, _) => Some(Scope::Tenant(t)),
            (None, true, false) => Some(Scope::AllTenantsRead),
            _ => None,
        }
    }
}

/// Sets both settings for the rest of the current transaction, in one
/// round trip, with the tenant bound as a parameter.
pub(crate) fn set<C: Conn>(conn: &mut C, scope: &Scope<'_>) -> Result<()> {
    let (tenant, all) = match scope {
        Scope::Tenant(t) => (*t, ""),
        Scope::AllTenantsRead => ("", "read"),
    };
    let mut sql = Sql::new(C::DIALECT);
    sql.push("SELECT set_config('dataflow.tenant', ")
        .bind(SqlValue::Text(tenant.to_string()))
        .push(", true), set_config('dataflow.all_tenants', ")
        .bind(SqlValue::Text(all.to_string()))
        .push(", true)");
    conn.query(&sql).map(drop)
}

/// Refuses a connection role that PostgreSQL exempts from every policy (a
/// superuser, or `BYPASSRLS`): with it the wall asked for would silently
/// not be there.
pub(crate) fn check_role<C: Conn>(conn: &mut C) -> Result<()> {
    let mut sql = Sql::new(C::DIALECT);
    sql.push(
        "SELECT current_user::text, rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
    );
    let rows = conn.query(&sql)?;
    match rows.first().map(Vec::as_slice) {
        Some([role, Cell::Bool(true)]) => Err(Error::new(
            ErrorCode::Config,
            format!(
                "row_level_security = true cannot guard anything for the role `{}`: it is a \
                 superuser or has BYPASSRLS, which PostgreSQL exempts from every policy; connect \
                 as a role without them (see the README's Multi-tenancy section)",
                crate::migrate::cell_text(role)
            ),
        )),
        _ => Ok(()),
    }
}

/// The statements that put the wall up on `table` (tenant column `tenant`).
pub(crate) fn enable(table: &str, tenant: &str) -> Vec<String> {
    let (t, col) = (quote(table), quote(tenant));
    let mine = format!("{col} = NULLIF(current_setting('dataflow.tenant', true), '')");
    vec![
        format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY"),
        format!("ALTER TABLE {t} FORCE ROW LEVEL SECURITY"),
        format!(
            "CREATE POLICY {} ON {t} USING ({mine} OR current_setting('dataflow.all_tenants', true) = 'read') WITH CHECK ({mine})",
            quote(POLICY)
        ),
    ]
}

/// The statements that take it down again.
pub(crate) fn disable(table: &str) -> Vec<String> {
    let t = quote(table);
    vec![
        format!("DROP POLICY IF EXISTS {} ON {t}", quote(POLICY)),
        format!("ALTER TABLE {t} NO FORCE ROW LEVEL SECURITY"),
        format!("ALTER TABLE {t} DISABLE ROW LEVEL SECURITY"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_contexts_read_across_tenants_but_never_write_without_one() {
        let sys = Context::system();
        assert_eq!(Scope::of(&sys, Op::List), Some(Scope::AllTenantsRead));
        assert_eq!(Scope::of(&sys, Op::Create), None);
        let acme = Context::system().tenant("acme");
        assert_eq!(Scope::of(&acme, Op::Update), Some(Scope::Tenant("acme")));
        assert_eq!(Scope::of(&Context::new(), Op::Read), None);
    }

    #[test]
    fn the_policy_checks_writes_against_the_tenant_only() {
        let up = enable("notes", "tenant_id");
        assert_eq!(up[1], "ALTER TABLE \"notes\" FORCE ROW LEVEL SECURITY");
        let (using, check) = up[2].split_once(" WITH CHECK ").unwrap();
        assert!(using.contains("'dataflow.all_tenants'"), "{using}");
        assert!(!check.contains("all_tenants"), "{check}");
        assert!(check.contains("NULLIF(current_setting('dataflow.tenant', true), '')"));
    }
}
