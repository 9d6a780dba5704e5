//! The protocols a client may speak to the proxy: HTTP/1.1, and HTTP/2 without TLS ("prior
//! knowledge"), told apart by peeking at the connection's first bytes (also when HTTP/2's
//! preface arrives in pieces); a connection that says nothing is closed after the header-read
//! timeout; the descriptor table is sized for the connection cap before the first client.

use crate::common;

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const KEYS: [&str; 1] = ["AIzaProtocolKey000001"];

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// A generateContent over HTTP/2 on `io`: (status, body).
async fn generate_h2<I>(io: I, authority: &str) -> (u16, String)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let req = http::Request::post(format!(
        "http://{authority}/v1beta/models/gemini-2.5-flash:generateContent"
    ))
    .header("x-goog-api-key", CLIENT_KEY)
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from_static(
        br#"{"contents":[{"role":"user","parts":[{"text":"over h2c"}]}]}"#,
    )))
    .unwrap();
    let resp = send.send_request(req).await.expect("an answer over HTTP/2");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A socket whose first write sends only 5 bytes and whose next waits 200 ms: HTTP/2's
/// preface reaches the proxy in two pieces, far apart.
struct SplitFirstWrite {
    inner: tokio::net::TcpStream,
    writes: usize,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl AsyncRead for SplitFirstWrite {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SplitFirstWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match this.writes {
            0 => {
                let n = buf.len().min(5);
                let written =
                    std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..n]))?;
                this.writes = 1;
                this.pause
                    .as_mut()
                    .reset(tokio::time::Instant::now() + Duration::from_millis(200));
                Poll::Ready(Ok(written))
            }
            1 => {
                std::task::ready!(this.pause.as_mut().poll(cx));
                this.writes = 2;
                Pin::new(&mut this.inner).poll_write(cx, buf)
            }
            _ => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_with_prior_knowledge_is_served_like_an_http1_one() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    let tcp = tokio::net::TcpStream::connect(addr(&proxy.url))
        .await
        .unwrap();
    let (status, body) = generate_h2(tcp, &addr(&proxy.url)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("candidates"), "{body}");
    // And HTTP/1.1 on the same listener.
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "over http/1.1")
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_that_arrives_in_pieces_is_still_http2() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(&fake.url, ProxyOpts::keys(&KEYS)).await;
    let tcp = tokio::net::TcpStream::connect(addr(&proxy.url))
        .await
        .unwrap();
    let _ = tcp.set_nodelay(true);
    let io = SplitFirstWrite {
        inner: tcp,
        writes: 0,
        pause: Box::pin(tokio::time::sleep(Duration::ZERO)),
    };
    let (status, body) = generate_h2(io, &addr(&proxy.url)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("candidates"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let fake = FakeUpstream::start().await;
    let proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml("[server]\nheader_read_timeout_secs = 1\n"),
    )
    .await;
    let url = proxy.url.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr(&url)).unwrap();
        // Far longer than the header timeout: a read that times out means the proxy kept the
        // silent connection open.
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 64];
        s.read(&mut buf)
    })
    .await
    .unwrap();
    match outcome {
        Ok(0) => {}
        Ok(n) => panic!("the proxy wrote {n} bytes to a connection that sent nothing"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "the silent connection was not closed: {e}"
        ),
    }
    // The proxy still serves.
    assert_eq!(
        generate(&proxy.url, "gemini-2.5-flash", "after")
            .await
            .status(),
        200
    );
}

/// A figure of this process from `/proc/self/{file}`: the first number on the line starting
/// with `prefix`.
fn proc_self(file: &str, prefix: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/self/{file}"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l[prefix.len()..].split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /proc/self/{file}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_descriptor_table_is_sized_for_the_connection_cap_at_start() {
    let fake = FakeUpstream::start().await;
    let _proxy = start_proxy(
        &fake.url,
        ProxyOpts::keys(&KEYS).toml("[server]\nmax_connections = 3000\n"),
    )
    .await;
    // Two descriptors per connection and 256 to spare, within the open-file limit.
    let want = (2 * 3000 + 256).min(proc_self("limits", "Max open files"));
    assert!(
        eventually(Duration::from_secs(5), || proc_self("status", "FDSize:")
            >= want)
        .await,
        "descriptor table of {} slots, wanted {want}",
        proc_self("status", "FDSize:")
    );
}
