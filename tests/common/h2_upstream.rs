//! An HTTPS upstream that speaks HTTP/2 only (ALPN `h2`; or HTTP/1.1 only) and allows few concurrent streams per
//! connection, as Google's front end does at about 100. Its CA is made at start (rcgen) and
//! written to a PEM file for `upstream.ca_file`. `:streamGenerateContent?alt=sse` answers with
//! events spread over a set time (cumulative usageMetadata, Google's shape); anything else gets
//! a generateContent answer. Shared by `tests/it/h2_stream_cap.rs` and `examples/h2_bench.rs`.
#![allow(dead_code)]

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_rustls::rustls;

/// Events in one stream.
const STREAM_EVENTS: usize = 5;

const GENERATE_ANSWER: &str = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello!"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":2,"totalTokenCount":14},"modelVersion":"gemini-2.5-flash","responseId":"h2"}"#;

/// What the upstream saw.
#[derive(Default)]
pub struct Seen {
    /// Requests that came over HTTP/2.
    pub h2_requests: AtomicUsize,
    /// Requests that came over anything else (HTTP/1.1).
    pub other_requests: AtomicUsize,
    /// TLS connections accepted.
    pub connections: AtomicUsize,
    /// Streams being answered right now, and the most at once.
    pub open_streams: AtomicUsize,
    pub peak_streams: AtomicUsize,
}

/// What the upstream speaks, chosen by ALPN.
#[derive(Debug, Clone, Copy)]
pub enum Protocols {
    /// HTTP/2 only, this many concurrent streams per connection.
    H2(u32),
    /// HTTP/1.1 only.
    Http1,
    /// Either (HTTP/2 preferred), this many concurrent streams per HTTP/2 connection.
    Both(u32),
}

pub struct H2Upstream {
    pub url: String,
    /// PEM of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    pub seen: Arc<Seen>,
}

/// Counts a stream as open until its body is dropped (finished or abandoned).
struct OpenStream(Arc<Seen>);

impl OpenStream {
    fn new(seen: Arc<Seen>) -> Self {
        let now = seen.open_streams.fetch_add(1, Ordering::SeqCst) + 1;
        seen.peak_streams.fetch_max(now, Ordering::SeqCst);
        OpenStream(seen)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn event(i: usize) -> Bytes {
    let last = i + 1 == STREAM_EVENTS;
    let finish = if last {
        r#","finishReason":"STOP""#
    } else {
        ""
    };
    Bytes::from(format!(
        "data: {{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"chunk {i} \"}}]}}{finish},\"index\":0}}],\"usageMetadata\":{{\"promptTokenCount\":12,\"candidatesTokenCount\":{out},\"totalTokenCount\":{total}}},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"h2\"}}\r\n\r\n",
        out = (i + 1) * 2,
        total = 12 + (i + 1) * 2,
    ))
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    seen: Arc<Seen>,
    stream_for: Duration,
) -> Result<Response<BoxBody>, Infallible> {
    if req.version() == Version::HTTP_2 {
        seen.h2_requests.fetch_add(1, Ordering::SeqCst);
    } else {
        seen.other_requests.fetch_add(1, Ordering::SeqCst);
    }
    let streaming = req.uri().path().contains(":streamGenerateContent");
    let _ = req.into_body().collect().await;
    if !streaming {
        return Ok(Response::builder()
            .header("content-type", "application/json; charset=UTF-8")
            .body(BodyExt::boxed_unsync(Full::new(Bytes::from_static(
                GENERATE_ANSWER.as_bytes(),
            ))))
            .expect("a valid response"));
    }
    let gap = stream_for / (STREAM_EVENTS as u32 - 1);
    let guard = OpenStream::new(seen);
    let events = futures_util::stream::unfold(0usize, move |i| {
        let _alive = &guard;
        async move {
            if i == STREAM_EVENTS {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            Some((Ok(Frame::data(event(i))), i + 1))
        }
    });
    Ok(Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed_unsync(StreamBody::new(events)))
        .expect("a valid response"))
}

impl H2Upstream {
    /// Listen on 127.0.0.1:0 (in the current runtime); each connection allows `max_streams`
    /// concurrent streams; a stream lasts `stream_for`.
    pub async fn start(max_streams: u32, stream_for: Duration) -> H2Upstream {
        Self::start_with(Protocols::H2(max_streams), stream_for).await
    }

    /// The same upstream speaking HTTP/1.1 only (ALPN `http/1.1`), as some TLS gateways do.
    pub async fn start_http1(stream_for: Duration) -> H2Upstream {
        Self::start_with(Protocols::Http1, stream_for).await
    }

    pub async fn start_with(protocols: Protocols, stream_for: Duration) -> H2Upstream {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gqp test CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let ca_file = std::env::temp_dir().join(format!(
            "gqp-h2-ca-{}-{}.pem",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&ca_file, ca.as_ref().pem()).unwrap();

        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        // A client that offers none of these fails the handshake.
        tls.alpn_protocols = match protocols {
            Protocols::H2(_) => vec![b"h2".to_vec()],
            Protocols::Http1 => vec![b"http/1.1".to_vec()],
            Protocols::Both(_) => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let accepted = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let seen = accepted.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    seen.connections.fetch_add(1, Ordering::SeqCst);
                    let service = service_fn(move |req| answer(req, seen.clone(), stream_for));
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let io = TokioIo::new(tls);
                    let _ = match protocols {
                        Protocols::H2(cap) | Protocols::Both(cap) if h2 => {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .timer(TokioTimer::new())
                                .max_concurrent_streams(cap)
                                .serve_connection(io, service)
                                .await
                        }
                        _ => {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await
                        }
                    };
                });
            }
        });
        H2Upstream { url, ca_file, seen }
    }
}
