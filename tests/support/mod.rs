//! Shared helpers for the integration tests in `tests/*.rs`.
//!
//! Use from a test crate with `mod support;` and then `support::postgres::fresh_database(..)`,
//! or include a single helper directly: `#[path = "support/postgres.rs"] mod postgres;`.

pub mod postgres;
