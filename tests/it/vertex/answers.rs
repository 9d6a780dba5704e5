//! A Vertex entry's answers to AI Studio-form requests come back as AI Studio gives them
//! (generate, SSE and JSON-array streams, countTokens, embedContent, OpenAI chat), a stream
//! chunk by chunk as Vertex sends them; a Vertex-form request keeps Vertex's answer.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{MODEL, post, prompt, setup};
use crate::common::{CLIENT_KEY, http, json_of};

/// Nothing only Vertex sends is left in `v` (any depth).
fn assert_ai_studio_form(v: &Value) {
    let text = v.to_string();
    for field in [
        "createTime",
        "trafficType",
        "probabilityScore",
        "severity",
        "totalBillableCharacters",
        "\"citations\"",
        "publicationDate",
        "truncated",
    ] {
        assert!(!text.contains(field), "{field} in {text}");
    }
}

#[tokio::test]
async fn ai_studio_form_requests_get_ai_studios_answer_shapes_from_a_vertex_entry() {
    let (_studio, vertex, proxy) = setup("vertex-first", &[]).await;
    let base = format!("{}/v1beta/models", proxy.url);

    let r = post(format!("{base}/{MODEL}:generateContent"), prompt("hi")).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_ai_studio_form(&v);
    let c = &v["candidates"][0];
    assert_eq!(c["content"]["parts"][0]["text"], "from vertex");
    assert_eq!(
        c["safetyRatings"],
        json!([{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}])
    );
    assert_eq!(
        c["citationMetadata"],
        json!({"citationSources": [{"startIndex": 0, "endIndex": 4,
            "uri": "https://example.com/a", "license": "mit"}]})
    );
    // Fields AI Studio has too are kept.
    assert_eq!(v["responseId"], "r1");
    assert_eq!(v["modelVersion"], "gemini-2.5-flash");
    assert_eq!(v["usageMetadata"]["promptTokenCount"], 4);

    // A JSON-array stream: brackets and commas as they came, each element rewritten.
    let r = post(
        format!("{base}/{MODEL}:streamGenerateContent"),
        prompt("arr"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    assert_ai_studio_form(&v);
    assert_eq!(
        v[1]["candidates"][0]["content"]["parts"][0]["text"],
        "vertex 1 "
    );

    let r = post(
        format!("{base}/{MODEL}:countTokens"),
        json!({"contents": [{"parts": [{"text": "abc"}]}]}),
    )
    .await;
    assert_eq!(json_of(r).await, json!({"totalTokens": 7}));

    let r = post(
        format!("{base}/gemini-embedding-001:embedContent"),
        json!({"content": {"parts": [{"text": "embed me"}]}}),
    )
    .await;
    assert_eq!(
        json_of(r).await,
        json!({"embedding": {"values": [0.5, 0.25]}})
    );

    // OpenAI chat: the model as the client named it, not Vertex's `google/...`.
    let chat = |stream: bool| {
        http()
            .post(format!("{}/v1beta/openai/chat/completions", proxy.url))
            .bearer_auth(CLIENT_KEY)
            .json(&json!({"model": MODEL, "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let v = json_of(chat(false).await.unwrap()).await;
    assert_eq!(v["model"], MODEL);
    let text = chat(true).await.unwrap().text().await.unwrap();
    assert!(
        text.contains(&format!("\"model\":\"{MODEL}\"")) && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert!(!text.contains("google/"), "{text}");
    assert_eq!(vertex.recorded().len(), 6, "all served by the Vertex entry");
}

#[tokio::test]
async fn a_vertex_sse_stream_is_rewritten_event_by_event_while_it_is_still_open() {
    let (_studio, vertex, proxy) = setup("vertex-first", &[]).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    vertex.behave(|b| b.stream_gate = Some(gate.clone()));
    let r = post(
        format!(
            "{}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
            proxy.url
        ),
        prompt("stream"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-length").is_none());
    let mut body = r.bytes_stream();
    // The first event arrives while Vertex holds the second back.
    let mut first = Vec::new();
    while !first.windows(4).any(|w| w == b"\r\n\r\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the first event reaches the client before the stream ends")
            .expect("more body")
            .unwrap();
        first.extend_from_slice(&chunk);
    }
    let first = String::from_utf8(first).unwrap();
    assert!(
        first.contains("vertex 0 ") && !first.contains("vertex 1 "),
        "{first}"
    );
    let data: Value = serde_json::from_str(first.trim().strip_prefix("data: ").unwrap()).unwrap();
    assert_ai_studio_form(&data);
    assert_eq!(data["responseId"], "r1");
    gate.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.starts_with("data: {") && rest.ends_with("\r\n\r\n"),
        "{rest}"
    );
    assert!(
        rest.contains("vertex 1 ") && !rest.contains("createTime"),
        "{rest}"
    );
}

#[tokio::test]
async fn a_vertex_form_request_keeps_vertexs_answer() {
    let (_studio, vertex, proxy) = setup("vertex-first", &[]).await;
    let r = post(
        format!(
            "{}/v1/projects/client-proj/locations/us-central1/publishers/google/models/{MODEL}:generateContent",
            proxy.url
        ),
        prompt("vf"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    assert_eq!(v["createTime"], "2026-01-01T00:00:00Z");
    assert_eq!(v["usageMetadata"]["trafficType"], "ON_DEMAND");
    assert!(v["candidates"][0]["citationMetadata"]["citations"].is_array());
    assert_eq!(vertex.recorded().len(), 1);
}

#[tokio::test]
async fn the_cache_keeps_a_vertex_form_answer_apart_from_the_ai_studio_form_one() {
    let (_studio, vertex, proxy) = setup("vertex-first", &[("PROXY_CACHE", "on")]).await;
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "same"}]}],
        "generationConfig": {"temperature": 0}});
    let studio_form = format!("{}/v1beta/models/{MODEL}:generateContent", proxy.url);
    let vertex_form = format!(
        "{}/v1/projects/p/locations/us-central1/publishers/google/models/{MODEL}:generateContent",
        proxy.url
    );
    let v = json_of(post(studio_form.clone(), body.clone()).await).await;
    assert!(v.get("createTime").is_none());
    // Not the AI Studio-form answer from the cache: Vertex's own.
    let v = json_of(post(vertex_form.clone(), body.clone()).await).await;
    assert_eq!(v["createTime"], "2026-01-01T00:00:00Z", "{v}");
    assert_eq!(vertex.recorded().len(), 2);
    // Each form is cached: asked again, neither reaches Vertex.
    let v = json_of(post(studio_form, body.clone()).await).await;
    assert!(v.get("createTime").is_none());
    let v = json_of(post(vertex_form, body).await).await;
    assert_eq!(v["createTime"], "2026-01-01T00:00:00Z");
    assert_eq!(vertex.recorded().len(), 2);
}
