//! Applications.

use async_trait::async_trait;
use caracal_core::ids::{ApplicationId, ZoneId};
use caracal_core::model::{Application, RegistrationMethod};
use caracal_core::ports::store::{ApplicationRepo, Liveness, Page};
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::convert::{attribution, id, opt_dt, opt_ts};
use crate::error::corrupt;
use crate::repos::lower;
use crate::schema::applications as t;
use crate::unit_of_work::{keyset, op, write_op, PgUnitOfWork};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = t, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub(crate) struct ApplicationRow {
    id: String,
    zone_id: String,
    name: String,
    registration_method: String,
    traits: Vec<String>,
    client_secret_hash: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    created_by: String,
    created_via_operator: bool,
    updated_by: String,
    updated_via_operator: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    archived_at: Option<DateTime<Utc>>,
}

impl From<&Application> for ApplicationRow {
    fn from(a: &Application) -> Self {
        Self {
            id: a.id.to_string(),
            zone_id: a.zone_id.to_string(),
            name: a.name.clone(),
            registration_method: a.registration_method.as_str().to_owned(),
            traits: a.traits.clone(),
            client_secret_hash: a.client_secret_hash.clone(),
            expires_at: opt_dt(a.expires_at),
            created_by: a.attr.created_by.clone(),
            created_via_operator: a.attr.created_via_operator,
            updated_by: a.attr.updated_by.clone(),
            updated_via_operator: a.attr.updated_via_operator,
            created_at: a.attr.created_at.as_datetime(),
            updated_at: a.attr.updated_at.as_datetime(),
            archived_at: opt_dt(a.archived_at),
        }
    }
}

impl TryFrom<ApplicationRow> for Application {
    type Error = StoreError;

    fn try_from(r: ApplicationRow) -> Result<Self, StoreError> {
        let registration_method = RegistrationMethod::parse(&r.registration_method)
            .ok_or_else(|| corrupt("applications.registration_method", &r.registration_method))?;
        Ok(Application {
            id: id(ApplicationId::parse, &r.id, "applications.id")?,
            zone_id: id(ZoneId::parse, &r.zone_id, "applications.zone_id")?,
            name: r.name,
            registration_method,
            traits: r.traits,
            client_secret_hash: r.client_secret_hash,
            expires_at: opt_ts(r.expires_at),
            attr: attribution(
                r.created_by,
                r.created_via_operator,
                r.updated_by,
                r.updated_via_operator,
                r.created_at,
                r.updated_at,
            ),
            archived_at: opt_ts(r.archived_at),
        })
    }
}

/// The row `get_application` reads. Takes a shared connection so that a caller can pipeline
/// it with other statements (`PgStore::begin_with_caller`).
pub(crate) async fn application_row(
    mut conn: &AsyncPgConnection,
    zone: &ZoneId,
    app: &ApplicationId,
) -> QueryResult<Option<ApplicationRow>> {
    t::table
        .filter(t::zone_id.eq(zone.as_str()).and(t::id.eq(app.as_str())))
        .select(ApplicationRow::as_select())
        .first(&mut conn)
        .await
        .optional()
}

#[async_trait]
impl ApplicationRepo for PgUnitOfWork {
    async fn save_application(&mut self, app: &Application) -> Result<(), StoreError> {
        let row = ApplicationRow::from(app);
        write_op!(self, |conn| diesel::insert_into(t::table)
            .values(&row)
            .on_conflict(t::id)
            .do_update()
            .set(&row)
            .execute(conn))?;
        Ok(())
    }

    async fn get_application(
        &mut self,
        zone: &ZoneId,
        app: &ApplicationId,
    ) -> Result<Option<Application>, StoreError> {
        let row = op!(self, |conn| application_row(conn, zone, app))?;
        row.map(Application::try_from).transpose()
    }

    async fn find_application_any_zone(
        &mut self,
        app: &ApplicationId,
    ) -> Result<Option<Application>, StoreError> {
        let row: Option<ApplicationRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(t::id.eq(app.as_str()))
                    .select(ApplicationRow::as_select())
                    .first(conn)
        )?;
        row.map(Application::try_from).transpose()
    }

    async fn list_applications(
        &mut self,
        zone: &ZoneId,
        liveness: Liveness,
        page: &Page,
    ) -> Result<Vec<Application>, StoreError> {
        let mut query = t::table
            .filter(t::zone_id.eq(zone.as_str()))
            .select(ApplicationRow::as_select())
            .into_boxed();
        query = match liveness {
            Liveness::Active => query.filter(t::archived_at.is_null()),
            Liveness::Archived => query.filter(t::archived_at.is_not_null()),
        };
        let rows: Vec<ApplicationRow> =
            op!(self, |conn| keyset!(query, page, t::created_at, t::id)
                .load(conn))?;
        rows.into_iter().map(Application::try_from).collect()
    }

    async fn find_managed_application_by_name(
        &mut self,
        zone: &ZoneId,
        name: &str,
    ) -> Result<Option<Application>, StoreError> {
        // Served by the `applications_active_managed_name` unique index.
        let row: Option<ApplicationRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(t::zone_id.eq(zone.as_str()))
                    .filter(t::archived_at.is_null())
                    .filter(t::registration_method.eq(RegistrationMethod::Managed.as_str()))
                    .filter(lower(t::name).eq(lower(name)))
                    .select(ApplicationRow::as_select())
                    .first(conn)
        )?;
        row.map(Application::try_from).transpose()
    }
}
