//! Admin tokens (never the plaintext; `spec/api.md §2`).

use async_trait::async_trait;
use caracal_core::ids::{AdminTokenId, ZoneId};
use caracal_core::model::{AdminToken, Capability, TokenScope};
use caracal_core::ports::store::{AdminTokenRepo, Page};
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::convert::{id, opt_dt, opt_ts, ts};
use crate::error::corrupt;
use crate::schema::admin_tokens as t;
use crate::unit_of_work::{keyset, op, write_op, PgUnitOfWork};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = t, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub(crate) struct AdminTokenRow {
    id: String,
    name: String,
    token_sha256: String,
    token_hash: String,
    scope: String,
    zone_id: Option<String>,
    capability: String,
    created_by: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

fn scope_text(scope: TokenScope) -> &'static str {
    match scope {
        TokenScope::Global => "global",
        TokenScope::Zone => "zone",
    }
}

fn capability_text(capability: Capability) -> &'static str {
    match capability {
        Capability::Read => "read",
        Capability::Write => "write",
        Capability::Approve => "approve",
    }
}

impl From<&AdminToken> for AdminTokenRow {
    fn from(a: &AdminToken) -> Self {
        Self {
            id: a.id.to_string(),
            name: a.name.clone(),
            token_sha256: a.token_sha256.clone(),
            token_hash: a.token_hash.clone(),
            scope: scope_text(a.scope).to_owned(),
            zone_id: a.zone_id.as_ref().map(ToString::to_string),
            capability: capability_text(a.capability).to_owned(),
            created_by: a.created_by.clone(),
            created_at: a.created_at.as_datetime(),
            last_used_at: opt_dt(a.last_used_at),
            revoked_at: opt_dt(a.revoked_at),
        }
    }
}

impl TryFrom<AdminTokenRow> for AdminToken {
    type Error = StoreError;

    fn try_from(r: AdminTokenRow) -> Result<Self, StoreError> {
        let scope = match r.scope.as_str() {
            "global" => TokenScope::Global,
            "zone" => TokenScope::Zone,
            other => return Err(corrupt("admin_tokens.scope", other)),
        };
        let capability = match r.capability.as_str() {
            "read" => Capability::Read,
            "write" => Capability::Write,
            "approve" => Capability::Approve,
            other => return Err(corrupt("admin_tokens.capability", other)),
        };
        let zone_id = r
            .zone_id
            .as_deref()
            .map(|text| id(ZoneId::parse, text, "admin_tokens.zone_id"))
            .transpose()?;
        Ok(AdminToken {
            id: id(AdminTokenId::parse, &r.id, "admin_tokens.id")?,
            name: r.name,
            token_sha256: r.token_sha256,
            token_hash: r.token_hash,
            scope,
            zone_id,
            capability,
            created_by: r.created_by,
            created_at: ts(r.created_at),
            last_used_at: opt_ts(r.last_used_at),
            revoked_at: opt_ts(r.revoked_at),
        })
    }
}

#[async_trait]
impl AdminTokenRepo for PgUnitOfWork {
    async fn save_admin_token(&mut self, token: &AdminToken) -> Result<(), StoreError> {
        let row = AdminTokenRow::from(token);
        write_op!(self, |conn| diesel::insert_into(t::table)
            .values(&row)
            .on_conflict(t::id)
            .do_update()
            .set(&row)
            .execute(conn))?;
        Ok(())
    }

    async fn find_admin_token_by_sha256(
        &mut self,
        sha256_hex: &str,
    ) -> Result<Option<AdminToken>, StoreError> {
        // A revoked token must stop authenticating at once (spec/api.md §2).
        let row: Option<AdminTokenRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(t::token_sha256.eq(sha256_hex))
                    .filter(t::revoked_at.is_null())
                    .select(AdminTokenRow::as_select())
                    .first(conn)
        )?;
        row.map(AdminToken::try_from).transpose()
    }

    async fn get_admin_token(
        &mut self,
        id: &AdminTokenId,
    ) -> Result<Option<AdminToken>, StoreError> {
        let row: Option<AdminTokenRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(t::id.eq(id.as_str()))
                    .select(AdminTokenRow::as_select())
                    .first(conn)
        )?;
        row.map(AdminToken::try_from).transpose()
    }

    async fn list_admin_tokens(&mut self, page: &Page) -> Result<Vec<AdminToken>, StoreError> {
        let query = t::table.select(AdminTokenRow::as_select()).into_boxed();
        let rows: Vec<AdminTokenRow> =
            op!(self, |conn| keyset!(query, page, t::created_at, t::id)
                .load(conn))?;
        rows.into_iter().map(AdminToken::try_from).collect()
    }

    async fn list_admin_tokens_created_by(
        &mut self,
        creator: &str,
    ) -> Result<Vec<AdminToken>, StoreError> {
        let rows: Vec<AdminTokenRow> = op!(self, |conn| t::table
            .filter(t::created_by.eq(creator))
            .filter(t::revoked_at.is_null())
            .order((t::created_at.desc(), t::id.desc()))
            .select(AdminTokenRow::as_select())
            .load(conn))?;
        rows.into_iter().map(AdminToken::try_from).collect()
    }
}
