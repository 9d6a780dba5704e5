//! Vertex AI entries of the pool, the backend beside AI Studio keys: which operations one can
//! serve ([`serves`]), the request it sends for an AI Studio-form one (URL and body rewritten
//! by [`rewrite`], an OAuth token from [`token`] instead of an API key), and the Vertex-form
//! paths clients may send ([`form`]), and its answers in AI Studio's form ([`answer`]).

pub mod answer;
pub mod form;
pub mod mint;
pub mod only;
pub mod rewrite;
pub mod token;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::Full;

use self::token::{TokenError, TokenSource};
use crate::config::{UpstreamConfig, VertexConfig};
use crate::route::Route;
use crate::upstream::{HttpClient, KeyHeaders, Outgoing, Upstream, build_client, build_request};

/// One Vertex AI (project, location) of the pool.
pub struct VertexEntry {
    pub project: String,
    pub location: String,
    /// `/v1/projects/P/locations/L`.
    prefix: String,
    upstream: Upstream,
    /// Its own client: the HTTP/2 pool is one origin's, and this is another origin.
    pub client: Arc<HttpClient>,
    pub tokens: TokenSource,
    /// The setting its credentials came from (for errors about them).
    pub credentials_setting: String,
}

impl std::fmt::Debug for VertexEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VertexEntry")
            .field("project", &self.project)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Why a Vertex request could not be built.
#[derive(Debug)]
pub enum VertexError {
    /// No access token (the entry is held).
    Token(TokenError),
    /// The rewritten path is not a URI.
    Path,
}

impl VertexEntry {
    /// The entry `cfg`, with the timeouts and trust roots of `[upstream]`; its tokens are
    /// fetched over `token_http`.
    pub fn new(
        cfg: &VertexConfig,
        upstream: &UpstreamConfig,
        token_http: Arc<HttpClient>,
    ) -> VertexEntry {
        let mut ucfg = upstream.clone();
        ucfg.url = cfg.base_url.clone();
        VertexEntry {
            project: cfg.project.clone(),
            location: cfg.location.clone(),
            prefix: format!("/v1/projects/{}/locations/{}", cfg.project, cfg.location),
            upstream: Upstream::new(&cfg.base_url),
            client: Arc::new(build_client(&ucfg)),
            tokens: TokenSource::new(token::minter(&cfg.credentials, token_http)),
            credentials_setting: cfg.credentials_setting.clone(),
        }
    }

    /// The request to Vertex AI for an AI Studio-form request the entry [`serves`].
    pub async fn request(
        &self,
        method: &Method,
        route: &Route,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, VertexError> {
        let token = self.tokens.bearer().await.map_err(VertexError::Token)?;
        let (path, body) = rewrite::rewrite(&self.prefix, route, body);
        let key = KeyHeaders {
            goog: token.bearer.clone(),
            bearer: token.bearer.clone(),
        };
        let outgoing = Outgoing {
            method,
            path: &path,
            query,
            headers,
            body,
            bearer: true,
        };
        build_request(&self.upstream, outgoing, &key).ok_or(VertexError::Path)
    }
}

/// The HTTP client of the Vertex entries' token endpoints: the upstream settings with HTTP/1.1
/// to any host (the HTTP/2 pool is one origin's).
pub fn token_client(upstream: &crate::config::UpstreamConfig) -> std::sync::Arc<super::HttpClient> {
    let mut cfg = upstream.clone();
    cfg.http2 = false;
    std::sync::Arc::new(super::build_client(&cfg))
}

/// Whether a Vertex entry can serve this AI Studio-form request: generation (plain, streamed,
/// OpenAI chat), countTokens and embedContent, naming no AI Studio resource (files, uploads,
/// cached contents, batches, tuned models exist only in the project whose key made them).
pub fn serves(route: &Route, body: &[u8]) -> bool {
    if route.upload || route.resource.is_some() {
        return false;
    }
    let operation = if route.openai {
        route.family == crate::route::QuotaFamily::Generate
    } else {
        matches!(
            route.action.as_deref(),
            Some("generateContent" | "streamGenerateContent" | "countTokens" | "embedContent")
        )
    };
    operation && !rewrite::names_ai_studio_resource(body)
}
