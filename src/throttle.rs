//! Failed credentials: each one counted (`gqp_auth_failures_total{kind}`) and logged (the
//! source and the kind, never the value tried), and a source refused for the rest of a window
//! after repeated failures, before its credential is checked. State is bounded: one small entry
//! per failing source, at most [`SOURCES`], each gone when its window ends.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::response::Response;

use crate::auth::client_credential;
use crate::conn::source;
use crate::error::ApiError;

/// Failed credentials a source may present within [`WINDOW`]; past them its requests that
/// carry a credential get 429 until the window ends.
pub const MAX_FAILURES: u32 = 20;
/// The window failures are counted over, from a source's first failure.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most failing sources tracked at once (least recently seen go first).
const SOURCES: u64 = 65_536;

/// Which credential failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ClientKey,
    AdminToken,
    MetricsToken,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ClientKey => "client_key",
            Kind::AdminToken => "admin_token",
            Kind::MetricsToken => "metrics_token",
        }
    }

    /// The credential a request to `path` is checked as.
    fn of(path: &str) -> Kind {
        let path = path.trim_end_matches('/');
        if path == "/metrics" {
            Kind::MetricsToken
        } else if matches!(
            path,
            "/api/ai/config/reload" | "/api/ai/cache/clear" | "/api/ai/alerts/test"
        ) {
            Kind::AdminToken
        } else {
            Kind::ClientKey
        }
    }
}

#[derive(Debug)]
struct Failures {
    count: AtomicU32,
    since: Instant,
}

/// The per-source failure counts (see the module docs).
#[derive(Clone)]
pub struct Throttle {
    sources: moka::sync::Cache<IpAddr, Arc<Failures>>,
    /// Some source has reached [`MAX_FAILURES`] since start: until then no request is refused,
    /// and none reads the table (one atomic load a request instead of a cache look-up).
    armed: Arc<AtomicBool>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            sources: moka::sync::Cache::builder()
                .max_capacity(SOURCES)
                .time_to_live(WINDOW)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            armed: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Throttle {
    /// Before a request: `Err` with a 429 when its source is over [`MAX_FAILURES`] and it
    /// presents a credential (requests without one, such as probes, pass: they risk nothing);
    /// else the kind of credential it presents, if any, for [`Throttle::judge`].
    pub fn check(
        &self,
        ip: IpAddr,
        req: &http::Request<hyper::body::Incoming>,
    ) -> Result<Option<Kind>, ApiError> {
        let presented = client_credential(req.headers(), req.uri().query()).is_some();
        if !presented {
            return Ok(None);
        }
        if self.armed.load(Ordering::Acquire)
            && let Some(f) = self.sources.get(&source(ip))
            && f.count.load(Ordering::Relaxed) >= MAX_FAILURES
        {
            let left = WINDOW
                .saturating_sub(f.since.elapsed())
                .max(Duration::from_secs(1));
            return Err(ApiError::PoolExhausted {
                message: format!(
                    "Too many failed credentials from this address; retry in {} s.",
                    left.as_secs()
                ),
                retry_after_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
            });
        }
        Ok(Some(Kind::of(req.uri().path())))
    }

    /// After a request that presented a credential of `kind`: a refusal of that credential
    /// (401/403 from the proxy itself; a Gemini call that was authenticated carries its
    /// caller, so Google's own 403s are not counted) is a failure of the source.
    pub fn judge(&self, ip: IpAddr, kind: Kind, resp: &Response) {
        let refused = matches!(resp.status().as_u16(), 401 | 403)
            && crate::layers::Outcome::of(resp).is_none_or(|o| o.caller.is_none());
        if !refused {
            return;
        }
        let source = source(ip);
        let f = self.sources.get_with(source, || {
            Arc::new(Failures {
                count: AtomicU32::new(0),
                since: Instant::now(),
            })
        });
        let n = f.count.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!("gqp_auth_failures_total", "kind" => kind.as_str()).increment(1);
        if n <= MAX_FAILURES {
            tracing::warn!(source = %source, kind = kind.as_str(), failures = n, "credential refused");
        }
        if n >= MAX_FAILURES {
            self.armed.store(true, Ordering::Release);
        }
        if n == MAX_FAILURES {
            tracing::warn!(
                source = %source,
                window_secs = WINDOW.as_secs(),
                "too many failed credentials: this source gets 429 until its window ends"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Caller;
    use crate::layers::Outcome;

    fn failures(t: &Throttle, ip: IpAddr) -> u32 {
        t.sources
            .get(&source(ip))
            .map_or(0, |f| f.count.load(Ordering::Relaxed))
    }

    fn answer(status: u16, caller: Option<Caller>) -> Response {
        let mut resp = Response::new(axum::body::Body::empty());
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
        if caller.is_some() {
            Outcome::on(&mut resp).caller = caller;
        }
        resp
    }

    #[test]
    fn only_the_proxys_own_refusals_of_a_credential_count_against_its_source() {
        let t = Throttle::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        // Refused before a caller was known: the credential failed.
        t.judge(ip, Kind::ClientKey, &answer(403, None));
        t.judge(ip, Kind::ClientKey, &answer(401, None));
        assert_eq!(failures(&t, ip), 2);
        // Google's own 403 to an authenticated caller does not, nor does a success.
        t.judge(ip, Kind::ClientKey, &answer(403, Some(Caller::Anonymous)));
        t.judge(ip, Kind::ClientKey, &answer(200, None));
        assert_eq!(failures(&t, ip), 2);
        // An outcome with other parts filled but no caller is still a refusal.
        let mut partial = answer(403, None);
        Outcome::on(&mut partial).served = Some(Default::default());
        t.judge(ip, Kind::ClientKey, &partial);
        assert_eq!(failures(&t, ip), 3);
    }
}
