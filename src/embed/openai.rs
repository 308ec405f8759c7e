//! The `openai` provider: `POST {base_url}/embeddings` as OpenAI defines it, which OpenAI,
//! Azure-compatible gateways, Ollama, vLLM, Hugging Face TEI, LiteLLM and LocalAI all serve.
//!
//! One call may become several requests (`max_batch` inputs each); every request is paced
//! (`pacing`), retried as `domain::retry` decides, and its answer checked against the
//! registry before a vector leaves this module: the right count, every index once, every
//! vector of the promised dimensions. A wrong vector is never returned, only an error.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use reqwest::header::RETRY_AFTER;
use reqwest::{Client, Url};

use super::pacing::Pacer;
use super::{EmbedError, Embedded, Embedder, Lane};
use crate::domain::throttle::DEFAULT_LATENCY_BUDGET;
use crate::domain::{
    BackfillLimits, Bounds, Controller, Pace, Permanent, ProviderFailure, RetryDecision,
    RetryPolicy, estimate_tokens, parse_retry_after,
};
use wire::EmbeddingsRequest;

mod wire;

/// Inputs per request when the configuration names no `max_batch`: the default limit of
/// Hugging Face TEI, the strictest of the common servers, so every server works out of the
/// box. OpenAI accepts up to 2048.
pub const DEFAULT_MAX_BATCH: NonZeroUsize = NonZeroUsize::new(32).unwrap();
/// Request timeout when the configuration names none: generous, because a local server on a
/// CPU may take tens of seconds for a full batch.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest wait for a connection; a provider that cannot accept one in this time is down,
/// however long a request may take once connected.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after a transient failure the provider counts as unreachable for requests that
/// have another way to be served (`Embedder::recently_unreachable`); after that, one of them
/// tries it again.
const UNREACHABLE_HOLD: Duration = Duration::from_secs(5);
/// How much of an error body to quote in an error message.
const ERROR_BODY_CHARS: usize = 300;

/// How to reach and pace one model of an OpenAI-compatible server.
#[derive(Clone)]
pub struct OpenAiSettings {
    /// The API root, e.g. `https://api.openai.com/v1`; requests go to `{base_url}/embeddings`
    /// (a query string, as some gateways want, is kept).
    pub base_url: Url,
    /// The provider's name for the model, sent as `model`.
    pub model: String,
    /// Sent as a bearer token when set; keyless local servers leave it `None`.
    pub api_key: Option<String>,
    /// The length every returned vector must have.
    pub dimensions: usize,
    /// Whether to ask the provider for `dimensions` in the request. Off by default: only some
    /// models can shorten their vectors (OpenAI's `text-embedding-3-*`, Matryoshka models),
    /// and servers such as vLLM refuse the field for the others, which would read as every
    /// input being rejected. Turn it on to pick a shorter size of a model that supports it.
    pub send_dimensions: bool,
    /// Inputs per request, at most.
    pub max_batch: NonZeroUsize,
    /// Requests per minute this client allows itself; `None` for no limit.
    pub requests_per_minute: Option<NonZeroU32>,
    /// Estimated tokens per minute this client allows itself; `None` for no limit.
    pub tokens_per_minute: Option<NonZeroU32>,
    /// The longest one request may take, answer included.
    pub timeout: Duration,
    /// Prepended to every query (e5 wants `query: `).
    pub query_prefix: String,
    /// Prepended to every document (e5 wants `passage: `).
    pub document_prefix: String,
    /// Attempts per request, the first included, before a transient failure is given up.
    pub max_attempts: NonZeroU32,
    /// The extra latency the backfill may add to live requests at this provider; the
    /// backfill's concurrency and batch size adapt to keep to it (`domain::throttle`). Zero
    /// turns the adaptation off: the backfill runs at the migration's configured bounds.
    pub interactive_latency_budget: Duration,
}

