//! The eleven nodes every model gets. Their logic is written once, driven
//! by the model's constant schema, so models add no code to compile.

mod ops;
mod params;
mod schema;
mod typed;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

pub use ops::run;
pub use schema::input_schema;
pub use typed::*;

pub use crate::schema::Op;

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
