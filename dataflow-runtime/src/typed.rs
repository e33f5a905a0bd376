//! The typed Rust form of the nodes. `#[dataflow::model]` declares
//! `UserCreateNode` as `CreateNode<User>`, and so on; each has a `run` with
//! Rust types in and out, on top of the same JSON path every channel uses.
//!
//! It sits above [`DataFlow`] (it runs through it), and `nodes` re-exports
//! it, so generated code names `dataflow::nodes::CreateNode<User>`.

use crate::error::{Error, Result};
use crate::schema::Op;
use crate::schema::{FieldType, Model};
use crate::DataFlow;
use serde_json::{json, Value};
use std::marker::PhantomData;

macro_rules! node_types {
    ($($ty:ident => $op:ident),* $(,)?) => {$(
        #[doc = concat!("The ", stringify!($op), " node of model `M`.")]
        pub struct $ty<M>(PhantomData<fn() -> M>);

        impl<M: Model> $ty<M> {
            /// The operation of this node.
            pub const OP: Op = Op::$op;

            /// The registered node type name, e.g. `"UserCreateNode"`.
            pub fn name() -> String {
                crate::schema::node_name(M::SCHEMA.name, Op::$op)
            }

            /// The JSON Schema of this node's input.
            pub fn input_schema() -> Value {
                crate::nodes::input_schema(&M::SCHEMA, Op::$op)
            }

            /// The JSON form, as used by workflows and every channel.
            pub async fn execute(db: &DataFlow, params: Value) -> Result<Value> {
                db.execute_op(&M::SCHEMA, Op::$op, params).await
            }
        }
    )*};
}

node_types! {
    CreateNode => Create,
    ReadNode => Read,
    UpdateNode => Update,
    DeleteNode => Delete,
    ListNode => List,
    CountNode => Count,
    UpsertNode => Upsert,
    BulkCreateNode => BulkCreate,
    BulkUpdateNode => BulkUpdate,
    BulkDeleteNode => BulkDelete,
    BulkUpsertNode => BulkUpsert,
    AggregateNode => Aggregate,
}

/// A record as node input. An empty string or zero primary key means
/// "generate one", so `User { id: String::new(), .. }` can be created.
fn record_params<M: Model>(record: &M) -> Result<Value> {
    let mut v = serde_json::to_value(record)
        .map_err(|e| Error::internal(format!("serializing {}: {e}", M::SCHEMA.name)))?;
    let pk = M::SCHEMA.primary_key();
    if let Some(obj) = v.as_object_mut() {
        // A declared `version` of a versioned model is read, never written.
        if let Some(f) = M::SCHEMA.field_with(crate::schema::Generated::Version) {
            obj.remove(f.name);
        }
        let unset = match obj.get(pk.name) {
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Number(n)) => pk.ty != FieldType::F64 && n.as_i64() == Some(0),
            _ => false,
        };
        if unset {
            obj.remove(pk.name);
        }
    }
    Ok(v)
}

fn from_json<M: serde::de::DeserializeOwned>(v: Value) -> Result<M> {
    serde_json::from_value(v).map_err(|e| Error::internal(format!("reading a record: {e}")))
}