impl OpenAiSettings {
    /// Settings for `model` at `base_url` returning `dimensions`-long vectors, with no key, no
    /// prefixes, no pacing and the default batch size, timeout and attempts.
    pub fn new(base_url: Url, model: impl Into<String>, dimensions: usize) -> Self {
        Self {
            base_url,
            model: model.into(),
            api_key: None,
            dimensions,
            send_dimensions: false,
            max_batch: DEFAULT_MAX_BATCH,
            requests_per_minute: None,
            tokens_per_minute: None,
            timeout: DEFAULT_TIMEOUT,
            query_prefix: String::new(),
            document_prefix: String::new(),
            max_attempts: NonZeroU32::new(RetryPolicy::default().max_attempts)
                .unwrap_or(NonZeroU32::MIN),
            interactive_latency_budget: DEFAULT_LATENCY_BUDGET,
        }
    }
}

/// A model served over the OpenAI-compatible embeddings API.
pub struct OpenAiEmbedder {
    settings: OpenAiSettings,
    /// `{base_url}/embeddings`.
    endpoint: Url,
    /// Pools connections to the provider across all callers.
    client: Client,
    /// Shared by every caller of this model: budgets, the overload pause, throttled time.
    pacer: Pacer,
    retry: RetryPolicy,
    /// Sets the backfill's concurrency and batch size from the latencies of this model's
    /// requests; `None` when the budget is zero. A std `Mutex`: taken to record one latency or
    /// read the limits, never across an `.await`.
    controller: Option<Mutex<Controller>>,
    /// When a request last failed transiently, cleared by the next success. A std `Mutex`
    /// taken to set, clear or read one instant.
    failed_at: Mutex<Option<Instant>>,
}

/// A failed attempt, as the retry policy needs to see it.
struct Failed {
    failure: ProviderFailure,
    retry_after: Option<Duration>,
    /// What happened, for the error message.
    detail: String,
}

