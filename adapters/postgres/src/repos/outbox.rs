//! The outbox side a state change writes to (`spec/api.md §4`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use caracal_core::ids::OutboxId;
use caracal_core::model::OutboxMessage;
use caracal_core::ports::store::OutboxRepo;
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::PgJsonbExpressionMethods;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Map, Value};

use crate::convert::{id, opt_dt, opt_ts, ts};
use crate::error::corrupt;
use crate::schema::event_outbox as t;
use crate::unit_of_work::{op, write_op, Deferred, PgUnitOfWork};

/// An `event_outbox` row. Also decoded from the dispatcher's raw claim statement, hence
/// `QueryableByName`. `None` inserts as `NULL` (the columns' default anyway), which keeps the
/// INSERT one fixed statement Diesel prepares once per connection.
#[derive(Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(
    table_name = t,
    check_for_backend(diesel::pg::Pg),
    treat_none_as_default_value = false
)]
pub(crate) struct OutboxRow {
    id: String,
    stream_name: String,
    payload_json: Value,
    attempts: i32,
    available_at: Option<DateTime<Utc>>,
    locked_until: Option<DateTime<Utc>>,
    last_error: Option<String>,
    dispatched_at: Option<DateTime<Utc>>,
    request_id: Option<String>,
    created_at: DateTime<Utc>,
}

fn fields_json<'a>(fields: impl Iterator<Item = (&'a str, &'a str)>) -> Value {
    Value::Object(
        fields
            .map(|(key, value)| (key.to_owned(), Value::String(value.to_owned())))
            .collect::<Map<String, Value>>(),
    )
}

impl From<&OutboxMessage> for OutboxRow {
    fn from(m: &OutboxMessage) -> Self {
        Self {
            id: m.id.to_string(),
            stream_name: m.stream.clone(),
            payload_json: fields_json(m.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            attempts: m.attempts,
            available_at: opt_dt(m.available_at),
            locked_until: opt_dt(m.locked_until),
            last_error: m.last_error.clone(),
            dispatched_at: opt_dt(m.dispatched_at),
            request_id: m.request_id.clone(),
            created_at: m.created_at.as_datetime(),
        }
    }
}

impl TryFrom<OutboxRow> for OutboxMessage {
    type Error = StoreError;

    fn try_from(r: OutboxRow) -> Result<Self, StoreError> {
        let Value::Object(payload) = r.payload_json else {
            return Err(corrupt("event_outbox.payload_json", "not a JSON object"));
        };
        let fields = payload
            .into_iter()
            .map(|(key, value)| match value {
                Value::String(text) => Ok((key, text)),
                other => Err(corrupt(
                    "event_outbox.payload_json",
                    format!("field {key:?} is not a string: {other}"),
                )),
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        Ok(OutboxMessage {
            id: id(OutboxId::parse, &r.id, "event_outbox.id")?,
            stream: r.stream_name,
            fields,
            attempts: r.attempts,
            available_at: opt_ts(r.available_at),
            locked_until: opt_ts(r.locked_until),
            last_error: r.last_error,
            dispatched_at: opt_ts(r.dispatched_at),
            request_id: r.request_id,
            created_at: ts(r.created_at),
        })
    }
}

/// The insert of `enqueue_outbox`, on a shared connection (it may be deferred and pipelined,
/// `unit_of_work::Deferred`).
pub(crate) async fn enqueue_on(mut conn: &AsyncPgConnection, row: &OutboxRow) -> QueryResult<()> {
    diesel::insert_into(t::table)
        .values(row)
        .execute(&mut conn)
        .await
        .map(drop)
}

#[async_trait]
impl OutboxRepo for PgUnitOfWork {
    async fn enqueue_outbox(&mut self, message: &OutboxMessage) -> Result<(), StoreError> {
        let row = OutboxRow::from(message);
        if self.defers() {
            return self.defer(Deferred::Outbox(row));
        }
        write_op!(self, |conn| enqueue_on(conn, &row))
    }

    async fn get_outbox(
        &mut self,
        message: &OutboxId,
    ) -> Result<Option<OutboxMessage>, StoreError> {
        let row: Option<OutboxRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .find(message.as_str())
                    .select(OutboxRow::as_select())
                    .first(conn)
        )?;
        row.map(OutboxMessage::try_from).transpose()
    }

    async fn find_latest_outbox(
        &mut self,
        stream: &str,
        fields: &[(&str, &str)],
    ) -> Result<Option<OutboxMessage>, StoreError> {
        // One JSON object cannot hold one key twice: asking for two different values of one
        // field matches nothing.
        let mut wanted: BTreeMap<&str, &str> = BTreeMap::new();
        for (key, value) in fields {
            if wanted
                .insert(key, value)
                .is_some_and(|previous| previous != *value)
            {
                return Ok(None);
            }
        }
        let subset = fields_json(wanted.into_iter());
        let row: Option<OutboxRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(t::stream_name.eq(stream))
                    .filter(t::payload_json.contains(subset))
                    .order((t::created_at.desc(), t::id.desc()))
                    .select(OutboxRow::as_select())
                    .first(conn)
        )?;
        row.map(OutboxMessage::try_from).transpose()
    }
}
