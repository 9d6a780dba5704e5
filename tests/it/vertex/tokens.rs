//! A Vertex entry's tokens after start-up: a reload whose entry's token endpoint refuses is
//! refused naming the setting (the running configuration serving on), one that mints is
//! swapped in with its tokens already minted; an entry whose tokens fail while serving is held
//! and reported, not asked again at every request.

use serde_json::Value;

use super::{KEY, MODEL, post, prompt};
use crate::common::vertex_upstream::FakeVertex;
use crate::common::{
    self, ADMIN_TOKEN, CLIENT_KEY, FakeUpstream, ProxyOpts, http, quota_status, start_proxy,
};

/// A config body with one Vertex entry `project` on `vertex`.
fn entry_toml(vertex: &FakeVertex, project: &str) -> String {
    format!(
        "[pool]\norder = \"vertex-first\"\n[[pool.vertex]]\nproject = \"{project}\"\nlocation = \"us-central1\"\ncredentials_file = \"{}\"\nbase_url = \"{}\"\n",
        vertex.credentials_file, vertex.url
    )
}

async fn reload(url: &str) -> (u16, String) {
    let r = http()
        .post(format!("{url}/api/ai/config/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_token_endpoint_refuses_is_refused_and_one_that_mints_swaps_with_its_token()
{
    let studio = FakeUpstream::start().await;
    let running = FakeVertex::start().await;
    let next = FakeVertex::start().await;
    next.behave(|b| b.refuse_tokens = true);
    let file = std::env::temp_dir().join(format!(
        "gqp-vertex-reload-{}-{}.toml",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&file, entry_toml(&running, "p1")).unwrap();
    let (f, upstream) = (file.to_string_lossy().into_owned(), studio.url.clone());
    let bin = tokio::task::spawn_blocking(move || {
        common::binary::Binary::start(
            &[
                ("GEMINI_API_KEY", KEY),
                ("PROXY_CLIENT_KEYS", CLIENT_KEY),
                ("PROXY_ADMIN_TOKEN", ADMIN_TOKEN),
                ("GEMINI_UPSTREAM_URL", &upstream),
                ("PROXY_WATCH_CONFIG", "false"),
            ],
            &["--config", &f],
        )
    })
    .await
    .unwrap();
    let url = format!("{}/v1beta/models/{MODEL}:generateContent", bin.url);

    // The new entry's token endpoint refuses: 400 naming its setting, nothing swapped.
    std::fs::write(&file, entry_toml(&next, "p2")).unwrap();
    let (code, body) = reload(&bin.url).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("pool.vertex[0].credentials_file"), "{body}");
    assert!(body.contains("invalid_grant"), "{body}");
    assert!(
        post(url.clone(), prompt("still"))
            .await
            .status()
            .is_success()
    );
    assert_eq!(running.recorded().len(), 1, "the running entry serves on");
    assert!(next.recorded().is_empty());

    // It mints now: the reload applies, its token minted before the swap and used after it.
    next.behave(|b| b.refuse_tokens = false);
    let (code, body) = reload(&bin.url).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(next.minted(), 1, "minted by the reload, before any request");
    assert!(post(url, prompt("next")).await.status().is_success());
    let call = &next.recorded()[0];
    assert!(
        call.path
            .starts_with("/v1/projects/p2/locations/us-central1/")
    );
    assert_eq!(call.headers["authorization"], "Bearer ya29.fake-1");
    assert_eq!(next.minted(), 1, "the reload's token is the one used");
    assert_eq!(running.recorded().len(), 1);
    tokio::task::spawn_blocking(move || bin.stop())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_entry_whose_tokens_fail_while_serving_is_held_and_reported_not_asked_again() {
    let studio = FakeUpstream::start().await;
    let vertex = FakeVertex::start().await;
    // In-process the proxy mints no token at start: the first request finds the endpoint
    // refusing, as a running proxy would once its token is due.
    vertex.behave(|b| b.refuse_tokens = true);
    let proxy = start_proxy(
        &studio.url,
        ProxyOpts::keys(&[KEY]).toml(&entry_toml(&vertex, "p1")),
    )
    .await;
    let url = format!("{}/v1beta/models/{MODEL}:generateContent", proxy.url);
    for i in 0..4 {
        let r = post(url.clone(), prompt(&format!("r{i}"))).await;
        assert_eq!(r.status(), 200, "served by the AI Studio key instead");
    }
    assert_eq!(studio.calls(":generateContent").len(), 4);
    assert!(vertex.recorded().is_empty());
    assert_eq!(
        vertex.token_requests(),
        1,
        "one token request, not one per client request"
    );
    let (_, s) = quota_status(&proxy.url, ADMIN_TOKEN).await;
    let entry: Value = s["quota_status"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["backend"] == "vertex")
        .cloned()
        .unwrap();
    assert_eq!(entry["state"], "cooldown", "{entry}");
    assert_eq!(entry["cooldown_model"], "*");
    let reason = entry["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("access token unavailable")
            && reason.contains("pool.vertex[0].credentials_file")
            && reason.contains("invalid_grant"),
        "{entry}"
    );
    assert!(!s.to_string().contains("ya29."));
}
