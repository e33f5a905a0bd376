//! The vocabulary `dataflow` and `dataflow-macros` must agree on, in one
//! place, the way diesel shares `diesel_table_macro_syntax` between its
//! runtime and its derives.
//!
//! - [`FieldType`], [`OnDelete`], [`Generated`]: what a field is; the macro
//!   emits them, the runtime reads them.
//! - [`Op`] and [`node_name`]: the eleven CRUD operations and the
//!   `{Model}{Op}Node` naming rule.
//! - [`default_table_name`]: `OrderItem` → `order_items`.
//! - [`checksum`]: the canonical text of a model and its FNV-1a hash, which
//!   databases persist, so it must never change by accident.
//!
//! No dependencies; the `serde` feature derives `Serialize` for the enums.
//!
//! ```
//! use dataflow_core::{default_table_name, node_name, Op};
//!
//! assert_eq!(default_table_name("Category"), "categories");
//! assert_eq!(node_name("User", Op::BulkCreate), "UserBulkCreateNode");
//! ```

#![warn(missing_docs)]

pub mod checksum;
mod naming;
mod op;
mod types;

pub use crate::naming::default_table_name;
pub use crate::op::{node_name, Op};
pub use crate::types::{FieldType, Generated, OnDelete};
