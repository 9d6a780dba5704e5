//! A Vertex entry's OAuth access tokens: minted from its credentials (a service account's
//! RS256 JWT exchanged at its `token_uri`, an `authorized_user` refresh token, or the metadata
//! server), cached, refreshed before they expire, one mint in flight at a time. A token is a
//! sensitive header value from the moment it is read: never logged, shown or stored elsewhere.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Full, Limited};
use tokio::time::Instant;

use crate::config::VertexCredentials;
use crate::upstream::HttpClient;

/// A token is replaced this long before it expires (or at half its life, if shorter), so no
/// request leaves with one that expires on the way.
pub const REFRESH_EARLY: Duration = Duration::from_secs(300);

/// After a failed mint, callers get that failure without a new try for this long: an entry
/// whose tokens fail is held, not retried in a loop.
pub const FAILURE_PAUSE: Duration = Duration::from_secs(10);

/// OAuth scope of Vertex AI calls.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Longest token answer read.
const ANSWER_LIMIT: usize = 64 * 1024;

/// Why no token could be had (never a token or key in it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

/// A freshly minted access token.
pub struct Minted {
    /// `Bearer ...`, marked sensitive.
    pub bearer: HeaderValue,
    pub expires_in: Duration,
}

/// One way to mint a token.
#[async_trait]
pub trait Mint: Send + Sync {
    async fn mint(&self) -> Result<Minted, TokenError>;
}

/// A cached token and when to replace it.
pub struct Token {
    pub bearer: HeaderValue,
    refresh_at: Instant,
    expires_at: Instant,
}

/// Tokens of one entry: cached, refreshed early, one refresh in flight.
pub struct TokenSource {
    mint: Box<dyn Mint>,
    current: ArcSwapOption<Token>,
    /// Held by the one caller that mints; the last failure and when it came.
    refresh: tokio::sync::Mutex<Option<(Instant, TokenError)>>,
}

impl TokenSource {
    pub fn new(mint: Box<dyn Mint>) -> TokenSource {
        TokenSource {
            mint,
            current: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(None),
        }
    }

    /// A token good for the next request: the cached one while it is fresh, else a new one
    /// (callers that come meanwhile wait for that one mint). A failed refresh keeps serving the
    /// cached token while it has not expired.
    pub async fn bearer(&self) -> Result<Arc<Token>, TokenError> {
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        let mut failed = match self.refresh.try_lock() {
            Ok(g) => g,
            // Another caller is refreshing: the current token while it is valid, no wait.
            Err(_) => match self.valid() {
                Some(t) => return Ok(t),
                None => self.refresh.lock().await,
            },
        };
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        let usable_old = || self.valid();
        if let Some((at, e)) = failed.as_ref()
            && at.elapsed() < FAILURE_PAUSE
        {
            return usable_old().ok_or_else(|| e.clone());
        }
        match self.mint.mint().await {
            Ok(m) => {
                let now = Instant::now();
                let early = REFRESH_EARLY.min(m.expires_in / 2);
                let token = Arc::new(Token {
                    bearer: m.bearer,
                    refresh_at: now + m.expires_in.saturating_sub(early),
                    expires_at: now + m.expires_in,
                });
                self.current.store(Some(token.clone()));
                *failed = None;
                Ok(token)
            }
            Err(e) => {
                *failed = Some((Instant::now(), e.clone()));
                match usable_old() {
                    Some(t) => {
                        tracing::warn!(error = %e, "Vertex AI token refresh failed: the current token is used until it expires");
                        Ok(t)
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// Serve `token` (minted by another source of the same credentials: a reload's check)
    /// until it is due for refresh.
    pub fn adopt(&self, token: Arc<Token>) {
        self.current.store(Some(token));
    }

    /// Drop the cached token (Vertex refused it): the next request mints a new one.
    pub fn forget(&self) {
        self.current.store(None);
    }

    fn valid(&self) -> Option<Arc<Token>> {
        self.current
            .load_full()
            .filter(|t| Instant::now() < t.expires_at)
    }

    fn fresh(&self) -> Option<Arc<Token>> {
        self.current
            .load_full()
            .filter(|t| Instant::now() < t.refresh_at)
    }
}

/// The minter for `credentials`, sending through `http` (HTTP/1.1, any host).
pub fn minter(credentials: &VertexCredentials, http: Arc<HttpClient>) -> Box<dyn Mint> {
    match credentials.clone() {
        VertexCredentials::ServiceAccount {
            client_email,
            key_id,
            key,
            token_uri,
        } => Box::new(ServiceAccount {
            client_email,
            key_id,
            key: key.0,
            token_uri,
            http,
        }),
        VertexCredentials::AuthorizedUser {
            client_id,
            client_secret,
            refresh_token,
            token_uri,
        } => Box::new(Form {
            uri: token_uri,
            body: Arc::new(form(&[
                ("grant_type", "refresh_token"),
                ("client_id", &client_id),
                ("client_secret", client_secret.expose()),
                ("refresh_token", refresh_token.expose()),
            ])),
            http,
        }),
        VertexCredentials::Metadata { token_url } => Box::new(Metadata {
            uri: token_url,
            http,
        }),
    }
}

/// `a=b&c=d`, percent-encoded.
fn form(pairs: &[(&str, &str)]) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The claims of the JWT-bearer grant.
#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: String,
    iat: u64,
    exp: u64,
}

/// A service account: a JWT signed with its key, exchanged at its `token_uri`.
struct ServiceAccount {
    client_email: String,
    key_id: Option<String>,
    key: Arc<jsonwebtoken::EncodingKey>,
    token_uri: http::Uri,
    http: Arc<HttpClient>,
}

#[async_trait]
impl Mint for ServiceAccount {
    async fn mint(&self) -> Result<Minted, TokenError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = self.key_id.clone();
        let claims = Claims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: self.token_uri.to_string(),
            iat: now,
            exp: now + 3600,
        };
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| TokenError(format!("cannot sign the service account's JWT: {e}")))?;
        let body = form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", &jwt),
        ]);
        exchange(&self.http, post(&self.token_uri, body)).await
    }
}

