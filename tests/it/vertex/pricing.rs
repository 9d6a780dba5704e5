//! What a Vertex-served answer costs in the ledger: Vertex AI's price where it differs from
//! AI Studio's, at list price whatever billing the project is configured with.

use std::time::Duration;

use serde_json::Value;

use super::{KEY, post, prompt};
use crate::common::vertex_upstream::FakeVertex;
use crate::common::{ADMIN_TOKEN, FakeUpstream, ProxyOpts, http, json_of, start_proxy};

/// The ledger's last hour by project, once it shows `requests`.
async fn by_project(proxy: &str, requests: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = http()
            .get(format!("{proxy}/api/ai/usage/?window=1h&group_by=project"))
            .header("x-goog-api-key", ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let body = json_of(r).await;
        if body["totals"]["requests"] == requests || std::time::Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(cost_usd, list_cost_usd)` of `project` in a [`by_project`] answer, in nano-USD.
fn costs(body: &Value, project: &str) -> (f64, f64) {
    let s = body["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["group"]["project"] == project)
        .unwrap_or_else(|| panic!("no {project} in {body}"));
    let sum = |f: &str| {
        s["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[f].as_f64().unwrap())
            .sum::<f64>()
            * 1e9
    };
    (sum("cost_usd"), sum("list_cost_usd"))
}

#[tokio::test]
async fn a_vertex_served_answer_costs_vertexs_price_and_is_never_free_tier() {
    let studio = FakeUpstream::start().await;
    let vertex = FakeVertex::start().await;
    // Configured as free tier: a Vertex entry is billed all the same.
    let toml = format!(
        "[pool]\norder = \"vertex-first\"\n{}[limits.projects.\"p1.us-central1\"]\nbilling = \"free\"\n",
        vertex.entry("p1", "us-central1")
    );
    let proxy = start_proxy(&studio.url, ProxyOpts::keys(&[KEY]).toml(&toml)).await;
    for model in ["gemini-2.0-flash", "gemini-2.5-flash"] {
        let r = post(
            format!("{}/v1beta/models/{model}:generateContent", proxy.url),
            prompt("price me"),
        )
        .await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert_eq!(vertex.recorded().len(), 2);
    let body = by_project(&proxy.url, 2).await;
    // The fake's usage: 4 prompt, 2 candidates tokens. gemini-2.0-flash on Vertex: 0.15 in,
    // 0.60 out per 1M (AI Studio: 0.10, 0.40); gemini-2.5-flash the same on both: 0.30, 2.50.
    let want = (4 * 150 + 2 * 600) + (4 * 300 + 2 * 2_500);
    let (billed, list) = costs(&body, "p1.us-central1");
    assert!(
        (billed - want as f64).abs() < 2.0,
        "billed {billed}, want {want}: {body}"
    );
    assert!((list - want as f64).abs() < 2.0, "list {list}, want {want}");
}
