//! A Vertex AI answer in the form AI Studio gives, for a request that came in AI Studio's form:
//! Vertex-only fields dropped (`createTime`, `usageMetadata.trafficType`, safety ratings'
//! scores and severities, countTokens' `totalBillableCharacters`, ...), citations named as AI
//! Studio names them, the OpenAI surface's `model` without Vertex's `google/`. Each JSON object
//! at the top of the body (a whole answer, an SSE event's data, an element of a JSON-array
//! stream) is rewritten as it completes and sent at once: a stream stays a stream. An object
//! held meanwhile counts against the process's bound on buffered bytes (`server.max_buffered_bytes`,
//! [`BodyBudget`]); one it cannot take, or one over [`MAX_OBJECT_BYTES`], is passed on as it came.
//! A request in Vertex form ([`VertexForm`]) gets Vertex's answer untouched.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

mod fields;
mod objects;

pub use self::fields::{Kind, rewrite};
use self::objects::Objects;
use crate::budget::BodyBudget;
use crate::route::Route;

/// The buffered-bytes budget an answer's held objects count against, and the client they are
/// counted to.
pub type Held = (std::sync::Arc<BodyBudget>, u32);

/// Marks a request that came in Vertex form (`/v1/projects/*/locations/*/publishers/...`):
/// its answer keeps Vertex's form.
#[derive(Debug, Clone, Copy)]
pub struct VertexForm;

/// A JSON object longer than this is passed on as it came (not held to be rewritten).
pub const MAX_OBJECT_BYTES: usize = 8 << 20;

/// The client's body for a Vertex entry's answer: rewritten to AI Studio's form unless the
/// request came in Vertex form (then `None`: sent as it is). Drops `content-length` from
/// `headers` when it rewrites (the length changes).
pub fn wrap<B>(
    body: B,
    route: &Route,
    extensions: &http::Extensions,
    headers: &mut HeaderMap,
    held: Option<Held>,
) -> Result<AiStudioForm<B>, B> {
    if extensions.get::<VertexForm>().is_some() {
        return Err(body);
    }
    match Kind::of(route) {
        Some(kind) => {
            headers.remove(http::header::CONTENT_LENGTH);
            let mut form = AiStudioForm::new(body, kind);
            form.objects.budget = held;
            Ok(form)
        }
        None => Err(body),
    }
}

/// [`wrap`] as the client's response (status and the other headers set by the caller).
pub fn response<B>(
    body: B,
    route: &Route,
    parts: &http::request::Parts,
    headers: &mut HeaderMap,
    held: Held,
) -> axum::response::Response
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    match wrap(body, route, &parts.extensions, headers, Some(held)) {
        Ok(rewritten) => axum::response::Response::new(axum::body::Body::new(rewritten)),
        Err(body) => axum::response::Response::new(axum::body::Body::new(body)),
    }
}

/// A body whose answer objects are rewritten to AI Studio's form as they pass.
pub struct AiStudioForm<B> {
    inner: B,
    objects: Objects,
    out: BytesMut,
    ended: bool,
}

impl<B> AiStudioForm<B> {
    pub fn new(inner: B, kind: Kind) -> Self {
        AiStudioForm {
            inner,
            objects: Objects::new(kind),
            out: BytesMut::new(),
            ended: false,
        }
    }
}

