//! Zones (`spec/api.md §3.1`).

use serde::Deserialize;

use crate::attribution::Attribution;
use crate::error::{Error, Result};
use crate::ids::ZoneId;
use crate::model::{Application, RegistrationMethod, Zone};
use crate::naming::{is_reserved_name, is_reserved_zone_slug, is_zone_slug, slugify};
use crate::ports::store::{Liveness, Page, UnitOfWork};

use super::{bounded_name, reserved_namespace, Caller, Management};

/// `POST /v1/zones` body (strict).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewZone {
    /// Display name, trimmed, 1..=120.
    pub name: String,
    /// Explicit slug `^[a-z0-9-]+$`; generated from the name when absent.
    pub slug: Option<String>,
    /// DCR switch.
    pub dcr_enabled: Option<bool>,
}

/// What to do with live DCR applications when DCR is switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DcrShutdown {
    /// Leave them to expire.
    KeepLive,
    /// Archive them now.
    RevokeLive,
}

/// `PATCH /v1/zones/{id}` body (strict).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZonePatch {
    /// New name.
    pub name: Option<String>,
    /// New slug.
    pub slug: Option<String>,
    /// DCR switch.
    pub dcr_enabled: Option<bool>,
    /// Shutdown mode when disabling DCR.
    pub dcr_shutdown: Option<DcrShutdown>,
    /// Operator co-author badge.
    pub operator_coauthor_badge: Option<bool>,
    /// AI operator governance.
    pub operator_governed: Option<bool>,
}

/// `GET /v1/zones/{id}/dcr-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcrStatus {
    /// Zone id.
    pub id: ZoneId,
    /// DCR switch.
    pub dcr_enabled: bool,
    /// Unarchived, unexpired DCR applications.
    pub live_dcr_applications: u64,
}

fn validate_slug(slug: &str) -> Result<()> {
    if is_zone_slug(slug) {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_zone",
            "slug must match ^[a-z0-9-]+$",
        ))
    }
}

impl Management {
    /// Lists zones (unarchived, reserved ones omitted).
    pub async fn list_zones(&self, caller: &Caller, page: &Page) -> Result<Vec<Zone>> {
        let mut uow = self.begin(caller).await?;
        Ok(uow.list_zones(page).await?)
    }

