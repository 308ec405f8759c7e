//! The real client against a real embeddings server on a loopback port: a small axum app that
//! answers like an OpenAI-compatible provider, with hash vectors so answers are checkable,
//! and that can be scripted to fail the ways providers fail.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::*;
use crate::embed::builtin::HashEmbedder;

/// The model the mock computes: `hash-v1`, 256 dimensions.
const DIMS: usize = 256;

/// One answer the mock gives instead of embedding, in the order scripted.
#[derive(Clone)]
enum Scripted {
    /// This status, with this `Retry-After` when given.
    Status(StatusCode, Option<&'static str>),
    /// Embed normally, but only after this long.
    Slow(Duration),
}

/// A request as the mock received it.
struct Seen {
    at: Instant,
    inputs: Vec<String>,
    body: Value,
    authorization: Option<String>,
}

/// The mock provider's behaviour and what it saw.
#[derive(Default)]
struct Mock {
    /// Answers to give before embedding normally.
    script: Mutex<VecDeque<Scripted>>,
    /// Every request, in arrival order.
    seen: Mutex<Vec<Seen>>,
    /// Return this many dimensions instead of `DIMS`.
    dims: Option<usize>,
    /// Require this bearer token.
    key: Option<&'static str>,
}

impl Mock {
    fn scripted(answers: impl IntoIterator<Item = Scripted>) -> Self {
        Self {
            script: Mutex::new(answers.into_iter().collect()),
            ..Self::default()
        }
    }

    fn record(&self, headers: &HeaderMap, body: &Value) -> Vec<String> {
        let inputs: Vec<String> = serde_json::from_value(body["input"].clone()).unwrap();
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(|value| value.to_str().unwrap().to_owned());
        self.seen.lock().unwrap().push(Seen {
            at: Instant::now(),
            inputs: inputs.clone(),
            body: body.clone(),
            authorization,
        });
        inputs
    }

    fn next_scripted(&self) -> Option<Scripted> {
        self.script.lock().unwrap().pop_front()
    }

    fn request_sizes(&self) -> Vec<usize> {
        let seen = self.seen.lock().unwrap();
        seen.iter().map(|s| s.inputs.len()).collect()
    }

    fn all_inputs(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter().flat_map(|s| s.inputs.clone()).collect()
    }

