//! One repository implementation per aggregate, each on [`crate::PgUnitOfWork`]: the row type as
//! stored, its conversions to and from the domain type, and the queries. Every `get_*` filters
//! by the zone it is given (a foreign id reads as missing), and row-level security filters again
//! by the unit of work's scope (`spec/api.md §5`).

pub(crate) mod admin_audit;
pub(crate) mod admin_tokens;
pub(crate) mod agent_graph;
pub(crate) mod applications;
pub(crate) mod approvals;
pub(crate) mod authority_records;
pub(crate) mod coordination;
pub(crate) mod grants;
pub(crate) mod outbox;
pub(crate) mod policies;
pub(crate) mod policy_sets;
pub(crate) mod providers;
pub(crate) mod resources;
pub(crate) mod secrets;
pub(crate) mod signing_keys;
pub(crate) mod subject_issuers;
pub(crate) mod zones;

diesel::define_sql_function! {
    /// SQL `lower(text)`: the case folding behind the case-insensitive application-name rule.
    fn lower(text: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

diesel::define_sql_function! {
    /// SQL `hashtext(text)`: the advisory-lock key of a lock name.
    fn hashtext(name: diesel::sql_types::Text) -> diesel::sql_types::Integer;
}

diesel::define_sql_function! {
    /// SQL `pg_advisory_xact_lock(bigint)` (given `hashtext`'s integer, widened by Postgres).
    /// It returns `void`, which Diesel has no type for: only ever `execute` it, never load it.
    fn pg_advisory_xact_lock(key: diesel::sql_types::Integer) -> diesel::sql_types::Bool;
}

diesel::define_sql_function! {
    /// SQL `coalesce(text, text)`: maps the global admin-audit chain (zone NULL) onto the key
    /// `''` the chain indexes use.
    fn coalesce(value: diesel::sql_types::Nullable<diesel::sql_types::Text>, fallback: diesel::sql_types::Text) -> diesel::sql_types::Text;
}
