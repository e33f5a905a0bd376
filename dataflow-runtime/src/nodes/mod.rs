//! The eleven nodes every model gets. Their logic is written once, driven
//! by the model's constant schema, so models add no code to compile.

mod ops;
mod params;
mod schema;
mod typed;

pub use ops::run;
pub use schema::input_schema;
pub use typed::*;

use std::fmt;

/// The operation of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Read,
    Update,
    Delete,
    List,
    Count,
    Upsert,
    BulkCreate,
    BulkUpdate,
    BulkDelete,
    BulkUpsert,
}

impl Op {
    pub const ALL: [Op; 11] = [
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
    ];

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
        }
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

/// The context of one node run.
pub(crate) fn ops_ctx<'a>(
    model: &'static crate::schema::ModelSchema,
    node: &'a str,
    columns: &'a str,
    echo: bool,
) -> ops::Ctx<'a> {
    ops::Ctx {
        model,
        node,
        columns,
        echo,
    }
}
