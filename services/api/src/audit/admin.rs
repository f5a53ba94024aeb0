//! `GET /v1/zones/{z}/admin-audit`: a zone's admin audit chain, newest first, filtered.
//!
//! The store's `list_admin_audit` pages one chain by (`occurred_at`, `id`) without filters, so
//! the filters are applied here while walking that keyset: `until` becomes the starting key,
//! the walk stops at the first row older than `since`, and the other filters skip rows. A
//! selective filter over a long chain therefore reads more rows than it returns, until the
//! store port takes the filters itself.

use caracal_core::error::Result;
use caracal_core::ids::ZoneId;
use caracal_core::manage::Caller;
use caracal_core::model::AdminAuditRecord;
use caracal_core::ports::store::{After, Page, Store};

use super::query::AdminAuditList;

/// Rows read per store page while walking.
const BATCH: u32 = 500;

impl AdminAuditList {
    fn keeps(&self, r: &AdminAuditRecord) -> bool {
        let same = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        same(&self.actor_id, &r.actor_id)
            && same(&self.entity_type, &r.entity_type)
            && same(&self.entity_id, &r.entity_id)
            && self.method.is_none_or(|m| r.method == m)
            && self.until.is_none_or(|u| r.occurred_at < u)
    }

    /// Where the walk starts: strictly below the cursor, or below `until` (an empty id sorts
    /// before every real one, so `(until, "")` excludes exactly the rows at or after `until`),
    /// whichever is lower.
    fn start(&self) -> Option<After> {
        let cursor = self
            .before
            .clone()
            .map(|(created_at, id)| After { created_at, id });
        let until = self.until.map(|created_at| After {
            created_at,
            id: String::new(),
        });
        match (cursor, until) {
            (Some(c), Some(u)) => Some(if (c.created_at, &c.id) < (u.created_at, &u.id) {
                c
            } else {
                u
            }),
            (c, u) => c.or(u),
        }
    }
}

/// One page of the zone's admin audit records matching `query`, newest first.
pub async fn list(
    store: &dyn Store,
    caller: &Caller,
    zone: &ZoneId,
    query: &AdminAuditList,
) -> Result<Vec<AdminAuditRecord>> {
    let mut uow = store.begin(&caller.actor.store_scope()).await?;
    let mut out = Vec::new();
    let mut page = Page {
        limit: BATCH,
        after: query.start(),
    };
    loop {
        let rows = uow.list_admin_audit(Some(zone.as_str()), &page).await?;
        let full = rows.len() as u32 == page.limit;
        for row in &rows {
            if query.since.is_some_and(|s| row.occurred_at < s) {
                return Ok(out);
            }
            if query.keeps(row) {
                out.push(row.clone());
                if out.len() as u32 == query.limit {
                    return Ok(out);
                }
            }
        }
        match rows.last() {
            Some(last) if full => {
                page.after = Some(After {
                    created_at: last.occurred_at,
                    id: last.id.clone(),
                })
            }
            _ => return Ok(out),
        }
    }
}
