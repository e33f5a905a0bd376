//! `nexus`: serve dataflow workflows over HTTP, CLI and MCP at once.
//!
//! This crate is a placeholder until the nexus issue lands; it exists so the
//! workspace has its final shape and dependants can already name it.

pub use dataflow;
