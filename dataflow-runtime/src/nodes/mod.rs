//! The twelve nodes every model gets. Their logic is written once, driven
//! by the model's constant schema, so models add no code to compile.
//!
//! One module per concern: `run` dispatches an [`Op`] and holds the
//! context of a run; `read`, `write`, `upsert` and `bulk` hold the
//! operations, each with its parameter table; `target` finds the record a
//! node acts on, `row` validates what is written, `cursor` orders and pages
//! lists, and `schema` publishes the input JSON Schemas from the same
//! parameter tables the operations parse with.

mod aggregate;
mod bulk;
mod cursor;
mod params;
mod read;
mod row;
mod run;
mod schema;
mod target;
mod upsert;
mod write;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

pub use crate::typed::*;
pub(crate) use read::{DEFAULT_LIMIT as DEFAULT_LIST_LIMIT, MAX_LIMIT as MAX_LIST_LIMIT};
pub(crate) use run::{run, Ctx, Origin};
pub use schema::input_schema;

pub use crate::schema::Op;

use params::Param;

/// What a node takes as input.
pub(crate) enum Input {
    /// The record itself (Create).
    Record,
    /// An object of named parameters, declared once: the parser accepts
    /// these names and the JSON Schema describes them.
    Params(&'static [Param]),
}

/// The input of each op; [`input_schema`] publishes it.
pub(crate) fn input(op: Op) -> Input {
    match op {
        Op::Create => Input::Record,
        Op::Read => Input::Params(read::READ),
        Op::Update => Input::Params(write::UPDATE),
        Op::Delete => Input::Params(write::DELETE),
        Op::List => Input::Params(read::LIST),
        Op::Count => Input::Params(read::COUNT),
        Op::Upsert => Input::Params(upsert::UPSERT),
        Op::BulkCreate => Input::Params(bulk::BULK_CREATE),
        Op::BulkUpdate => Input::Params(bulk::BULK_UPDATE),
        Op::BulkDelete => Input::Params(bulk::BULK_DELETE),
        Op::BulkUpsert => Input::Params(upsert::BULK_UPSERT),
        Op::Aggregate => Input::Params(aggregate::AGGREGATE),
    }
}
