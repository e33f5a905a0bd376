//! SQLite: binds and row decoding.

use super::{map_error, transaction_with, Cells, Conn, SqlRef};
use crate::error::Result;
use crate::schema::FieldType;
use crate::sql::{Dialect, Sql};
use crate::value::{Cell, SqlValue};
use diesel::backend::Backend;
use diesel::connection::SimpleConnection;
use diesel::connection::{AnsiTransactionManager, Connection, TransactionManager};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::row::{Field, Row};
use diesel::sql_types::{
    BigInt, Binary, Bool, Double, Float, Integer, Nullable, SmallInt, Text, Untyped,
};
use diesel::sqlite::{Sqlite, SqliteType};
use diesel::{QueryResult, RunQueryDsl, SqliteConnection};

static NULL_TEXT: Option<String> = None;
static NULL_I64: Option<i64> = None;
static NULL_F64: Option<f64> = None;
static NULL_BYTES: Option<Vec<u8>> = None;

impl QueryFragment<Sqlite> for Sql {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        for (part, bind) in self.pieces() {
            out.push_sql(part);
            let Some(v) = bind else { continue };
            match v {
                SqlValue::Null(ty) => match ty {
                    FieldType::I16 | FieldType::I32 | FieldType::I64 | FieldType::Bool => {
                        out.push_bind_param::<Nullable<BigInt>, _>(&NULL_I64)?
                    }
                    FieldType::F32 | FieldType::F64 => {
                        out.push_bind_param::<Nullable<Double>, _>(&NULL_F64)?
                    }
                    FieldType::Bytes => out.push_bind_param::<Nullable<Binary>, _>(&NULL_BYTES)?,
                    _ => out.push_bind_param::<Nullable<Text>, _>(&NULL_TEXT)?,
                },
                SqlValue::Bool(b) => out.push_bind_param::<Bool, _>(b)?,
                SqlValue::I16(x) => out.push_bind_param::<SmallInt, _>(x)?,
                SqlValue::I32(x) => out.push_bind_param::<Integer, _>(x)?,
                SqlValue::I64(x) => out.push_bind_param::<BigInt, _>(x)?,
                SqlValue::F32(x) => out.push_bind_param::<Float, _>(x)?,
                SqlValue::F64(x) => out.push_bind_param::<Double, _>(x)?,
                SqlValue::Text(s) => out.push_bind_param::<Text, _>(s)?,
                SqlValue::Bytes(b) => out.push_bind_param::<Binary, _>(b)?,
                // `Sql::bind` stores these as text on SQLite.
                SqlValue::DateTime(_)
                | SqlValue::Date(_)
                | SqlValue::Uuid(_)
                | SqlValue::Json(_)
                | SqlValue::Array(_) => {
                    return Err(diesel::result::Error::SerializationError(
                        "typed value reached the SQLite binder unconverted".into(),
                    ))
                }
            }
        }
        Ok(())
    }
}

impl FromSqlRow<Untyped, Sqlite> for Cells {
    fn build_from_row<'a>(row: &impl Row<'a, Sqlite>) -> deserialize::Result<Self> {
        let n = row.field_count();
        let mut cells = Vec::with_capacity(n);
        for i in 0..n {
            let field = row.get(i).ok_or("column index out of range")?;
            cells.push(match field.value() {
                None => Cell::Null,
                Some(v) => decode(v)?,
            });
        }
        Ok(Cells(cells))
    }
}

fn decode(v: <Sqlite as Backend>::RawValue<'_>) -> deserialize::Result<Cell> {
    Ok(match v.value_type() {
        Some(SqliteType::Long | SqliteType::Integer | SqliteType::SmallInt) => {
            Cell::I64(<i64 as FromSql<BigInt, Sqlite>>::from_sql(v)?)
        }
        Some(SqliteType::Double | SqliteType::Float) => {
            Cell::F64(<f64 as FromSql<Double, Sqlite>>::from_sql(v)?)
        }
        Some(SqliteType::Binary) => Cell::Bytes(<Vec<u8> as FromSql<Binary, Sqlite>>::from_sql(v)?),
        _ => Cell::Text(<String as FromSql<Text, Sqlite>>::from_sql(v)?),
    })
}

impl Conn for SqliteConnection {
    const DIALECT: Dialect = Dialect::Sqlite;

    fn exec(&mut self, sql: &Sql) -> Result<usize> {
        SqlRef(sql).execute(self).map_err(map_error)
    }

    fn query(&mut self, sql: &Sql) -> Result<Vec<Vec<Cell>>> {
        let rows: Vec<Cells> = SqlRef(sql).load(self).map_err(map_error)?;
        Ok(rows.into_iter().map(|c| c.0).collect())
    }

    fn write_transaction<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let depth = AnsiTransactionManager::transaction_manager_status_mut(self)
            .transaction_depth()
            .map_err(map_error)?;
        if depth.is_some() {
            transaction_with(self, f, |c, body| c.transaction(|c| body(c)))
        } else {
            transaction_with(self, f, |c, body| c.immediate_transaction(|c| body(c)))
        }
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        self.batch_execute(sql).map_err(map_error)
    }
}
