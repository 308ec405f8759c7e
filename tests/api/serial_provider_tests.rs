//! The serial provider behaves as a self-hosted embedding server does: one request at a time in
//! arrival order, for a service time that grows with the input, outages that refuse
//! connections and close the open ones, and 503s and 429s with `Retry-After`.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::serial_provider::{Outcome, Request, SerialProvider, Settings, Speed};

fn speed(per_request_micros: u64, per_char_micros: u64) -> Speed {
    Speed {
        per_request: Duration::from_micros(per_request_micros),
        per_char: Duration::from_micros(per_char_micros),
    }
}

async fn start(speed: Speed) -> SerialProvider {
    let settings = Settings {
        dimensions: 64,
        speed,
    };
    SerialProvider::start(settings)
        .await
        .expect("a provider on a free port")
}

/// Posts `texts` to `{base_url}/embeddings`.
async fn post(
    client: &reqwest::Client,
    base_url: &str,
    texts: &[String],
) -> reqwest::Result<reqwest::Response> {
    let body = json!({ "input": texts, "model": "bge-small" });
    let url = format!("{base_url}/embeddings");
    client.post(url).json(&body).send().await
}

/// Posts `texts` from a task of its own.
fn spawn_post(
    client: &reqwest::Client,
    base_url: &str,
    texts: Vec<String>,
) -> JoinHandle<reqwest::Result<reqwest::Response>> {
    let (client, base_url) = (client.clone(), base_url.to_owned());
    tokio::spawn(async move { post(&client, &base_url, &texts).await })
}

/// The vectors of a 200 answer, checked against the OpenAI shape.
async fn vectors(response: reqwest::Response, texts: usize) -> Vec<Vec<f32>> {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "bge-small");
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), texts);
    let vector = |(index, item): (usize, &Value)| {
        assert_eq!(item["index"], index);
        let vector: Vec<f32> = serde_json::from_value(item["embedding"].clone()).unwrap();
        assert_eq!(vector.len(), 64);
        assert!(vector.iter().any(|&x| x != 0.0), "a zero vector");
        vector
    };
    data.iter().enumerate().map(vector).collect()
}

/// Waits until the provider has received `count` requests (pending ones or logged ones).
async fn until_received(provider: &SerialProvider, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while provider.pending() + provider.requests().len() < count {
        assert!(
            Instant::now() < deadline,
            "{} requests received",
            provider.requests().len()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `count` distinct texts of `chars` characters each.
fn texts(count: usize, chars: usize) -> Vec<String> {
    let text = |i: usize| format!("{i}{}", "x".repeat(chars - i.to_string().len()));
    (0..count).map(text).collect()
}

#[tokio::test]
async fn requests_are_served_one_at_a_time_in_arrival_order() {
    let provider = start(speed(50_000, 0)).await;
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for i in 0..5 {
        let texts = vec![format!("request {i}"), "the same words".to_owned()];
        answers.push(spawn_post(&client, provider.base_url(), texts));
        until_received(&provider, i + 1).await;
    }
    let mut same = Vec::new();
    for answer in answers {
        let response = answer.await.unwrap().unwrap();
        same.push(vectors(response, 2).await.remove(1));
    }
    assert!(
        same.windows(2).all(|pair| pair[0] == pair[1]),
        "vectors are per text"
    );

    let requests = provider.requests();
    let heads: Vec<_> = requests
        .iter()
        .map(|request| request.head.as_str())
        .collect();
    let sent: Vec<_> = (0..5).map(|i| format!("request {i}")).collect();
    assert_eq!(heads, sent, "served in the order sent");
    for pair in requests.windows(2) {
        assert!(pair[1].started >= pair[0].ended, "overlapping: {pair:#?}");
    }
    let waited = requests[4].started - requests[4].arrived;
    assert!(
        waited >= Duration::from_millis(100),
        "the last one queued for {waited:?}"
    );
    let embedded = |r: &Request| r.outcome == Outcome::Embedded && r.inputs == 2;
    assert!(requests.iter().all(embedded), "{requests:#?}");
}

#[tokio::test]
async fn service_time_grows_with_the_input() {
    let speed = speed(100, 20);
    let provider = start(speed).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        post(&client, provider.base_url(), &texts(1, 500))
            .await
            .unwrap();
    }
    post(&client, provider.base_url(), &texts(32, 500))
        .await
        .unwrap();

    let requests = provider.requests();
    let service = |request: &Request| request.ended - request.started;
    let one = requests[..3].iter().map(service).min().unwrap();
    let batch = service(&requests[3]);
    let ratio = batch.as_secs_f64() / one.as_secs_f64();
    assert!(
        (20.0..45.0).contains(&ratio),
        "{batch:?} for 32 texts, {one:?} for one"
    );
    assert_eq!((requests[3].inputs, requests[3].chars), (32, 32 * 500));
    assert!(batch >= speed.service_time(32 * 500), "{batch:?}");
}

#[test]
fn capacity_follows_from_the_speed() {
    let speed = speed(10_000, 10);
    assert_eq!(speed.service_time(1000), Duration::from_millis(20));
    // Batches of 10 texts of 100 characters: 20 ms each.
    assert!((speed.docs_per_second(100, 10) - 500.0).abs() < 1e-6);
    assert!((speed.chars_per_second(100, 10) - 50_000.0).abs() < 1e-3);
}

/// A connection that has had one answer and stays open, as in a client's pool.
async fn kept_alive(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = "GET /embeddings HTTP/1.1\r\nhost: provider\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        assert_ne!(
            stream.read_buf(&mut answer).await.unwrap(),
            0,
            "closed early"
        );
    }
    assert!(answer.starts_with(b"HTTP/1.1 405"), "{answer:?}");
    stream
}

