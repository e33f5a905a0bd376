//! Validates OpenAPI 3.1 documents against the OpenAPI Initiative's published JSON Schemas.
//!
//! The entry point is the "schema-base" variant, so Schema Objects (request and response
//! bodies, `components.schemas`) are checked as JSON Schema 2020-12 with the OAS dialect
//! too; the plain 3.1 schema accepts any object there. The schemas are vendored in
//! `tests/fixtures/openapi/` (see its README) and embedded, so nothing is fetched.
//!
//! Include from a test crate with `#[path = "support/openapi.rs"] mod openapi;`.

#![allow(dead_code)]

use std::sync::LazyLock;

use jsonschema::error::ValidationErrorKind;
use jsonschema::{Registry, ValidationError, Validator};
use serde_json::Value;

const SCHEMA_BASE: &str = "https://spec.openapis.org/oas/3.1/schema-base/2022-10-07";

/// Every schema the entry point reaches, under the URI it is published at (its `$id`).
/// The JSON Schema 2020-12 meta-schemas ship with `jsonschema` itself.
const RESOURCES: [(&str, &str); 4] = [
    (
        SCHEMA_BASE,
        include_str!("../fixtures/openapi/schema-base.json"),
    ),
    (
        "https://spec.openapis.org/oas/3.1/schema/2022-10-07",
        include_str!("../fixtures/openapi/schema.json"),
    ),
    (
        "https://spec.openapis.org/oas/3.1/dialect/base",
        include_str!("../fixtures/openapi/dialect-base.json"),
    ),
    (
        "https://spec.openapis.org/oas/3.1/meta/base",
        include_str!("../fixtures/openapi/meta-base.json"),
    ),
];

static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| {
    let resources = RESOURCES.map(|(uri, text)| {
        let schema: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("vendored schema {uri} is not JSON: {e}"));
        (uri, schema)
    });
    let registry = Registry::new()
        .extend(resources)
        .and_then(|builder| builder.prepare())
        .unwrap_or_else(|e| panic!("cannot register the OpenAPI 3.1 schemas: {e}"));
    jsonschema::options()
        .with_registry(&registry)
        .build(&serde_json::json!({ "$ref": SCHEMA_BASE }))
        .unwrap_or_else(|e| panic!("cannot compile the OpenAPI 3.1 schema: {e}"))
});

/// Checks `doc` against the OpenAPI 3.1 schema (schema-base dialect).
///
/// Each error reads `<instance path>: <problem>`, the path a JSON Pointer into `doc`
/// (`/` for the document itself).
pub fn validate(doc: &Value) -> Result<(), Vec<String>> {
    let errors: Vec<String> = VALIDATOR
        .iter_errors(doc)
        .map(|error| format!("{}: {}", pointer(&error), describe(&error)))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn pointer(error: &ValidationError) -> String {
    match error.instance_path().to_string() {
        path if path.is_empty() => "/".to_owned(),
        path => path,
    }
}

/// The problem, without echoing whole objects or arrays (the path says where they are),
/// and for `anyOf` / `oneOf` with the reason each alternative failed.
fn describe(error: &ValidationError) -> String {
    let alternatives = match error.kind() {
        ValidationErrorKind::AnyOf { context } => Some(("anyOf", context)),
        ValidationErrorKind::OneOfNotValid { context } => Some(("oneOf", context)),
        _ => None,
    };
    if let Some((keyword, context)) = alternatives {
        let reasons: Vec<String> = context
            .iter()
            .enumerate()
            .map(|(i, errors)| {
                let errors: Vec<String> = errors
                    .iter()
                    .map(|e| match pointer(e) {
                        path if path == pointer(error) => describe(e),
                        path => format!("{path}: {}", describe(e)),
                    })
                    .collect();
                format!("#{}: {}", i + 1, errors.join(", "))
            })
            .collect();
        return format!(
            "matches none of the '{keyword}' alternatives ({})",
            reasons.join("; ")
        );
    }
    match error.instance() {
        value if value.is_object() || value.is_array() => error.masked_with("value").to_string(),
        _ => error.to_string(),
    }
}
