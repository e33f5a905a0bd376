//! PostgreSQL: binds with native types and row decoding by type OID.

use super::{map_error, transaction_with, Cells, Conn, SqlRef};
use crate::error::Result;
use crate::schema::FieldType;
use crate::sql::{Dialect, Sql};
use crate::value::{Cell, SqlArray, SqlValue};
use diesel::connection::SimpleConnection;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::pg::{Pg, PgValue};
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::row::{Field, Row};
use diesel::sql_types::{
    Array, BigInt, Binary, Bool, Date, Double, Float, Integer, Jsonb, Nullable, SmallInt, Text,
    Timestamptz, Untyped,
};
use diesel::{Connection, PgConnection, QueryResult, RunQueryDsl};

static NULL_TEXT: Option<String> = None;
static NULL_I16: Option<i16> = None;
static NULL_I32: Option<i32> = None;
static NULL_I64: Option<i64> = None;
static NULL_F32: Option<f32> = None;
static NULL_F64: Option<f64> = None;
static NULL_BOOL: Option<bool> = None;
static NULL_BYTES: Option<Vec<u8>> = None;
static NULL_DATETIME: Option<chrono::DateTime<chrono::Utc>> = None;
static NULL_DATE: Option<chrono::NaiveDate> = None;
static NULL_UUID: Option<uuid::Uuid> = None;
static NULL_JSON: Option<serde_json::Value> = None;

impl QueryFragment<Pg> for Sql {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        for (part, bind) in self.pieces() {
            out.push_sql(part);
            let Some(v) = bind else { continue };
            match v {
                // NULLs carry the column's type: PostgreSQL types every parameter.
                SqlValue::Null(ty) => match ty {
                    FieldType::String => out.push_bind_param::<Nullable<Text>, _>(&NULL_TEXT)?,
                    FieldType::I16 => out.push_bind_param::<Nullable<SmallInt>, _>(&NULL_I16)?,
                    FieldType::I32 => out.push_bind_param::<Nullable<Integer>, _>(&NULL_I32)?,
                    FieldType::I64 => out.push_bind_param::<Nullable<BigInt>, _>(&NULL_I64)?,
                    FieldType::F32 => out.push_bind_param::<Nullable<Float>, _>(&NULL_F32)?,
                    FieldType::F64 => out.push_bind_param::<Nullable<Double>, _>(&NULL_F64)?,
                    FieldType::Bool => out.push_bind_param::<Nullable<Bool>, _>(&NULL_BOOL)?,
                    FieldType::DateTime => {
                        out.push_bind_param::<Nullable<Timestamptz>, _>(&NULL_DATETIME)?
                    }
                    FieldType::Date => out.push_bind_param::<Nullable<Date>, _>(&NULL_DATE)?,
                    FieldType::Uuid => {
                        out.push_bind_param::<Nullable<diesel::sql_types::Uuid>, _>(&NULL_UUID)?
                    }
                    FieldType::Json => out.push_bind_param::<Nullable<Jsonb>, _>(&NULL_JSON)?,
                    FieldType::Bytes => out.push_bind_param::<Nullable<Binary>, _>(&NULL_BYTES)?,
                },
                SqlValue::Bool(b) => out.push_bind_param::<Bool, _>(b)?,
                SqlValue::I16(x) => out.push_bind_param::<SmallInt, _>(x)?,
                SqlValue::I32(x) => out.push_bind_param::<Integer, _>(x)?,
                SqlValue::I64(x) => out.push_bind_param::<BigInt, _>(x)?,
                SqlValue::F32(x) => out.push_bind_param::<Float, _>(x)?,
                SqlValue::F64(x) => out.push_bind_param::<Double, _>(x)?,
                SqlValue::Text(s) => out.push_bind_param::<Text, _>(s)?,
                SqlValue::Bytes(b) => out.push_bind_param::<Binary, _>(b)?,
                SqlValue::DateTime(dt) => out.push_bind_param::<Timestamptz, _>(dt)?,
                SqlValue::Date(d) => out.push_bind_param::<Date, _>(d)?,
                SqlValue::Uuid(u) => out.push_bind_param::<diesel::sql_types::Uuid, _>(u)?,
                SqlValue::Json(j) => out.push_bind_param::<Jsonb, _>(j)?,
                SqlValue::Array(a) => match a {
                    SqlArray::Bool(v) => out.push_bind_param::<Array<Bool>, _>(v)?,
                    SqlArray::I16(v) => out.push_bind_param::<Array<SmallInt>, _>(v)?,
                    SqlArray::I32(v) => out.push_bind_param::<Array<Integer>, _>(v)?,
                    SqlArray::I64(v) => out.push_bind_param::<Array<BigInt>, _>(v)?,
                    SqlArray::F32(v) => out.push_bind_param::<Array<Float>, _>(v)?,
                    SqlArray::F64(v) => out.push_bind_param::<Array<Double>, _>(v)?,
                    SqlArray::Text(v) => out.push_bind_param::<Array<Text>, _>(v)?,
                    SqlArray::DateTime(v) => out.push_bind_param::<Array<Timestamptz>, _>(v)?,
                    SqlArray::Date(v) => out.push_bind_param::<Array<Date>, _>(v)?,
                    SqlArray::Uuid(v) => {
                        out.push_bind_param::<Array<diesel::sql_types::Uuid>, _>(v)?
                    }
                    SqlArray::Bytes(v) => out.push_bind_param::<Array<Binary>, _>(v)?,
                },
            }
        }
        Ok(())
    }
}

