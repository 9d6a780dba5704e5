//! `ApiError`: every error the proxy itself makes, written as Google's envelope
//! `{"error":{"code","message","status","details"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Which limit refused a request at the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    RequestsPerMinute,
    TokensPerMinute,
    RequestsPerDay,
}

impl LimitKind {
    /// A Google-style quota id, so clients that read `QuotaFailure` see a familiar name:
    /// embedding models get the embed quota's ids.
    pub fn quota_id(self, embed: bool) -> &'static str {
        match (self, embed) {
            (LimitKind::RequestsPerMinute, false) => "GenerateRequestsPerMinutePerProjectPerModel",
            (LimitKind::TokensPerMinute, false) => "GenerateContentInputTokensPerModelPerMinute",
            (LimitKind::RequestsPerDay, false) => "GenerateRequestsPerDayPerProjectPerModel",
            (LimitKind::RequestsPerMinute, true) => {
                "EmbedContentRequestsPerMinutePerProjectPerModel"
            }
            (LimitKind::TokensPerMinute, true) => "EmbedContentInputTokensPerModelPerMinute",
            (LimitKind::RequestsPerDay, true) => "EmbedContentRequestsPerDayPerProjectPerModel",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::RequestsPerMinute => "requests_per_minute",
            LimitKind::TokensPerMinute => "input_tokens_per_minute",
            LimitKind::RequestsPerDay => "requests_per_day",
        }
    }
}

/// Which of a client's own limits refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLimit {
    Rpm,
    Tpm,
    Rpd,
    Concurrent,
    DailyBudget,
    MonthlyBudget,
}

impl ClientLimit {
    /// The limit's name in the configuration (and in `note_refusal`, metrics, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            ClientLimit::Rpm => "rpm",
            ClientLimit::Tpm => "tpm",
            ClientLimit::Rpd => "rpd",
            ClientLimit::Concurrent => "max_concurrent",
            ClientLimit::DailyBudget => "daily_budget_usd",
            ClientLimit::MonthlyBudget => "monthly_budget_usd",
        }
    }

    /// The `quotaId` of its `QuotaFailure` violation.
    pub fn quota_id(self) -> &'static str {
        match self {
            ClientLimit::Rpm => "ProxyClientRequestsPerMinute",
            ClientLimit::Tpm => "ProxyClientInputTokensPerMinute",
            ClientLimit::Rpd => "ProxyClientRequestsPerDay",
            ClientLimit::Concurrent => "ProxyClientConcurrentRequests",
            ClientLimit::DailyBudget => "ProxyClientDailyBudgetUsd",
            ClientLimit::MonthlyBudget => "ProxyClientMonthlyBudgetUsd",
        }
    }

    /// Whether the limit is money (its `quotaValue` is in dollars, not a count).
    pub fn is_budget(self) -> bool {
        matches!(self, ClientLimit::DailyBudget | ClientLimit::MonthlyBudget)
    }
}

