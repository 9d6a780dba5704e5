//! `GET /dashboard/`: the operator's page, embedded in the binary (HTML, CSS and JS as separate
//! files, no CDN, no build step). The files are public; every number on the page comes from the
//! authenticated JSON APIs, with the token the viewer signs in with.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The page's files: name, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../assets/dashboard/index.html"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/dashboard/app.css"),
    ),
    (
        "clients.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/clients.js"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/app.js"),
    ),
];

/// `/dashboard/`: the page.
pub async fn index() -> Response {
    serve("index.html")
}

/// `/dashboard` without the slash: to the page, so its relative links resolve.
pub async fn redirect() -> Response {
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, "/dashboard/")],
    )
        .into_response()
}

/// `/`: nothing of the Gemini API lives at the root; a browser pointed at the proxy lands on the
/// dashboard. Temporary (307), so no browser remembers it if the root ever serves something.
pub async fn root() -> Response {
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, "/dashboard/")],
    )
        .into_response()
}

/// `/dashboard/FILE`.
pub async fn file(Path(name): Path<String>) -> Response {
    serve(&name)
}

fn serve(name: &str) -> Response {
    let Some((_, content_type, bytes)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        let shown: String = name.chars().take(80).collect();
        return ApiError::NotFound(format!("The dashboard has no file {shown:?}.")).into_response();
    };
    let mut resp = (*bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Everything from this origin, nothing inline, no framing, no referrer.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
