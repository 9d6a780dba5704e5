//! The embedding example, run: the proxy's service mounted under `/gemini` in another axum
//! router, next to that application's own route.

use crate::common;

#[path = "../../examples/embed.rs"]
#[allow(dead_code)]
mod example;

use common::*;
use gemini_quota_proxy::Gateway;

#[tokio::test]
async fn the_proxy_serves_under_a_prefix_inside_another_axum_application() {
    let fake = FakeUpstream::start().await;
    let config = ProxyOpts::keys(&["AIzaEmbedKey00000001"]).config(&fake.url);
    let gateway = Gateway::builder(config).build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, example::app(&gateway)).await });

    // The host's own route.
    let hello = http().get(format!("{base}/hello")).send().await.unwrap();
    assert_eq!(
        hello.text().await.unwrap(),
        "hello from the host application"
    );

    // The Gemini surface under the prefix, credentials swapped, prefix not forwarded.
    let r = generate(&format!("{base}/gemini"), "gemini-2.5-flash", "hi").await;
    assert_eq!(r.status(), 200);
    assert!(json_of(r).await["candidates"].is_array());
    let sent = fake.calls(":generateContent");
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].path,
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(sent[0].key().as_deref(), Some("AIzaEmbedKey00000001"));

    // Without a client key the mounted service refuses, in Google's envelope.
    let r = http()
        .post(format!(
            "{base}/gemini/v1beta/models/gemini-2.5-flash:generateContent"
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json_of(r).await["error"]["status"], "UNAUTHENTICATED");

    // The proxy's own endpoints under theirs, counting what went through.
    let (code, status) = quota_status(&format!("{base}/proxy"), CLIENT_KEY).await;
    assert_eq!(code, 200);
    assert_eq!(status["quota_status"]["usage"]["minute_requests"], 1);

    // A resumable upload started under the prefix gets a session URL under it.
    let r = http()
        .post(format!("{base}/gemini/upload/v1beta/files"))
        .header("x-goog-api-key", CLIENT_KEY)
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .json(&serde_json::json!({"file": {"display_name": "a"}}))
        .send()
        .await
        .unwrap();
    let url = r.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        url.starts_with(&format!("{base}/gemini/upload/v1beta/files?upload_id=")),
        "{url}"
    );
}
