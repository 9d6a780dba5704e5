//! The `# HELP` text and unit of every metric family the proxy exports, told to the
//! Prometheus recorder once, as it is installed.

/// `# HELP` text of every family the recorder exports (`gqp_cost_usd_total` is written by
/// `/metrics` itself, with its own). Told to the recorder once, as it is installed.
pub(super) fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "gqp_live_sessions",
        "Live API sessions this replica holds open, by project (each holds one of limits.live_sessions)."
    );
    describe_counter!(
        "gqp_live_sessions_total",
        "Live API sessions by how they ended or were refused: completed, client_gone, upstream_gone, idle, message_too_big, shutdown, refused_full, replica_full, upstream_refused, upstream_error, setup_invalid, setup_timeout, client_limited (the client's own limits), over_budget (closed when its client reached a budget), unpriced (a model without a price under limits.unpriced = refuse), store_error."
    );
    describe_counter!(
        "gqp_config_reloads_total",
        "Configuration reloads (SIGHUP, POST /api/ai/config/reload, a change to the --config file), by outcome: applied, unchanged, invalid (the running configuration stayed)."
    );
    describe_gauge!(
        "gqp_config_generation",
        "The configuration generation serving now: 1 at start, one more per applied reload."
    );
    describe_counter!(
        "gqp_auth_failures_total",
        "Credentials the proxy refused, by kind (client_key, admin_token, metrics_token); a source with 20 failures in 60 s gets 429 for the rest of the window."
    );
    describe_counter!(
        "gqp_requests_total",
        "Requests to the Gemini surface by model, outcome (ok, rate_limited, client_error, server_error), masked pooled key and client name."
    );
    describe_counter!(
        "gqp_alert_deliveries_total",
        "Alert notification tries by channel (slack, discord, json, alertmanager, email) and outcome (delivered, retried, failed)."
    );
    describe_gauge!(
        "gqp_alerts_firing",
        "Alerts firing now, as this replica evaluates them."
    );
    describe_counter!(
        "gqp_admissions_refused_total",
        "Requests the proxy refused for its own quota accounting, by reason."
    );
    describe_counter!(
        "gqp_upstream_429_total",
        "429 answers from Google, by the kind of quota they named."
    );
    describe_counter!(
        "gqp_retries_total",
        "Requests sent again on another key before any byte reached the client, by reason."
    );
    describe_counter!(
        "gqp_fallbacks_total",
        "Requests served by a fallback model ([fallbacks]), by the model asked for, the model that served, and reason (no_room, overloaded)."
    );
    describe_counter!(
        "gqp_store_errors_total",
        "Quota store calls that failed or timed out, by operation."
    );
    describe_counter!(
        "gqp_otel_spans_total",
        "Trace spans by outcome (trace export on): exported, dropped (the export queue was full) or failed (the collector refused them or could not be reached)."
    );
    describe_counter!(
        "gqp_cache_requests_total",
        "Cacheable requests by what the response cache did: hit (answered from the cache, no quota spent), miss (sent upstream, stored if fit) or bypass (not cached: Cache-Control no-store, a nondeterministic generation, a request naming files or cachedContents)."
    );
    describe_counter!(
        "gqp_tokens_total",
        "Tokens in Google's answers by model, kind (input, cached, output, thinking, tool) and client name, since this process started."
    );
    describe_histogram!(
        "gqp_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's arrival to its answer's headers, whole request."
    );
    describe_histogram!(
        "gqp_queue_wait_seconds",
        Unit::Seconds,
        "Time requests spent in the admission queue waiting for quota, admitted or not."
    );
    describe_histogram!(
        "gqp_upstream_duration_seconds",
        Unit::Seconds,
        "Time spent waiting on Google for a request's answer headers."
    );
    describe_histogram!(
        "gqp_proxy_overhead_seconds",
        Unit::Seconds,
        "The proxy's own share of a forwarded request's time (total minus upstream and minus any wait in the admission queue)."
    );
    describe_histogram!(
        "gqp_store_duration_seconds",
        Unit::Seconds,
        "Time of quota store calls on the request path, by operation."
    );
    describe_counter!(
        "gqp_client_refusals_total",
        "Requests refused by their client's own limit ([[auth.clients]]: rpm, tpm, rpd, max_concurrent, daily_budget_usd, monthly_budget_usd, models), by client and limit."
    );
    describe_gauge!(
        "gqp_client_budget_used_ratio",
        "A budgeted client's day (period=day) or calendar month (period=month) spent and reserved, as a share of its budget (1 = at the budget)."
    );
    describe_gauge!(
        "gqp_keys_cooling",
        "Pooled keys whose project is cooling down after a Google 429."
    );
    describe_gauge!(
        "gqp_project_spend_cap_ratio",
        "A project's spend this calendar month over its limits.projects.P.monthly_spend_cap_usd (1: reached), as this replica last read it."
    );
    describe_gauge!(
        "gqp_keys_disabled",
        "Pooled keys disabled on Google's verdict (invalid, suspended, ...)."
    );
    describe_gauge!(
        "gqp_quota_remaining",
        "What is left of a window's quota (minute: requests, daily: requests, tokens: input tokens per minute) by masked key, project and model."
    );
    describe_gauge!(
        "gqp_quota_limit",
        "The limit of a window's quota, labelled like gqp_quota_remaining: 1 - remaining / limit is the share used."
    );
}
