//! Proves the real-PostgreSQL test harness in `tests/support/postgres.rs`.
//!
//! Without PostgreSQL (and with `CI` unset) the database tests print
//! `skipping PostgreSQL: ...` and pass; with `CI` set they fail instead.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_query;
use diesel::sql_types::{BigInt, Integer, Text};

use support::postgres::{fresh_database, unreachable_url};

#[derive(QueryableByName, Debug, PartialEq)]
struct Item {
    #[diesel(sql_type = Integer)]
    id: i32,
    #[diesel(sql_type = Text)]
    label: String,
}

fn current_database(conn: &mut PgConnection) -> String {
    diesel::select(sql::<Text>("current_database()"))
        .get_result(conn)
        .unwrap()
}

fn user_table_count(conn: &mut PgConnection) -> i64 {
    diesel::select(sql::<BigInt>(
        "(SELECT count(*) FROM pg_catalog.pg_tables \
          WHERE schemaname NOT IN ('pg_catalog', 'information_schema'))",
    ))
    .get_result(conn)
    .unwrap()
}

#[test]
fn fresh_database_supports_create_insert_select() {
    let Some(url) = fresh_database("harness_roundtrip") else {
        return;
    };
    assert!(
        url.starts_with("postgres://") || url.starts_with("postgresql://"),
        "unexpected URL {url}"
    );

    let mut conn = PgConnection::establish(&url).unwrap();
    assert_eq!(
        user_table_count(&mut conn),
        0,
        "a fresh database must be empty"
    );
    conn.batch_execute("CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT NOT NULL)")
        .unwrap();
    let inserted = sql_query("INSERT INTO items (id, label) VALUES ($1, $2)")
        .bind::<Integer, _>(7)
        .bind::<Text, _>("seven")
        .execute(&mut conn)
        .unwrap();
    assert_eq!(inserted, 1);

    let rows: Vec<Item> = sql_query("SELECT id, label FROM items")
        .load(&mut conn)
        .unwrap();
    assert_eq!(
        rows,
        vec![Item {
            id: 7,
            label: "seven".to_string()
        }]
    );
}

#[test]
fn two_calls_give_two_different_empty_databases() {
    let Some(first) = fresh_database("harness_twice") else {
        return;
    };
    let Some(second) = fresh_database("harness_twice") else {
        return;
    };
    assert_ne!(first, second);

    let mut a = PgConnection::establish(&first).unwrap();
    let mut b = PgConnection::establish(&second).unwrap();
    assert_ne!(current_database(&mut a), current_database(&mut b));

    a.batch_execute("CREATE TABLE only_in_first (x INTEGER)")
        .unwrap();
    assert_eq!(user_table_count(&mut a), 1);
    assert_eq!(
        user_table_count(&mut b),
        0,
        "the second database must not see the first's table"
    );
}

#[test]
fn database_names_are_sanitized_and_bounded() {
    let hint = "Weird Hint/with-Chars.and ÜTF8 and a very long tail that goes on and on and on";
    let Some(url) = fresh_database(hint) else {
        return;
    };
    let mut conn = PgConnection::establish(&url).unwrap();
    let name = current_database(&mut conn);
    assert!(name.len() <= 63, "{name:?} is longer than 63 bytes");
    assert!(
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "{name:?} has characters outside [a-z0-9_]"
    );
    assert!(name.starts_with("weird_hint_with_chars_and_"), "{name:?}");
    // An external DATAFLOW_TEST_POSTGRES_URL may carry a query string (`?sslmode=...`).
    let path = url.split(['?', '#']).next().unwrap();
    assert!(
        path.ends_with(&format!("/{name}")),
        "URL {url} does not name database {name}"
    );
}

#[test]
fn concurrent_calls_give_distinct_databases() {
    let urls: Vec<Option<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| fresh_database("harness_parallel")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    if urls.iter().any(Option::is_none) {
        return;
    }
    let unique: HashSet<String> = urls.into_iter().flatten().collect();
    assert_eq!(unique.len(), 8);
    for url in &unique {
        PgConnection::establish(url).unwrap();
    }
}

#[test]
fn unreachable_url_fails_fast() {
    let url = unreachable_url();
    assert!(
        url.starts_with("postgres://postgres@127.0.0.1:"),
        "unexpected URL {url}"
    );
    let started = Instant::now();
    let result = PgConnection::establish(&url);
    let elapsed = started.elapsed();
    let err = match result {
        Ok(_) => panic!("connecting to {url} unexpectedly succeeded"),
        Err(e) => e,
    };
    assert!(!err.to_string().is_empty());
    assert!(
        elapsed < Duration::from_secs(5),
        "connection failure took {elapsed:?}"
    );
}
