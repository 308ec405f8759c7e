//! `SerialProvider`: an OpenAI-compatible embeddings server (`POST /embeddings`, as
//! michaelfeil/infinity serves it) that behaves like a self-hosted one — infinity, Hugging Face
//! TEI, Ollama on a CPU — rather than like a cloud API.
//!
//! A fake that answers at once hides the problem users of such servers hit: the server has one
//! model on one device, so it computes one batch at a time, in arrival order, and a live query
//! that arrives behind a backfill's batches waits for all of them. This one does the same: its
//! handlers only put jobs on a FIFO queue, and a single worker computes each job for a service
//! time of `per_request + per_char × characters`, so a batch of 256 texts takes about 256 times
//! as long as one text and everything behind it waits that long. The service time is a
//! `tokio::time::sleep`: what matters here is the queueing, not burning CPU.
//!
//! It fails the way such a server does. `go_down` is a restart: the port refuses connections,
//! every open connection (kept-alive idle ones too) is closed without an answer, and the queue
//! is lost; `come_back` listens on the same port again. `answer_503` is a server still loading
//! its model, `throttle_next` one that sheds load with 429. Vectors are deterministic per text
//! (hashed words, not normalised, never zero), and every request is logged with when it
//! arrived, started and ended, so a caller can tell queueing from computing.
//!
//! Used by the benchmarks and by `tests/api`, so it depends on nothing from the reembed crate.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// How long the worker computes a request: `per_request + per_char × its inputs' characters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speed {
    pub per_request: Duration,
    pub per_char: Duration,
}

impl Speed {
    /// The service time of a request whose inputs hold `chars` characters in all.
    pub fn service_time(&self, chars: usize) -> Duration {
        let chars = u32::try_from(chars).unwrap_or(u32::MAX);
        self.per_request
            .saturating_add(self.per_char.saturating_mul(chars))
    }

    /// The documents per second the provider computes at most, fed back to back with batches
    /// of `batch` texts of `text_chars` characters each.
    pub fn docs_per_second(&self, text_chars: usize, batch: usize) -> f64 {
        let service = self.service_time(text_chars.saturating_mul(batch));
        batch as f64 / service.as_secs_f64()
    }

    /// The characters per second the provider computes at most, fed as `docs_per_second` says.
    pub fn chars_per_second(&self, text_chars: usize, batch: usize) -> f64 {
        self.docs_per_second(text_chars, batch) * text_chars as f64
    }
}

/// A text of `chars` characters that starts with `prefix` and `n`, so the provider's log
/// (`Request::head`) tells whose it is, and its service time is known.
pub fn text(prefix: &str, n: usize, chars: usize) -> String {
    let words = ["embedding", "server", "queue", "order", "model", "vector"];
    let mut text = format!("{prefix} {n} ");
    let mut i = n;
    while text.len() < chars {
        text.push_str(words[i % words.len()]);
        text.push(' ');
        i += 7;
    }
    text.truncate(chars);
    text
}

/// What a `SerialProvider` is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The length of the vectors it answers.
    pub dimensions: usize,
    pub speed: Speed,
}

impl Default for Settings {
    /// 64 dimensions; 2 ms a request and 10 µs a character, about 100 documents of 1,000
    /// characters a second: the order of a small model on a few CPU cores.
    fn default() -> Self {
        let per_request = Duration::from_millis(2);
        let per_char = Duration::from_micros(10);
        let speed = Speed {
            per_request,
            per_char,
        };
        Settings {
            dimensions: 64,
            speed,
        }
    }
}

/// How the provider answered one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with one vector per input, after its service time.
    Embedded,
    /// 503 with `Retry-After: 1`, at once, while `answer_503` is on.
    Unavailable,
    /// 429 with `Retry-After`, at once, as `throttle_next` asked.
    Throttled,
    /// Queued or in service when the provider went down: its connection closed, no answer.
    Lost,
}

