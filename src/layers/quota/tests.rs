//! The quota step against a scripted upstream service, without sockets, in paused time: every
//! row of the retry table seen from the outside (what reaches "Google", what the client gets,
//! what the store keeps).

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;

use http_body_util::Full;

use super::*;
use crate::estimate::estimate;
use crate::layers::forward::ForwardErrorKind;
use crate::metrics::Metrics;
use crate::quota::memory::MemoryStore;
use crate::quota::{KeyState, SystemClock};
use crate::route::Route;
use tokio::time::Instant;
use tower::ServiceExt;

const KEYS: [&str; 3] = [
    "AIzaScriptKey0000001",
    "AIzaScriptKey0000002",
    "AIzaScriptKey0000003",
];

/// One scripted step: an answer, or a failure of the connection.
#[derive(Clone)]
enum Step {
    Answer(u16, &'static str),
    Fail(ForwardErrorKind),
}

/// What the scripted upstream received.
#[derive(Debug, Clone)]
struct Seen {
    key: String,
    path: String,
    at: Instant,
}

/// An upstream that answers from a script, then 200s; it records every request.
#[derive(Clone, Default)]
struct Scripted {
    steps: Arc<Mutex<VecDeque<Step>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    fn new(steps: impl IntoIterator<Item = Step>) -> Scripted {
        Scripted {
            steps: Arc::new(Mutex::new(steps.into_iter().collect())),
            seen: Arc::default(),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

const OK: &str = r#"{"candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3}}"#;
const OVERLOADED: &str =
    r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#;
const PER_MINUTE: &str = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"30s"}]}}"#;
const DEAD: &str = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#;
const MODELS: &str = r#"{"models":[{"name":"models/gemini-2.5-flash"}]}"#;

impl Service<Outbound> for Scripted {
    type Response = http::Response<Full<Bytes>>;
    type Error = ForwardError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ForwardError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        let req = out.request;
        let key = req
            .headers()
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let path = req.uri().path().to_string();
        self.seen.lock().push(Seen {
            key,
            path,
            at: Instant::now(),
        });
        let step = self.steps.lock().pop_front();
        Box::pin(async move {
            match step.unwrap_or(Step::Answer(200, OK)) {
                Step::Answer(status, body) => Ok(http::Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .unwrap()),
                Step::Fail(kind) => Err(ForwardError {
                    kind,
                    timed_out: false,
                    detail: "scripted".into(),
                }),
            }
        })
    }
}

fn state(env: &[(&str, &str)]) -> Arc<Core> {
    let keys = KEYS.join(",");
    let mut vars = vec![("GEMINI_API_KEYS", keys.as_str())];
    vars.extend_from_slice(env);
    let config = crate::config::for_test("", &vars);
    let tz = config.limits.timezone;
    let store = Arc::new(MemoryStore::new(Arc::new(SystemClock), tz));
    Arc::new(Core::build(
        config,
        store,
        Metrics::new(None),
        Arc::new(SystemClock),
    ))
}