impl FromSqlRow<Untyped, Pg> for Cells {
    fn build_from_row<'a>(row: &impl Row<'a, Pg>) -> deserialize::Result<Self> {
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

fn decode(v: PgValue<'_>) -> deserialize::Result<Cell> {
    Ok(match v.get_oid().get() {
        16 => Cell::Bool(<bool as FromSql<Bool, Pg>>::from_sql(v)?),
        21 => Cell::I64(i64::from(<i16 as FromSql<SmallInt, Pg>>::from_sql(v)?)),
        23 => Cell::I64(i64::from(<i32 as FromSql<Integer, Pg>>::from_sql(v)?)),
        20 => Cell::I64(<i64 as FromSql<BigInt, Pg>>::from_sql(v)?),
        700 => Cell::F64(f64::from(<f32 as FromSql<Float, Pg>>::from_sql(v)?)),
        701 => Cell::F64(<f64 as FromSql<Double, Pg>>::from_sql(v)?),
        25 | 1043 | 1042 | 19 => Cell::Text(<String as FromSql<Text, Pg>>::from_sql(v)?),
        17 => Cell::Bytes(<Vec<u8> as FromSql<Binary, Pg>>::from_sql(v)?),
        1184 => Cell::DateTime(<chrono::DateTime<chrono::Utc> as FromSql<
            Timestamptz,
            Pg,
        >>::from_sql(v)?),
        1114 => Cell::DateTime(
            <chrono::NaiveDateTime as FromSql<diesel::sql_types::Timestamp, Pg>>::from_sql(v)?
                .and_utc(),
        ),
        1082 => Cell::Date(<chrono::NaiveDate as FromSql<Date, Pg>>::from_sql(v)?),
        2950 => Cell::Uuid(<uuid::Uuid as FromSql<diesel::sql_types::Uuid, Pg>>::from_sql(v)?),
        114 => Cell::Json(<serde_json::Value as FromSql<
            diesel::sql_types::Json,
            Pg,
        >>::from_sql(v)?),
        3802 => Cell::Json(<serde_json::Value as FromSql<Jsonb, Pg>>::from_sql(v)?),
        oid => return Err(format!("unsupported PostgreSQL column type (oid {oid})").into()),
    })
}

impl Conn for PgConnection {
    const DIALECT: Dialect = Dialect::Postgres;

    fn exec(&mut self, sql: &Sql) -> Result<usize> {
        SqlRef(sql).execute(self).map_err(map_error)
    }

    fn query(&mut self, sql: &Sql) -> Result<Vec<Vec<Cell>>> {
        let rows: Vec<Cells> = SqlRef(sql).load(self).map_err(map_error)?;
        Ok(rows.into_iter().map(|c| c.0).collect())
    }

    fn write_transaction<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        transaction_with(self, f, |c, body| c.transaction(|c| body(c)))
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        self.batch_execute(sql).map_err(map_error)
    }
}