/// An error answered by the proxy, not by Google.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    HeadersTooLarge(String),
    /// Refused by the proxy's own quota accounting.
    #[error("{message}")]
    QuotaExceeded {
        message: String,
        limit: LimitKind,
        model: String,
        /// The limit belongs to the embed family (its quota ids differ).
        embed: bool,
        limit_value: u64,
        retry_after_ms: u64,
    },
    /// Refused by the client's own limit (`[[auth.clients]]`), not the pool's: 429 with the
    /// limit named, and `x-gemini-quota-proxy-limit: client`.
    #[error("{message}")]
    ClientLimited {
        message: String,
        /// The client's name (never its key).
        client: String,
        limit: ClientLimit,
        /// The limit as configured (dollars for a budget).
        limit_value: String,
        retry_after_ms: u64,
    },
    /// The whole pool is unusable (all keys disabled, or backing off) for longer than we wait.
    #[error("{message}")]
    PoolExhausted {
        message: String,
        retry_after_ms: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    /// The proxy's own memory bound is reached (`server.max_buffered_bytes`): 503 with
    /// `Retry-After`, at once.
    #[error("{message}")]
    Busy {
        message: String,
        retry_after_ms: u64,
    },
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    GatewayTimeout(String),
    #[error("{0}")]
    Internal(String),
    /// 409: what was to be created exists already (a client name).
    #[error("{0}")]
    AlreadyExists(String),
    /// 409: the request conflicts with how the thing is defined (a configured client edited
    /// through the API).
    #[error("{0}")]
    Conflict(String),
    /// 400: the proxy is not set up for this request (the setting to change is named).
    #[error("{0}")]
    FailedPrecondition(String),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            ApiError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::QuotaExceeded { .. }
            | ApiError::PoolExhausted { .. }
            | ApiError::ClientLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::AlreadyExists(_) | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::FailedPrecondition(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Google's canonical status name for this error.
    pub fn status_name(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "UNAUTHENTICATED",
            ApiError::PermissionDenied(_) => "PERMISSION_DENIED",
            ApiError::InvalidArgument(_)
            | ApiError::PayloadTooLarge(_)
            | ApiError::HeadersTooLarge(_) => "INVALID_ARGUMENT",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::MethodNotAllowed(_) => "UNIMPLEMENTED",
            ApiError::RequestTimeout(_) => "DEADLINE_EXCEEDED",
            ApiError::QuotaExceeded { .. }
            | ApiError::PoolExhausted { .. }
            | ApiError::ClientLimited { .. } => "RESOURCE_EXHAUSTED",
            ApiError::Unavailable(_) | ApiError::Busy { .. } => "UNAVAILABLE",
            ApiError::BadGateway(_) => "UNAVAILABLE",
            ApiError::GatewayTimeout(_) => "DEADLINE_EXCEEDED",
            ApiError::Internal(_) => "INTERNAL",
            ApiError::AlreadyExists(_) => "ALREADY_EXISTS",
            ApiError::Conflict(_) => "ABORTED",
            ApiError::FailedPrecondition(_) => "FAILED_PRECONDITION",
        }
    }

    /// Milliseconds until a retry may succeed, for the errors that know it.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            ApiError::QuotaExceeded { retry_after_ms, .. }
            | ApiError::PoolExhausted { retry_after_ms, .. }
            | ApiError::ClientLimited { retry_after_ms, .. }
            | ApiError::Busy { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }

    fn details(&self) -> Vec<Value> {
        let mut details = Vec::new();
        if let ApiError::QuotaExceeded {
            limit,
            model,
            embed,
            limit_value,
            ..
        } = self
        {
            details.push(json!({
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": format!("gemini-quota-proxy/{}", limit.as_str()),
                    "quotaId": limit.quota_id(*embed),
                    "quotaDimensions": {"model": model},
                    "quotaValue": limit_value.to_string(),
                    "subject": "gemini-quota-proxy",
                    "description": self.to_string(),
                }]
            }));
        }
        if let ApiError::ClientLimited {
            client,
            limit,
            limit_value,
            ..
        } = self
        {
            details.push(json!({
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": format!("gemini-quota-proxy/client/{}", limit.as_str()),
                    "quotaId": limit.quota_id(),
                    "quotaDimensions": {"client": client},
                    "quotaValue": limit_value,
                    "subject": "gemini-quota-proxy",
                    "description": self.to_string(),
                }]
            }));
        }
        if let Some(ms) = self.retry_after_ms() {
            details.push(json!({
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": format_retry_delay(ms),
            }));
        }
        details
    }

    /// The JSON envelope, for callers that need the body without a response.
    pub fn envelope(&self) -> Value {
        let mut error = json!({
            "code": self.status_code().as_u16(),
            "message": self.to_string(),
            "status": self.status_name(),
        });
        let details = self.details();
        if !details.is_empty() {
            error["details"] = Value::Array(details);
        }
        json!({ "error": error })
    }
}

/// Google writes durations as seconds with an `s` suffix, fractions allowed.
pub fn format_retry_delay(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    }
}

/// `Retry-After` is whole seconds; round up so a client that obeys it is never early.
pub fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = self.envelope().to_string();
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        );
        if let Some(ms) = self.retry_after_ms()
            && let Ok(v) = HeaderValue::from_str(&retry_after_secs(ms).to_string())
        {
            h.insert(header::RETRY_AFTER, v);
        }
        h.insert(
            "x-gemini-quota-proxy-error",
            HeaderValue::from_static("true"),
        );
        if matches!(self, ApiError::ClientLimited { .. }) {
            h.insert(
                "x-gemini-quota-proxy-limit",
                HeaderValue::from_static("client"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_error_carries_quota_failure_retry_info_and_retry_after() {
        let e = ApiError::QuotaExceeded {
            message: "over".into(),
            limit: LimitKind::RequestsPerMinute,
            model: "gemini-2.5-flash".into(),
            embed: false,
            limit_value: 3,
            retry_after_ms: 12_300,
        };
        let v = e.envelope();
        assert_eq!(v["error"]["code"], 429);
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
        let details = v["error"]["details"].as_array().unwrap();
        assert_eq!(
            details[0]["@type"],
            "type.googleapis.com/google.rpc.QuotaFailure"
        );
        assert_eq!(details[0]["violations"][0]["quotaValue"], "3");
        assert_eq!(
            details[0]["violations"][0]["quotaId"],
            "GenerateRequestsPerMinutePerProjectPerModel"
        );
        assert_eq!(details[1]["retryDelay"], "12.300s");
        let resp = e.into_response();
        assert_eq!(resp.headers()["retry-after"], "13");
    }

    #[test]
    fn a_client_limit_names_its_quota_id_value_and_the_client_header() {
        let e = ApiError::ClientLimited {
            message: "over".into(),
            client: "team-a".into(),
            limit: ClientLimit::DailyBudget,
            limit_value: "2.5".into(),
            retry_after_ms: 1_500,
        };
        let v = e.envelope();
        assert_eq!(v["error"]["code"], 429);
        let violation = &v["error"]["details"][0]["violations"][0];
        assert_eq!(violation["quotaId"], "ProxyClientDailyBudgetUsd");
        assert_eq!(violation["quotaValue"], "2.5");
        assert_eq!(violation["quotaDimensions"]["client"], "team-a");
        assert_eq!(v["error"]["details"][1]["retryDelay"], "1.500s");
        let resp = e.into_response();
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(resp.headers()["x-gemini-quota-proxy-limit"], "client");
    }

    #[test]
    fn plain_errors_have_no_details() {
        let v = ApiError::Unauthenticated("no key".into()).envelope();
        assert_eq!(v["error"]["code"], 401);
        assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
        assert!(v["error"].get("details").is_none());
    }
}