/// One request as the provider saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Arrival order, from 0, which is also the order of the queue.
    pub number: u64,
    /// When its body had been read.
    pub arrived: Instant,
    /// When the worker took it, and when it stopped computing it; for a request answered at
    /// once (503, 429), both are `arrived`.
    pub started: Instant,
    pub ended: Instant,
    /// How many texts it carried, and their characters in all.
    pub inputs: usize,
    pub chars: usize,
    /// The first 40 characters of its first input, to tell whose request it was.
    pub head: String,
    pub outcome: Outcome,
}

/// A running provider; dropping it stops the server and the worker.
pub struct SerialProvider {
    shared: Arc<Shared>,
    /// The port it listens on, kept across outages.
    address: SocketAddr,
    base_url: String,
    /// The current up period, `None` while down. A std `Mutex`, held only to take or put the
    /// value, never across an `.await`.
    up: Mutex<Option<Up>>,
    worker: JoinHandle<()>,
}

/// One period between a start (or `come_back`) and a `go_down`.
struct Up {
    /// Cancelled by `go_down`: it stops the accept loop, aborts the period's connections and
    /// loses the jobs they queued.
    life: CancellationToken,
    server: JoinHandle<()>,
}

/// State shared by the handlers, the worker and the caller.
struct Shared {
    settings: Settings,
    /// Admission: the refusals a caller asked for, the arrival counter and the queue, under one
    /// std `Mutex`, so that arrival numbers and queue order agree; held to decide and enqueue
    /// (neither waits), never across an `.await`.
    desk: Mutex<Desk>,
    /// Every request answered or lost so far; a std `Mutex`, held only to push or copy.
    log: Mutex<Vec<Request>>,
}

struct Desk {
    next_number: u64,
    /// Jobs queued or in service: counted up here on enqueue, down by the worker when done.
    pending: usize,
    unavailable: bool,
    throttled: usize,
    throttle_secs: u64,
    queue: mpsc::UnboundedSender<Job>,
}

/// A request waiting for, or in, service.
struct Job {
    number: u64,
    arrived: Instant,
    inputs: Vec<String>,
    /// The life of the up period it arrived in: once cancelled, the job is lost.
    life: CancellationToken,
    reply: oneshot::Sender<Vec<Vec<f32>>>,
}

/// The handlers' state: the provider, and the up period their connections belong to.
#[derive(Clone)]
struct Front {
    shared: Arc<Shared>,
    life: CancellationToken,
}

/// The part of the request body the provider reads.
#[derive(Deserialize)]
struct EmbeddingsRequest {
    input: Vec<String>,
    model: String,
}

impl SerialProvider {
    /// Starts a provider that is up, on a port-0 loopback listener.
    pub async fn start(settings: Settings) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (queue, jobs) = mpsc::unbounded_channel();
        let desk = Desk {
            next_number: 0,
            pending: 0,
            unavailable: false,
            throttled: 0,
            throttle_secs: 0,
            queue,
        };
        let shared = Arc::new(Shared {
            settings,
            desk: Mutex::new(desk),
            log: Mutex::new(Vec::new()),
        });
        let worker = tokio::spawn(work(shared.clone(), jobs));
        let up = Some(serve(shared.clone(), listener));
        Ok(Self {
            shared,
            address,
            base_url: format!("http://{address}"),
            up: Mutex::new(up),
            worker,
        })
    }

    /// `http://127.0.0.1:PORT`, the same across outages: requests go to `{base_url}/embeddings`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A model registry file (TOML) with `hash-v1` active and this provider's model as the
    /// `openai` model `model_id` of `dimensions` (as `Settings` gave them), taking `max_batch`
    /// inputs per request, with `fields` (TOML lines) added to its table.
    pub fn registry_toml(
        &self,
        model_id: &str,
        dimensions: usize,
        max_batch: usize,
        fields: &str,
    ) -> String {
        format!(
            r#"
            active_model = "hash-v1"

            [[models]]
            id = "hash-v1"
            provider = "builtin"
            dimensions = 256

            [[models]]
            id = "{model_id}"
            provider = "openai"
            dimensions = {dimensions}
            base_url = "{}"
            model = "serial-minilm"
            max_batch = {max_batch}
            {fields}
            "#,
            self.base_url
        )
    }

    /// Goes down as a restarting server does; returns once the listener is closed and every
    /// connection of the up period has ended. Does nothing while down.
    pub async fn go_down(&self) {
        let Some(up) = self.up.lock().unwrap().take() else {
            return;
        };
        up.life.cancel();
        let _ = up.server.await;
    }

    /// Listens on the same port again, with an empty queue. Does nothing while up; fails if
    /// the port was taken meanwhile.
    pub async fn come_back(&self) -> io::Result<()> {
        if self.up.lock().unwrap().is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.address).await?;
        *self.up.lock().unwrap() = Some(serve(self.shared.clone(), listener));
        Ok(())
    }

    /// Answers 503 with `Retry-After: 1` to every request while `on`.
    pub fn answer_503(&self, on: bool) {
        self.shared.desk.lock().unwrap().unavailable = on;
    }

    /// Answers 429 with `Retry-After: retry_after_secs` to the next `count` requests.
    pub fn throttle_next(&self, count: usize, retry_after_secs: u64) {
        let mut desk = self.shared.desk.lock().unwrap();
        (desk.throttled, desk.throttle_secs) = (count, retry_after_secs);
    }

    /// How many requests are queued or in service: the provider's queue depth.
    pub fn pending(&self) -> usize {
        self.shared.desk.lock().unwrap().pending
    }

    /// Every request answered or lost so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        let mut requests = self.shared.log.lock().unwrap().clone();
        requests.sort_by_key(|request| request.number);
        requests
    }
}

