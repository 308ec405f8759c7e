//! `FakeOpenAi`: an OpenAI-compatible embeddings server (`POST /v1/embeddings`) on a port-0
//! listener of this test's runtime, so reembed's `openai` provider is tested over real HTTP.
//!
//! Its vectors are deterministic (hashed words, not normalised, listed in reverse `index`
//! order, since OpenAI does not promise the order). It records every request it receives, and
//! a test steers it through shared state: transient failures for a share of the requests, 429s
//! with `Retry-After`, answers slower than the client's timeout, vectors of the wrong size,
//! 400 for poisoned inputs, 401, or down (503) until told to recover. Requests carrying the
//! `HELD` marker can be held back, to keep a backfill batch in flight while a test looks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use reembed::embed::ModelRegistry;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The registry id of the fake's model, as `registry` configures it.
pub const MODEL: &str = "fake-small";
/// The length of the fake's vectors, and the `dimensions` the registry promises.
pub const DIMENSIONS: usize = 64;
/// The provider's own name for the model, sent as `model`.
pub const PROVIDER_MODEL: &str = "text-embedding-fake";
/// The environment variable (as the registry's env function sees it) holding `KEY`.
pub const KEY_VAR: &str = "FAKE_OPENAI_API_KEY";
/// The API key; it must never appear in reembed's answers.
pub const KEY: &str = "sk-fake-4f1c9a7e2b8d";

/// Requests with an input containing this marker wait while the fake is held.
pub const HELD: &str = "held-back";
/// Inputs containing this marker are refused with 400 while poisoning is on.
pub const POISON: &str = "poisoned-input";

/// A running fake; dropping it stops the server.
pub struct FakeOpenAi {
    shared: Arc<Shared>,
    /// `http://127.0.0.1:PORT/v1`: what a registry's `base_url` names.
    pub base_url: String,
    server: JoinHandle<()>,
}

/// How the fake answered one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with one vector per input, in time.
    Embedded,
    /// 200, but only after the slow-answer delay: the client has given up by then.
    Late,
    /// 200 in time, with vectors of another length than `DIMENSIONS`.
    WrongDimensions,
    /// An error status.
    Failed(u16),
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Arrival order, from 0.
    pub number: u64,
    /// When it arrived (before any hold).
    pub at: Instant,
    pub model: String,
    pub inputs: Vec<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    pub outcome: Outcome,
}

/// What a test has told the fake to do; read and changed under `Shared::behaviour`.
#[derive(Debug, Default)]
struct Behaviour {
    /// Requests whose `transient_slot` is less than this fail transiently (about half 500,
    /// half 429 with `Retry-After: 0`).
    transient_per_ten: u64,
    /// While set, every request gets 503, with this `Retry-After` when it is `Some`.
    down: Option<Option<u64>>,
    /// Every request gets 401.
    unauthorized: bool,
    /// The next `throttled` requests get 429 with `Retry-After: throttle_secs`.
    throttled: usize,
    throttle_secs: u64,
    /// The next `slowed` requests are answered after `slow_by`.
    slowed: usize,
    slow_by: Duration,
    /// Inputs containing `POISON` get 400.
    poison: bool,
    /// The length of the vectors answered; `None` for `DIMENSIONS`.
    answer_dimensions: Option<usize>,
}

/// State shared by the handler and the test.
struct Shared {
    /// A std `Mutex`: held to read or change the behaviour, never across an `.await`.
    behaviour: Mutex<Behaviour>,
    /// Every request answered so far; a std `Mutex`, held only to push or copy.
    log: Mutex<Vec<Request>>,
    next_number: AtomicU64,
    /// `true` while requests with `HELD` inputs may proceed.
    open: watch::Sender<bool>,
    /// Requests waiting at the hold right now.
    waiting: AtomicUsize,
}

/// The part of the request body the fake reads.
#[derive(Deserialize)]
struct EmbeddingsRequest {
    input: Vec<String>,
    model: String,
}

/// The fake's decision for one request.
enum Answer {
    Vectors {
        dimensions: usize,
        after: Duration,
    },
    Status {
        status: u16,
        retry_after: Option<u64>,
        message: String,
    },
}

