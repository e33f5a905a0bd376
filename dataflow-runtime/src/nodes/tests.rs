//! The statements each node sends, per dialect, without a database: a
//! [`Recorder`](super::fixtures::Recorder) stands in for the connection and
//! answers with canned rows. The snapshots are the SQL contract; a change
//! in them is a change in what runs on the database.

use super::fixtures::{run_on_both, NOTE, TAG, USER};
use super::Op;
use crate::value::Cell;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::json;

fn at() -> Cell {
    Cell::DateTime(
        DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc),
    )
}

/// A whole `users` row as the database returns it.
fn user_row(id: &str, email: &str) -> Vec<Cell> {
    vec![
        Cell::Text(id.into()),
        Cell::Text(email.into()),
        Cell::Null,
        Cell::Bool(true),
        Cell::I64(30),
        at(),
        at(),
    ]
}

/// A whole `notes` row as the database returns it.
fn note_row(id: i64) -> Vec<Cell> {
    vec![
        Cell::I64(id),
        Cell::Text("t".into()),
        Cell::Null,
        Cell::Json(json!([])),
        at(),
        at(),
        Cell::Null,
    ]
}

#[test]
fn create_inserts_one_row_and_returns_the_record() {
    insta::assert_snapshot!(run_on_both(
        &USER,
        Op::Create,
        json!({"id": "u1", "email": "a@x.io", "age": 30}),
        &[vec![user_row("u1", "a@x.io")]],
    ));
}

#[test]
fn create_leaves_an_auto_increment_key_to_the_database() {
    insta::assert_snapshot!(run_on_both(
        &NOTE,
        Op::Create,
        json!({"title": "t", "tags": []}),
        &[vec![note_row(1)]],
    ));
}

#[test]
fn bulk_create_inserts_many_rows_in_one_statement_per_batch() {
    insta::assert_snapshot!(run_on_both(
        &USER,
        Op::BulkCreate,
        json!({"data": [
            {"id": "u1", "email": "a@x.io", "age": 1},
            {"id": "u2", "email": "b@x.io", "age": 2, "active": false},
            {"id": "u3", "email": "c@x.io", "age": 3, "full_name": "C"},
        ], "batch_size": 2}),
        &[],
    ));
}

#[test]
fn bulk_create_returns_generated_keys() {
    insta::assert_snapshot!(run_on_both(
        &NOTE,
        Op::BulkCreate,
        json!({"data": [{"title": "a", "tags": [1]}, {"title": "b", "tags": {"k": 2}}]}),
        &[vec![vec![Cell::I64(1)], vec![Cell::I64(2)]]],
    ));
}

#[test]
fn read_by_id_and_by_filter() {
    insta::assert_snapshot!(
        run_on_both(
            &USER,
            Op::Read,
            json!({"id": "u1"}),
            &[vec![user_row("u1", "a@x.io")]]
        ) + &run_on_both(
            &NOTE,
            Op::Read,
            json!({"filter": {"title": "t"}, "include_deleted": true}),
            &[vec![note_row(1)]],
        )
    );
}

#[test]
fn list_orders_with_the_key_as_tie_breaker() {
    insta::assert_snapshot!(run_on_both(
        &USER,
        Op::List,
        json!({"filter": {"active": true}, "order_by": ["-age", "full_name"], "limit": 1, "offset": 2}),
        &[vec![user_row("u1", "a@x.io")]],
    ));
}

#[test]
fn list_after_a_cursor_adds_the_keyset_condition() {
    let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"o": ["-age", "email", "id"], "v": [30, "a@x.io", "u1"]}).to_string());
    insta::assert_snapshot!(run_on_both(
        &USER,
        Op::List,
        json!({"order_by": ["-age", "email"], "after": cursor, "limit": 2}),
        &[],
    ));
}

#[test]
fn count_on_a_soft_delete_model_skips_deleted_records() {
    insta::assert_snapshot!(run_on_both(
        &NOTE,
        Op::Count,
        json!({"filter": {"title": {"$like": "a%"}}}),
        &[vec![vec![Cell::I64(3)]]],
    ));
}

