//! The tokens one answer used, as Google reports them (`usageMetadata`, or `usage` on the
//! OpenAI surface).

/// Tokens of one answer. A field Google leaves out is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// `promptTokenCount` (cached tokens included) / `prompt_tokens`.
    pub input: u64,
    /// `cachedContentTokenCount` / `prompt_tokens_details.cached_tokens`.
    pub cached: u64,
    /// `candidatesTokenCount` / `completion_tokens` less reasoning tokens.
    pub output: u64,
    /// `thoughtsTokenCount` / `completion_tokens_details.reasoning_tokens`.
    pub thinking: u64,
    /// `toolUsePromptTokenCount`.
    pub tool: u64,
}
