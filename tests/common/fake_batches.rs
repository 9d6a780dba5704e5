//! The fake upstream's Batch API: `models/M:batchGenerateContent` (inline requests or an input
//! file) creates `batches/fbN` owned by the key that created it (another key gets Google's 403),
//! `batches/ID` get, `:cancel`, delete, and the `batches` listing. A test ends a job with
//! [`finish`]; a finished job's answer carries one inline response per request, each with its
//! `usageMetadata` (10 prompt and 5 candidates tokens).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One batch job the fake holds.
#[derive(Debug, Clone)]
pub struct FakeBatch {
    pub key: String,
    pub model: String,
    pub requests: usize,
    pub state: &'static str,
    /// Its results go to this file (`files/ID`) instead of inline.
    pub results_file: Option<String>,
    /// Each result's prompt and candidates tokens (10 and 5 unless a test says otherwise).
    pub usage: (u64, u64),
}

/// The fake's batch jobs, by name.
#[derive(Debug, Default)]
pub struct FakeBatches {
    pub jobs: Mutex<HashMap<String, FakeBatch>>,
    next: Mutex<usize>,
}

/// End a job as succeeded, its results written to `files/out-ID` (downloadable with the key
/// that created the job only).
pub fn finish_to_file(batches: &FakeBatches, name: &str) -> String {
    let mut jobs = batches.jobs.lock().unwrap();
    let j = jobs.get_mut(name).unwrap();
    j.state = "BATCH_STATE_SUCCEEDED";
    let file = format!("files/out-{}", name.trim_start_matches("batches/"));
    j.results_file = Some(file.clone());
    file
}

/// End a job as succeeded, each of its results having used `prompt` and `candidates` tokens
/// (inline, or in its results file with `to_file`); the results file's name, if any.
pub fn finish_using(
    batches: &FakeBatches,
    name: &str,
    prompt: u64,
    candidates: u64,
    to_file: bool,
) -> Option<String> {
    let file = to_file.then(|| finish_to_file(batches, name));
    let mut jobs = batches.jobs.lock().unwrap();
    let j = jobs.get_mut(name).unwrap();
    j.state = "BATCH_STATE_SUCCEEDED";
    j.usage = (prompt, candidates);
    file
}

/// End a job as succeeded.
pub fn finish(batches: &FakeBatches, name: &str) {
    if let Some(j) = batches.jobs.lock().unwrap().get_mut(name) {
        j.state = "BATCH_STATE_SUCCEEDED";
    }
}

fn operation(name: &str, j: &FakeBatch) -> Value {
    let mut op = json!({
        "name": name,
        "metadata": {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "model": format!("models/{}", j.model),
            "name": name,
            "state": j.state,
        },
    });
    if let Some(file) = j
        .results_file
        .as_ref()
        .filter(|_| j.state == "BATCH_STATE_SUCCEEDED")
    {
        op["done"] = json!(true);
        op["response"] = json!({
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput",
            "responsesFile": file,
        });
    } else if j.state == "BATCH_STATE_SUCCEEDED" {
        let responses: Vec<Value> = (0..j.requests)
            .map(|i| json!({"response": {
                "candidates": [{"content": {"role": "model", "parts": [{"text": format!("answer {i}")}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": j.usage.0, "candidatesTokenCount": j.usage.1, "totalTokenCount": j.usage.0 + j.usage.1},
                "modelVersion": j.model,
            }, "metadata": {"key": i.to_string()}}))
            .collect();
        op["done"] = json!(true);
        op["response"] = json!({
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput",
            "inlinedResponses": {"inlinedResponses": responses},
        });
    } else if j.state != "BATCH_STATE_PENDING" && j.state != "BATCH_STATE_RUNNING" {
        op["done"] = json!(true);
    }
    op
}

fn not_yours() -> Response {
    (
        axum::http::StatusCode::FORBIDDEN,
        axum::Json(json!({"error": {"code": 403, "message": "You do not have permission to access the batch or it may not exist.", "status": "PERMISSION_DENIED"}})),
    )
        .into_response()
}

/// The answer to a Batch API call, or `None` for any other path.
pub fn handle(
    batches: &FakeBatches,
    method: &str,
    path: &str,
    key: &str,
    body: &Value,
) -> Option<Response> {
    if let Some(model) = path
        .split("/models/")
        .nth(1)
        .and_then(|m| m.strip_suffix(":batchGenerateContent"))
    {
        let requests = body
            .pointer("/batch/inputConfig/requests/requests")
            .or_else(|| body.pointer("/batch/input_config/requests/requests"))
            .and_then(Value::as_array)
            .map_or(1, Vec::len);
        let n = {
            let mut next = batches.next.lock().unwrap();
            *next += 1;
            *next
        };
        let name = format!("batches/fb{n}");
        let job = FakeBatch {
            key: key.to_string(),
            model: model.to_string(),
            requests,
            state: "BATCH_STATE_PENDING",
            results_file: None,
            usage: (10, 5),
        };
        let op = operation(&name, &job);
        batches.jobs.lock().unwrap().insert(name, job);
        return Some(axum::Json(op).into_response());
    }
    if let Some(file) = path
        .strip_prefix("/download/v1beta/")
        .and_then(|p| p.strip_suffix(":download"))
    {
        let jobs = batches.jobs.lock().unwrap();
        let job = jobs
            .values()
            .find(|j| j.results_file.as_deref() == Some(file))?;
        if job.key != key {
            return Some(not_yours());
        }
        let lines: String = (0..job.requests)
            .map(|i| format!("{{\"key\":\"{i}\",\"response\":{{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"answer {i}\"}}]}}}}],\"usageMetadata\":{{\"promptTokenCount\":{},\"candidatesTokenCount\":{}}}}}}}\n", job.usage.0, job.usage.1))
            .collect();
        return Some(lines.into_response());
    }
    let rest = path
        .strip_prefix("/v1beta/")
        .or_else(|| path.strip_prefix("/v1/"))?;
    if rest == "batches" && method == "GET" {
        let jobs = batches.jobs.lock().unwrap();
        let ops: Vec<Value> = jobs.iter().map(|(n, j)| operation(n, j)).collect();
        return Some(axum::Json(json!({"operations": ops})).into_response());
    }
    let id = rest.strip_prefix("batches/")?;
    let (id, action) = match id.split_once(':') {
        Some((id, a)) => (id, Some(a)),
        None => (id, None),
    };
    let name = format!("batches/{id}");
    let mut jobs = batches.jobs.lock().unwrap();
    let Some(job) = jobs.get_mut(&name) else {
        return Some(
            (
                axum::http::StatusCode::NOT_FOUND,
                axum::Json(json!({"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}})),
            )
                .into_response(),
        );
    };
    if job.key != key {
        return Some(not_yours());
    }
    Some(match (method, action) {
        ("GET", None) => axum::Json(operation(&name, job)).into_response(),
        ("POST", Some("cancel")) => {
            job.state = "BATCH_STATE_CANCELLED";
            axum::Json(json!({})).into_response()
        }
        ("DELETE", None) => {
            jobs.remove(&name);
            axum::Json(json!({})).into_response()
        }
        _ => return None,
    })
}
