//! Compile-fail tests: each mistake in `#[dataflow::model]` is one clear
//! error at its span, with a `help:` showing the right syntax. The expected
//! messages live next to each case in `tests/ui/*.stderr`; the toolchain is
//! pinned in `rust-toolchain.toml` because compiler output changes between
//! versions. `tests/ui/pass/` holds models that must compile and run.

#[test]
fn model_macro_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
