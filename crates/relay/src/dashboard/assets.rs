//! Static files of the dashboard, embedded in the binary (no CDN: many networks running the
//! relay have no internet). Third-party files are listed in `assets/vendor/VERSIONS`.

use axum::{
    extract::Path,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

/// htmx, pinned (see `assets/vendor/VERSIONS`); the file name carries the version, so it can
/// be cached for good.
pub const HTMX_FILE: &str = "htmx-2.0.11.min.js";
const HTMX: &[u8] = include_bytes!("../../assets/vendor/htmx-2.0.11.min.js");
/// Subresource integrity of [`HTMX`] (sha384), checked by the browser.
pub const HTMX_SRI: &str =
    "sha384-2OatzQy1H+Zd/IIrjr1TcuDGqLXeHhbooAyJY1KdQMKnr4LZ22k31GBLdYKHmVjg";
/// Our stylesheet; its name carries a version bumped on change.
pub const CSS_FILE: &str = "app-2.css";
const CSS: &[u8] = include_bytes!("../../assets/app.css");

pub async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        HTMX_FILE => (HTMX, "text/javascript; charset=utf-8"),
        CSS_FILE => (CSS, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use sha2::Digest;

    #[test]
    fn the_htmx_integrity_matches_the_vendored_file() {
        let digest = sha2::Sha384::digest(super::HTMX);
        let sri = format!(
            "sha384-{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        );
        assert_eq!(sri, super::HTMX_SRI);
    }
}
