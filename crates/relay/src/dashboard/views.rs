//! One handler per dashboard page: check the session, ask [`figures`](super::figures), turn the
//! numbers into display strings, render the page's template.

use askama::Template;
use axum::{
    Form,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse, Redirect, Response},
};
use axum_extra::extract::{PrivateCookieJar, cookie::Cookie};
use chrono::{DateTime, Utc};
use relay_store::{AuditEntry, DeadLetterFilter, EventState, StoreError, dashboard::LogFilter};
use serde::Deserialize;
use serde_json::Value;

use super::{
    assets,
    figures::{self, Breakdown, Figures, LogEntry, Who, Window},
    session::{self, COOKIE, Session, Viewer},
    svg,
};
use crate::{clock::now_ms, http::AppState};

// ---------- formatting ----------

/// `1234567` → `1,234,567`.
pub fn fmt_int(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("−{out}") } else { out }
}

/// `2026-12-01 12:34:56 UTC`.
pub fn fmt_time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// `3 min ago`, `in 20 s`.
pub fn fmt_ago(ms: i64, now: i64) -> String {
    let d = now - ms;
    let (abs, future) = (d.unsigned_abs() as i64, d < 0);
    let text = if abs < 60_000 {
        format!("{} s", abs / 1000)
    } else if abs < 3_600_000 {
        format!("{} min", abs / 60_000)
    } else if abs < 172_800_000 {
        format!("{} h", abs / 3_600_000)
    } else {
        format!("{} days", abs / 86_400_000)
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

fn fmt_opt_time(ms: Option<i64>, now: i64, none: &str) -> String {
    ms.map_or_else(
        || none.to_owned(),
        |t| format!("{} ({})", fmt_ago(t, now), fmt_time(t)),
    )
}

/// The change from the previous window: `(text, css class)`.
fn delta(current: i64, previous: i64, higher_is_good: Option<bool>) -> (String, &'static str) {
    if current == previous {
        return (
            if current == 0 {
                "—".into()
            } else {
                "±0 %".into()
            },
            "flat",
        );
    }
    if previous == 0 {
        return ("new".into(), "flat");
    }
    let pct = 100.0 * (current - previous) as f64 / previous as f64;
    let text = if pct > 0.0 {
        format!("+{pct:.0} %")
    } else {
        format!("−{:.0} %", -pct)
    };
    let class = match higher_is_good {
        Some(good) if (pct > 0.0) == good => "good",
        Some(_) => "bad",
        None => "flat",
    };
    (text, class)
}

fn bucket_label(window: Window) -> impl Fn(i64) -> String {
    move |ms| {
        let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
        match window {
            Window::Hour | Window::Day => t.format("%H:%M").to_string(),
            Window::Week => t.format("%a %Hh").to_string(),
            Window::Month => t.format("%b %d").to_string(),
        }
    }
}

// ---------- the page frame ----------

pub struct NavItem {
    pub label: &'static str,
    pub href: &'static str,
    pub active: bool,
}

pub struct WindowLink {
    pub label: &'static str,
    pub href: String,
    pub active: bool,
}

pub struct TenantOption {
    pub name: String,
    pub selected: bool,
}

/// What every page's frame shows.
pub struct Frame {
    pub title: String,
    pub nav: Vec<NavItem>,
    pub who_label: String,
    pub operator: bool,
    pub tenants: Vec<TenantOption>,
    pub all_selected: bool,
    pub csrf: String,
    pub read_only: bool,
    pub windows: Vec<WindowLink>,
    pub window_label: String,
    pub test_banner: Vec<String>,
    pub css: &'static str,
    pub htmx: &'static str,
    pub sri: &'static str,
}

const NAV: [(&str, &str); 6] = [
    ("Overview", "/ui"),
    ("Events", "/ui/events"),
    ("Errors", "/ui/errors"),
    ("Test events", "/ui/test-events"),
    ("Sources & health", "/ui/sources"),
    ("Quality", "/ui/quality"),
];

async fn frame(
    state: &AppState,
    viewer: &Viewer,
    title: &str,
    active: &str,
    window: Option<(Window, Vec<String>)>,
) -> Result<Frame, StoreError> {
    let tenants = if viewer.session.operator {
        state
            .store
            .list_tenants()
            .await?
            .into_iter()
            .map(|t| TenantOption {
                selected: Some(&t.name) == viewer.who.tenant.as_ref(),
                name: t.name,
            })
            .collect()
    } else {
        Vec::new()
    };
    let test_banner = figures::active_test_codes(state.store.as_ref(), &viewer.who)
        .await?
        .into_iter()
        .map(|(scope, code)| format!("{scope}: {code}"))
        .collect();
    let who_label = match (&viewer.session.operator, &viewer.who.tenant) {
        (true, Some(t)) => format!("operator · viewing {t}"),
        (true, None) => "operator · all tenants".into(),
        (false, Some(t)) => {
            if viewer.session.read_only {
                format!("{t} · read-only")
            } else {
                t.clone()
            }
        }
        (false, None) => String::new(),
    };
    Ok(Frame {
        title: title.to_owned(),
        nav: NAV
            .iter()
            .map(|(label, href)| NavItem {
                label,
                href,
                active: *href == active,
            })
            .collect(),
        who_label,
        operator: viewer.session.operator,
        all_selected: viewer.who.tenant.is_none(),
        tenants,
        csrf: viewer.session.csrf.clone(),
        read_only: viewer.session.read_only,
        window_label: window
            .as_ref()
            .map(|(w, _)| w.label().to_owned())
            .unwrap_or_default(),
        windows: window
            .map(|(current, hrefs)| {
                Window::ALL
                    .iter()
                    .zip(hrefs)
                    .map(|(w, href)| WindowLink {
                        label: w.as_str(),
                        href,
                        active: *w == current,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        test_banner,
        css: assets::CSS_FILE,
        htmx: assets::HTMX_FILE,
        sri: assets::HTMX_SRI,
    })
}

fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => (
            [
                ("cache-control", "no-store"),
                ("x-frame-options", "DENY"),
                ("referrer-policy", "same-origin"),
                (
                    "content-security-policy",
                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
                ),
            ],
            Html(html),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "dashboard template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered").into_response()
        }
    }
}

fn store_error(e: StoreError) -> Response {
    let api: crate::http::ApiError = e.into();
    (
        api.status,
        Html(message_page("The database did not answer", &api.message)),
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    message: &'a str,
    css: &'static str,
}

/// A bare page with one message (errors, refusals).
pub fn message_page(title: &str, message: &str) -> String {
    MessagePage {
        title,
        message,
        css: assets::CSS_FILE,
    }
    .render()
    .unwrap_or_else(|_| message.to_owned())
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Html(message_page("Not found", what))).into_response()
}

fn visible(who: &Who, tenant: &str, asset_id: Option<&str>) -> bool {
    who.tenant.as_ref().is_none_or(|t| t == tenant)
        && who
            .assets
            .as_ref()
            .is_none_or(|a| asset_id.is_some_and(|x| a.iter().any(|y| y == x)))
}

// ---------- sign-in ----------

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    message: Option<String>,
    css: &'static str,
}

pub async fn login_form() -> Response {
    render(&LoginPage {
        message: None,
        css: assets::CSS_FILE,
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    key: String,
}

fn signed_in(jar: PrivateCookieJar, session: &Session, secure: bool) -> Response {
    (jar.add(session.cookie(secure)), Redirect::to("/ui")).into_response()
}

fn login_refused(status: StatusCode, message: String) -> Response {
    (
        status,
        render(&LoginPage {
            message: Some(message),
            css: assets::CSS_FILE,
        }),
    )
        .into_response()
}

fn too_many(wait: std::time::Duration) -> Response {
    let mut r = login_refused(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "Too many failed sign-ins from your address. Wait {} s and try again.",
            wait.as_secs().max(1)
        ),
    );
    if let Ok(v) = wait.as_secs().max(1).to_string().parse() {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

pub async fn login(
    State(state): State<AppState>,
    jar: PrivateCookieJar,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(r) = session::same_origin(&headers) {
        return *r;
    }
    let ip = session::client_ip(&extensions);
    if let Err(wait) = state.ui.limiter.check(ip) {
        return too_many(wait);
    }
    match session::session_for_key(&state, &form.key).await {
        Ok(Some(session)) => {
            state.ui.limiter.succeeded(ip);
            signed_in(jar, &session, state.ui.secure_cookie)
        }
        Ok(None) => {
            state.ui.limiter.failed(ip);
            login_refused(
                StatusCode::UNAUTHORIZED,
                "That key is not valid (unknown or revoked). Use a tenant's API key, the admin key, or a login link.".into(),
            )
        }
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    viewer: Viewer,
    jar: PrivateCookieJar,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(r) = session::check_csrf(&viewer, &form.csrf, &headers) {
        return *r;
    }
    (
        jar.remove(
            Cookie::build(COOKIE)
                .path("/ui")
                .http_only(true)
                .same_site(axum_extra::extract::cookie::SameSite::Strict),
        ),
        Redirect::to("/ui/login"),
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "link.html")]
struct LinkPage {
    token: String,
    css: &'static str,
}

/// Shows a button rather than signing in on GET: link previewers and mail scanners fetch links,
/// and would use up a one-time link.
pub async fn link_form(Path(token): Path<String>) -> Response {
    render(&LinkPage {
        token,
        css: assets::CSS_FILE,
    })
}

#[derive(Deserialize)]
pub struct LinkForm {
    token: String,
}

pub async fn link_login(
    State(state): State<AppState>,
    jar: PrivateCookieJar,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Form(form): Form<LinkForm>,
) -> Response {
    if let Err(r) = session::same_origin(&headers) {
        return *r;
    }
    let ip = session::client_ip(&extensions);
    if let Err(wait) = state.ui.limiter.check(ip) {
        return too_many(wait);
    }
    match session::session_for_link(state.store.as_ref(), &form.token).await {
        Ok(Some(session)) => signed_in(jar, &session, state.ui.secure_cookie),
        Ok(None) => {
            state.ui.limiter.failed(ip);
            login_refused(
                StatusCode::GONE,
                "This login link has been used or has expired. Ask for a new one (capi-relay ui-link --tenant …).".into(),
            )
        }
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
pub struct SwitchForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    tenant: String,
}

pub async fn switch_tenant(
    State(state): State<AppState>,
    viewer: Viewer,
    jar: PrivateCookieJar,
    headers: HeaderMap,
    Form(form): Form<SwitchForm>,
) -> Response {
    if let Err(r) = session::check_csrf(&viewer, &form.csrf, &headers) {
        return *r;
    }
    if !viewer.session.operator {
        return (
            StatusCode::FORBIDDEN,
            Html(message_page(
                "Refused",
                "only the operator can switch tenants",
            )),
        )
            .into_response();
    }
    let tenant = (!form.tenant.is_empty()).then_some(form.tenant);
    if let Some(t) = &tenant {
        match state.store.get_tenant(t).await {
            Ok(Some(_)) => {}
            Ok(None) => return not_found("no such tenant"),
            Err(e) => return store_error(e),
        }
    }
    let mut session = viewer.session;
    session.tenant = tenant;
    (
        jar.add(session.cookie(state.ui.secure_cookie)),
        Redirect::to("/ui"),
    )
        .into_response()
}

// ---------- overview ----------

#[derive(Deserialize, Default)]
pub struct WindowQuery {
    window: Option<String>,
    dataset: Option<String>,
}

/// The window picker's links, in [`Window::ALL`] order.
fn hrefs(href: impl Fn(Window) -> String) -> Vec<String> {
    Window::ALL.iter().map(|w| href(*w)).collect()
}

fn window_of(q: Option<&str>, default: Window) -> Window {
    q.and_then(Window::parse).unwrap_or(default)
}

pub struct Card {
    pub label: &'static str,
    pub value: String,
    pub delta: String,
    pub delta_class: &'static str,
    pub hint: &'static str,
}

pub struct TableRow {
    pub key: String,
    pub href: Option<String>,
    pub tenant: String,
    pub received: String,
    pub accepted: String,
    pub duplicates: String,
    pub rejected: String,
    pub delivered: String,
    pub retried: String,
    pub dead: String,
    pub change: String,
    pub change_class: &'static str,
    pub last_received: String,
    pub active: bool,
}

fn table(
    rows: &[Breakdown],
    now: i64,
    empty_key: &str,
    link: Option<&dyn Fn(&str) -> String>,
) -> Vec<TableRow> {
    rows.iter()
        .map(|r| {
            let (change, change_class) = delta(r.current.received, r.previous.received, None);
            let c = &r.current.counts;
            TableRow {
                key: if r.key.is_empty() {
                    empty_key.to_owned()
                } else {
                    r.key.clone()
                },
                href: link.filter(|_| !r.key.is_empty()).map(|l| l(&r.key)),
                tenant: r.tenant.clone().unwrap_or_default(),
                received: fmt_int(r.current.received),
                accepted: fmt_int(c.accepted),
                duplicates: fmt_int(c.duplicates),
                rejected: fmt_int(c.rejected),
                delivered: fmt_int(c.delivered),
                retried: fmt_int(c.retried),
                dead: fmt_int(c.dead),
                change,
                change_class,
                last_received: r
                    .last_received_ms
                    .map_or_else(|| "not in 30 days".into(), |t| fmt_ago(t, now)),
                active: r.active_7d,
            }
        })
        .collect()
}

fn cards(cur: &Figures, prev: &Figures) -> Vec<Card> {
    let (c, p) = (&cur.counts, &prev.counts);
    let card = |label, value: i64, previous: i64, good: Option<bool>, hint| {
        let (delta, delta_class) = delta(value, previous, good);
        Card {
            label,
            value: fmt_int(value),
            delta,
            delta_class,
            hint,
        }
    };
    vec![
        card(
            "Received",
            cur.received,
            prev.received,
            None,
            "events submitted",
        ),
        card(
            "Accepted",
            c.accepted,
            p.accepted,
            Some(true),
            "stored for delivery",
        ),
        card(
            "Duplicates",
            c.duplicates,
            p.duplicates,
            Some(false),
            "same event_id again; not sent twice",
        ),
        card(
            "Rejected",
            c.rejected,
            p.rejected,
            Some(false),
            "refused at ingest; never sent",
        ),
        card(
            "Delivered",
            c.delivered,
            p.delivered,
            Some(true),
            "acknowledged by Meta",
        ),
        card(
            "Retrying",
            c.retried,
            p.retried,
            Some(false),
            "failed attempts, scheduled again",
        ),
        card("Dead", c.dead, p.dead, Some(false), "given up; replayable"),
    ]
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    page: Frame,
    cards: Vec<Card>,
    chart: String,
    chart_unit: &'static str,
    p50: String,
    p95: String,
    last_received: String,
    last_delivered: String,
    tenants: Vec<TableRow>,
    datasets: Vec<TableRow>,
    event_names: Vec<TableRow>,
    channels: Vec<TableRow>,
    dataset: Option<String>,
    empty: bool,
}

fn chart_unit(window: Window) -> &'static str {
    match window {
        Window::Hour => "events per 5 min",
        Window::Day => "events per hour",
        Window::Week => "events per 6 h",
        Window::Month => "events per day",
    }
}

pub async fn overview(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<WindowQuery>,
) -> Response {
    let now = now_ms();
    let window = window_of(q.window.as_deref(), Window::Day);
    let dataset = q.dataset.filter(|d| !d.is_empty());
    let o = match figures::overview(
        state.store.as_ref(),
        &viewer.who,
        window,
        dataset.as_deref(),
        now,
    )
    .await
    {
        Ok(o) => o,
        Err(e) => return store_error(e),
    };
    let ds = dataset.clone();
    let href = move |w: Window| match &ds {
        Some(d) => format!("/ui?window={}&dataset={}", w.as_str(), urlencode(d)),
        None => format!("/ui?window={}", w.as_str()),
    };
    let page = match frame(
        &state,
        &viewer,
        "Overview",
        "/ui",
        Some((window, hrefs(href))),
    )
    .await
    {
        Ok(f) => f,
        Err(e) => return store_error(e),
    };
    let w = window.as_str();
    let dataset_link = move |d: &str| format!("/ui?window={w}&dataset={}", urlencode(d));
    let name_link = move |n: &str| format!("/ui/events?name={}", urlencode(n));
    let channel_link = move |c: &str| format!("/ui/events?channel={}", urlencode(c));
    render(&OverviewPage {
        cards: cards(&o.current, &o.previous),
        chart: svg::delivered_vs_failed(&o.series, chart_unit(window), bucket_label(window)),
        chart_unit: chart_unit(window),
        p50: o.p50.map_or_else(|| "no deliveries".into(), |p| p.label),
        p95: o.p95.map_or_else(|| "no deliveries".into(), |p| p.label),
        last_received: fmt_opt_time(
            o.freshness.last_received_ms,
            now,
            "nothing received in 30 days",
        ),
        last_delivered: fmt_opt_time(
            o.freshness.last_delivered_ms,
            now,
            "nothing delivered in 30 days",
        ),
        tenants: table(&o.by_tenant, now, "(none)", None),
        datasets: table(
            &o.by_dataset,
            now,
            "(not routed: refused before a dataset was known)",
            Some(&dataset_link),
        ),
        event_names: table(&o.by_event_name, now, "(no event name)", Some(&name_link)),
        channels: table(&o.by_channel, now, "(no channel)", Some(&channel_link)),
        empty: o.current.received == 0
            && o.previous.received == 0
            && o.freshness.last_received_ms.is_none(),
        dataset,
        page,
    })
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------- events log ----------

/// The log's filters, as the form sends them (empty fields mean "any").
#[derive(Deserialize, Default, Clone)]
pub struct LogQuery {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub asset: String,
    #[serde(default)]
    pub status: String,
    /// A window (`1h` … `30d`) back from now.
    #[serde(default)]
    pub window: String,
    #[serde(default)]
    pub before: String,
}

/// A filter parameter the log cannot use.
pub struct BadFilter(pub String);

impl LogQuery {
    pub fn filter(
        &self,
        who: &Who,
        now: i64,
        limit: i64,
    ) -> Result<(LogFilter, Option<figures::Cursor>), BadFilter> {
        let opt = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        let state = opt(&self.state);
        if let Some(s) = &state
            && s != "refused"
            && EventState::parse(s).is_none()
        {
            return Err(BadFilter(format!(
                "state: {s:?} is not one of queued, sending, delivered, retrying, dead, refused"
            )));
        }
        let http_status = match opt(&self.status) {
            None => None,
            Some(s) => Some(
                s.parse::<i32>()
                    .ok()
                    .filter(|n| (100..600).contains(n))
                    .ok_or_else(|| {
                        BadFilter(format!(
                            "status: {s:?} is not an HTTP status code (100–599)"
                        ))
                    })?,
            ),
        };
        let since_ms = match opt(&self.window) {
            None => None,
            Some(w) => Some(
                now - Window::parse(&w)
                    .ok_or_else(|| {
                        BadFilter(format!("window: {w:?} is not one of 1h, 24h, 7d, 30d"))
                    })?
                    .ms(),
            ),
        };
        let cursor = match opt(&self.before) {
            None => None,
            Some(c) => Some(
                figures::parse_cursor(&c)
                    .ok_or_else(|| BadFilter(format!("before: {c:?} is not a page cursor")))?,
            ),
        };
        Ok((
            LogFilter {
                tenant: who.tenant.clone(),
                within_assets: who.assets.clone(),
                event_id: opt(&self.q),
                state,
                event_name: opt(&self.name),
                channel: opt(&self.channel),
                asset_id: opt(&self.asset),
                since_ms,
                until_ms: None,
                http_status,
                test_only: false,
                before: None,
                limit,
            },
            cursor,
        ))
    }

    fn query_string(&self, before: Option<&str>) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("q", &self.q),
            ("state", &self.state),
            ("name", &self.name),
            ("channel", &self.channel),
            ("asset", &self.asset),
            ("status", &self.status),
            ("window", &self.window),
        ] {
            if !v.is_empty() {
                parts.push(format!("{k}={}", urlencode(v)));
            }
        }
        if let Some(b) = before {
            parts.push(format!("before={}", urlencode(b)));
        }
        parts.join("&")
    }
}

pub struct LogRow {
    pub href: String,
    pub time: String,
    pub ago: String,
    pub state: String,
    pub state_class: &'static str,
    pub event_name: String,
    pub event_id: String,
    pub channel: String,
    pub asset_id: String,
    pub tenant: String,
    pub detail: String,
}

fn state_class(state: &str) -> &'static str {
    match state {
        "delivered" => "ok",
        "dead" | "refused" => "bad",
        "retrying" => "warn",
        _ => "info",
    }
}

fn log_rows(entries: &[LogEntry], now: i64) -> Vec<LogRow> {
    entries
        .iter()
        .map(|e| match e {
            LogEntry::Event(r) => {
                let last = r.attempts.last();
                let detail = match (r.state, last) {
                    (EventState::Dead, _) => r.dead_reason.clone().unwrap_or_default(),
                    (_, Some(a)) => format!(
                        "{} attempt{} · last {}{}",
                        r.attempts.len(),
                        if r.attempts.len() == 1 { "" } else { "s" },
                        a.outcome,
                        a.http_status
                            .map(|s| format!(" (HTTP {s})"))
                            .unwrap_or_default()
                    ),
                    (_, None) => "not sent yet".into(),
                };
                LogRow {
                    href: format!("/ui/events/{}", r.id),
                    time: fmt_time(r.accepted_at_ms),
                    ago: fmt_ago(r.accepted_at_ms, now),
                    state: r.state.as_str().into(),
                    state_class: state_class(r.state.as_str()),
                    event_name: r.event_name.clone(),
                    event_id: r.event_id.clone(),
                    channel: r.channel.clone(),
                    asset_id: r.asset_id.clone(),
                    tenant: r.tenant.clone(),
                    detail,
                }
            }
            LogEntry::Refused(r) => LogRow {
                href: format!("/ui/refused/{}", r.id),
                time: fmt_time(r.received_at_ms),
                ago: fmt_ago(r.received_at_ms, now),
                state: "refused".into(),
                state_class: "bad",
                event_name: r.event_name.clone().unwrap_or_else(|| "—".into()),
                event_id: r.event_id.clone().unwrap_or_else(|| "—".into()),
                channel: r.channel.clone().unwrap_or_else(|| "—".into()),
                asset_id: r.asset_id.clone().unwrap_or_else(|| "—".into()),
                tenant: r.tenant.clone(),
                detail: first_error(&r.errors),
            },
        })
        .collect()
}

/// "path: message" of a refusal's first error.
fn first_error(errors: &str) -> String {
    let v: Value = serde_json::from_str(errors).unwrap_or(Value::Null);
    let e = &v["errors"][0];
    let field = e["field"].as_str().or(e["path"].as_str()).unwrap_or("");
    let message = e["message"].as_str().unwrap_or("");
    if field.is_empty() {
        message.to_owned()
    } else {
        format!("{field}: {message}")
    }
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    page: Frame,
    q: LogQuery,
    rows: Vec<LogRow>,
    next: Option<String>,
    error: Option<String>,
    states: Vec<(&'static str, bool)>,
    windows: Vec<(&'static str, bool)>,
}

/// Rows per page of the log.
pub const LOG_PAGE: i64 = 50;

pub async fn events(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<LogQuery>,
) -> Response {
    let now = now_ms();
    let page = match frame(&state, &viewer, "Events", "/ui/events", None).await {
        Ok(f) => f,
        Err(e) => return store_error(e),
    };
    let (rows, next, error, status) = match q.filter(&viewer.who, now, LOG_PAGE) {
        Err(BadFilter(m)) => (Vec::new(), None, Some(m), StatusCode::UNPROCESSABLE_ENTITY),
        Ok((filter, cursor)) => match figures::log_page(state.store.as_ref(), filter, cursor).await
        {
            Ok(p) => (
                log_rows(&p.entries, now),
                p.next
                    .map(|c| format!("/ui/events?{}", q.query_string(Some(&c)))),
                None,
                StatusCode::OK,
            ),
            Err(e) => return store_error(e),
        },
    };
    let states = [
        "",
        "queued",
        "sending",
        "retrying",
        "delivered",
        "dead",
        "refused",
    ]
    .into_iter()
    .map(|s| (s, s == q.state))
    .collect();
    let windows = ["", "1h", "24h", "7d", "30d"]
        .into_iter()
        .map(|w| (w, w == q.window))
        .collect();
    let mut response = render(&EventsPage {
        page,
        q,
        rows,
        next,
        error,
        states,
        windows,
    });
    *response.status_mut() = status;
    response
}

// ---------- event detail ----------

pub struct AttemptView {
    pub n: usize,
    pub at: String,
    pub outcome: String,
    pub outcome_class: &'static str,
    pub http_status: String,
    pub fbtrace_id: String,
    pub message: String,
    pub latency: String,
}

pub struct Field {
    pub name: String,
    pub value: String,
}

#[derive(Template)]
#[template(path = "event.html")]
struct EventPage {
    page: Frame,
    id: i64,
    event_id: String,
    event_name: String,
    tenant: String,
    channel: String,
    asset_id: String,
    dataset_id: String,
    state: String,
    state_class: &'static str,
    accepted: String,
    event_time: String,
    delivered: Option<String>,
    ingest_to_ack: Option<String>,
    dead_reason: Option<String>,
    next_attempt: Option<String>,
    test_event_code: Option<String>,
    attribution: Vec<Field>,
    payload: String,
    attempts: Vec<AttemptView>,
    can_replay: bool,
    read_only: bool,
    csrf: String,
}

/// The identity fields of `user_data` used for attribution (hashed PII is left out).
fn attribution_fields(payload: &Value) -> Vec<Field> {
    let mut fields = Vec::new();
    if let Some(user_data) = payload.get("user_data").and_then(Value::as_object) {
        for (k, v) in user_data {
            if relay_core::pii::PiiField::from_key(k).is_none() {
                fields.push(Field {
                    name: k.clone(),
                    value: v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                });
            }
        }
    }
    fields
}

pub async fn event(State(state): State<AppState>, viewer: Viewer, Path(id): Path<i64>) -> Response {
    let now = now_ms();
    let record = match state.store.get_event_row(id).await {
        Ok(Some(r)) if visible(&viewer.who, &r.tenant, Some(&r.asset_id)) => r,
        // Another tenant's event looks exactly like a missing one.
        Ok(_) => return not_found("no such event"),
        Err(e) => return store_error(e),
    };
    let page = match frame(
        &state,
        &viewer,
        &format!("Event {}", record.event_id),
        "/ui/events",
        None,
    )
    .await
    {
        Ok(f) => f,
        Err(e) => return store_error(e),
    };
    let payload: Value = serde_json::from_str(&record.payload).unwrap_or(Value::Null);
    let attempts = record
        .attempts
        .iter()
        .enumerate()
        .map(|(i, a)| AttemptView {
            n: i + 1,
            at: fmt_time(a.attempted_at_ms),
            outcome_class: if a.outcome == "delivered" {
                "ok"
            } else if a.outcome.starts_with("retryable") {
                "warn"
            } else {
                "bad"
            },
            outcome: a.outcome.clone(),
            http_status: a.http_status.map_or_else(|| "—".into(), |s| s.to_string()),
            fbtrace_id: a.fbtrace_id.clone().unwrap_or_else(|| "—".into()),
            message: a.message.clone().unwrap_or_default(),
            latency: format!("{} ms", fmt_int(a.latency_ms)),
        })
        .collect();
    let unfinished = matches!(
        record.state,
        EventState::Queued | EventState::Retrying | EventState::Sending
    );
    render(&EventPage {
        id: record.id,
        can_replay: record.state == EventState::Dead,
        read_only: viewer.session.read_only,
        csrf: viewer.session.csrf.clone(),
        event_id: record.event_id,
        event_name: record.event_name,
        tenant: record.tenant,
        channel: record.channel,
        asset_id: record.asset_id,
        dataset_id: record.dataset_id,
        state: record.state.as_str().into(),
        state_class: state_class(record.state.as_str()),
        accepted: fmt_time(record.accepted_at_ms),
        event_time: fmt_time(record.event_time * 1000),
        delivered: record.delivered_at_ms.map(fmt_time),
        ingest_to_ack: record
            .delivered_at_ms
            .map(|d| format!("{} ms", fmt_int(d - record.accepted_at_ms))),
        dead_reason: record.dead_reason,
        next_attempt: unfinished.then(|| {
            format!(
                "{} ({})",
                fmt_ago(record.next_attempt_at_ms, now),
                fmt_time(record.next_attempt_at_ms)
            )
        }),
        test_event_code: record.test_event_code,
        attribution: attribution_fields(&payload),
        payload: serde_json::to_string_pretty(&payload).unwrap_or(record.payload),
        attempts,
        page,
    })
}

#[derive(Template)]
#[template(path = "refused.html")]
struct RefusedPage {
    page: Frame,
    received: String,
    tenant: String,
    event_id: String,
    errors: Vec<Field>,
    warnings: Vec<Field>,
    explanation: String,
    fix: String,
    body: String,
}

fn issues(v: &Value) -> Vec<Field> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|e| Field {
                    name: format!(
                        "{} · {}",
                        e["code"].as_str().unwrap_or(""),
                        e["field"].as_str().or(e["path"].as_str()).unwrap_or("")
                    ),
                    value: e["message"].as_str().unwrap_or("").to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub async fn refused(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
) -> Response {
    let record = match state.store.get_refusal(id).await {
        Ok(Some(r)) if visible(&viewer.who, &r.tenant, r.asset_id.as_deref()) => r,
        Ok(_) => return not_found("no such refused event"),
        Err(e) => return store_error(e),
    };
    let page = match frame(&state, &viewer, "Refused event", "/ui/events", None).await {
        Ok(f) => f,
        Err(e) => return store_error(e),
    };
    let errors: Value = serde_json::from_str(&record.errors).unwrap_or(Value::Null);
    let body: Value =
        serde_json::from_str(&record.body).unwrap_or(Value::String(record.body.clone()));
    let (explanation, fix) = super::explain::issue(&record.error_code);
    render(&RefusedPage {
        page,
        received: fmt_time(record.received_at_ms),
        tenant: record.tenant,
        event_id: record.event_id.unwrap_or_else(|| "(none)".into()),
        errors: issues(&errors["errors"]),
        warnings: issues(&errors["warnings"]),
        explanation: explanation.into(),
        fix: fix.into(),
        body: serde_json::to_string_pretty(&body).unwrap_or_default(),
    })
}

/// The checks every dashboard action passes first: the CSRF token and origin, then a
/// session that may write; `action` names what a read-only one cannot do.
fn may_act(
    viewer: &Viewer,
    form: &CsrfForm,
    headers: &HeaderMap,
    action: &str,
) -> Result<(), Box<Response>> {
    session::check_csrf(viewer, &form.csrf, headers)?;
    if !viewer.may_write() {
        return Err(Box::new(
            (
                StatusCode::FORBIDDEN,
                Html(message_page(
                    "Read-only",
                    &format!("this sign-in is read-only: it cannot {action}"),
                )),
            )
                .into_response(),
        ));
    }
    Ok(())
}

pub async fn replay(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(r) = may_act(&viewer, &form, &headers, "replay events") {
        return *r;
    }
    let record = match state.store.get_event_row(id).await {
        Ok(Some(r)) if visible(&viewer.who, &r.tenant, Some(&r.asset_id)) => r,
        Ok(_) => return not_found("no such event"),
        Err(e) => return store_error(e),
    };
    let filter = DeadLetterFilter {
        tenant: Some(record.tenant.clone()),
        dataset_id: Some(record.dataset_id.clone()),
        event_ids: Some(vec![record.event_id.clone()]),
        ..DeadLetterFilter::default()
    };
    let replayed = match state.store.replay_dead_letters(&filter, now_ms()).await {
        Ok(n) => n,
        Err(e) => return store_error(e),
    };
    if replayed > 0 {
        state.wake.notify_waiters();
        let entry = AuditEntry {
            at_ms: now_ms(),
            actor: viewer.session.actor.clone(),
            action: "dead_letter.replay".into(),
            tenant: Some(record.tenant.clone()),
            target: Some(record.event_id.clone()),
            detail: Some(
                serde_json::json!({"dataset_id": record.dataset_id, "row_id": record.id})
                    .to_string(),
            ),
        };
        if let Err(e) = state.store.append_audit(&entry).await {
            return store_error(e);
        }
    }
    Redirect::to(&format!("/ui/events/{id}")).into_response()
}

// ---------- errors ----------

pub struct ErrorView {
    pub kind: &'static str,
    pub reason: String,
    pub count: String,
    pub last: String,
    pub explanation: String,
    pub fix: String,
    pub sample: String,
}

#[derive(Template)]
#[template(path = "errors.html")]
struct ErrorsPage {
    page: Frame,
    groups: Vec<ErrorView>,
    codes: Vec<(&'static str, &'static str, &'static str)>,
}

pub async fn errors(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<WindowQuery>,
) -> Response {
    let now = now_ms();
    let window = window_of(q.window.as_deref(), Window::Week);
    let e = match figures::errors(state.store.as_ref(), &viewer.who, window, now).await {
        Ok(e) => e,
        Err(e) => return store_error(e),
    };
    let href = |w: Window| format!("/ui/errors?window={}", w.as_str());
    let page = match frame(
        &state,
        &viewer,
        "Errors",
        "/ui/errors",
        Some((window, hrefs(href))),
    )
    .await
    {
        Ok(f) => f,
        Err(e) => return store_error(e),
    };
    render(&ErrorsPage {
        page,
        groups: e
            .groups
            .into_iter()
            .map(|g| ErrorView {
                kind: g.kind,
                reason: g.reason,
                count: fmt_int(g.count),
                last: fmt_ago(g.last_at_ms, now),
                explanation: g.explanation,
                fix: g.fix,
                sample: g.sample,
            })
            .collect(),
        codes: super::explain::META_CODES.to_vec(),
    })
}

// ---------- test events ----------

#[derive(Template)]
#[template(path = "test_events.html")]
struct TestEventsPage {
    page: Frame,
    rows: Vec<LogRow>,
    codes: Vec<String>,
    updated: String,
}

pub async fn test_events(State(state): State<AppState>, viewer: Viewer) -> Response {
    let now = now_ms();
    let filter = LogFilter {
        tenant: viewer.who.tenant.clone(),
        within_assets: viewer.who.assets.clone(),
        test_only: true,
        limit: LOG_PAGE,
        ..LogFilter::default()
    };
    let rows = match state.store.list_log_events(&filter).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let page = match frame(&state, &viewer, "Test events", "/ui/test-events", None).await {
        Ok(f) => f,
        Err(e) => return store_error(e),
    };
    let entries: Vec<LogEntry> = rows.into_iter().map(LogEntry::Event).collect();
    render(&TestEventsPage {
        codes: page.test_banner.clone(),
        page,
        rows: log_rows(&entries, now),
        updated: fmt_time(now),
    })
}

// ---------- sources ----------

pub struct SourceView {
    pub tenant: String,
    pub channel: String,
    pub asset_id: String,
    pub dataset_id: String,
    pub status: &'static str,
    pub status_class: &'static str,
    pub reason: String,
    pub fix: String,
    pub resume: String,
    pub test_event_code: String,
    pub updated: String,
}

pub struct WebhookView {
    pub channel: String,
    pub received: String,
    pub failed: String,
    pub pending: String,
    pub last: String,
    pub last_error: String,
}

#[derive(Template)]
#[template(path = "sources.html")]
struct SourcesPage {
    page: Frame,
    assets: Vec<SourceView>,
    webhooks: Option<Vec<WebhookView>>,
}

pub async fn sources(State(state): State<AppState>, viewer: Viewer) -> Response {
    let now = now_ms();
    let s = match figures::sources(state.store.as_ref(), &viewer.who).await {
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    let page = match frame(&state, &viewer, "Sources & health", "/ui/sources", None).await {
        Ok(f) => f,
        Err(e) => return store_error(e),
    };
    render(&SourcesPage {
        page,
        assets: s
            .assets
            .into_iter()
            .map(|a| SourceView {
                status_class: if a.status == "active" { "ok" } else { "bad" },
                status: a.status,
                tenant: a.tenant,
                channel: a.channel,
                asset_id: a.asset_id,
                dataset_id: a.dataset_id,
                reason: a.status_reason.unwrap_or_default(),
                fix: a.fix_command.unwrap_or_default(),
                resume: a.resume_command.unwrap_or_default(),
                test_event_code: a.test_event_code.unwrap_or_default(),
                updated: if a.updated_at_ms > 0 {
                    fmt_ago(a.updated_at_ms, now)
                } else {
                    "—".into()
                },
            })
            .collect(),
        webhooks: s.webhooks.map(|w| {
            w.into_iter()
                .map(|h| WebhookView {
                    channel: h.channel,
                    received: fmt_int(h.received),
                    failed: fmt_int(h.failed),
                    pending: fmt_int(h.pending),
                    last: fmt_opt_time(h.last_received_ms, now, "never"),
                    last_error: h.last_error.unwrap_or_default(),
                })
                .collect()
        }),
    })
}

/// Resumes a paused asset with its current token, as `capi-relay assets resume` does.
pub async fn resume_asset(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(asset_id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(r) = may_act(&viewer, &form, &headers, "resume assets") {
        return *r;
    }
    // Another tenant's asset (or one outside a limited key) looks absent.
    match state.store.get_asset(&asset_id).await {
        Ok(Some(a)) if visible(&viewer.who, &a.tenant, Some(&a.asset_id)) => {}
        Ok(_) => return not_found("no such asset"),
        Err(e) => return store_error(e),
    }
    match crate::tenancy::resume_asset(
        state.store.as_ref(),
        &asset_id,
        viewer.who.tenant.as_deref(),
        &viewer.session.actor,
    )
    .await
    {
        Ok((_, resumed)) => {
            if resumed {
                state.wake.notify_waiters();
            }
            Redirect::to("/ui/sources").into_response()
        }
        Err(crate::tenancy::AdminError::NotFound(_)) => not_found("no such asset"),
        Err(crate::tenancy::AdminError::Store(e)) => store_error(e),
        Err(e) => (
            StatusCode::CONFLICT,
            Html(message_page("Not resumed", &e.to_string())),
        )
            .into_response(),
    }
}

// ---------- quality ----------

pub struct CoverageView {
    pub channel: String,
    pub accepted: String,
    pub with_click_id: String,
    pub share: String,
    pub note: &'static str,
}

pub struct AdStartedView {
    pub channel: String,
    pub started: String,
    pub converted: String,
    pub share: String,
}

pub struct CoverageRowView {
    pub event_name: String,
    pub mapped: String,
    pub delivered: String,
    pub share: String,
}

fn pct_text(p: Option<f64>) -> String {
    p.map_or_else(|| "—".into(), |p| format!("{p:.1} %"))
}

pub struct ReadinessView {
    pub dataset_id: String,
    pub purchases: String,
    pub ready: bool,
    pub bar_pct: i64,
}

#[derive(Template)]
#[template(path = "quality.html")]
struct QualityPage {
    page: Frame,
    coverage: Vec<CoverageView>,
    readiness: Vec<ReadinessView>,
    target: i64,
    calls_ok: String,
    calls_required: String,
    calls_pct: i64,
    meets_calls: bool,
    recent: String,
    error_rate: String,
    meets_error_rate: bool,
    max_error_rate: String,
    history: String,
    ad_started: Vec<AdStartedView>,
    coverage_computable: bool,
    coverage_why_not: &'static str,
    coverage_share: String,
    coverage_counts: String,
    coverage_meets: bool,
    coverage_bar_pct: i64,
    coverage_rows: Vec<CoverageRowView>,
    coverage_how: &'static str,
    coverage_meta_note: &'static str,
}

pub async fn quality(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<WindowQuery>,
) -> Response {
    let now = now_ms();
    let window = window_of(q.window.as_deref(), Window::Week);
    let qf = match figures::quality(state.store.as_ref(), &viewer.who, window, now).await {
        Ok(x) => x,
        Err(e) => return store_error(e),
    };
    let href = |w: Window| format!("/ui/quality?window={}", w.as_str());
    let page = match frame(
        &state,
        &viewer,
        "Quality",
        "/ui/quality",
        Some((window, hrefs(href))),
    )
    .await
    {
        Ok(f) => f,
        Err(e) => return store_error(e),
    };
    let t = &qf.access_tier;
    render(&QualityPage {
        page,
        coverage: qf
            .attribution
            .iter()
            .map(|c| CoverageView {
                channel: c.channel.clone(),
                accepted: fmt_int(c.accepted),
                with_click_id: fmt_int(c.with_click_id),
                share: c
                    .share_pct
                    .map_or_else(|| "—".into(), |p| format!("{p:.1} %")),
                note: if c.channel == "whatsapp" {
                    "ctwa_clid from the ad click"
                } else {
                    "no click id on this channel: Meta attributes by the scoped user id"
                },
            })
            .collect(),
        readiness: qf
            .purchase_readiness
            .iter()
            .map(|r| ReadinessView {
                dataset_id: r.dataset_id.clone(),
                purchases: fmt_int(r.purchases_delivered_7d),
                ready: r.ready,
                bar_pct: (100 * r.purchases_delivered_7d / r.target.max(1)).min(100),
            })
            .collect(),
        target: figures::PURCHASE_TARGET,
        calls_ok: fmt_int(t.successful_calls_15d),
        calls_required: fmt_int(t.required_calls),
        calls_pct: (100 * t.successful_calls_15d / t.required_calls.max(1)).min(100),
        meets_calls: t.meets_calls,
        recent: fmt_int(t.recent_calls),
        error_rate: t
            .error_rate_pct
            .map_or_else(|| "no calls yet".into(), |r| format!("{r:.1} %")),
        meets_error_rate: t.meets_error_rate,
        max_error_rate: format!("{:.0} %", t.max_error_rate_pct),
        history: format!(
            "Before May 2026 Meta asked for {} successful calls with under {:.0} % errors in 15 days (the figure in Meta's Feb-2026 guide).",
            fmt_int(t.previous_required_calls),
            t.previous_max_error_rate_pct
        ),
        ad_started: qf
            .ad_started
            .iter()
            .map(|a| AdStartedView {
                channel: a.channel.clone(),
                started: fmt_int(a.started),
                converted: fmt_int(a.converted),
                share: pct_text(a.share_pct),
            })
            .collect(),
        coverage_computable: qf.event_coverage.computable,
        coverage_why_not: qf.event_coverage.not_computable_because.unwrap_or_default(),
        coverage_share: pct_text(qf.event_coverage.share_pct),
        coverage_counts: format!(
            "{} of {} mapped stage changes delivered",
            fmt_int(qf.event_coverage.delivered),
            fmt_int(qf.event_coverage.mapped)
        ),
        coverage_meets: qf.event_coverage.meets_target,
        coverage_bar_pct: qf
            .event_coverage
            .share_pct
            .map_or(0, |p| (p.round() as i64).clamp(0, 100)),
        coverage_rows: qf
            .event_coverage
            .by_event_name
            .iter()
            .map(|r| CoverageRowView {
                event_name: if r.event_name.is_empty() {
                    "(no event: e.g. the deal had no contact)".into()
                } else {
                    r.event_name.clone()
                },
                mapped: fmt_int(r.mapped),
                delivered: fmt_int(r.delivered),
                share: pct_text(r.share_pct),
            })
            .collect(),
        coverage_how: qf.event_coverage.how,
        coverage_meta_note: qf.event_coverage.meta_note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_changes_read_well() {
        assert_eq!(fmt_int(0), "0");
        assert_eq!(fmt_int(1_234_567), "1,234,567");
        assert_eq!(fmt_int(-1000), "−1,000");
        assert_eq!(delta(120, 100, Some(true)), ("+20 %".into(), "good"));
        assert_eq!(delta(80, 100, Some(false)), ("−20 %".into(), "good"));
        assert_eq!(delta(5, 0, None).0, "new");
        assert_eq!(delta(0, 0, None).0, "—");
        assert_eq!(urlencode("a b&c"), "a%20b%26c");
    }
}
