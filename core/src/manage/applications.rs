//! Applications and DCR (`spec/api.md §3.2`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::json;

use crate::attribution::Attribution;
use crate::error::{Error, ErrorKind, Result, StoreError};
use crate::ids::{ApplicationId, ZoneId};
use crate::model::{Application, RegistrationMethod, SealedSecret};
use crate::naming::is_reserved_name;
use crate::ports::store::{Liveness, Page, UnitOfWork};
use crate::time::Timestamp;

use super::{bounded_name, reserved_namespace, Caller, Management};

/// Live DCR applications a zone may hold.
const MAX_LIVE_DCR: usize = 1000;

/// `POST …/applications` body (strict).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApplication {
    /// Name, trimmed, 1..=200.
    pub name: String,
    /// Must be `managed` (DCR has its own route).
    pub registration_method: String,
    /// Trait labels.
    pub traits: Option<Vec<String>>,
}

/// `PATCH …/applications/{id}` body (strict).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationPatch {
    /// New name.
    pub name: Option<String>,
    /// A caller-chosen secret (≥ 32 chars) that replaces the hash and the custody copy.
    pub client_secret: Option<String>,
    /// Replaces the trait set.
    pub traits: Option<Vec<String>>,
}

/// `POST …/applications/dcr` body (strict).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDcrApplication {
    /// Name, 1..=200.
    pub name: String,
    /// Lifetime in seconds, 1..=3600 (default 3600).
    pub expires_in: Option<i64>,
}

/// An application together with the plaintext secret shown once.
#[derive(Debug, Clone)]
pub struct WithSecret {
    /// The row.
    pub application: Application,
    /// The plaintext client secret.
    pub client_secret: String,
}

fn trait_error(code: &'static str, description: impl Into<String>) -> Error {
    Error::new(ErrorKind::Forbidden, code).describe(description)
}

