//! Who may call which workflow: roles (RBAC).
//!
//! A role is declared on the builder with what it grants:
//!
//! ```no_run
//! # fn f(db: dataflow::DataFlow) -> dataflow::Result<()> {
//! let app = nexus::Nexus::builder()
//!     .role("reader", |r| r.workflows(["get_user", "list_users"]))
//!     .role("support", |r| r.models_read(["User"]).models_write(["Session"]))
//!     .role("admin", |r| r.all())
//!     .build(db)?;
//! # Ok(()) }
//! ```
//!
//! A caller may run a workflow when one of its roles ([`Context::roles`])
//! grants it: by name, by [`Role::all`], or through the models its nodes
//! touch. Model permissions cover a workflow made only of generated model
//! nodes (`UserReadNode`, `SessionCreateNode`, ...): each node that reads
//! (Read, List, Count) needs its model in [`Role::models_read`], each node
//! that writes needs it in [`Role::models_write`]. A workflow with any other
//! node (hand-written, audit, merge) is granted only by name or `all`.
//!
//! Fail closed: a role nobody declared grants nothing, a role declared with
//! no rules grants nothing, a caller without roles may run nothing.
//!
//! The check applies once roles are declared (or authentication is on).
//! The operator is exempt: the in-process CLI without `--role`, MCP over
//! stdio, and [`Nexus::execute`](crate::Nexus::execute) act for whoever
//! runs the program. So is [`Context::system`], the explicit escape hatch
//! for admin tools. Everything else — HTTP, MCP over HTTP,
//! [`Nexus::execute_in`](crate::Nexus::execute_in), the CLI with `--role` —
//! is decided by the context's roles.
//!
//! [`Context::roles`]: dataflow::Context::roles
//! [`Context::system`]: dataflow::Context::system

use dataflow::{DataFlow, Error, ErrorCode, Result, Workflow};
use std::collections::{BTreeMap, BTreeSet};

/// What a role grants; built in [`NexusBuilder::role`](crate::NexusBuilder::role)'s
/// closure. A role with no rules grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Role {
    all: bool,
    workflows: BTreeSet<String>,
    read: BTreeSet<String>,
    write: BTreeSet<String>,
}

impl Role {
    /// Every registered workflow (an administrator).
    pub fn all(mut self) -> Self {
        self.all = true;
        self
    }

    /// These workflows, by their registered names.
    pub fn workflows<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.workflows.extend(names.into_iter().map(Into::into));
        self
    }

    /// Reading these models (by model name, `"User"`): their Read, List
    /// and Count nodes.
    pub fn models_read<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.read.extend(models.into_iter().map(Into::into));
        self
    }

    /// Writing these models: their Create, Update, Delete, Upsert and bulk
    /// nodes. Reading needs [`models_read`](Self::models_read) as well.
    pub fn models_write<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.write.extend(models.into_iter().map(Into::into));
        self
    }

    /// Whether this role grants workflow `name` by itself (all, by name).
    fn names(&self, name: &str) -> bool {
        self.all || self.workflows.contains(name)
    }

    /// Whether this role grants reading (or writing) `model`.
    fn model(&self, model: &str, writes: bool) -> bool {
        if writes {
            self.write.contains(model)
        } else {
            self.read.contains(model)
        }
    }
}

/// What a registered workflow needs from a role besides its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Needs {
    /// A node that is not a generated model node: only the name or `all`.
    NameOnly,
    /// Each node's model, and whether it writes.
    Models(BTreeSet<(String, bool)>),
}

impl Needs {
    /// What `workflow` needs: the model and direction of each of its nodes.
    pub(crate) fn of(db: &DataFlow, workflow: &Workflow) -> Needs {
        let mut nodes = BTreeSet::new();
        for node in &workflow.spec().nodes {
            let model_op = db.models().iter().find_map(|m| {
                m.node_names()
                    .find(|(name, _)| *name == node.node_type)
                    .map(|(_, op)| (m.name.to_string(), op.writes()))
            });
            match model_op {
                Some(n) => {
                    nodes.insert(n);
                }
                None => return Needs::NameOnly,
            }
        }
        Needs::Models(nodes)
    }
}

/// The declared roles and how a refusal reads.
#[derive(Debug, Clone, Default)]
pub(crate) struct Roles {
    roles: BTreeMap<String, Role>,
    /// Whether calls are checked at all: once roles are declared (with auth
    /// on and none declared, every authenticated caller runs everything).
    pub(crate) enforced: bool,
    /// A workflow the caller may not run answers as if it did not exist.
    pub(crate) hide_forbidden: bool,
    /// Listings show every workflow, not only the caller's.
    pub(crate) list_all: bool,
}

