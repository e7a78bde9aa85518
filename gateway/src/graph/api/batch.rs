//! JSON batching: many GETs in one round trip, each sub-response throttled on its own.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::graph::auth::Identity;
use crate::graph::client::GraphClient;
use crate::graph::error::GraphError;

/// A sub-response's header, whatever its case (Graph sends `Retry-After`,
/// `Content-Type`; HTTP header names are case-insensitive).
fn sub_header<'a>(response: &'a Value, name: &str) -> Option<&'a str> {
    response["headers"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

/// Largest JSON batch Graph takes.
pub const BATCH_LIMIT: usize = 20;

impl GraphClient {
    /// Many GETs in `$batch`es of 20: one round trip instead of twenty.
    /// Each answer is its own result (a 404 for one user fails only that
    /// one), and each is throttled on its own: items answered 429/503/504
    /// are sent again, alone, after the longest Retry-After they name
    /// (https://learn.microsoft.com/graph/json-batching#handling-throttling),
    /// within the client's retry policy.
    pub async fn batch_get(
        &self,
        paths: &[String],
    ) -> Result<Vec<Result<Value, GraphError>>, GraphError> {
        let mut results: Vec<Option<Result<Value, GraphError>>> = vec![None; paths.len()];
        let policy = self.retry_policy().clone();
        let mut pending: Vec<usize> = (0..paths.len()).collect();
        let mut waited = Duration::ZERO;
        for attempt in 1..=policy.max_attempts.max(1) {
            let mut again = Vec::new();
            let mut wait = Duration::ZERO;
            for chunk in pending.chunks(BATCH_LIMIT) {
                let chunk_paths: Vec<&str> = chunk.iter().map(|&i| paths[i].as_str()).collect();
                for (&index, answer) in chunk.iter().zip(self.one_batch(&chunk_paths).await?) {
                    match answer {
                        Err(e) if e.is_retryable() && attempt < policy.max_attempts => {
                            let after = match &e {
                                GraphError::Api {
                                    retry_after: Some(after),
                                    ..
                                } => *after,
                                _ => policy.backoff * 2u32.saturating_pow(attempt - 1),
                            };
                            wait = wait.max(after);
                            again.push(index);
                            results[index] = Some(Err(e));
                        }
                        answer => results[index] = Some(answer),
                    }
                }
            }
            if again.is_empty() || waited + wait > policy.max_wait {
                break;
            }
            tracing::debug!(
                items = again.len(),
                ?wait,
                "throttled $batch items sent again"
            );
            tokio::time::sleep(wait).await;
            waited += wait;
            pending = again;
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(GraphError::Decode("a $batch item got no answer".into())))
            })
            .collect())
    }

    /// One `$batch` of at most 20 GETs, answers in the order of `paths`.
    async fn one_batch(
        &self,
        paths: &[&str],
    ) -> Result<Vec<Result<Value, GraphError>>, GraphError> {
        let requests: Vec<Value> = paths
            .iter()
            .enumerate()
            .map(|(i, path)| json!({"id": i.to_string(), "method": "GET", "url": path}))
            .collect();
        let reply: Value = self
            .json(
                &Identity::App,
                None,
                Method::POST,
                "/$batch",
                Some(&json!({"requests": requests})),
            )
            .await?;
        let mut answers: Vec<(usize, Result<Value, GraphError>)> = reply["responses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let index = r["id"]
                    .as_str()
                    .and_then(|i| i.parse::<usize>().ok())
                    .unwrap_or(usize::MAX);
                let status = r["status"].as_u64().unwrap_or(0) as u16;
                let answer = if (200..300).contains(&status) {
                    Ok(r["body"].clone())
                } else {
                    let retry_after = sub_header(r, "retry-after")
                        .and_then(|v| v.trim().parse().ok())
                        .map(Duration::from_secs);
                    let body = serde_json::to_vec(&r["body"]).unwrap_or_default();
                    Err(GraphError::from_response(status, None, retry_after, &body))
                };
                (index, answer)
            })
            .collect();
        answers.sort_by_key(|(i, _)| *i);
        if answers.len() != paths.len() || answers.iter().enumerate().any(|(n, (i, _))| n != *i) {
            return Err(GraphError::Decode(
                "a $batch answer does not match its requests".into(),
            ));
        }
        Ok(answers.into_iter().map(|(_, a)| a).collect())
    }
}
