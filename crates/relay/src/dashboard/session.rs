//! Dashboard sign-in: sessions in an encrypted cookie, one-time login links, CSRF checks and the
//! login rate limit.
//!
//! The cookie (`capi_ui`, `Path=/ui`, HttpOnly, SameSite=Strict, 8 h) is encrypted and
//! authenticated with a key derived from the master key (axum-extra's `PrivateCookieJar`), so
//! it cannot be read or forged. It never holds a key, only the key's hash, which is looked up
//! again on every request: a revoked key's sessions stop at once.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, StatusCode, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use axum_extra::extract::{
    PrivateCookieJar,
    cookie::{Cookie, Key, SameSite},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use relay_store::{AuditEntry, Store, StoreError, dashboard::UiLink};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::figures::Who;
use crate::{clock::now_ms, http::AppState, tenancy::keys};

/// The session cookie's name.
pub const COOKIE: &str = "capi_ui";
/// How long a sign-in lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Failed sign-ins allowed per client address per [`LOGIN_WINDOW`].
pub const LOGIN_FAILURES_ALLOWED: u32 = 10;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(300);
/// Every login link starts with this.
pub const LINK_PREFIX: &str = "uil_";
/// The longest a login link may stay valid.
pub const MAX_LINK_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Dashboard settings and state shared by its handlers.
pub struct UiState {
    pub key: Key,
    /// Mark the cookie `Secure` (HTTPS only). Off only when serving plain HTTP on loopback.
    pub secure_cookie: bool,
    pub limiter: LoginLimiter,
}

impl UiState {
    /// `cookie_key`: 64 bytes derived from the master key.
    pub fn new(cookie_key: &[u8; 64], secure_cookie: bool) -> Self {
        UiState {
            key: Key::from(cookie_key),
            secure_cookie,
            limiter: LoginLimiter::default(),
        }
    }
}

impl axum::extract::FromRef<AppState> for Key {
    fn from_ref(state: &AppState) -> Key {
        state.ui.key.clone()
    }
}

/// What the session cookie holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// Signed in with the admin key: every tenant.
    pub operator: bool,
    /// The tenant (for the operator: the one being viewed, `None` = all).
    pub tenant: Option<String>,
    /// Hash of the stored API key signed in with, checked again on each request.
    pub key_hash: Option<String>,
    pub read_only: bool,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    pub expires_ms: i64,
    /// Who, for the audit trail: `ui:operator`, `ui:key_…`, `ui:link`.
    pub actor: String,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Session {
    pub fn new(
        operator: bool,
        tenant: Option<String>,
        key_hash: Option<String>,
        read_only: bool,
        actor: String,
    ) -> Self {
        Session {
            operator,
            tenant,
            key_hash,
            read_only,
            csrf: random_token(),
            expires_ms: now_ms() + SESSION_TTL.as_millis() as i64,
            actor,
        }
    }

    /// The cookie carrying this session.
    pub fn cookie(&self, secure: bool) -> Cookie<'static> {
        let value = serde_json::to_string(self).expect("sessions serialise");
        Cookie::build((COOKIE, value))
            .path("/ui")
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(secure)
            .max_age(time::Duration::seconds(SESSION_TTL.as_secs() as i64))
            .build()
    }
}

/// A signed-in dashboard user, resolved for this request.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub session: Session,
    /// What the pages may show.
    pub who: Who,
}

impl Viewer {
    pub fn may_write(&self) -> bool {
        !self.session.read_only
    }
}

/// Sends a browser without a valid session to the login page.
pub struct SignIn;

impl IntoResponse for SignIn {
    fn into_response(self) -> Response {
        Redirect::to("/ui/login").into_response()
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let jar = PrivateCookieJar::<Key>::from_request_parts(parts, state)
            .await
            .map_err(|e| e.into_response())?;
        let Some(session) = jar
            .get(COOKIE)
            .and_then(|c| serde_json::from_str::<Session>(c.value()).ok())
        else {
            return Err(SignIn.into_response());
        };
        if session.expires_ms <= now_ms() {
            return Err(SignIn.into_response());
        }
        let mut assets = None;
        if let Some(hash) = &session.key_hash {
            // A revoked key ends its sessions at once.
            match state.store.find_api_key(hash).await {
                Ok(Some(k))
                    if k.revoked_at_ms.is_none() && Some(&k.tenant) == session.tenant.as_ref() =>
                {
                    assets = k.assets;
                }
                Ok(_) => return Err(SignIn.into_response()),
                Err(e) => return Err(crate::http::ApiError::from(e).into_response()),
            }
        }
        let who = Who {
            tenant: session.tenant.clone(),
            assets,
        };
        Ok(Viewer { session, who })
    }
}

/// Refuses a state-changing request that did not come from one of our own pages: the form's
/// token must match the session's, and the browser's `Origin`/`Sec-Fetch-Site` must say
/// same-origin when present.
pub fn check_csrf(viewer: &Viewer, token: &str, headers: &HeaderMap) -> Result<(), Box<Response>> {
    same_origin(headers)?;
    let expected = viewer.session.csrf.as_bytes();
    if bool::from(token.as_bytes().ct_eq(expected)) {
        Ok(())
    } else {
        Err(forbidden(
            "the form's security token does not match your session; reload the page and try again",
        ))
    }
}