impl Roles {
    /// The roles the builder declared, checked against `db`'s models.
    pub(crate) fn new(
        declared: &[(String, Role)],
        db: &DataFlow,
        hide_forbidden: bool,
        list_all: bool,
    ) -> Result<Roles> {
        let mut roles = BTreeMap::new();
        let models: Vec<&str> = db.models().iter().map(|m| m.name).collect();
        for (name, role) in declared {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::new(
                    ErrorCode::Config,
                    format!("role name `{name}` must be visible ASCII characters, without spaces"),
                ));
            }
            if roles.insert(name.clone(), role.clone()).is_some() {
                return Err(Error::new(
                    ErrorCode::Config,
                    format!("role `{name}` is declared twice; declare each role once"),
                ));
            }
            if let Some(unknown) = role
                .read
                .iter()
                .chain(&role.write)
                .find(|m| !models.contains(&m.as_str()))
            {
                return Err(Error::new(
                    ErrorCode::Config,
                    format!(
                        "role `{name}` names model `{unknown}`, which this database does not have; models: {}",
                        models.join(", ")
                    ),
                )
                .with_model(unknown.clone()));
            }
        }
        Ok(Roles {
            enforced: !roles.is_empty(),
            roles,
            hide_forbidden,
            list_all,
        })
    }

    /// Whether `roles` together grant workflow `name` (which needs
    /// `needs`): one names it, or each of its nodes' models is granted by
    /// one of them (a reader and a writer role may run a read-and-write
    /// workflow).
    pub(crate) fn grants(&self, roles: &[String], name: &str, needs: &Needs) -> bool {
        let held = || roles.iter().filter_map(|r| self.roles.get(r));
        if held().any(|role| role.names(name)) {
            return true;
        }
        match needs {
            Needs::NameOnly => false,
            Needs::Models(nodes) => {
                !nodes.is_empty()
                    && nodes
                        .iter()
                        .all(|(model, writes)| held().any(|role| role.model(model, *writes)))
            }
        }
    }

    /// Whether `roles` may see `model`'s records: one of them grants
    /// everything or reading it.
    pub(crate) fn may_read_model(&self, roles: &[String], model: &str) -> bool {
        roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .any(|role| role.all || role.read.contains(model))
    }

    /// Whether one of `roles` grants everything ([`Role::all`]): an admin,
    /// who may read any caller's run.
    pub(crate) fn grants_all(&self, roles: &[String]) -> bool {
        roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .any(|role| role.all)
    }

    /// A workflow name a role grants that is not registered: a typo that
    /// would otherwise grant nothing without a word.
    pub(crate) fn unregistered<'a>(
        &'a self,
        registered: &'a BTreeMap<String, crate::Registered>,
    ) -> Option<(&'a str, &'a str)> {
        self.roles.iter().find_map(|(role, r)| {
            r.workflows
                .iter()
                .find(|w| !registered.contains_key(w.as_str()))
                .map(|w| (role.as_str(), w.as_str()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(nodes: &[(&str, bool)]) -> Needs {
        Needs::Models(nodes.iter().map(|(m, w)| (m.to_string(), *w)).collect())
    }

    #[test]
    fn roles_fail_closed() {
        let roles = Roles {
            roles: [
                ("reader".to_string(), Role::default().models_read(["User"])),
                ("empty".to_string(), Role::default()),
                ("named".to_string(), Role::default().workflows(["custom"])),
                ("admin".to_string(), Role::default().all()),
            ]
            .into(),
            enforced: true,
            hide_forbidden: false,
            list_all: false,
        };
        let read_user = needs(&[("User", false)]);
        let write_user = needs(&[("User", true), ("User", false)]);
        let r = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(roles.grants(&r(&["reader"]), "get_user", &read_user));
        assert!(!roles.grants(&r(&["reader"]), "create_user", &write_user));
        assert!(
            !roles.grants(&r(&["empty"]), "get_user", &read_user),
            "no rules, nothing"
        );
        assert!(
            !roles.grants(&r(&["ghost"]), "get_user", &read_user),
            "unknown role, nothing"
        );
        assert!(
            !roles.grants(&[], "get_user", &read_user),
            "no roles, nothing"
        );
        assert!(!roles.grants(&r(&["reader"]), "custom", &Needs::NameOnly));
        assert!(roles.grants(&r(&["named"]), "custom", &Needs::NameOnly));
        assert!(roles.grants(&r(&["ghost", "admin"]), "custom", &Needs::NameOnly));
        let writer = Roles {
            roles: [
                ("reader".to_string(), Role::default().models_read(["User"])),
                ("writer".to_string(), Role::default().models_write(["User"])),
            ]
            .into(),
            ..roles
        };
        assert!(!writer.grants(&r(&["writer"]), "upsert", &write_user));
        assert!(
            writer.grants(&r(&["reader", "writer"]), "upsert", &write_user),
            "roles add up"
        );
    }
}
