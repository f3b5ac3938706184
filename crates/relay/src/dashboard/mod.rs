//! The verification dashboard under `/ui`: server-rendered pages (askama templates in
//! `crates/relay/templates/`), vendored htmx and our CSS embedded in the binary, SVG charts
//! drawn here. Every number comes from [`figures`], which the JSON twins under `/v1/stats`
//! (`http::stats`) share.
//!
//! - [`session`]: sign-in (API key, admin key or one-time link), the encrypted session cookie,
//!   CSRF checks and the login rate limit.
//! - [`views`]: one handler per page; [`svg`]: charts; [`explain`]: errors in words;
//!   [`assets`]: the embedded static files.

pub mod assets;
pub mod explain;
pub mod figures;
pub mod session;
pub mod svg;
pub mod views;

use axum::{
    Router,
    routing::{get, post},
};

pub use self::session::UiState;
use crate::http::AppState;

/// The `/ui` routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(views::overview))
        .route("/ui/", get(views::overview))
        .route("/ui/login", get(views::login_form).post(views::login))
        .route("/ui/logout", post(views::logout))
        .route("/ui/link/{token}", get(views::link_form))
        .route("/ui/link", post(views::link_login))
        .route("/ui/switch", post(views::switch_tenant))
        .route("/ui/events", get(views::events))
        .route("/ui/events/{id}", get(views::event))
        .route("/ui/events/{id}/replay", post(views::replay))
        .route("/ui/refused/{id}", get(views::refused))
        .route("/ui/errors", get(views::errors))
        .route("/ui/test-events", get(views::test_events))
        .route("/ui/sources", get(views::sources))
        .route("/ui/sources/{asset_id}/resume", post(views::resume_asset))
        .route("/ui/quality", get(views::quality))
        .route("/ui/assets/{file}", get(assets::serve))
}