impl<B> HttpBody for AiStudioForm<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.ended = true;
                    this.objects.finish(&mut this.out);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.objects.feed(&data, &mut this.out),
                    // Trailers: what is held goes first.
                    Err(frame) => {
                        this.objects.finish(&mut this.out);
                        if this.out.is_empty() {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        // Rare (Google sends no trailers): the held bytes, then the end.
                        this.ended = true;
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.out.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn through(kind: Kind, chunks: &[&[u8]]) -> (String, Vec<usize>) {
        let mut o = Objects::new(kind);
        let mut all = BytesMut::new();
        let mut sizes = Vec::new();
        for c in chunks {
            let mut out = BytesMut::new();
            o.feed(c, &mut out);
            sizes.push(out.len());
            all.extend_from_slice(&out);
        }
        o.finish(&mut all);
        (String::from_utf8(all.to_vec()).unwrap(), sizes)
    }

    #[test]
    fn a_generate_answer_loses_what_only_vertex_sends() {
        let mut v = json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]},
                "safetyRatings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE",
                    "probabilityScore": 0.1, "severity": "HARM_SEVERITY_NEGLIGIBLE", "severityScore": 0.05}],
                "citationMetadata": {"citations": [{"startIndex": 1, "endIndex": 5, "uri": "https://a",
                    "title": "t", "publicationDate": {"year": 2020}}]},
                "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 6, "trafficType": "ON_DEMAND"},
            "modelVersion": "gemini-2.5-flash", "createTime": "2026-01-01T00:00:00Z", "responseId": "r1"
        });
        assert!(rewrite(Kind::Generate, &mut v));
        assert_eq!(
            v,
            json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]},
                    "safetyRatings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"}],
                    "citationMetadata": {"citationSources": [{"startIndex": 1, "endIndex": 5, "uri": "https://a"}]},
                    "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 6},
                "modelVersion": "gemini-2.5-flash", "responseId": "r1"
            })
        );
        let mut c = json!({"totalTokens": 7, "totalBillableCharacters": 20});
        assert!(rewrite(Kind::CountTokens, &mut c));
        assert_eq!(c, json!({"totalTokens": 7}));
        let mut e = json!({"embedding": {"values": [0.5], "statistics": {"token_count": 3}}, "truncated": false});
        assert!(rewrite(Kind::Embed, &mut e));
        assert_eq!(e, json!({"embedding": {"values": [0.5]}}));
        let mut o = json!({"model": "google/gemini-2.5-flash", "choices": []});
        assert!(rewrite(Kind::OpenAi, &mut o));
        assert_eq!(o["model"], "gemini-2.5-flash");
    }

    #[test]
    fn sse_events_are_rewritten_one_by_one_as_they_complete() {
        let a = br#"data: {"candidates":[],"createTime":"t","responseId":"r"}"#;
        let (text, sizes) = through(
            Kind::Generate,
            &[
                a,
                b"\r\n\r\ndata: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"} {\"}]}}],",
                b"\"createTime\":\"t\"}\r\n\r\n",
            ],
        );
        assert_eq!(
            text,
            "data: {\"candidates\":[],\"responseId\":\"r\"}\r\n\r\ndata: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"} {\"}]}}]}\r\n\r\n"
        );
        // The first event went out with its own chunk; the second waited for its end.
        assert!(sizes[0] > 0);
        assert_eq!(sizes[1], 4 + "data: ".len());
    }

    #[test]
    fn a_json_array_stream_keeps_its_brackets_and_commas() {
        let (text, _) = through(
            Kind::Generate,
            &[
                b"[{\"createTime\":\"t\",\"a\":1}\n,\r\n{\"b\":\"\\\"{\",",
                b"\"createTime\":\"t\"}]",
            ],
        );
        assert_eq!(text, "[{\"a\":1}\n,\r\n{\"b\":\"\\\"{\"}]");
        let (text, _) = through(
            Kind::OpenAi,
            &[b"data: {\"model\":\"google/m\"}\n\ndata: [DONE]\n\n"],
        );
        assert_eq!(text, "data: {\"model\":\"m\"}\n\ndata: [DONE]\n\n");
    }

    #[test]
    fn an_object_the_buffer_budget_cannot_hold_passes_as_it_came_and_gives_its_bytes_back() {
        let budget = std::sync::Arc::new(BodyBudget::new(16, 1.0));
        let mut o = Objects::new(Kind::Generate);
        o.budget = Some((budget.clone(), 7));
        let mut out = BytesMut::new();
        o.feed(b"data: {\"createTime\":\"2026\",", &mut out);
        assert_eq!(budget.held(), 0, "over the budget: nothing held");
        o.feed(b"\"a\":1}\n\ndata: {\"createTime\":\"t\"}\n\n", &mut out);
        assert_eq!(
            &out[..],
            b"data: {\"createTime\":\"2026\",\"a\":1}\n\ndata: {\"createTime\":\"t\"}\n\n"
        );
        // Within the budget: held (and counted) until the object ends, then given back.
        let mut o = Objects::new(Kind::Generate);
        o.budget = Some((budget.clone(), 7));
        let mut out = BytesMut::new();
        o.feed(b"{\"createTime\":", &mut out);
        assert_eq!(budget.held(), 14);
        o.feed(b"\"t\"}", &mut out);
        assert_eq!(budget.held(), 0);
        assert_eq!(&out[..], b"{}");
    }

    #[test]
    fn what_needs_nothing_passes_byte_for_byte() {
        let body = b"{\n  \"totalTokens\": 7\n}\n";
        let (text, _) = through(Kind::CountTokens, &[body]);
        assert_eq!(text.as_bytes(), body);
    }
}