impl FakeOpenAi {
    /// Starts a healthy, open fake answering `DIMENSIONS`-long vectors.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(Behaviour::default()),
            log: Mutex::new(Vec::new()),
            next_number: AtomicU64::new(0),
            open: watch::channel(true).0,
            waiting: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port for the fake provider");
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/v1/embeddings", post(embeddings))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the fake provider serves");
        });
        Self {
            shared,
            base_url,
            server,
        }
    }

    /// The registry file's text: hash-v1 and the fake as `MODEL`, with `active` active and
    /// `fields` (TOML lines such as `max_batch = 100`) added to the fake's `[[models]]`.
    pub fn registry_toml(&self, active: &str, fields: &str) -> String {
        let base_url = &self.base_url;
        format!(
            r#"
            active_model = "{active}"

            [[models]]
            id = "hash-v1"
            provider = "builtin"
            dimensions = 256

            [[models]]
            id = "{MODEL}"
            provider = "openai"
            dimensions = {DIMENSIONS}
            base_url = "{base_url}"
            model = "{PROVIDER_MODEL}"
            {fields}
            "#
        )
    }

    /// The registry `registry_toml` describes, built as `--config` builds it, with an
    /// environment holding only `KEY_VAR` (so the process's own variables cannot interfere).
    pub fn registry(&self, active: &str, fields: &str) -> ModelRegistry {
        let text = self.registry_toml(active, fields);
        let env = |name: &str| (name == KEY_VAR).then(|| KEY.to_owned());
        ModelRegistry::from_toml_str(&text, &env)
            .unwrap_or_else(|error| panic!("{error} in the registry:\n{text}"))
    }

    fn behaviour(&self) -> MutexGuard<'_, Behaviour> {
        self.shared.behaviour.lock().unwrap()
    }

    /// Forgets every fault: healthy again (the hold is separate).
    pub fn reset(&self) {
        *self.behaviour() = Behaviour::default();
    }

    /// Fails about `per_ten` requests in ten, transiently (0 turns it off).
    pub fn fail_transiently(&self, per_ten: u64) {
        self.behaviour().transient_per_ten = per_ten;
    }

    /// Answers 503 to everything, with `Retry-After: retry_after` when given, until `recover`.
    pub fn go_down(&self, retry_after: Option<u64>) {
        self.behaviour().down = Some(retry_after);
    }

    pub fn recover(&self) {
        self.behaviour().down = None;
    }

    /// Answers 401 to everything while `on`.
    pub fn refuse_key(&self, on: bool) {
        self.behaviour().unauthorized = on;
    }

    /// Answers 429 with `Retry-After: secs` to the next `count` requests.
    pub fn throttle_next(&self, count: usize, secs: u64) {
        let mut behaviour = self.behaviour();
        (behaviour.throttled, behaviour.throttle_secs) = (count, secs);
    }

    /// Answers the next `count` requests only after `delay`.
    pub fn slow_next(&self, count: usize, delay: Duration) {
        let mut behaviour = self.behaviour();
        (behaviour.slowed, behaviour.slow_by) = (count, delay);
    }

    /// Refuses inputs containing `POISON` with 400 while `on`.
    pub fn poison(&self, on: bool) {
        self.behaviour().poison = on;
    }

    /// Answers vectors of `dimensions` instead of `DIMENSIONS`.
    pub fn answer_dimensions(&self, dimensions: usize) {
        self.behaviour().answer_dimensions = Some(dimensions);
    }

    /// Requests with a `HELD` input wait until `release`.
    pub fn hold(&self) {
        self.shared.open.send_replace(false);
    }

    pub fn release(&self) {
        self.shared.open.send_replace(true);
    }

    /// Requests waiting at the hold now.
    pub fn held_requests(&self) -> usize {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// Waits until at least one request waits at the hold; panics after `timeout`.
    pub async fn until_held(&self, timeout: Duration) {
        crate::helpers::eventually(timeout, "a request held at the fake", || async {
            match self.held_requests() {
                0 => Err("none held yet".to_owned()),
                _ => Ok(()),
            }
        })
        .await;
    }

    /// Every request answered so far, in the order the answers were decided.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.log.lock().unwrap().clone()
    }

    /// How many requests answered in time with the right vectors (`Outcome::Embedded`)
    /// carried each input.
    pub fn embedded_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for request in self.requests() {
            if request.outcome == Outcome::Embedded {
                for input in request.inputs {
                    *counts.entry(input).or_default() += 1;
                }
            }
        }
        counts
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn embeddings(
    State(fake): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<EmbeddingsRequest>,
) -> Response {
    let at = Instant::now();
    let number = fake.next_number.fetch_add(1, Ordering::SeqCst);
    if body.input.iter().any(|input| input.contains(HELD)) {
        fake.wait_while_held().await;
    }
    let answer = fake.decide(number, &body.input);
    let outcome = match &answer {
        Answer::Vectors { after, .. } if !after.is_zero() => Outcome::Late,
        Answer::Vectors { dimensions, .. } if *dimensions != DIMENSIONS => Outcome::WrongDimensions,
        Answer::Vectors { .. } => Outcome::Embedded,
        Answer::Status { status, .. } => Outcome::Failed(*status),
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default().to_owned());
    fake.log.lock().unwrap().push(Request {
        number,
        at,
        model: body.model.clone(),
        inputs: body.input.clone(),
        authorization,
        outcome,
    });
    match answer {
        Answer::Vectors { dimensions, after } => {
            tokio::time::sleep(after).await;
            vectors(&body, dimensions)
        }
        Answer::Status {
            status,
            retry_after,
            message,
        } => error(status, retry_after, &message),
    }
}