impl Drop for SerialProvider {
    fn drop(&mut self) {
        if let Some(up) = self.up.lock().unwrap().take() {
            up.life.cancel();
            up.server.abort();
        }
        self.worker.abort();
    }
}

/// Serves `listener` until a new up period's life is cancelled.
fn serve(shared: Arc<Shared>, listener: TcpListener) -> Up {
    let life = CancellationToken::new();
    let front = Front {
        shared,
        life: life.clone(),
    };
    let app = Router::new()
        .route("/embeddings", post(embeddings))
        .with_state(front);
    let doorway = Doorway {
        listener,
        life: life.clone(),
    };
    // Graceful shutdown drops the listener first, so the port refuses at once; it then waits
    // for the connections, which the doorway has made end with the life.
    let serving = axum::serve(doorway, app).with_graceful_shutdown(life.clone().cancelled_owned());
    let server = tokio::spawn(async move {
        let _ = serving.await;
    });
    Up { life, server }
}

async fn embeddings(State(front): State<Front>, Json(body): Json<EmbeddingsRequest>) -> Response {
    let arrived = Instant::now();
    let tokens: usize = body.input.iter().map(|input| input.len().div_ceil(4)).sum();
    let answer = match front.shared.admit(arrived, body.input, &front.life) {
        Ok(answer) => answer,
        Err((status, retry_after)) => return refusal(status, retry_after),
    };
    // An error means the job was lost to an outage; the connection is closed by then, so
    // whatever is answered here never reaches the client.
    let Ok(vectors) = answer.await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let data: Vec<_> = vectors
        .into_iter()
        .enumerate()
        .map(
            |(index, vector)| json!({ "object": "embedding", "index": index, "embedding": vector }),
        )
        .collect();
    let usage = json!({ "prompt_tokens": tokens, "total_tokens": tokens });
    Json(json!({ "object": "list", "data": data, "model": body.model, "usage": usage }))
        .into_response()
}

fn refusal(status: StatusCode, retry_after: u64) -> Response {
    let body =
        Json(json!({ "error": { "message": status.to_string(), "type": "serial_provider" } }));
    (
        status,
        [(header::RETRY_AFTER, retry_after.to_string())],
        body,
    )
        .into_response()
}

/// The one worker: computes the queued jobs one at a time, in arrival order.
async fn work(shared: Arc<Shared>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = jobs.recv().await {
        shared.compute(job).await;
    }
}