fn count_of(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

impl<M: Model> CreateNode<M> {
    /// Creates `record` (an empty or zero id is generated) and returns it as stored.
    pub async fn run(db: &DataFlow, record: &M) -> Result<M> {
        from_json(Self::execute(db, record_params(record)?).await?)
    }
}

impl<M: Model> ReadNode<M> {
    /// The record with primary key `id`; `not_found` when there is none.
    pub async fn run(db: &DataFlow, id: impl Into<Value>) -> Result<M> {
        from_json(Self::execute(db, json!({"id": id.into()})).await?)
    }
}

impl<M: Model> UpdateNode<M> {
    /// Changes `fields` (an object of field → new value) of the record `id`.
    pub async fn run(db: &DataFlow, id: impl Into<Value>, fields: Value) -> Result<M> {
        from_json(Self::execute(db, json!({"id": id.into(), "fields": fields})).await?)
    }
}

impl<M: Model> UpdateNode<M> {
    /// Optimistic locking on a `versioned` model: changes `fields` of the
    /// record `id` only if its `version` is still `expected_version` (the
    /// one the caller read); otherwise `conflict` and nothing is written.
    /// The returned record has the new version.
    pub async fn run_if_version(
        db: &DataFlow,
        id: impl Into<Value>,
        expected_version: i64,
        fields: Value,
    ) -> Result<M> {
        let params =
            json!({"id": id.into(), "fields": fields, "expected_version": expected_version});
        from_json(Self::execute(db, params).await?)
    }
}

impl<M: Model> DeleteNode<M> {
    /// Deletes the record `id` (soft-deletes on `soft_delete` models).
    pub async fn run(db: &DataFlow, id: impl Into<Value>) -> Result<()> {
        Self::execute(db, json!({"id": id.into()})).await.map(drop)
    }
}

impl<M: Model> ListNode<M> {
    /// `query` takes the List parameters: `filter`, `order_by`, `limit`, ...
    pub async fn run(db: &DataFlow, query: Value) -> Result<Vec<M>> {
        let mut out = Self::execute(db, query).await?;
        from_json(out["records"].take())
    }
}

impl<M: Model> AggregateNode<M> {
    /// `query` takes the Aggregate parameters (`filter`, `group_by`,
    /// `aggregates`, `having`, `order_by`, `limit`, ...); the answer is the
    /// groups, each an object of the group fields and the aggregate names.
    pub async fn run(db: &DataFlow, query: Value) -> Result<Vec<serde_json::Map<String, Value>>> {
        let mut out = Self::execute(db, query).await?;
        from_json(out["groups"].take())
    }
}

impl<M: Model> CountNode<M> {
    /// How many records match `filter` (`json!({})` for all).
    pub async fn run(db: &DataFlow, filter: Value) -> Result<u64> {
        Ok(count_of(
            &Self::execute(db, json!({"filter": filter})).await?,
            "count",
        ))
    }
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertAction {
    /// No record matched: `record` was created.
    Created,
    /// A record matched: `update` was applied to it.
    Updated,
}

impl<M: Model> UpsertNode<M> {
    /// Creates `record` or, when one with the same `conflict_on` value
    /// exists, applies `update` to it.
    pub async fn run(
        db: &DataFlow,
        record: &M,
        conflict_on: &str,
        update: Value,
    ) -> Result<(UpsertAction, M)> {
        let params =
            json!({"create": record_params(record)?, "update": update, "conflict_on": conflict_on});
        let mut out = Self::execute(db, params).await?;
        let action = if out["action"] == "created" {
            UpsertAction::Created
        } else {
            UpsertAction::Updated
        };
        Ok((action, from_json(out["record"].take())?))
    }
}

impl<M: Model> UpsertNode<M> {
    /// [`run`](Self::run) on a `versioned` model with optimistic locking:
    /// the existing record is updated only if its `version` is still
    /// `expected_version`; a changed or missing record is `conflict`.
    pub async fn run_if_version(
        db: &DataFlow,
        record: &M,
        conflict_on: &str,
        expected_version: i64,
        update: Value,
    ) -> Result<(UpsertAction, M)> {
        let params = json!({
            "create": record_params(record)?,
            "update": update,
            "conflict_on": conflict_on,
            "expected_version": expected_version,
        });
        let mut out = Self::execute(db, params).await?;
        let action = if out["action"] == "created" {
            UpsertAction::Created
        } else {
            UpsertAction::Updated
        };
        Ok((action, from_json(out["record"].take())?))
    }
}

/// The result of a BulkCreate.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkCreated {
    /// How many records were inserted.
    pub inserted: u64,
    /// Their primary keys, in input order.
    pub ids: Vec<Value>,
}

impl<M: Model> BulkCreateNode<M> {
    /// Inserts `records` in one transaction per batch: all or none of a batch.
    pub async fn run(db: &DataFlow, records: &[M]) -> Result<BulkCreated> {
        let data = records
            .iter()
            .map(record_params)
            .collect::<Result<Vec<_>>>()?;
        let mut out = Self::execute(db, json!({"data": data})).await?;
        let ids = match out["ids"].take() {
            Value::Array(ids) => ids,
            _ => Vec::new(),
        };
        Ok(BulkCreated {
            inserted: count_of(&out, "inserted"),
            ids,
        })
    }
}

impl<M: Model> BulkUpdateNode<M> {
    /// Returns how many records changed.
    pub async fn run(db: &DataFlow, filter: Value, fields: Value) -> Result<u64> {
        Ok(count_of(
            &Self::execute(db, json!({"filter": filter, "fields": fields})).await?,
            "updated",
        ))
    }
}

impl<M: Model> BulkUpdateNode<M> {
    /// On a `versioned` model: changes the records `filter` matches only if
    /// every one still has `version` `expected_version`; otherwise
    /// `conflict` and nothing is written. Returns how many changed.
    pub async fn run_if_version(
        db: &DataFlow,
        filter: Value,
        expected_version: i64,
        fields: Value,
    ) -> Result<u64> {
        let params =
            json!({"filter": filter, "fields": fields, "expected_version": expected_version});
        Ok(count_of(&Self::execute(db, params).await?, "updated"))
    }
}

impl<M: Model> BulkDeleteNode<M> {
    /// Returns how many records were deleted. An empty filter needs `confirmed`.
    pub async fn run(db: &DataFlow, filter: Value, confirmed: bool) -> Result<u64> {
        Ok(count_of(
            &Self::execute(db, json!({"filter": filter, "confirmed": confirmed})).await?,
            "deleted",
        ))
    }
}

impl<M: Model> BulkUpsertNode<M> {
    /// Returns `(inserted, updated)`.
    pub async fn run(db: &DataFlow, records: &[M], conflict_on: &str) -> Result<(u64, u64)> {
        let data = records
            .iter()
            .map(record_params)
            .collect::<Result<Vec<_>>>()?;
        let out = Self::execute(db, json!({"data": data, "conflict_on": conflict_on})).await?;
        Ok((count_of(&out, "inserted"), count_of(&out, "updated")))
    }
}