impl Shared {
    async fn wait_while_held(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// The answer to request `number`, consuming one of any counted faults it takes.
    fn decide(&self, number: u64, inputs: &[String]) -> Answer {
        let mut b = self.behaviour.lock().unwrap();
        let status = |status, retry_after, message: &str| Answer::Status {
            status,
            retry_after,
            message: message.to_owned(),
        };
        if b.unauthorized {
            return status(401, None, "Incorrect API key provided");
        }
        if let Some(retry_after) = b.down {
            return status(503, retry_after, "the service is down for maintenance");
        }
        if b.throttled > 0 {
            b.throttled -= 1;
            return status(429, Some(b.throttle_secs), "Rate limit reached");
        }
        if transient_slot(number) < b.transient_per_ten {
            return match splitmix64(number) % 2 {
                0 => status(500, None, "the server had an error processing your request"),
                _ => status(429, Some(0), "Rate limit reached, retry now"),
            };
        }
        if b.poison {
            if let Some(at) = inputs.iter().position(|input| input.contains(POISON)) {
                let message = format!("input {at} is poisoned: the model refuses it");
                return status(400, None, &message);
            }
        }
        let after = match b.slowed {
            0 => Duration::ZERO,
            _ => {
                b.slowed -= 1;
                b.slow_by
            }
        };
        let dimensions = b.answer_dimensions.unwrap_or(DIMENSIONS);
        Answer::Vectors { dimensions, after }
    }
}

/// The OpenAI answer: `data` in reverse input order, each with its `index`.
fn vectors(body: &EmbeddingsRequest, dimensions: usize) -> Response {
    let data: Vec<_> = body
        .input
        .iter()
        .enumerate()
        .rev()
        .map(|(index, input)| {
            json!({ "object": "embedding", "index": index, "embedding": embed(input, dimensions) })
        })
        .collect();
    let tokens: usize = body.input.iter().map(|input| input.len().div_ceil(4)).sum();
    let usage = json!({ "prompt_tokens": tokens, "total_tokens": tokens });
    Json(json!({ "object": "list", "data": data, "model": body.model, "usage": usage }))
        .into_response()
}

fn error(status: u16, retry_after: Option<u64>, message: &str) -> Response {
    let status = StatusCode::from_u16(status).expect("a valid status");
    let body = Json(json!({ "error": { "message": message, "type": "fake_error" } }));
    match retry_after {
        Some(secs) => (status, [(header::RETRY_AFTER, secs.to_string())], body).into_response(),
        None => (status, body).into_response(),
    }
}

/// A deterministic, unnormalised vector: each word adds ±1 to a hashed coordinate, and the
/// first coordinate carries a constant so that no text (not even an empty one) gets a zero.
pub fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    let mut vector = vec![0.0f32; dimensions];
    vector[0] = 0.5;
    for word in text.split_whitespace() {
        let hash = splitmix64(fnv1a(word.to_lowercase().as_bytes()));
        let sign = if hash & 1 == 0 { 1.0 } else { -1.0 };
        vector[(hash >> 1) as usize % dimensions] += sign;
    }
    vector
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Request `number`'s place, 0 to 9, in a shuffle of its block of ten numbers: pseudo-random,
/// yet each block of ten requests holds each place once, so "`transient_per_ten` in ten" is
/// exact over every ten consecutive requests rather than true only on average.
fn transient_slot(number: u64) -> u64 {
    // 7 is coprime to 10, so n ↦ (7n + offset) mod 10 permutes each block.
    (7 * number + splitmix64(number / 10)) % 10
}

/// A well-mixed hash of `x` (SplitMix64's finaliser), for pseudo-random but repeatable faults.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