#[test]
fn update_by_filter_finds_one_then_updates_by_key() {
    insta::assert_snapshot!(run_on_both(
        &USER,
        Op::Update,
        json!({"filter": {"email": "a@x.io"}, "fields": {"full_name": "A", "age": 31}}),
        &[
            vec![user_row("u1", "a@x.io")],
            vec![user_row("u1", "a@x.io")]
        ],
    ));
}

#[test]
fn delete_hard_and_soft() {
    insta::assert_snapshot!(
        run_on_both(
            &USER,
            Op::Delete,
            json!({"id": "u1"}),
            &[vec![vec![Cell::Text("u1".into())]]]
        ) + &run_on_both(
            &NOTE,
            Op::Delete,
            json!({"filter": {"title": "t"}}),
            &[vec![note_row(7)], vec![vec![Cell::I64(7)]]],
        )
    );
}

#[test]
fn bulk_update_and_bulk_delete() {
    insta::assert_snapshot!(
        run_on_both(
            &USER,
            Op::BulkUpdate,
            json!({"filter": {"age": {"$lt": 18}}, "fields": {"active": false}}),
            &[],
        ) + &run_on_both(
            &USER,
            Op::BulkDelete,
            json!({"filter": {}, "confirmed": true}),
            &[]
        ) + &run_on_both(
            &NOTE,
            Op::BulkDelete,
            json!({"filter": {"id": {"$in": [1, 2]}}}),
            &[]
        )
    );
}

#[test]
fn upsert_creates_when_nothing_matches() {
    insta::assert_snapshot!(run_on_both(
        &USER,
        Op::Upsert,
        json!({"where": {"email": "a@x.io"}, "create": {"id": "u1", "age": 1}, "update": {"age": 2}}),
        &[vec![], vec![user_row("u1", "a@x.io")]],
    ));
}

#[test]
fn upsert_updates_the_match() {
    insta::assert_snapshot!(run_on_both(
        &USER,
        Op::Upsert,
        json!({"create": {"id": "u1", "email": "a@x.io", "age": 1}, "update": {"age": 2}, "conflict_on": "email"}),
        &[
            vec![user_row("u1", "a@x.io")],
            vec![user_row("u1", "a@x.io")]
        ],
    ));
}

#[test]
fn bulk_upsert_counts_existing_keys_then_inserts_on_conflict() {
    insta::assert_snapshot!(
        run_on_both(
            &USER,
            Op::BulkUpsert,
            json!({"data": [
                {"id": "u1", "email": "a@x.io", "age": 1},
                {"id": "u2", "email": "b@x.io", "age": 2},
            ], "conflict_on": ["email"]}),
            &[vec![vec![Cell::I64(1)]]],
        ) + &run_on_both(
            &NOTE,
            Op::BulkUpsert,
            json!({"data": [{"id": 1, "title": "a", "tags": []}]}),
            &[vec![vec![Cell::I64(0)]]],
        ) + &run_on_both(
            &TAG,
            Op::BulkUpsert,
            json!({"data": [{"name": "a"}, {"name": "b"}]}),
            &[vec![vec![Cell::I64(2)]]],
        )
    );
}

#[test]
fn aggregate_groups_with_having_and_order_in_one_statement() {
    insta::assert_snapshot!(
        run_on_both(
            &USER,
            Op::Aggregate,
            json!({
                "filter": {"active": true},
                "group_by": ["full_name"],
                "aggregates": {
                    "n": {"$count": "*"},
                    "total": {"$sum": "age"},
                    "mean": {"$avg": "age"},
                    "first": {"$min": "created_at"},
                    "emails": {"$count_distinct": "email"}
                },
                "having": {"n": {"$gte": 2}, "$or": [{"mean": {"$lt": 40.5}}, {"first": {"$null": true}}]},
                "order_by": ["-total"],
                "limit": 10,
                "offset": 1
            }),
            &[vec![vec![
                Cell::Text("Ann".into()),
                Cell::I64(3),
                at(),
                Cell::F64(30.0),
                Cell::I64(3),
                Cell::I64(90)
            ]]],
        ) + &run_on_both(
            &NOTE,
            Op::Aggregate,
            json!({"aggregates": {"n": {"$count": "*"}}}),
            &[vec![vec![Cell::I64(0)]]],
        )
    );
}