    /// Arrival times relative to the first request.
    fn arrivals(&self) -> Vec<Duration> {
        let seen = self.seen.lock().unwrap();
        seen.iter().map(|s| s.at - seen[0].at).collect()
    }
}

async fn embeddings(
    State(mock): State<Arc<Mock>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let inputs = mock.record(&headers, &body);
    if let Some(key) = mock.key {
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(&format!("Bearer {key}"))
        {
            return (StatusCode::UNAUTHORIZED, "invalid api key").into_response();
        }
    }
    match mock.next_scripted() {
        Some(Scripted::Status(status, Some(after))) => {
            return (status, [(header::RETRY_AFTER, after)], "scripted").into_response();
        }
        Some(Scripted::Status(status, None)) => return (status, "scripted").into_response(),
        Some(Scripted::Slow(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    if inputs.iter().any(|input| input.contains("POISON")) {
        let error =
            json!({"error": {"message": "input too long", "type": "invalid_request_error"}});
        return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
    }
    axum::Json(answer(&inputs, mock.dims.unwrap_or(DIMS))).into_response()
}

/// Hash vectors scaled by 3 (the client must normalise them), listed in reverse so the
/// client must order them by `index`.
fn answer(inputs: &[String], dims: usize) -> Value {
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(index, input)| {
            let mut vector: Vec<f32> = expected(input).iter().map(|x| x * 3.0).collect();
            vector.resize(dims, 0.5);
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    json!({"object": "list", "model": "mock-embed", "data": data})
}

fn expected(input: &str) -> Vec<f32> {
    HashEmbedder::hash_v1().embed_one(input)
}

/// Serves `mock` on a free loopback port; returns the API root (`.../v1`) and the mock.
async fn serve(mock: Mock) -> (Url, Arc<Mock>) {
    let mock = Arc::new(mock);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/embeddings", post(embeddings))
        .with_state(mock.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (Url::parse(&format!("http://{addr}/v1")).unwrap(), mock)
}

fn settings(base_url: &Url) -> OpenAiSettings {
    OpenAiSettings::new(base_url.clone(), "mock-embed", DIMS)
}

fn embedder(settings: OpenAiSettings) -> OpenAiEmbedder {
    OpenAiEmbedder::new(settings).unwrap()
}

fn texts(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|&t| t.to_owned()).collect()
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-5, "vectors differ by {worst}");
}

#[tokio::test]
async fn vectors_come_back_in_input_order_and_normalised() {
    let (url, _) = serve(Mock::default()).await;
    let inputs = texts(&["alpha", "beta gamma", "delta", "", "epsilon zeta eta"]);
    let vectors = embedder(settings(&url)).embed(&inputs).await.unwrap();
    assert_eq!(vectors.len(), inputs.len());
    for (vector, input) in vectors.iter().zip(&inputs) {
        assert_close(vector, &expected(input));
    }
}

#[tokio::test]
async fn inputs_are_split_into_requests_of_max_batch() {
    let (url, mock) = serve(Mock::default()).await;
    let settings = OpenAiSettings {
        max_batch: NonZeroUsize::new(2).unwrap(),
        ..settings(&url)
    };
    let inputs = texts(&["a", "b", "c", "d", "e"]);
    let vectors = embedder(settings).embed(&inputs).await.unwrap();
    assert_eq!(mock.request_sizes(), [2, 2, 1]);
    for (vector, input) in vectors.iter().zip(&inputs) {
        assert_close(vector, &expected(input));
    }
}

#[tokio::test]
async fn documents_and_queries_get_their_prefixes() {
    let (url, mock) = serve(Mock::default()).await;
    let settings = OpenAiSettings {
        query_prefix: "query: ".into(),
        document_prefix: "passage: ".into(),
        ..settings(&url)
    };
    let embedder = embedder(settings);
    embedder.embed(&texts(&["the doc"])).await.unwrap();
    let query = embedder.embed_query("the question").await.unwrap();
    assert_eq!(
        mock.all_inputs(),
        ["passage: the doc", "query: the question"]
    );
    assert_close(&query, &expected("query: the question"));
}

#[tokio::test]
async fn the_request_names_the_model_and_sends_dimensions_only_when_asked() {
    let (url, mock) = serve(Mock::default()).await;
    embedder(settings(&url))
        .embed(&texts(&["x"]))
        .await
        .unwrap();
    let asking = OpenAiSettings {
        send_dimensions: true,
        ..settings(&url)
    };
    embedder(asking).embed(&texts(&["x"])).await.unwrap();
    let seen = mock.seen.lock().unwrap();
    assert_eq!(seen[0].body["model"], "mock-embed");
    assert!(seen[0].body.get("dimensions").is_none());
    assert_eq!(seen[1].body["dimensions"], DIMS);
}

#[tokio::test]
async fn a_server_error_is_retried_and_the_back_off_counts_as_throttled() {
    let (url, mock) = serve(Mock::scripted([Scripted::Status(
        StatusCode::INTERNAL_SERVER_ERROR,
        None,
    )]))
    .await;
    let embedder = embedder(settings(&url));
    let vectors = embedder.embed(&texts(&["retry me"])).await.unwrap();
    assert_close(&vectors[0], &expected("retry me"));
    assert_eq!(mock.request_sizes(), [1, 1]);
    // The first back-off is at least half of the default 500 ms base.
    assert!(embedder.throttled() >= Duration::from_millis(250));
}

#[tokio::test]
async fn a_429_pauses_every_caller_of_the_model_for_its_retry_after() {
    let (url, mock) = serve(Mock::scripted([Scripted::Status(
        StatusCode::TOO_MANY_REQUESTS,
        Some("1"),
    )]))
    .await;
    let embedder = Arc::new(embedder(settings(&url)));
    let started = Instant::now();
    let first = tokio::spawn({
        let embedder = embedder.clone();
        async move { embedder.embed(&texts(&["first"])).await }
    });
    // Let the first caller receive its 429, then start a second one: it must wait too.
    while mock.request_sizes().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = embedder.embed(&texts(&["second"])).await.unwrap();
    first.await.unwrap().unwrap();

    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_close(&second[0], &expected("second"));
    let arrivals = mock.arrivals();
    assert_eq!(arrivals.len(), 3, "the 429, then both callers once");
    assert!(
        arrivals[1..].iter().all(|&at| at >= Duration::from_secs(1)),
        "{arrivals:?}"
    );
    assert!(embedder.throttled() >= Duration::from_secs(1));
}

#[tokio::test]
async fn timeouts_are_retried_then_reported_unavailable() {
    let slow = Scripted::Slow(Duration::from_secs(3));
    let (url, mock) = serve(Mock::scripted([slow.clone(), slow])).await;
    let settings = OpenAiSettings {
        timeout: Duration::from_millis(200),
        max_attempts: NonZeroU32::new(2).unwrap(),
        ..settings(&url)
    };
    let error = embedder(settings)
        .embed(&texts(&["slow"]))
        .await
        .unwrap_err();
    assert!(matches!(error, EmbedError::Unavailable(_)), "{error}");
    assert!(error.to_string().contains("2 attempts"), "{error}");
    assert_eq!(mock.request_sizes(), [1, 1]);
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_reported_unavailable() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/v1", closed.local_addr().unwrap())).unwrap();
    drop(closed);
    let settings = OpenAiSettings {
        max_attempts: NonZeroU32::new(2).unwrap(),
        ..settings(&url)
    };
    let embedder = embedder(settings);
    let error = embedder.embed(&texts(&["x"])).await.unwrap_err();
    assert!(matches!(error, EmbedError::Unavailable(_)), "{error}");
    assert!(error.to_string().contains("2 attempts"), "{error}");
    assert!(embedder.throttled() >= Duration::from_millis(250));
}

#[tokio::test]
async fn a_dimension_mismatch_is_refused_loudly() {
    let mock = Mock {
        dims: Some(DIMS - 1),
        ..Mock::default()
    };
    let (url, _) = serve(mock).await;
    let error = embedder(settings(&url))
        .embed(&texts(&["x"]))
        .await
        .unwrap_err();
    assert!(matches!(error, EmbedError::Misconfigured(_)), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("255") && message.contains("256"),
        "{message}"
    );
}

#[tokio::test]
async fn a_rejected_input_is_rejected_without_retrying() {
    let (url, mock) = serve(Mock::default()).await;
    let inputs = texts(&["fine", "POISON pill"]);
    let error = embedder(settings(&url)).embed(&inputs).await.unwrap_err();
    let EmbedError::Rejected(reason) = error else {
        panic!("expected Rejected, got {error}");
    };
    assert!(reason.contains("input too long"), "{reason}");
    assert_eq!(mock.request_sizes(), [2]);
}

#[tokio::test]
async fn a_wrong_key_is_misconfigured_not_rejected() {
    let mock = Mock {
        key: Some("right"),
        ..Mock::default()
    };
    let (url, mock) = serve(mock).await;
    for key in [Some("wrong"), None] {
        let settings = OpenAiSettings {
            api_key: key.map(str::to_owned),
            ..settings(&url)
        };
        let error = embedder(settings).embed(&texts(&["x"])).await.unwrap_err();
        assert!(matches!(error, EmbedError::Misconfigured(_)), "{error}");
        assert!(error.to_string().contains("401"), "{error}");
    }
    let right = OpenAiSettings {
        api_key: Some("right".into()),
        ..settings(&url)
    };
    embedder(right).embed(&texts(&["x"])).await.unwrap();
    let seen = mock.seen.lock().unwrap();
    let sent: Vec<_> = seen.iter().map(|s| s.authorization.as_deref()).collect();
    assert_eq!(sent, [Some("Bearer wrong"), None, Some("Bearer right")]);
}

#[tokio::test]
async fn a_wrong_base_url_is_misconfigured_not_rejected() {
    let (url, _) = serve(Mock::default()).await;
    let wrong = url.join("/nope").unwrap();
    let error = embedder(settings(&wrong))
        .embed(&texts(&["x"]))
        .await
        .unwrap_err();
    assert!(matches!(error, EmbedError::Misconfigured(_)), "{error}");
}

#[tokio::test]
async fn requests_per_minute_hold_after_the_burst() {
    // 60 per minute: a burst of 6, then one per second.
    let (url, mock) = serve(Mock::default()).await;
    let settings = OpenAiSettings {
        max_batch: NonZeroUsize::MIN,
        requests_per_minute: NonZeroU32::new(60),
        ..settings(&url)
    };
    let inputs = texts(&["1", "2", "3", "4", "5", "6", "7", "8"]);
    let embedder = embedder(settings);
    embedder.embed(&inputs).await.unwrap();

    let arrivals = mock.arrivals();
    assert_eq!(arrivals.len(), 8);
    for (seen_so_far, at) in (1..).zip(&arrivals) {
        let allowed = 6.0 + at.as_secs_f64() + 0.05;
        assert!(f64::from(seen_so_far) <= allowed, "{seen_so_far} by {at:?}");
    }
    assert!(arrivals[7] >= Duration::from_millis(1_900), "{arrivals:?}");
    assert!(embedder.throttled() >= Duration::from_millis(1_900));
}

#[tokio::test]
async fn no_texts_make_no_request() {
    let (url, mock) = serve(Mock::default()).await;
    let vectors = embedder(settings(&url)).embed(&[]).await.unwrap();
    assert!(vectors.is_empty());
    assert!(mock.request_sizes().is_empty());
}

#[test]
fn the_endpoint_keeps_the_path_and_query_of_the_base_url() {
    let endpoint = |base: &str| embeddings_endpoint(&Url::parse(base).unwrap()).unwrap();
    assert_eq!(endpoint("http://h:1").as_str(), "http://h:1/embeddings");
    assert_eq!(endpoint("http://h/v1").as_str(), "http://h/v1/embeddings");
    assert_eq!(endpoint("http://h/v1/").as_str(), "http://h/v1/embeddings");
    let gateway = endpoint("https://g/openai/v1?api-version=2024-02-01");
    assert_eq!(
        gateway.as_str(),
        "https://g/openai/v1/embeddings?api-version=2024-02-01"
    );
}

#[test]
fn tokens_are_estimated_as_a_quarter_of_the_characters_rounded_up() {
    assert_eq!(request_tokens(&texts(&["", "a", "abcd", "abcde"])), 4);
    assert_eq!(request_tokens(&texts(&["日本語の文"])), 2);
}

#[test]
fn a_vector_without_length_rejects_its_input() {
    for vector in [
        vec![0.0, 0.0],
        vec![f32::NAN, 1.0],
        vec![f32::INFINITY, 0.0],
    ] {
        let error = wire::normalised(vector, 3).unwrap_err();
        assert!(matches!(error, EmbedError::Rejected(_)), "{error}");
    }
    assert_eq!(wire::normalised(vec![3.0, 4.0], 0).unwrap(), [0.6, 0.8]);
}

#[test]
fn usage_gives_the_tokens_billed_prompt_tokens_first() {
    let tokens = |usage: Value| {
        let body = json!({"data": [{"index": 0, "embedding": [3.0, 4.0]}], "usage": usage});
        let answer = wire::read_answer(body.to_string().as_bytes(), 1, 2, "m").unwrap();
        answer.tokens
    };
    assert_eq!(
        tokens(json!({"prompt_tokens": 7, "total_tokens": 9})),
        Some(7)
    );
    assert_eq!(tokens(json!({"total_tokens": 9})), Some(9));
    assert_eq!(tokens(json!({})), None);
    assert_eq!(tokens(Value::Null), None);
}

#[tokio::test]
async fn a_backfill_answered_without_usage_counts_each_request_s_estimate() {
    let (url, mock) = serve(Mock::default()).await;
    let settings = OpenAiSettings {
        max_batch: NonZeroUsize::new(2).unwrap(),
        ..settings(&url)
    };
    let inputs = texts(&["abcd", "abcde", "x"]);
    let embedded = embedder(settings).embed_backfill(&inputs).await.unwrap();
    assert_eq!(mock.request_sizes(), [2, 1]);
    assert_eq!(embedded.vectors.len(), 3);
    assert_eq!(embedded.tokens, Some(1 + 2 + 1));
}