/// Trait rules: ≤ 64, each 1..=128 `^[A-Za-z][A-Za-z0-9._:-]*$`, unique; the `control` and
/// `caracal.sys` namespaces only for global tokens, and `control:` traits only in their forms.
fn validate_traits(traits: &[String], global: bool) -> Result<()> {
    if traits.len() > 64 {
        return Err(trait_error("trait_count_exceeded", "at most 64 traits"));
    }
    let mut seen = BTreeSet::new();
    let mut max_ttl = 0;
    let mut expires = 0;
    for t in traits {
        let ok = (1..=128).contains(&t.len())
            && t.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
        if !ok {
            return Err(trait_error(
                "trait_invalid",
                format!("trait {t:?} is malformed"),
            ));
        }
        if !seen.insert(t.as_str()) {
            return Err(trait_error(
                "trait_duplicate",
                format!("trait {t} is repeated"),
            ));
        }
        let namespace = t.split(':').next().unwrap_or("");
        if matches!(namespace, "control" | "caracal.sys") {
            if !global {
                return Err(trait_error(
                    "trait_forbidden",
                    format!("trait {t} needs a global admin token"),
                ));
            }
            if namespace == "control" {
                let rest = &t["control:".len().min(t.len())..];
                let valid = t == "control:invoke"
                    || rest
                        .strip_prefix("scope:")
                        .is_some_and(|s| s.starts_with("control:"))
                    || rest
                        .strip_prefix("max-ttl:")
                        .and_then(|n| n.parse::<u32>().ok())
                        .is_some_and(|n| (60..=900).contains(&n))
                        && {
                            max_ttl += 1;
                            max_ttl == 1
                        }
                    || rest
                        .strip_prefix("expires:")
                        .and_then(Timestamp::parse_utc_z)
                        .is_some()
                        && {
                            expires += 1;
                            expires == 1
                        };
                if !valid {
                    return Err(trait_error(
                        "trait_invalid",
                        format!("control trait {t} is not a valid form"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn custody_ref(zone: &ZoneId, app: &ApplicationId) -> String {
    format!("zones/{zone}/applications/{app}/clientSecret")
}

fn name_taken(err: StoreError) -> Error {
    match err {
        StoreError::Conflict(_) => Error::conflict(
            "application_name_taken",
            "an active application has this name",
        ),
        other => other.into(),
    }
}

impl Management {
    /// Lists applications (`status=active|archived`).
    pub async fn list_applications(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        liveness: Liveness,
        page: &Page,
    ) -> Result<Vec<Application>> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        Ok(uow.list_applications(zone, liveness, page).await?)
    }

    async fn live_application(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        zone: &ZoneId,
        id: &ApplicationId,
    ) -> Result<Application> {
        match uow.get_application(zone, id).await? {
            Some(a) if a.archived_at.is_none() => Ok(a),
            _ => Err(Error::not_found("application_not_found")),
        }
    }

    /// One unarchived application.
    pub async fn get_application(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &ApplicationId,
    ) -> Result<Application> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        self.live_application(&mut uow, zone, id).await
    }

    /// Generates a secret, hashes it for the STS and seals the custody copy.
    async fn issue_secret(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        app: &mut Application,
        chosen: Option<String>,
    ) -> Result<String> {
        let secret = chosen.unwrap_or_else(|| self.secrets.generate("cs_"));
        app.client_secret_hash = Some(self.hasher.hash(&secret).await?);
        if app.registration_method == RegistrationMethod::Managed {
            let reference = custody_ref(&app.zone_id, &app.id);
            let envelope = self.sealer.seal(&reference, secret.as_bytes())?;
            uow.put_secret(&SealedSecret {
                reference,
                zone_id: app.zone_id.clone(),
                envelope,
                version: 1,
            })
            .await?;
        }
        Ok(secret)
    }

    /// Creates a managed application and its first secret.
    pub async fn create_application(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        input: NewApplication,
    ) -> Result<WithSecret> {
        let name = bounded_name(&input.name, 200, "invalid_application")?;
        if input.registration_method != "managed" {
            return Err(Error::invalid(
                "invalid_application",
                "registration_method must be managed",
            ));
        }
        if is_reserved_name(&name) && !caller.actor.is_bootstrap() {
            return Err(reserved_namespace());
        }
        let traits = input.traits.unwrap_or_default();
        validate_traits(&traits, caller.actor.is_global())?;
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        if uow
            .find_managed_application_by_name(zone, &name)
            .await?
            .is_some()
        {
            return Err(Error::conflict(
                "application_name_taken",
                "an active application has this name",
            ));
        }
        let now = self.clock.now();
        let mut app = Application {
            id: ApplicationId::parse(&self.ids.new_id())?,
            zone_id: zone.clone(),
            name,
            registration_method: RegistrationMethod::Managed,
            traits,
            client_secret_hash: None,
            expires_at: None,
            attr: Attribution::created(&caller.attribution(), caller.via_operator, now),
            archived_at: None,
        };
        let client_secret = self.issue_secret(&mut uow, &mut app, None).await?;
        uow.save_application(&app).await.map_err(name_taken)?;
        uow.commit().await?;
        Ok(WithSecret {
            application: app,
            client_secret,
        })
    }

    /// Updates name, traits, or installs a caller-chosen secret (the old one dies at once).
    pub async fn patch_application(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &ApplicationId,
        patch: ApplicationPatch,
    ) -> Result<Application> {
        if patch.name.is_none() && patch.client_secret.is_none() && patch.traits.is_none() {
            return Err(Error::invalid(
                "no_fields",
                "the body names no field to change",
            ));
        }
        let name = patch
            .name
            .as_deref()
            .map(|n| bounded_name(n, 200, "invalid_application"))
            .transpose()?;
        if name.as_deref().is_some_and(is_reserved_name) && !caller.actor.is_bootstrap() {
            return Err(reserved_namespace());
        }
        if let Some(secret) = &patch.client_secret {
            if secret.chars().count() < 32
                || secret.len() > 4096
                || secret.chars().any(char::is_control)
            {
                return Err(Error::invalid(
                    "invalid_application",
                    "client_secret must be at least 32 characters",
                ));
            }
        }
        if let Some(traits) = &patch.traits {
            validate_traits(traits, caller.actor.is_global())?;
        }
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let mut app = self.live_application(&mut uow, zone, id).await?;
        if let Some(name) = name {
            if app.registration_method == RegistrationMethod::Managed
                && uow
                    .find_managed_application_by_name(zone, &name)
                    .await?
                    .is_some_and(|other| other.id != app.id)
            {
                return Err(Error::conflict(
                    "application_name_taken",
                    "an active application has this name",
                ));
            }
            app.name = name;
        }
        if let Some(traits) = patch.traits {
            app.traits = traits;
        }
        if let Some(secret) = patch.client_secret {
            if app.registration_method != RegistrationMethod::Managed {
                return Err(Error::invalid(
                    "client_secret_not_configured",
                    "only managed applications hold a custody secret",
                ));
            }
            self.issue_secret(&mut uow, &mut app, Some(secret)).await?;
        }
        app.attr
            .touch(&caller.attribution(), caller.via_operator, self.clock.now());
        uow.save_application(&app).await.map_err(name_taken)?;
        uow.commit().await?;
        Ok(app)
    }

    /// Replaces the secret with a fresh one and returns it.
    pub async fn rotate_application_secret(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &ApplicationId,
    ) -> Result<WithSecret> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let mut app = self.live_application(&mut uow, zone, id).await?;
        let client_secret = self.issue_secret(&mut uow, &mut app, None).await?;
        app.attr
            .touch(&caller.attribution(), caller.via_operator, self.clock.now());
        uow.save_application(&app).await?;
        uow.commit().await?;
        Ok(WithSecret {
            application: app,
            client_secret,
        })
    }

    /// Reveals a managed application's secret from custody. The `credential_revealed` audit
    /// event is enqueued in the same unit of work, so a reveal without evidence cannot happen.
    pub async fn reveal_application_secret(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &ApplicationId,
    ) -> Result<String> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let app = self.live_application(&mut uow, zone, id).await?;
        if app.registration_method != RegistrationMethod::Managed {
            return Err(Error::not_found("application_not_found"));
        }
        let reference = custody_ref(zone, id);
        let sealed = uow
            .get_secret(&reference)
            .await?
            .ok_or_else(|| Error::not_found("client_secret_not_stored"))?;
        let plaintext = self.sealer.open(&reference, &sealed.envelope)?;
        let secret = String::from_utf8(plaintext)
            .map_err(|_| Error::internal("custody secret is not UTF-8"))?;
        let event = self.audit_event(
            caller,
            zone,
            "credential_revealed",
            (caller.request_id.as_str(), "allow"),
            json!({
                "credential": "application_client_secret",
                "application_id": app.id,
                "application_name": app.name,
                "actor": caller.attribution(),
            }),
        )?;
        uow.enqueue_outbox(&event).await?;
        uow.commit().await?;
        Ok(secret)
    }

    /// Archives an application and deletes its custody copy.
    pub async fn delete_application(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &ApplicationId,
    ) -> Result<()> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let mut app = self.live_application(&mut uow, zone, id).await?;
        let now = self.clock.now();
        app.archived_at = Some(now);
        app.attr
            .touch(&caller.attribution(), caller.via_operator, now);
        uow.save_application(&app).await?;
        uow.delete_secret(&custody_ref(zone, id)).await?;
        uow.commit().await?;
        Ok(())
    }

    /// Registers a short-lived DCR application; its secret is returned once and never stored
    /// in custody.
    pub async fn register_dcr_application(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        input: NewDcrApplication,
    ) -> Result<WithSecret> {
        let name = bounded_name(&input.name, 200, "invalid_application")?;
        let expires_in = input.expires_in.unwrap_or(3600);
        if !(1..=3600).contains(&expires_in) {
            return Err(Error::invalid(
                "invalid_application",
                "expires_in must be 1 to 3600 seconds",
            ));
        }
        if is_reserved_name(&name) && !caller.actor.is_bootstrap() {
            return Err(reserved_namespace());
        }
        let mut uow = self.begin(caller).await?;
        let zone_row = self.live_zone(&mut uow, zone).await?;
        if !zone_row.dcr_enabled {
            return Err(Error::forbidden(
                "dcr_disabled",
                "dynamic client registration is disabled for this zone",
            ));
        }
        let live = self.count_live_dcr(&mut uow, zone).await?;
        if live >= MAX_LIVE_DCR {
            return Err(Error::new(ErrorKind::RateLimited, "dcr_limit_exceeded")
                .describe("the zone holds the maximum number of live DCR applications"));
        }
        let now = self.clock.now();
        let mut app = Application {
            id: ApplicationId::parse(&self.ids.new_id())?,
            zone_id: zone.clone(),
            name,
            registration_method: RegistrationMethod::Dcr,
            traits: Vec::new(),
            client_secret_hash: None,
            expires_at: Some(now.plus_millis(expires_in * 1000)),
            attr: Attribution::created(&caller.attribution(), caller.via_operator, now),
            archived_at: None,
        };
        let client_secret = self.issue_secret(&mut uow, &mut app, None).await?;
        uow.save_application(&app).await?;
        uow.commit().await?;
        Ok(WithSecret {
            application: app,
            client_secret,
        })
    }

    /// Archives DCR applications whose expiry passed more than `grace_ms` ago, in every live
    /// zone (the DCR garbage collector, `spec/api.md §3.2` "Jobs"). Returns how many it archived.
    pub async fn archive_expired_dcr_applications(&self, grace_ms: i64) -> Result<usize> {
        let now = self.clock.now();
        let cutoff = now.plus_millis(-grace_ms);
        let mut uow = self
            .store
            .begin(&crate::ports::store::ZoneScope::All)
            .await?;
        let mut archived = 0;
        let mut zones_page = Page {
            limit: 500,
            after: None,
        };
        loop {
            let zones = uow.list_zones(&zones_page).await?;
            let more_zones = zones.len() as u32 == zones_page.limit;
            zones_page.after = zones.last().map(|z| crate::ports::store::After {
                created_at: z.attr.created_at,
                id: z.id.to_string(),
            });
            for zone in zones {
                let mut page = Page {
                    limit: 500,
                    after: None,
                };
                loop {
                    let apps = uow
                        .list_applications(&zone.id, Liveness::Active, &page)
                        .await?;
                    let more = apps.len() as u32 == page.limit;
                    page.after = apps.last().map(|a| crate::ports::store::After {
                        created_at: a.attr.created_at,
                        id: a.id.to_string(),
                    });
                    for mut app in apps {
                        let expired = app.registration_method == RegistrationMethod::Dcr
                            && app.expires_at.is_some_and(|t| t <= cutoff);
                        if expired {
                            app.archived_at = Some(now);
                            app.attr.touch("system:dcr-gc", false, now);
                            uow.save_application(&app).await?;
                            archived += 1;
                        }
                    }
                    if !more {
                        break;
                    }
                }
            }
            if !more_zones {
                break;
            }
        }
        uow.commit().await?;
        Ok(archived)
    }

    async fn count_live_dcr(&self, uow: &mut Box<dyn UnitOfWork>, zone: &ZoneId) -> Result<usize> {
        let status = self.zone_dcr_count(uow, zone).await?;
        Ok(status)
    }

    async fn zone_dcr_count(&self, uow: &mut Box<dyn UnitOfWork>, zone: &ZoneId) -> Result<usize> {
        let now = self.clock.now();
        let mut count = 0;
        let mut page = Page {
            limit: 500,
            after: None,
        };
        loop {
            let rows = uow.list_applications(zone, Liveness::Active, &page).await?;
            let full = rows.len() as u32 == page.limit;
            count += rows
                .iter()
                .filter(|a| {
                    a.registration_method == RegistrationMethod::Dcr
                        && a.expires_at.is_none_or(|t| t > now)
                })
                .count();
            page.after = rows.last().map(|a| crate::ports::store::After {
                created_at: a.attr.created_at,
                id: a.id.to_string(),
            });
            if !full {
                return Ok(count);
            }
        }
    }

    /// An audit event for `caracal.audit.events`, in the outbox form of `spec/api.md §4`:
    /// fields `id` (the event's request id), `data` (the event JSON) and `sig` when
    /// `AUDIT_HMAC_KEY` is set. `(request_id, decision)` are the event's own: a reveal is the
    /// caller's request allowed, an approval decision names the hold it decided.
    pub(crate) fn audit_event(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        event_type: &str,
        (request_id, decision): (&str, &str),
        metadata: serde_json::Value,
    ) -> Result<crate::model::OutboxMessage> {
        let data = json!({
            "id": self.ids.new_id(),
            "zone_id": zone,
            "event_type": event_type,
            "request_id": request_id,
            "decision": decision,
            "evaluation_status": "complete",
            "determining_policies_json": [],
            "diagnostics_json": [],
            "metadata_json": metadata,
            "occurred_at": self.clock.now(),
        })
        .to_string();
        let mut fields = BTreeMap::new();
        fields.insert("id".to_owned(), request_id.to_owned());
        if let Some(mac) = &self.audit_mac {
            fields.insert("sig".to_owned(), mac.sign_hex(data.as_bytes()));
        }
        fields.insert("data".to_owned(), data);
        self.outbox(caller, "caracal.audit.events", fields)
    }
}

#[cfg(test)]
mod tests {
    use super::validate_traits;

    fn code(traits: &[&str], global: bool) -> Option<&'static str> {
        let owned: Vec<String> = traits.iter().map(|t| t.to_string()).collect();
        validate_traits(&owned, global).err().map(|e| e.code)
    }

    #[test]
    fn trait_rules() {
        assert_eq!(code(&["team:a", "tier.gold"], false), None);
        assert_eq!(code(&["1bad"], false), Some("trait_invalid"));
        assert_eq!(code(&["a", "a"], false), Some("trait_duplicate"));
        assert_eq!(code(&["control:invoke"], false), Some("trait_forbidden"));
        assert_eq!(
            code(
                &[
                    "control:invoke",
                    "control:scope:control:app:read",
                    "control:max-ttl:300"
                ],
                true
            ),
            None
        );
        assert_eq!(code(&["control:max-ttl:5"], true), Some("trait_invalid"));
        assert_eq!(
            code(&["control:max-ttl:60", "control:max-ttl:61"], true),
            Some("trait_invalid")
        );
        let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(code(&refs, false), Some("trait_count_exceeded"));
    }
}
