//! The names of a span's attributes, as the OpenTelemetry semantic conventions 1.42.0 give them
//! (GenAI: development status), and the proxy's own under `gqp.`.

pub const OPERATION: &str = "gen_ai.operation.name";
pub const PROVIDER: &str = "gen_ai.provider.name";
/// The name before `gen_ai.provider.name` (conventions up to 1.36), for older backends.
pub const SYSTEM: &str = "gen_ai.system";
pub const REQUEST_MODEL: &str = "gen_ai.request.model";
pub const REQUEST_STREAM: &str = "gen_ai.request.stream";
pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
pub const FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
/// Seconds to the first chunk of the answer.
pub const TIME_TO_FIRST_CHUNK: &str = "gen_ai.response.time_to_first_chunk";
pub const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
pub const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
pub const REASONING_TOKENS: &str = "gen_ai.usage.reasoning.output_tokens";
pub const CACHED_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
pub const INPUT_MESSAGES: &str = "gen_ai.input.messages";
pub const OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
pub const METHOD: &str = "http.request.method";
pub const PATH: &str = "url.path";
pub const STATUS: &str = "http.response.status_code";
pub const ERROR_TYPE: &str = "error.type";
pub const CLIENT: &str = "gqp.client";
pub const PROJECT: &str = "gqp.project";
/// The pooled key's masked form (`AIza…abcd`), never the key.
pub const KEY: &str = "gqp.key";
/// `HIT`, `MISS` or `BYPASS` when the response cache looked at the request.
pub const CACHE: &str = "gqp.cache";
pub const QUEUE_WAIT_MS: &str = "gqp.queue.wait_ms";
pub const ATTEMPTS: &str = "gqp.attempts";
pub const ATTEMPT: &str = "gqp.attempt";
pub const ESTIMATED_TOKENS: &str = "gqp.estimated_tokens";
/// What the answer cost the project, in USD (the ledger's price table).
pub const COST_USD: &str = "gqp.cost_usd";
/// Google's answer as the proxy read it (`deliver`, `quota_exhausted`, ...).
pub const VERDICT: &str = "gqp.verdict";
/// Why the attempt was tried again (`gqp_retries_total{reason}`).
pub const RETRY_REASON: &str = "gqp.retry_reason";
/// The body ended (false: the client went away or the stream broke off).
pub const COMPLETE: &str = "gqp.complete";
pub const STORE: &str = "gqp.store";