impl Shared {
    /// Numbers and queues a request, or refuses it (status, `Retry-After`) as asked.
    fn admit(
        &self,
        arrived: Instant,
        inputs: Vec<String>,
        life: &CancellationToken,
    ) -> Result<oneshot::Receiver<Vec<Vec<f32>>>, (StatusCode, u64)> {
        let mut desk = self.desk.lock().unwrap();
        let number = desk.next_number;
        desk.next_number += 1;
        let refused = if desk.unavailable {
            Some((Outcome::Unavailable, StatusCode::SERVICE_UNAVAILABLE, 1))
        } else if desk.throttled > 0 {
            desk.throttled -= 1;
            Some((
                Outcome::Throttled,
                StatusCode::TOO_MANY_REQUESTS,
                desk.throttle_secs,
            ))
        } else {
            None
        };
        if let Some((outcome, status, retry_after)) = refused {
            drop(desk);
            self.record(Request::new(number, arrived, &inputs, outcome));
            return Err((status, retry_after));
        }
        let (reply, answer) = oneshot::channel();
        let life = life.clone();
        let job = Job {
            number,
            arrived,
            inputs,
            life,
            reply,
        };
        // The worker outlives every handler (both end only with the provider).
        let _ = desk.queue.send(job);
        desk.pending += 1;
        Ok(answer)
    }

    /// Computes one job for its service time, unless its up period ends first. A client that
    /// gave up does not shorten it: like a real server, the worker computes it anyway.
    async fn compute(&self, job: Job) {
        let mut request = Request::new(job.number, job.arrived, &job.inputs, Outcome::Lost);
        request.started = Instant::now();
        let service = tokio::time::sleep(self.settings.speed.service_time(request.chars));
        request.outcome = tokio::select! {
            biased;
            () = job.life.cancelled() => Outcome::Lost,
            () = service => Outcome::Embedded,
        };
        request.ended = Instant::now();
        let embedded = request.outcome == Outcome::Embedded;
        // Uncounted before logged, so that `pending` plus the log never counts a job twice.
        self.desk.lock().unwrap().pending -= 1;
        self.record(request);
        if embedded {
            let dimensions = self.settings.dimensions;
            let vectors = job.inputs.iter().map(|input| embed(input, dimensions));
            let _ = job.reply.send(vectors.collect());
        }
    }

    fn record(&self, request: Request) {
        self.log.lock().unwrap().push(request);
    }
}

impl Request {
    /// The log entry of a request that started and ended on arrival, as a refused one does.
    fn new(number: u64, arrived: Instant, inputs: &[String], outcome: Outcome) -> Self {
        let first = inputs.first().map(String::as_str).unwrap_or_default();
        Request {
            number,
            arrived,
            started: arrived,
            ended: arrived,
            inputs: inputs.len(),
            chars: inputs.iter().map(|input| input.chars().count()).sum(),
            head: first.chars().take(40).collect(),
            outcome,
        }
    }
}

/// The listener of one up period: every connection it accepts ends with the period's life.
struct Doorway {
    listener: TcpListener,
    life: CancellationToken,
}

impl axum::serve::Listener for Doorway {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        let (stream, address) = axum::serve::Listener::accept(&mut self.listener).await;
        let ended = Box::pin(self.life.clone().cancelled_owned());
        (Connection { stream, ended }, address)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A TCP stream that fails every read and write once its up period has ended, so hyper drops
/// it and the socket closes, whether a request is in flight or the connection is idle in a
/// client's pool (hyper reads from both, to notice the client leaving).
struct Connection {
    stream: TcpStream,
    /// Polled before each read or write, so that the cancellation wakes the connection's task.
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Connection {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<Pin<&mut TcpStream>> {
        match self.ended.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::ErrorKind::ConnectionAborted.into()),
            Poll::Pending => Ok(Pin::new(&mut self.stream)),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?.poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?.poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?.poll_shutdown(cx)
    }
}

/// A deterministic, unnormalised vector: each word adds ±1 to a hashed coordinate, and the
/// first coordinate carries a constant so that no text (not even an empty one) gets a zero.
fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    let dimensions = dimensions.max(1);
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

/// SplitMix64's finaliser: spreads FNV's hash over every bit before it picks a coordinate.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
