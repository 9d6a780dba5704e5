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
    /// Audio tokens among `input` (`promptTokensDetails`, modality `AUDIO`): billed at the
    /// model's audio input rate, when it has one.
    pub input_audio: u64,
    /// Audio tokens among `output` (`candidatesTokensDetails`, or the Live API's
    /// `responseTokensDetails`, modality `AUDIO`).
    pub output_audio: u64,
    /// Images generated (an image model's answer reports no tokens; billed per image).
    pub images: u64,
    /// Seconds of video generated (billed per second).
    pub video_seconds: u64,
}

impl TokenUsage {
    /// Field-wise sum.
    pub fn plus(self, o: TokenUsage) -> TokenUsage {
        TokenUsage {
            input: self.input.saturating_add(o.input),
            cached: self.cached.saturating_add(o.cached),
            output: self.output.saturating_add(o.output),
            thinking: self.thinking.saturating_add(o.thinking),
            tool: self.tool.saturating_add(o.tool),
            input_audio: self.input_audio.saturating_add(o.input_audio),
            output_audio: self.output_audio.saturating_add(o.output_audio),
            images: self.images.saturating_add(o.images),
            video_seconds: self.video_seconds.saturating_add(o.video_seconds),
        }
    }
}

impl TokenUsage {
    /// Google's `usageMetadata` object, already parsed (a batch job's inline results).
    pub fn from_usage_metadata(v: &serde_json::Value) -> Option<TokenUsage> {
        use serde::Deserialize;
        GeminiUsage::deserialize(v).ok().map(Into::into)
    }
}

/// Google's `usageMetadata` (unknown fields are skipped).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct GeminiUsage {
    prompt_token_count: u64,
    cached_content_token_count: u64,
    candidates_token_count: u64,
    /// The Live API's name for the candidates' count.
    response_token_count: u64,
    thoughts_token_count: u64,
    tool_use_prompt_token_count: u64,
    prompt_tokens_details: Vec<ModalityCount>,
    candidates_tokens_details: Vec<ModalityCount>,
    /// The Live API's name for the candidates' details.
    response_tokens_details: Vec<ModalityCount>,
}

/// One entry of a `...TokensDetails` list.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ModalityCount {
    modality: String,
    token_count: u64,
}

/// The `AUDIO` tokens of a details list.
fn audio(details: &[ModalityCount]) -> u64 {
    details
        .iter()
        .filter(|d| d.modality == "AUDIO")
        .fold(0, |n, d| n.saturating_add(d.token_count))
}

/// The OpenAI surface's `usage`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct OpenAiUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    prompt_tokens_details: Option<OpenAiPromptDetails>,
    completion_tokens_details: Option<OpenAiCompletionDetails>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct OpenAiPromptDetails {
    cached_tokens: u64,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct OpenAiCompletionDetails {
    reasoning_tokens: u64,
}

impl From<GeminiUsage> for TokenUsage {
    fn from(u: GeminiUsage) -> TokenUsage {
        TokenUsage {
            input: u.prompt_token_count,
            cached: u.cached_content_token_count,
            output: u.candidates_token_count.max(u.response_token_count),
            thinking: u.thoughts_token_count,
            tool: u.tool_use_prompt_token_count,
            input_audio: audio(&u.prompt_tokens_details),
            output_audio: audio(&u.candidates_tokens_details)
                .max(audio(&u.response_tokens_details)),
            ..TokenUsage::default()
        }
    }
}

impl From<OpenAiUsage> for TokenUsage {
    fn from(u: OpenAiUsage) -> TokenUsage {
        // `completion_tokens` includes the reasoning tokens: split them out.
        let thinking = u
            .completion_tokens_details
            .map_or(0, |d| d.reasoning_tokens);
        TokenUsage {
            input: u.prompt_tokens,
            cached: u.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
            output: u.completion_tokens.saturating_sub(thinking),
            thinking: thinking.min(u.completion_tokens),
            tool: 0,
            ..TokenUsage::default()
        }
    }
}

/// A usage object's counts (`openai`: the OpenAI surface's form).
pub(super) fn parse(openai: bool, object: &[u8]) -> Option<TokenUsage> {
    // UTF-8 checked once, whole, not key by key as `from_slice` does.
    let text = std::str::from_utf8(object).ok()?;
    if openai {
        serde_json::from_str::<OpenAiUsage>(text)
            .ok()
            .map(Into::into)
    } else {
        serde_json::from_str::<GeminiUsage>(text)
            .ok()
            .map(Into::into)
    }
}
