//! Statements of SQL for the built-in tables of companion crates (nexus
//! keeps its API keys in `nexus_api_keys`): the same connection, writer and
//! dialect handling as the nodes, with every value a bound parameter.
//!
//! The statement text is the caller's own constant (its identifiers never
//! come from input); `?` marks each value, on SQLite and PostgreSQL alike.
//! Writes go through [`DataFlow`]'s write path (the SQLite writer thread, so
//! they never wait in SQLite's busy handler); reads use a pooled connection.
//!
//! [`DataFlow::notify`] and [`DataFlow::listen`] carry short messages
//! between processes on one database (PostgreSQL `NOTIFY` / `LISTEN`; a
//! no-op on SQLite, whose processes share no server to tell).

use crate::dataflow::on_conn;
use crate::error::{Error, Result};
use crate::schema::FieldType;
use crate::sql::Sql;
use crate::value::{format_datetime, Cell, SqlValue};
use crate::DataFlow;
use serde_json::Value;

impl DataFlow {
    /// Runs one statement (DDL or a write) whose values are `params`, bound
    /// in order to its `?` marks: strings as text, integers as 64-bit
    /// integers, floats, booleans, and `null` as a text null. Returns the
    /// number of rows it changed. Not for tables of models: nodes write those.
    pub async fn raw_execute(&self, statement: &str, params: Vec<Value>) -> Result<u64> {
        let sql = self.raw_sql(statement, params)?;
        self.exclusive(move |_, conn| on_conn!(conn, c => crate::backend::Conn::exec(c, &sql)))
            .await
            .map(|n| n as u64)
    }

    /// Runs one query bound like [`raw_execute`](Self::raw_execute) and
    /// returns its rows, each a list of values in select-list order
    /// (timestamps as RFC 3339 text, bytes as arrays of numbers).
    pub async fn raw_query(&self, statement: &str, params: Vec<Value>) -> Result<Vec<Vec<Value>>> {
        let sql = self.raw_sql(statement, params)?;
        let rows = self
            .blocking(move |_, conn| on_conn!(conn, c => crate::backend::Conn::query(c, &sql)))
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| row.into_iter().map(cell_value).collect())
            .collect())
    }

    /// Sends `payload` to every process listening on `channel`
    /// ([`listen`](Self::listen)), this one included, once the statement
    /// commits (at once: it runs on its own). PostgreSQL caps a payload
    /// below 8000 bytes; a longer one is refused. On SQLite it does nothing.
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        if self.dialect() != crate::sql::Dialect::Postgres {
            return Ok(());
        }
        self.raw_query(
            "SELECT pg_notify(?, ?)",
            vec![Value::from(channel), Value::from(payload)],
        )
        .await
        .map(drop)
    }

    /// The payloads sent to `channel` with [`notify`](Self::notify) by any
    /// process on this database, from now on, on a connection of their own
    /// (a thread polls it every few milliseconds; a lost connection is
    /// opened again, and what was sent meanwhile is missed). Dropping the
    /// receiver stops it. `None` on SQLite. `channel` is a lower-case
    /// identifier (`nexus_events`).
    pub fn listen(&self, channel: &str) -> Result<Option<tokio::sync::mpsc::Receiver<String>>> {
        let crate::backend::Target::Postgres { .. } = self.target() else {
            return Ok(None);
        };
        let valid = !channel.is_empty()
            && channel.len() <= 63
            && channel
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(Error::internal(format!(
                "listen: `{channel}` is not a lower-case identifier"
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let (target, timeout) = (self.target().clone(), self.config().connect_timeout());
        let statement = format!("LISTEN {channel}");
        std::thread::Builder::new()
            .name(format!("dataflow-listen-{channel}"))
            .spawn(move || listen_loop(&target, timeout, &statement, &tx))
            .map_err(|e| Error::internal(format!("listen: cannot start a thread: {e}")))?;
        Ok(Some(rx))
    }

    pub(crate) fn raw_sql(&self, statement: &str, params: Vec<Value>) -> Result<Sql> {
        let mut pieces = statement.split('?');
        let mut sql = Sql::new(self.dialect());
        sql.push(pieces.next().unwrap_or_default());
        let mut params = params.into_iter();
        for piece in pieces {
            let value = params.next().ok_or_else(|| {
                Error::internal(format!("raw SQL: more `?` than values in `{statement}`"))
            })?;
            sql.bind(bound(value)?);
            sql.push(piece);
        }
        if params.next().is_some() {
            return Err(Error::internal(format!(
                "raw SQL: more values than `?` in `{statement}`"
            )));
        }
        Ok(sql)
    }
}

/// How often a listening connection is asked for what arrived.
const LISTEN_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Holds a connection listening with `statement` and forwards what arrives,
/// until the receiver is dropped.
fn listen_loop(
    target: &crate::backend::Target,
    timeout: std::time::Duration,
    statement: &str,
    tx: &tokio::sync::mpsc::Sender<String>,
) {
    use diesel::connection::SimpleConnection;
    while !tx.is_closed() {
        let mut conn = match target.connect(timeout) {
            Ok(crate::backend::AnyConnection::Postgresql(c)) => c,
            _ => {
                std::thread::sleep(std::time::Duration::from_secs(1));
                continue;
            }
        };
        if conn.batch_execute(statement).is_err() {
            std::thread::sleep(std::time::Duration::from_secs(1));
            continue;
        }
        'connected: while !tx.is_closed() {
            let mut received = Vec::new();
            for n in conn.notifications_iter() {
                match n {
                    Ok(n) => received.push(n.payload),
                    Err(_) => break 'connected,
                }
            }
            for payload in received {
                if tx.blocking_send(payload).is_err() {
                    return;
                }
            }
            std::thread::sleep(LISTEN_POLL);
        }
    }
}

fn bound(v: Value) -> Result<SqlValue> {
    Ok(match v {
        Value::Null => SqlValue::Null(FieldType::String),
        Value::Bool(b) => SqlValue::Bool(b),
        Value::String(s) => SqlValue::Text(s),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => SqlValue::I64(i),
            (None, Some(f)) => SqlValue::F64(f),
            _ => return Err(Error::internal(format!("raw SQL: {n} fits no column type"))),
        },
        other => SqlValue::Text(other.to_string()),
    })
}

fn cell_value(cell: Cell) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::Bool(b) => Value::Bool(b),
        Cell::I64(i) => Value::from(i),
        Cell::F64(f) => Value::from(f),
        Cell::Text(s) => Value::String(s),
        Cell::Bytes(b) => Value::from(b),
        Cell::DateTime(dt) => Value::String(format_datetime(&dt)),
        Cell::Date(d) => Value::String(d.format("%Y-%m-%d").to_string()),
        Cell::Uuid(u) => Value::String(u.to_string()),
        Cell::Json(j) => j,
    }
}
