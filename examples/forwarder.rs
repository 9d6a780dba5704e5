//! The benchmark's reference for what a bare Rust forwarder costs on the same stack as the
//! proxy (hyper server, hyper-util pooled client, Tokio, mimalloc) with no authentication,
//! estimation, admission, metrics or logging: the gap between it and nginx is the stack's; the
//! gap between it and the proxy is the proxy's own work.
//!
//! `forwarder LISTEN_ADDR UPSTREAM_BASE_URL` (started by `examples/bench.rs`).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[global_allocator]
static GLOBAL: gemini_quota_proxy::allocator::Mimalloc = gemini_quota_proxy::allocator::Mimalloc;

type Upstream = Client<HttpConnector, Full<Bytes>>;

async fn forward(
    client: Upstream,
    base: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{base}{pq}").parse::<Uri>()?;
    parts.headers.remove(http::header::HOST);
    Ok(client
        .request(Request::from_parts(parts, Full::new(body)))
        .await?)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: forwarder LISTEN_ADDR UPSTREAM_BASE_URL");
        std::process::exit(2);
    };
    let base: &'static str = Box::leak(upstream.trim_end_matches('/').to_string().into());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .expect("listen");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let client = client.clone();
                async move {
                    Ok::<_, Infallible>(match forward(client, base, req).await {
                        Ok(r) => r.map(|b| b.boxed()),
                        Err(e) => Response::builder()
                            .status(502)
                            .body(
                                Full::new(Bytes::from(e.to_string()))
                                    .map_err(|never| match never {})
                                    .boxed(),
                            )
                            .expect("static response"),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