/// A form POSTed to a token endpoint (an `authorized_user` refresh).
struct Form {
    uri: http::Uri,
    body: Arc<String>,
    http: Arc<HttpClient>,
}

#[async_trait]
impl Mint for Form {
    async fn mint(&self) -> Result<Minted, TokenError> {
        exchange(&self.http, post(&self.uri, (*self.body).clone())).await
    }
}

/// The metadata server's token of the instance's service account.
struct Metadata {
    uri: http::Uri,
    http: Arc<HttpClient>,
}

#[async_trait]
impl Mint for Metadata {
    async fn mint(&self) -> Result<Minted, TokenError> {
        let mut req = http::Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = self.uri.clone();
        req.headers_mut()
            .insert("metadata-flavor", HeaderValue::from_static("Google"));
        exchange(&self.http, req).await
    }
}

fn post(uri: &http::Uri, body: String) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::new(Full::new(Bytes::from(body)));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri.clone();
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    req
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: crate::secret::Secret,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(serde::Deserialize)]
struct TokenRefusal {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Send a token request and read the token from the answer (within [`ANSWER_LIMIT`] and
/// 30 seconds).
async fn exchange(
    http: &Arc<HttpClient>,
    req: http::Request<Full<Bytes>>,
) -> Result<Minted, TokenError> {
    let host = req.uri().host().unwrap_or("").to_string();
    let read = async {
        let resp = http.clone().request(req).await.map_err(|e| {
            TokenError(format!(
                "the token endpoint {host} could not be reached: {e}"
            ))
        })?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), ANSWER_LIMIT)
            .collect()
            .await
            .map_err(|e| TokenError(format!("the token endpoint {host}'s answer broke off: {e}")))?
            .to_bytes();
        Ok::<_, TokenError>((status, body))
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| TokenError(format!("the token endpoint {host} did not answer in 30 s")))??;
    if !status.is_success() {
        // OAuth's error code and description name the problem, never the credential.
        let why = serde_json::from_slice::<TokenRefusal>(&body)
            .map(|r| {
                let d: String = r.error_description.chars().take(200).collect();
                format!(": {} {d}", r.error)
            })
            .unwrap_or_default();
        return Err(TokenError(format!(
            "the token endpoint {host} refused: {status}{}",
            why.trim_end()
        )));
    }
    let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
        TokenError(format!(
            "the token endpoint {host} answered without an access_token"
        ))
    })?;
    let mut bearer = HeaderValue::from_str(&format!("Bearer {}", answer.access_token.expose()))
        .map_err(|_| {
            TokenError(format!(
                "the token endpoint {host} answered a token an HTTP header cannot carry"
            ))
        })?;
    bearer.set_sensitive(true);
    Ok(Minted {
        bearer,
        expires_in: Duration::from_secs(answer.expires_in.unwrap_or(3600).clamp(1, 86_400)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Mints `token-N` (N counting from 1) lasting `life`, after `delay`; fails while `fail`.
    struct Counting {
        n: Arc<AtomicU32>,
        life: Duration,
        delay: Duration,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    #[async_trait]
    impl Mint for Counting {
        async fn mint(&self) -> Result<Minted, TokenError> {
            tokio::time::sleep(self.delay).await;
            let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
            if self.fail.load(Ordering::SeqCst) {
                return Err(TokenError("refused".into()));
            }
            Ok(Minted {
                bearer: HeaderValue::from_str(&format!("Bearer token-{n}")).unwrap(),
                expires_in: self.life,
            })
        }
    }

    fn source(
        life: Duration,
    ) -> (
        TokenSource,
        Arc<AtomicU32>,
        Arc<std::sync::atomic::AtomicBool>,
    ) {
        let n = Arc::new(AtomicU32::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = TokenSource::new(Box::new(Counting {
            n: n.clone(),
            life,
            delay: Duration::from_millis(50),
            fail: fail.clone(),
        }));
        (s, n, fail)
    }

    async fn bearer(s: &TokenSource) -> String {
        s.bearer()
            .await
            .unwrap()
            .bearer
            .to_str()
            .unwrap()
            .to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_reused_until_five_minutes_before_it_expires_then_replaced() {
        let (s, minted, _) = source(Duration::from_secs(3600));
        assert_eq!(bearer(&s).await, "Bearer token-1");
        tokio::time::advance(Duration::from_secs(3600 - 301)).await;
        assert_eq!(bearer(&s).await, "Bearer token-1");
        assert_eq!(minted.load(Ordering::SeqCst), 1);
        // Inside the last five minutes: replaced before it expires.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(bearer(&s).await, "Bearer token-2");
        assert_eq!(minted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_mint() {
        let (s, minted, _) = source(Duration::from_secs(3600));
        let s = Arc::new(s);
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { bearer(&s).await })
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.unwrap(), "Bearer token-1");
        }
        assert_eq!(minted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn callers_during_a_refresh_keep_the_valid_token_without_waiting() {
        let (s, minted, _) = source(Duration::from_secs(600));
        assert_eq!(bearer(&s).await, "Bearer token-1");
        tokio::time::advance(Duration::from_secs(400)).await;
        let s = Arc::new(s);
        let refreshing = {
            let s = s.clone();
            tokio::spawn(async move { bearer(&s).await })
        };
        // Let it take the refresh (its mint takes 50 ms).
        while s.refresh.try_lock().is_ok() {
            tokio::task::yield_now().await;
        }
        let t0 = Instant::now();
        assert_eq!(bearer(&s).await, "Bearer token-1");
        assert_eq!(t0.elapsed(), Duration::ZERO, "no wait for the refresh");
        assert_eq!(refreshing.await.unwrap(), "Bearer token-2");
        assert_eq!(minted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_valid_token_and_is_not_retried_at_once() {
        let (s, minted, fail) = source(Duration::from_secs(600));
        assert_eq!(bearer(&s).await, "Bearer token-1");
        fail.store(true, Ordering::SeqCst);
        // Past the refresh point (half of a 10-minute life), before expiry.
        tokio::time::advance(Duration::from_secs(400)).await;
        assert_eq!(bearer(&s).await, "Bearer token-1");
        assert_eq!(bearer(&s).await, "Bearer token-1");
        assert_eq!(
            minted.load(Ordering::SeqCst),
            2,
            "one failed try, then a pause"
        );
        // Expired, still failing: an error, and again no new try within the pause.
        tokio::time::advance(Duration::from_secs(200)).await;
        assert!(s.bearer().await.is_err());
        assert!(s.bearer().await.is_err());
        assert_eq!(minted.load(Ordering::SeqCst), 3);
        fail.store(false, Ordering::SeqCst);
        tokio::time::advance(FAILURE_PAUSE).await;
        assert_eq!(bearer(&s).await, "Bearer token-4");
    }
}