/// A generateContent request as the estimate step hands it on.
fn generate(method: http::Method, path: &str) -> http::Request<Bytes> {
    let body = Bytes::from_static(br#"{"contents":[{"parts":[{"text":"hello there"}]}]}"#);
    let route = Route::parse(&method, path, None).unwrap();
    let est = estimate(&route, &body).unwrap();
    let mut req = http::Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().unwrap();
    req.extensions_mut().insert(Estimated {
        route,
        estimate: est,
        pinned: None,
    });
    req
}

const GENERATE: &str = "/v1beta/models/gemini-2.5-flash:generateContent";

async fn run(state: &Arc<Core>, upstream: &Scripted, req: http::Request<Bytes>) -> Response {
    let service = QuotaLayer::new(state.clone()).layer(upstream.clone());
    service.oneshot(req).await.unwrap()
}

/// How many pooled keys the store has disabled.
async fn disabled_keys(st: &Core) -> usize {
    let kids: Vec<Arc<str>> = st.pool.keys.iter().map(|k| k.kid.clone()).collect();
    let states = st.store.key_states(&kids).await.unwrap();
    states
        .iter()
        .filter(|s| matches!(s, KeyState::Disabled { .. }))
        .count()
}

fn served(resp: &Response) -> Served {
    crate::layers::Outcome::of(resp)
        .and_then(|o| o.served)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn five_hundreds_are_tried_again_on_other_keys_after_a_backoff() {
    let st = state(&[]);
    let up = Scripted::new([Step::Answer(503, OVERLOADED), Step::Answer(503, OVERLOADED)]);
    let resp = run(&st, &up, generate(http::Method::POST, GENERATE)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(served(&resp).attempts, 3);
    let seen = up.seen();
    let keys: std::collections::HashSet<&str> = seen.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys.len(), 3, "each try on another key: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn five_hundreds_stop_at_max_attempts_and_the_last_answer_is_delivered() {
    let st = state(&[]);
    let up = Scripted::new(vec![Step::Answer(503, OVERLOADED); 10]);
    let resp = run(&st, &up, generate(http::Method::POST, GENERATE)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(up.seen().len(), 3, "upstream.max_attempts");
    assert_eq!(st.pool.health.failures(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_retry_deadline_bounds_the_tries_in_time() {
    let st = state(&[("GEMINI_MINUTE_LIMIT", "100")]);
    let st = {
        // 20 tries allowed, but only 1 s for all of them.
        let mut config = (*st.config).clone();
        config.upstream.max_attempts = 20;
        config.upstream.retry_deadline = Duration::from_secs(1);
        let store = Arc::new(MemoryStore::new(
            Arc::new(SystemClock),
            config.limits.timezone,
        ));
        Arc::new(Core::build(
            config,
            store,
            Metrics::new(None),
            Arc::new(SystemClock),
        ))
    };
    let up = Scripted::new(vec![Step::Answer(503, OVERLOADED); 30]);
    let t0 = Instant::now();
    let resp = run(&st, &up, generate(http::Method::POST, GENERATE)).await;
    assert_eq!(resp.status(), 503);
    let seen = up.seen();
    assert!(seen.len() < 20, "{} tries", seen.len());
    let last = seen.last().unwrap().at - t0;
    assert!(last <= Duration::from_secs(1), "a try at {last:?}");
}

#[tokio::test(start_paused = true)]
async fn a_quota_429_holds_that_project_and_another_key_serves_at_once() {
    let st = state(&[]);
    let up = Scripted::new([Step::Answer(429, PER_MINUTE)]);
    let resp = run(&st, &up, generate(http::Method::POST, GENERATE)).await;
    assert_eq!(resp.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0].key, seen[1].key);
    assert_eq!(
        seen[1].at, seen[0].at,
        "no backoff after a 429 with details"
    );
    let holds = st.store.cooldowns().await.unwrap();
    assert_eq!(holds.len(), 1);
    assert!(holds[0].remaining_ms > 29_000, "{holds:?}");
}

#[tokio::test(start_paused = true)]
async fn a_connection_lost_after_sending_is_answered_502_once_and_stays_counted() {
    let st = state(&[]);
    let up = Scripted::new([Step::Fail(ForwardErrorKind::Lost)]);
    let resp = run(&st, &up, generate(http::Method::POST, GENERATE)).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(up.seen().len(), 1);
    let usage = st.store.usage().await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].2.minute_requests, 1);
    assert!(usage[0].2.minute_tokens > 0, "the estimate stays counted");
}

#[tokio::test(start_paused = true)]
async fn a_lost_read_is_sent_again_and_an_unsent_request_too() {
    let st = state(&[]);
    let up = Scripted::new([Step::Fail(ForwardErrorKind::Lost)]);
    let resp = run(&st, &up, generate(http::Method::GET, "/v1beta/models")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(up.seen().len(), 2);
    let up = Scripted::new([Step::Fail(ForwardErrorKind::Unsent)]);
    let resp = run(&st, &up, generate(http::Method::POST, GENERATE)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_dead_key_is_disabled_when_its_probe_agrees_and_kept_when_not() {
    let st = state(&[]);
    let up = Scripted::new([Step::Answer(400, DEAD), Step::Answer(400, DEAD)]);
    let resp = run(&st, &up, generate(http::Method::POST, GENERATE)).await;
    assert_eq!(resp.status(), 200, "served by another key");
    let seen = up.seen();
    assert_eq!(seen[1].path, "/v1beta/models", "the probe");
    assert_eq!(
        seen[1].key, seen[0].key,
        "the probe goes with the suspect key"
    );
    assert_eq!(disabled_keys(&st).await, 1);

    let st = state(&[]);
    let up = Scripted::new([Step::Answer(400, DEAD), Step::Answer(200, MODELS)]);
    let resp = run(&st, &up, generate(http::Method::POST, GENERATE)).await;
    assert_eq!(resp.status(), 400, "not confirmed: the client's answer");
    assert_eq!(up.seen().len(), 2);
    assert_eq!(disabled_keys(&st).await, 0);
}

#[tokio::test(start_paused = true)]
async fn a_429_on_a_call_that_spends_no_quota_holds_nothing_and_another_key_serves() {
    let st = state(&[]);
    let up = Scripted::new([Step::Answer(429, PER_MINUTE)]);
    let resp = run(&st, &up, generate(http::Method::GET, "/v1beta/models")).await;
    assert_eq!(resp.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_ne!(
        seen[0].key, seen[1].key,
        "the key that got the 429 is avoided"
    );
    assert!(
        st.store.cooldowns().await.unwrap().is_empty(),
        "no project is held for a free call's 429"
    );
}

/// The store's clock on tokio's (paused) time, so holds end as the test's time moves.
#[derive(Debug)]
struct TokioClock {
    base_ms: i64,
    start: Instant,
}

impl crate::quota::Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.base_ms + self.start.elapsed().as_millis() as i64
    }
}

/// A state with the queue on (60 s) and the store on tokio's clock.
fn queued_state() -> Arc<Core> {
    let keys = KEYS.join(",");
    let vars = [
        ("GEMINI_API_KEYS", keys.as_str()),
        ("PROXY_QUEUE_MAX_WAIT_SECS", "60"),
    ];
    let config = crate::config::for_test("", &vars);
    let tz = config.limits.timezone;
    let clock = Arc::new(TokioClock {
        base_ms: 1_700_000_000_000,
        start: Instant::now(),
    });
    let store = Arc::new(MemoryStore::new(clock, tz));
    Arc::new(Core::build(
        config,
        store,
        Metrics::new(None),
        Arc::new(SystemClock),
    ))
}

/// Hold the model on every project for `ms`, then send one request allowed `allowance_secs`.
async fn held_then_sent(ms: u64, allowance_secs: &str) -> (Response, Duration, usize) {
    let st = queued_state();
    for k in &st.pool.keys {
        st.store
            .cool_down(&k.project, "gemini-2.5-flash", ms, "test hold")
            .await
            .unwrap();
    }
    let up = Scripted::new([]);
    let mut req = generate(http::Method::POST, GENERATE);
    req.headers_mut().insert(
        "x-gemini-max-wait",
        http::HeaderValue::from_str(allowance_secs).unwrap(),
    );
    let t0 = Instant::now();
    let resp = run(&st, &up, req).await;
    (resp, t0.elapsed(), up.seen().len())
}

#[tokio::test(start_paused = true)]
async fn a_hold_ending_exactly_when_the_allowance_does_is_refused_at_once() {
    let (resp, took, sent) = held_then_sent(10_000, "10").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(took, Duration::ZERO, "refused without waiting");
    assert!(served(&resp).waited.is_none());
    assert_eq!(sent, 0);
    assert!(resp.headers().contains_key("retry-after"));
}

#[tokio::test(start_paused = true)]
async fn a_hold_ending_before_the_allowance_is_waited_for_and_served() {
    let (resp, took, sent) = held_then_sent(9_000, "10").await;
    assert_eq!(resp.status(), 200);
    assert!(took >= Duration::from_secs(9), "{took:?}");
    assert!(
        served(&resp)
            .waited
            .is_some_and(|w| w >= Duration::from_secs(9))
    );
    assert_eq!(sent, 1);
}