    /// One zone.
    pub async fn get_zone(&self, caller: &Caller, id: &ZoneId) -> Result<Zone> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, id).await
    }

    /// Creates a zone with an explicit or generated unique slug.
    pub async fn create_zone(&self, caller: &Caller, input: NewZone) -> Result<Zone> {
        let generated = input.slug.is_none();
        super::retry_lost_race(
            || self.create_zone_once(caller, input.clone()),
            |e| generated && e.code == "zone_slug_conflict",
        )
        .await
    }

    async fn create_zone_once(&self, caller: &Caller, input: NewZone) -> Result<Zone> {
        let name = bounded_name(&input.name, 120, "invalid_zone")?;
        if let Some(slug) = &input.slug {
            validate_slug(slug)?;
        }
        let reserved =
            is_reserved_name(&name) || input.slug.as_deref().is_some_and(is_reserved_zone_slug);
        if reserved && !caller.actor.is_bootstrap() {
            return Err(reserved_namespace());
        }
        let mut uow = self.begin(caller).await?;
        let slug = match input.slug {
            Some(slug) => {
                if uow.zone_slug_exists(&slug).await? {
                    return Err(Error::conflict(
                        "zone_slug_conflict",
                        "a zone already uses this slug",
                    ));
                }
                slug
            }
            None => self.free_slug(&mut uow, &slugify(&name, "zone")).await?,
        };
        if is_reserved_zone_slug(&slug) && !caller.actor.is_bootstrap() {
            return Err(reserved_namespace());
        }
        let now = self.clock.now();
        let zone = Zone {
            id: ZoneId::parse(&self.ids.new_id())?,
            name,
            slug,
            dcr_enabled: input.dcr_enabled.unwrap_or(false),
            operator_coauthor_badge: false,
            operator_governed: false,
            attr: Attribution::created(&caller.attribution(), caller.via_operator, now),
            archived_at: None,
        };
        uow.save_zone(&zone).await.map_err(slug_conflict)?;
        uow.commit().await?;
        Ok(zone)
    }

    /// `base`, else `base-2` … `base-999`, else `base-<uuid hex>`.
    async fn free_slug(&self, uow: &mut Box<dyn UnitOfWork>, base: &str) -> Result<String> {
        if !uow.zone_slug_exists(base).await? {
            return Ok(base.to_owned());
        }
        for n in 2..=999 {
            let candidate = format!("{base}-{n}");
            if !uow.zone_slug_exists(&candidate).await? {
                return Ok(candidate);
            }
        }
        Ok(format!("{base}-{}", self.ids.new_id().replace('-', "")))
    }

    /// DCR status of a zone.
    pub async fn zone_dcr_status(&self, caller: &Caller, id: &ZoneId) -> Result<DcrStatus> {
        let mut uow = self.begin(caller).await?;
        let zone = self.live_zone(&mut uow, id).await?;
        let live = self.live_dcr_applications(&mut uow, id).await?;
        Ok(DcrStatus {
            id: zone.id,
            dcr_enabled: zone.dcr_enabled,
            live_dcr_applications: live.len() as u64,
        })
    }

    async fn live_dcr_applications(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        zone: &ZoneId,
    ) -> Result<Vec<Application>> {
        let now = self.clock.now();
        let mut live = Vec::new();
        let mut page = Page {
            limit: 500,
            after: None,
        };
        loop {
            let rows = uow.list_applications(zone, Liveness::Active, &page).await?;
            let full = rows.len() as u32 == page.limit;
            page.after = rows.last().map(|a| crate::ports::store::After {
                created_at: a.attr.created_at,
                id: a.id.to_string(),
            });
            live.extend(rows.into_iter().filter(|a| {
                a.registration_method == RegistrationMethod::Dcr
                    && a.expires_at.is_none_or(|at| at > now)
            }));
            if !full {
                return Ok(live);
            }
        }
    }

    /// Updates a zone, including the DCR shutdown rules.
    pub async fn patch_zone(&self, caller: &Caller, id: &ZoneId, patch: ZonePatch) -> Result<Zone> {
        let any = patch.name.is_some()
            || patch.slug.is_some()
            || patch.dcr_enabled.is_some()
            || patch.dcr_shutdown.is_some()
            || patch.operator_coauthor_badge.is_some()
            || patch.operator_governed.is_some();
        if !any {
            return Err(Error::invalid(
                "no_fields",
                "the body names no field to change",
            ));
        }
        if patch.dcr_shutdown.is_some() && patch.dcr_enabled != Some(false) {
            return Err(Error::invalid(
                "dcr_shutdown_not_applicable",
                "dcr_shutdown only applies together with dcr_enabled: false",
            ));
        }
        let name = patch
            .name
            .as_deref()
            .map(|n| bounded_name(n, 120, "invalid_zone"))
            .transpose()?;
        if let Some(slug) = &patch.slug {
            validate_slug(slug)?;
        }
        let renames_into_reserved = name.as_deref().is_some_and(is_reserved_name)
            || patch.slug.as_deref().is_some_and(is_reserved_zone_slug);
        if renames_into_reserved && !caller.actor.is_bootstrap() {
            return Err(reserved_namespace());
        }
        let mut uow = self.begin(caller).await?;
        let mut zone = self.live_zone(&mut uow, id).await?;
        if let Some(slug) = &patch.slug {
            if slug != &zone.slug && uow.zone_slug_exists(slug).await? {
                return Err(Error::conflict(
                    "zone_slug_conflict",
                    "a zone already uses this slug",
                ));
            }
        }
        let now = self.clock.now();
        if patch.dcr_enabled == Some(false) && zone.dcr_enabled {
            let live = self.live_dcr_applications(&mut uow, id).await?;
            match (patch.dcr_shutdown, live.is_empty()) {
                (None, false) => {
                    return Err(Error::conflict(
                        "dcr_shutdown_required",
                        "live DCR applications exist; choose dcr_shutdown keep_live or revoke_live",
                    )
                    .with_extra(serde_json::json!({
                        "details": { "live_dcr_applications": live.len() }
                    })))
                }
                (Some(DcrShutdown::RevokeLive), _) => {
                    for mut app in live {
                        app.archived_at = Some(now);
                        app.attr
                            .touch(&caller.attribution(), caller.via_operator, now);
                        uow.save_application(&app).await?;
                    }
                }
                _ => {}
            }
        }
        if let Some(name) = name {
            zone.name = name;
        }
        if let Some(slug) = patch.slug {
            zone.slug = slug;
        }
        if let Some(enabled) = patch.dcr_enabled {
            zone.dcr_enabled = enabled;
        }
        // Upstream applies only name/slug/dcr_enabled when DCR is being disabled; we apply the
        // operator flags as well, since nothing depends on dropping them (docs/compat.md).
        if let Some(badge) = patch.operator_coauthor_badge {
            zone.operator_coauthor_badge = badge;
        }
        if let Some(governed) = patch.operator_governed {
            zone.operator_governed = governed;
        }
        zone.attr
            .touch(&caller.attribution(), caller.via_operator, now);
        uow.save_zone(&zone).await.map_err(slug_conflict)?;
        uow.commit().await?;
        Ok(zone)
    }

    /// Archives a zone (no cascade).
    pub async fn delete_zone(&self, caller: &Caller, id: &ZoneId) -> Result<()> {
        let mut uow = self.begin(caller).await?;
        let mut zone = self.live_zone(&mut uow, id).await?;
        let now = self.clock.now();
        zone.archived_at = Some(now);
        zone.attr
            .touch(&caller.attribution(), caller.via_operator, now);
        uow.save_zone(&zone).await?;
        uow.commit().await?;
        Ok(())
    }
}

/// A slug race lost to a concurrent writer is still a slug conflict.
fn slug_conflict(err: crate::error::StoreError) -> Error {
    match err {
        crate::error::StoreError::Conflict(_) => {
            Error::conflict("zone_slug_conflict", "a zone already uses this slug")
        }
        other => other.into(),
    }
}
