//! Compile-fail tests: each mistake in `#[dataflow::model]` is one clear
//! error at its span, with a `help:` showing the right syntax. The expected
//! messages live next to each case in `tests/ui/*.stderr`; the toolchain is
//! pinned in `rust-toolchain.toml` because compiler output changes between
//! versions.

#[test]
fn model_macro_errors() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