impl OpenAiEmbedder {
    /// Builds the client; `Misconfigured` when `base_url` cannot take an `/embeddings` path
    /// or no HTTP client can be built.
    pub fn new(settings: OpenAiSettings) -> Result<Self, EmbedError> {
        let endpoint = embeddings_endpoint(&settings.base_url)?;
        let client = Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(CONNECT_TIMEOUT))
            .user_agent(concat!("reembed/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| EmbedError::Misconfigured(format!("HTTP client: {error}")))?;
        let pacer = Pacer::new(settings.requests_per_minute, settings.tokens_per_minute);
        let retry = RetryPolicy {
            max_attempts: settings.max_attempts.get(),
            ..RetryPolicy::default()
        };
        let controller = (!settings.interactive_latency_budget.is_zero()).then(|| {
            let request_inputs = u32::try_from(settings.max_batch.get()).unwrap_or(u32::MAX);
            Mutex::new(Controller::new(
                settings.interactive_latency_budget,
                request_inputs,
            ))
        });
        Ok(Self {
            settings,
            endpoint,
            client,
            pacer,
            retry,
            controller,
            failed_at: Mutex::new(None),
        })
    }

    /// Embeds `inputs` (prefixes already applied) in requests of at most `max_batch`, in
    /// `lane`, counting the tokens each answer's `usage` reports (or, for an answer without
    /// one, the estimate of its request: what pacing budgets with).
    async fn embed_inputs(
        &self,
        inputs: &[String],
        lane: Lane,
        retry: RetryPolicy,
    ) -> Result<Embedded, EmbedError> {
        let mut vectors = Vec::with_capacity(inputs.len());
        let mut tokens = 0;
        for chunk in inputs.chunks(self.settings.max_batch.get()) {
            let answer = self.embed_chunk(chunk, lane, retry).await?;
            vectors.extend(answer.vectors);
            tokens += answer
                .tokens
                .unwrap_or_else(|| u64::from(request_tokens(chunk)));
        }
        Ok(Embedded {
            vectors,
            tokens: Some(tokens),
        })
    }

    /// One request's worth of inputs: paced in its lane, retried, checked, and its latency
    /// shown to the controller.
    async fn embed_chunk(
        &self,
        inputs: &[String],
        lane: Lane,
        retry: RetryPolicy,
    ) -> Result<wire::Answer, EmbedError> {
        let tokens = request_tokens(inputs);
        let mut attempt = 1;
        loop {
            self.pacer.ready(tokens, lane).await;
            let sent = Instant::now();
            match self.post(inputs).await {
                Ok(body) => {
                    *lock(&self.failed_at) = None;
                    self.observe(lane, inputs.len(), sent.elapsed());
                    let (model, dims) = (&self.settings.model, self.settings.dimensions);
                    return wire::read_answer(body.as_ref(), inputs.len(), dims, model);
                }
                Err(failed) => self.after_failure(failed, attempt, retry).await?,
            }
            attempt += 1;
        }
    }

    /// Sends one request; the raw body of a success, or the failure to classify.
    async fn post(&self, inputs: &[String]) -> Result<impl AsRef<[u8]>, Failed> {
        let body = EmbeddingsRequest {
            input: inputs,
            model: &self.settings.model,
            dimensions: self
                .settings
                .send_dimensions
                .then_some(self.settings.dimensions),
        };
        let mut request = self.client.post(self.endpoint.clone()).json(&body);
        if let Some(key) = &self.settings.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(transport_failure)?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_failure(response).await);
        }
        response.bytes().await.map_err(transport_failure)
    }

    /// Embeds one query, retrying as `retry` says.
    async fn query_with(&self, text: &str, retry: RetryPolicy) -> Result<Vec<f32>, EmbedError> {
        let inputs = with_prefix(&self.settings.query_prefix, &[text]);
        let embedded = self.embed_inputs(&inputs, Lane::Interactive, retry).await?;
        // `read_answer` checked the count: exactly one.
        embedded
            .vectors
            .into_iter()
            .next()
            .ok_or_else(|| EmbedError::Unavailable("no vector for the query".into()))
    }

    /// Shows the controller how long a successful request of `inputs` inputs took.
    fn observe(&self, lane: Lane, inputs: usize, latency: Duration) {
        let Some(controller) = &self.controller else {
            return;
        };
        let mut controller = lock(controller);
        match lane {
            Lane::Interactive => controller.observe_interactive(inputs, latency, Instant::now()),
            Lane::Backfill => controller.observe_backfill(latency, Instant::now()),
        }
    }

    /// Waits as the retry policy says (the whole model waits on an overload), or turns the
    /// failure into the error the caller gets.
    async fn after_failure(
        &self,
        failed: Failed,
        attempt: u32,
        retry: RetryPolicy,
    ) -> Result<(), EmbedError> {
        let decision = retry.decide(failed.failure, failed.retry_after, attempt, rand::random());
        let model = &self.settings.model;
        if matches!(
            decision,
            RetryDecision::Retry { .. } | RetryDecision::Exhausted
        ) {
            *lock(&self.failed_at) = Some(Instant::now());
        }
        match decision {
            RetryDecision::Retry { after } => {
                let detail = &failed.detail;
                tracing::warn!(model, attempt, ?after, %detail, "embedding failed; retrying");
                if failed.failure.is_overload() {
                    self.pacer.pause_for(after);
                } else {
                    self.pacer.back_off(after).await;
                }
                Ok(())
            }
            RetryDecision::GiveUp(Permanent::Rejected) => Err(EmbedError::Rejected(failed.detail)),
            RetryDecision::GiveUp(Permanent::Misconfigured) => Err(EmbedError::Misconfigured(
                format!("{model} at {}: {}", self.endpoint, failed.detail),
            )),
            RetryDecision::Exhausted => Err(EmbedError::Unavailable(format!(
                "{model}: gave up after {attempt} attempts: {}",
                failed.detail
            ))),
        }
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn dimensions(&self) -> usize {
        self.settings.dimensions
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let inputs = with_prefix(&self.settings.document_prefix, texts);
        let embedded = self
            .embed_inputs(&inputs, Lane::Interactive, self.retry)
            .await?;
        Ok(embedded.vectors)
    }

    async fn embed_backfill(&self, texts: &[String]) -> Result<Embedded, EmbedError> {
        let inputs = with_prefix(&self.settings.document_prefix, texts);
        self.embed_inputs(&inputs, Lane::Backfill, self.retry).await
    }

    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        self.query_with(text, self.retry).await
    }

    async fn embed_query_once(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let once = RetryPolicy {
            max_attempts: 1,
            ..self.retry
        };
        self.query_with(text, once).await
    }

    fn throttled(&self) -> Duration {
        self.pacer.throttled()
    }

    fn backfill_limits(&self, bounds: Bounds) -> BackfillLimits {
        match &self.controller {
            Some(controller) => lock(controller).limits(bounds),
            None => BackfillLimits::at(bounds),
        }
    }

    fn recently_unreachable(&self) -> bool {
        lock(&self.failed_at).is_some_and(|at| at.elapsed() < UNREACHABLE_HOLD)
    }

    fn pace(&self) -> Pace {
        Pace {
            max_batch: Some(self.settings.max_batch.get()),
            requests_per_minute: self.settings.requests_per_minute.map(NonZeroU32::get),
            tokens_per_minute: self.settings.tokens_per_minute.map(NonZeroU32::get),
        }
    }
}

