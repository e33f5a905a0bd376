//! The twelve operations every model gets a node for, and the one rule
//! that names those nodes.

use std::fmt;

/// The operation of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Insert one record.
    Create,
    /// Fetch one record by primary key.
    Read,
    /// Change fields of one record.
    Update,
    /// Delete (or soft-delete) one record.
    Delete,
    /// Filter, sort and page records.
    List,
    /// Count the records matching a filter.
    Count,
    /// Insert or update one record by a unique key.
    Upsert,
    /// Insert many records.
    BulkCreate,
    /// Change the records matching a filter.
    BulkUpdate,
    /// Delete the records matching a filter.
    BulkDelete,
    /// Insert or update many records.
    BulkUpsert,
    /// Group the records matching a filter and aggregate them.
    Aggregate,
}

impl Op {
    /// Every operation, in the order nodes are listed.
    pub const ALL: [Op; 12] = [
        Op::Create,
        Op::Read,
        Op::Update,
        Op::Delete,
        Op::List,
        Op::Count,
        Op::Upsert,
        Op::BulkCreate,
        Op::BulkUpdate,
        Op::BulkDelete,
        Op::BulkUpsert,
        Op::Aggregate,
    ];

    /// The name as it appears in node names: `"BulkCreate"`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "Create",
            Op::Read => "Read",
            Op::Update => "Update",
            Op::Delete => "Delete",
            Op::List => "List",
            Op::Count => "Count",
            Op::Upsert => "Upsert",
            Op::BulkCreate => "BulkCreate",
            Op::BulkUpdate => "BulkUpdate",
            Op::BulkDelete => "BulkDelete",
            Op::BulkUpsert => "BulkUpsert",
            Op::Aggregate => "Aggregate",
        }
    }

    /// Whether the node writes at all (creates, changes or deletes).
    pub fn writes(self) -> bool {
        !matches!(self, Op::Read | Op::List | Op::Count | Op::Aggregate)
    }

    /// Whether the node writes (and so is refused on append-only models
    /// when it changes existing rows).
    pub fn changes_existing(self) -> bool {
        matches!(
            self,
            Op::Update | Op::Delete | Op::Upsert | Op::BulkUpdate | Op::BulkDelete | Op::BulkUpsert
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The node type name of `op` on `model`: `{Model}{Op}Node`, the one
/// place this naming rule is written. The macro names its type aliases
/// with it and the runtime registers nodes under it, so they always agree.
pub fn node_name(model: &str, op: Op) -> String {
    format!("{model}{}Node", op.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_join_model_and_op() {
        assert_eq!(node_name("User", Op::Create), "UserCreateNode");
        assert_eq!(
            node_name("OrderItem", Op::BulkUpsert),
            "OrderItemBulkUpsertNode"
        );
        assert_eq!(Op::ALL.len(), 12);
        assert_eq!(Op::BulkDelete.to_string(), "BulkDelete");
    }
}