/// `Origin` (when sent) must name this host, and `Sec-Fetch-Site` (when sent) must not be
/// cross-site: the sign-in forms have no session token yet.
pub fn same_origin(headers: &HeaderMap) -> Result<(), Box<Response>> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(forbidden("cross-site requests are refused"));
    }
    if let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) {
        let host = headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if origin == "null" || origin_host != host {
            return Err(forbidden("cross-origin requests are refused"));
        }
    }
    Ok(())
}

fn forbidden(message: &str) -> Box<Response> {
    Box::new(
        (
            StatusCode::FORBIDDEN,
            axum::response::Html(super::views::message_page("Refused", message)),
        )
            .into_response(),
    )
}

/// The client's address for the login limit (the socket's; a proxy in front makes every
/// client one address, which then shares the limit).
pub fn client_ip(parts_extensions: &axum::http::Extensions) -> Option<IpAddr> {
    parts_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Failed sign-ins per client address in a sliding window.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<Option<IpAddr>, (Instant, u32)>>,
}

impl LoginLimiter {
    /// `Err(wait)` while the address is over its limit.
    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), Duration> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&ip) {
            Some((since, n)) if *n >= LOGIN_FAILURES_ALLOWED && since.elapsed() < LOGIN_WINDOW => {
                Err(LOGIN_WINDOW - since.elapsed())
            }
            _ => Ok(()),
        }
    }

    pub fn failed(&self, ip: Option<IpAddr>) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() > 100_000 {
            failures.retain(|_, (since, _)| since.elapsed() < LOGIN_WINDOW);
        }
        let entry = failures.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= LOGIN_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }

    pub fn succeeded(&self, ip: Option<IpAddr>) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

/// The session a presented key signs in to, if it is the admin key or a valid tenant key.
pub async fn session_for_key(
    state: &AppState,
    presented: &str,
) -> Result<Option<Session>, StoreError> {
    let presented = presented.trim();
    if state.auth.is_admin(presented) {
        return Ok(Some(Session::new(
            true,
            None,
            None,
            false,
            "ui:operator".into(),
        )));
    }
    let Some(scope) = state.auth.tenant_scope(presented).await? else {
        return Ok(None);
    };
    // Stored keys are checked again on every request; the configured key lives in the config.
    let key_hash = scope
        .key_id
        .starts_with("key_")
        .then(|| keys::hash(presented));
    Ok(Some(Session::new(
        false,
        Some(scope.tenant),
        key_hash,
        false,
        format!("ui:{}", scope.key_id),
    )))
}

/// Makes a one-time login link token for `tenant` (stored only as its hash) and records it in
/// the audit trail. `NotFound` for an unknown tenant.
pub async fn create_link(
    store: &dyn Store,
    tenant: &str,
    read_only: bool,
    ttl: Duration,
    actor: &str,
) -> Result<String, StoreError> {
    if store.get_tenant(tenant).await?.is_none() {
        return Err(StoreError::NotFound(format!("no tenant named {tenant:?}")));
    }
    let ttl = ttl.min(MAX_LINK_TTL);
    let token = format!("{LINK_PREFIX}{}", random_token());
    let now = now_ms();
    store
        .create_ui_link(&UiLink {
            token_hash: keys::hash(&token),
            tenant: tenant.to_owned(),
            read_only,
            created_at_ms: now,
            expires_at_ms: now + ttl.as_millis() as i64,
        })
        .await?;
    store
        .append_audit(&AuditEntry {
            at_ms: now,
            actor: actor.to_owned(),
            action: "ui.link".into(),
            tenant: Some(tenant.to_owned()),
            target: None,
            detail: Some(
                serde_json::json!({"read_only": read_only, "expires_in_s": ttl.as_secs()})
                    .to_string(),
            ),
        })
        .await?;
    Ok(token)
}

/// The session a login link signs in to, using it up; `None` if unknown, used or expired.
pub async fn session_for_link(
    store: &dyn Store,
    token: &str,
) -> Result<Option<Session>, StoreError> {
    let token = token.trim();
    if !token.starts_with(LINK_PREFIX) {
        return Ok(None);
    }
    let Some(link) = store.consume_ui_link(&keys::hash(token), now_ms()).await? else {
        return Ok(None);
    };
    Ok(Some(Session::new(
        false,
        Some(link.tenant),
        None,
        link.read_only,
        "ui:link".into(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_blocks_after_ten_failures_and_a_success_clears_it() {
        let limiter = LoginLimiter::default();
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..LOGIN_FAILURES_ALLOWED {
            assert!(limiter.check(ip).is_ok());
            limiter.failed(ip);
        }
        assert!(limiter.check(ip).is_err());
        assert!(limiter.check(Some(IpAddr::from([10, 0, 0, 2]))).is_ok());
        limiter.succeeded(ip);
        assert!(limiter.check(ip).is_ok());
    }

    #[test]
    fn cross_origin_posts_are_refused() {
        let mut h = HeaderMap::new();
        h.insert("host", "relay.example:8080".parse().unwrap());
        assert!(same_origin(&h).is_ok());
        h.insert("origin", "http://relay.example:8080".parse().unwrap());
        assert!(same_origin(&h).is_ok());
        h.insert("origin", "https://evil.example".parse().unwrap());
        assert!(same_origin(&h).is_err());
        h.insert("origin", "http://relay.example:8080".parse().unwrap());
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(same_origin(&h).is_err());
    }
}