/// A value behind its lock; each holds plain data, valid even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `{base_url}/embeddings`, keeping any query string of `base_url`.
fn embeddings_endpoint(base_url: &Url) -> Result<Url, EmbedError> {
    let mut endpoint = base_url.clone();
    endpoint
        .path_segments_mut()
        .map_err(|()| EmbedError::Misconfigured(format!("{base_url} cannot be an API root")))?
        .pop_if_empty()
        .push("embeddings");
    Ok(endpoint)
}

fn with_prefix(prefix: &str, texts: &[impl AsRef<str>]) -> Vec<String> {
    texts
        .iter()
        .map(|text| format!("{prefix}{}", text.as_ref()))
        .collect()
}

/// Tokens a request will cost, by the estimate of `domain::estimate_tokens` per input: close
/// for English with OpenAI's tokenisers, and pacing needs only the order of magnitude — the
/// provider's 429 corrects the rest.
fn request_tokens(inputs: &[String]) -> u32 {
    let tokens: u64 = inputs
        .iter()
        .map(|input| estimate_tokens(input.chars().count() as u64))
        .sum();
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

fn transport_failure(error: reqwest::Error) -> Failed {
    let failure = if error.is_timeout() {
        ProviderFailure::Timeout
    } else if error.is_connect() {
        ProviderFailure::Connect
    } else {
        ProviderFailure::Transport
    };
    Failed {
        failure,
        retry_after: None,
        detail: with_causes(&error),
    }
}

/// An error and its causes, since reqwest's own message ("error sending request") leaves out
/// what actually went wrong (refused, reset, timed out).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        message = format!("{message}: {inner}");
        cause = inner.source();
    }
    message
}

/// The failure of a non-success answer, quoting the start of its body (providers explain
/// rejections there).
async fn status_failure(response: reqwest::Response) -> Failed {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, Utc::now()));
    let body = response.text().await.unwrap_or_default();
    let quoted: String = body.chars().take(ERROR_BODY_CHARS).collect();
    Failed {
        failure: ProviderFailure::Status(status.as_u16()),
        retry_after,
        detail: format!("HTTP {status}: {quoted}"),
    }
}

#[cfg(test)]
#[path = "openai_tests.rs"]
mod tests;