#[tokio::test]
async fn down_refuses_connections_closes_kept_alive_ones_and_comes_back_on_the_same_port() {
    let provider = start(speed(1_000, 0)).await;
    let address = provider.base_url().trim_start_matches("http://").to_owned();
    let pooled = reqwest::Client::new();
    let text = texts(1, 10);
    vectors(post(&pooled, provider.base_url(), &text).await.unwrap(), 1).await;
    let mut idle = kept_alive(&address).await;

    provider.go_down().await;
    let closed = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut [0; 64])).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    let refused = TcpStream::connect(&address).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    let fresh = reqwest::Client::new();
    let error = post(&fresh, provider.base_url(), &text).await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    let error = post(&pooled, provider.base_url(), &text).await.unwrap_err();
    assert!(error.is_connect() || error.is_request(), "{error:?}");

    provider.come_back().await.unwrap();
    for client in [&pooled, &fresh] {
        vectors(post(client, provider.base_url(), &text).await.unwrap(), 1).await;
    }
    let outcomes: Vec<_> = provider.requests().iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [Outcome::Embedded; 3]);
}

#[tokio::test]
async fn down_loses_the_request_in_service_and_the_queued_ones() {
    let provider = start(speed(1_000, 10)).await;
    let client = reqwest::Client::new();
    // Two seconds of service, and a request queued behind it.
    let in_service = spawn_post(&client, provider.base_url(), texts(1, 200_000));
    until_received(&provider, 1).await;
    let queued = spawn_post(&client, provider.base_url(), texts(1, 10));
    until_received(&provider, 2).await;
    assert_eq!(provider.pending(), 2);

    let began = Instant::now();
    provider.go_down().await;
    let took = began.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "going down took {took:?}"
    );
    assert!(in_service.await.unwrap().is_err(), "answered in service");
    assert!(queued.await.unwrap().is_err(), "answered from the queue");

    provider.come_back().await.unwrap();
    let began = Instant::now();
    let response = post(&client, provider.base_url(), &texts(1, 10)).await;
    vectors(response.unwrap(), 1).await;
    let took = began.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "served after {took:?}: the queue survived"
    );
    let outcomes: Vec<_> = provider.requests().iter().map(|r| r.outcome).collect();
    let [embedded, lost] = [Outcome::Embedded, Outcome::Lost];
    assert_eq!(outcomes, [lost, lost, embedded]);
}

#[tokio::test]
async fn answer_503_and_throttle_next_give_retry_after() {
    let provider = start(speed(0, 0)).await;
    let client = reqwest::Client::new();
    let status = |response: reqwest::Response| {
        let retry_after = response.headers().get("retry-after").cloned();
        let retry_after = retry_after.map(|value| value.to_str().unwrap().to_owned());
        (response.status().as_u16(), retry_after)
    };
    let text = texts(1, 10);
    let send = || post(&client, provider.base_url(), &text);

    provider.answer_503(true);
    assert_eq!(status(send().await.unwrap()), (503, Some("1".to_owned())));
    assert_eq!(status(send().await.unwrap()), (503, Some("1".to_owned())));
    provider.answer_503(false);
    provider.throttle_next(2, 7);
    assert_eq!(status(send().await.unwrap()), (429, Some("7".to_owned())));
    assert_eq!(status(send().await.unwrap()), (429, Some("7".to_owned())));
    assert_eq!(status(send().await.unwrap()), (200, None));

    let outcomes: Vec<_> = provider.requests().iter().map(|r| r.outcome).collect();
    let [unavailable, throttled] = [Outcome::Unavailable, Outcome::Throttled];
    let expected = [
        unavailable,
        unavailable,
        throttled,
        throttled,
        Outcome::Embedded,
    ];
    assert_eq!(outcomes, expected);
}
