//! The proxy inside someone else's axum application: their own routes, the Gemini surface under
//! `/gemini` (SDK base URL `http://host:8090/gemini`) and the proxy's own endpoints under
//! `/proxy`. Run with the usual variables (`GEMINI_API_KEY`, `PROXY_CLIENT_KEYS`):
//! `cargo run --example embed`.

use axum::Router;
use axum::routing::get;
use gemini_quota_proxy::{Config, Gateway, Sources};

/// The host application's router around a built gateway.
pub fn app(gateway: &Gateway) -> Router {
    Router::new()
        .route(
            "/hello",
            get(|| async { "hello from the host application" }),
        )
        .nest_service("/gemini", gateway.service())
        .nest("/proxy", gateway.router())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(&Sources::from_process(None))?;
    let mut builder = Gateway::builder(config);
    // The application owns the metrics recorder; the proxy only renders it at /proxy/metrics.
    if let Some(handle) = gemini_quota_proxy::metrics::install_prometheus() {
        builder = builder.prometheus(handle);
    }
    let gateway = builder.build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(&gateway)).await?;
    Ok(())
}
