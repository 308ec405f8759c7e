//! The HTTP accept loop, with the connection time limits that `axum::serve` cannot set.
//!
//! `axum::serve` exposes none of hyper's connection settings, so a client that trickles a
//! request head a byte at a time, or keeps a connection open and sends nothing, holds a file
//! descriptor for ever: enough of them and the process cannot accept anyone. This loop serves
//! each connection with hyper's HTTP/1 builder, as `axum::serve` does, and closes it once the
//! limit of its [`Phase`] passes:
//!
//! | the connection is                                  | closed when it has been so for |
//! |----------------------------------------------------|--------------------------------|
//! | new, or receiving a request head since its first byte | `Limits::header_read_timeout` |
//! | between requests, receiving and sending nothing    | `Limits::idle_timeout`          |
//! | serving a request, until its response body ends (an open SSE feed) | never            |
//!
//! hyper's own `header_read_timeout` is not used: its clock starts whenever hyper waits for a
//! head, which on a kept-alive connection is the end of the previous response, so it would
//! close every idle connection after the header timeout and leave no room for a longer idle
//! timeout. Instead, two watchers move the connection's phase: the socket ([`WatchedStream`]:
//! bytes arrive, bytes leave) and the service ([`TrackedService`]: a request begins, its
//! response body is dropped). The connection's task sleeps until the phase's deadline.
//!
//! Shutdown stops accepting and asks every connection to close once its response is done
//! (hyper's graceful shutdown, which closes idle connections at once), then waits up to
//! [`SHUTDOWN_GRACE`] and drops the connections still open, so no request, however slow,
//! holds shutdown for ever. (Event feeds end by themselves when shutdown begins.)

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::serve::Listener;
use bytes::{Buf, Bytes};
use futures_util::future::BoxFuture;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::error::{ApiError, Problem};
use crate::config::Limits;

/// How long shutdown waits for responses still under way before dropping their connections:
/// long enough for ordinary requests to finish; a request slower than this is cut. A write
/// cut this way still completes (`run_to_end`).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The longest request target hyper parses (its own limit, which it does not export).
pub(crate) const MAX_TARGET_BYTES: usize = u16::MAX as usize - 1;

/// The most a connection buffers of a request head: room for the longest target and the
/// headers of any ordinary client, and a bound on what a client can make the server hold.
pub(crate) const MAX_HEAD_BYTES: usize = 128 * 1024;

/// The most header fields a request head may have (hyper's default, stated for the answer).
pub(crate) const MAX_HEADERS: usize = 100;

/// Serves `app` on `listener` until `shutdown` resolves, then closes the connections as the
/// module doc says and returns once none is left.
pub(crate) async fn serve_http(
    mut listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let connections = TaskTracker::new();
    let stopping = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    loop {
        // axum's `Listener` retries failed accepts (pausing when out of descriptors).
        let (stream, _peer) = tokio::select! {
            accepted = Listener::accept(&mut listener) => accepted,
            () = &mut shutdown => break,
        };
        connections.spawn(serve_connection(
            stream,
            app.clone(),
            limits,
            stopping.clone(),
        ));
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// Serves one connection until the client closes it, a limit passes, or shutdown ends it.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    stopping: CancellationToken,
) {
    let phase = Arc::new(watch::Sender::new(Phase::ReadingHead(Instant::now())));
    let mut seen = phase.subscribe();
    let io = TokioIo::new(WatchedStream {
        stream,
        phase: phase.clone(),
        answer: None,
    });
    let service = TrackedService {
        app: TowerToHyperService::new(app),
        phase,
    };
    let mut connection = pin!(
        http1::Builder::new()
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(MAX_HEADERS)
            .serve_connection(io, service)
    );
    let mut drain_by = None;
    loop {
        let limit = seen.borrow_and_update().deadline(&limits);
        let close_at = limit.into_iter().chain(drain_by).min();
        tokio::select! {
            // The connection first: the watchers only move the phase while it is polled, so
            // a change it makes is seen below before the old deadline can fire.
            biased;
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            // Never an error: the watchers inside `connection` hold the sender.
            _ = seen.changed() => {}
            () = stopping.cancelled(), if drain_by.is_none() => {
                connection.as_mut().graceful_shutdown();
                drain_by = Some(Instant::now() + SHUTDOWN_GRACE);
            }
            () = sleep_until(close_at) => {
                tracing::debug!(phase = ?*seen.borrow(), "closing a connection past its time limit");
                return;
            }
        }
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Where a connection stands, for its time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head since this instant: the connection's accept, or the first
    /// byte of a head after an idle spell.
    ReadingHead(Instant),
    /// No request in flight and no byte received since this instant: the end of the last
    /// response, or the last byte of it written.
    Idle(Instant),
    /// This many requests whose response bodies hyper has not yet dropped (HTTP/1 serves one
    /// at a time; counting keeps a late drop from ending the next one).
    Serving(usize),
}

impl Phase {
    /// When the connection is closed unless the phase changes first; `None` while serving.
    fn deadline(self, limits: &Limits) -> Option<Instant> {
        match self {
            Self::ReadingHead(since) => Some(since + limits.header_read_timeout),
            Self::Idle(since) => Some(since + limits.idle_timeout),
            Self::Serving(_) => None,
        }
    }

    /// Bytes arrived: after an idle spell they begin a request head. Whether it changed.
    fn bytes_received(&mut self, now: Instant) -> bool {
        let idle = matches!(self, Self::Idle(_));
        if idle {
            *self = Self::ReadingHead(now);
        }
        idle
    }

    /// Bytes left: the tail of the last response is still reaching a client that reads, so
    /// the idle spell starts again. Whether it changed.
    fn bytes_sent(&mut self, now: Instant) -> bool {
        let idle = matches!(self, Self::Idle(_));
        if idle {
            *self = Self::Idle(now);
        }
        idle
    }

    fn request_began(&mut self) {
        *self = match *self {
            Self::Serving(requests) => Self::Serving(requests + 1),
            Self::ReadingHead(_) | Self::Idle(_) => Self::Serving(1),
        };
    }

    fn response_ended(&mut self, now: Instant) {
        *self = match *self {
            Self::Serving(requests) if requests > 1 => Self::Serving(requests - 1),
            _ => Self::Idle(now),
        };
    }
}

/// The client's socket, telling the phase when bytes pass, and putting a problem document in
/// place of hyper's empty answer to a head it cannot parse.
struct WatchedStream {
    stream: TcpStream,
    phase: Arc<watch::Sender<Phase>>,
    /// The problem answer still to be sent, once hyper has answered an unparsable head.
    answer: Option<Bytes>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.phase
                .send_if_modified(|phase| phase.bytes_received(Instant::now()));
        }
        read
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replaces_automatic_answer(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.note_written(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // hyper writes a head it made up as one slice of its own.
        if let [head] = bufs
            && this.replaces_automatic_answer(head)
        {
            return Poll::Ready(Ok(head.len()));
        }
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.note_written(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_answer(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    /// After a problem answer, shutting down also reads what the client is still sending
    /// until it closes (or the head's time limit ends the connection): closing a socket with
    /// unread bytes resets it, and a reset can destroy the answer before the client reads it.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let answered = this.answer.is_some();
        ready!(this.poll_send_answer(cx))?;
        ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
        if answered {
            ready!(poll_discard_until_closed(&mut this.stream, cx));
        }
        Poll::Ready(Ok(()))
    }
}

impl WatchedStream {
    /// Whether `head` is hyper's own answer to a head it could not parse, which is then
    /// replaced by a problem document. Such an answer is the only thing hyper writes while
    /// it is reading a head: a response of the app follows the service's call, which moves
    /// the phase to `Serving`, and the app's 4xx answers always carry a content type.
    fn replaces_automatic_answer(&mut self, head: &[u8]) -> bool {
        if self.answer.is_some() {
            return true;
        }
        if !matches!(*self.phase.borrow(), Phase::ReadingHead(_)) {
            return false;
        }
        let Some(error) = automatic_answer(head) else {
            return false;
        };
        let (status, problem) = error.problem();
        tracing::debug!(%status, detail = %problem.detail, "answering an unparsable request head");
        self.answer = Some(problem_answer(status, &problem));
        true
    }

    /// Sends what is left of the problem answer, if there is one.
    fn poll_send_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(answer) = self.answer.as_mut().filter(|answer| !answer.is_empty()) {
            let written = ready!(Pin::new(&mut self.stream).poll_write(cx, answer))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            answer.advance(written);
        }
        Poll::Ready(Ok(()))
    }

    fn note_written(&self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.phase
                .send_if_modified(|phase| phase.bytes_sent(Instant::now()));
        }
    }
}

/// The app as a hyper service that keeps the phase at `Serving` while a response is unfinished.
#[derive(Clone)]
struct TrackedService {
    app: TowerToHyperService<Router>,
    phase: Arc<watch::Sender<Phase>>,
}

impl Service<Request<Incoming>> for TrackedService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::begin(self.phase.clone());
        let response = self.app.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// One request in flight: it begins when hyper calls the service and ends when this is dropped,
/// with the response body once hyper has sent it, or with the request if the connection dies.
struct InFlight(Arc<watch::Sender<Phase>>);

impl InFlight {
    fn begin(phase: Arc<watch::Sender<Phase>>) -> Self {
        phase.send_modify(Phase::request_began);
        Self(phase)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .send_modify(|phase| phase.response_ended(Instant::now()));
    }
}

/// A response body that holds its request's [`InFlight`] until hyper drops it.
struct TrackedBody {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The error hyper's automatic answer `head` stands for: a status line of 400, 414 or 431
/// with no body (hyper sends `content-length: 0` and a date, nothing more).
fn automatic_answer(head: &[u8]) -> Option<ApiError> {
    let head = std::str::from_utf8(head).ok()?;
    let (status_line, headers) = head.strip_suffix("\r\n\r\n")?.split_once("\r\n")?;
    let has_no_body = headers
        .split("\r\n")
        .any(|header| header.eq_ignore_ascii_case("content-length: 0"));
    let has_content_type = headers
        .split("\r\n")
        .any(|header| header.to_ascii_lowercase().starts_with("content-type:"));
    if !has_no_body || has_content_type {
        return None;
    }
    let status = status_line.strip_prefix("HTTP/1.")?.get(2..5)?;
    match status {
        "400" => Some(ApiError::MalformedRequest(
            "the request head does not parse as HTTP/1.1: check its method, target, version \
             and header names and values"
                .to_owned(),
        )),
        "414" => Some(ApiError::UriTooLong(format!(
            "the request target is longer than {MAX_TARGET_BYTES} bytes"
        ))),
        "431" => Some(ApiError::HeadersTooLarge(format!(
            "the request head is larger than {MAX_HEAD_BYTES} bytes or has more than \
             {MAX_HEADERS} header fields"
        ))),
        _ => None,
    }
}

/// A whole HTTP/1.1 response carrying `problem`, closing the connection as hyper would.
fn problem_answer(status: StatusCode, problem: &Problem) -> Bytes {
    let body = serde_json::to_vec(problem).expect("a problem document serializes");
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    [head.into_bytes(), body].concat().into()
}

/// Reads and drops what the client sends until it closes its side or the socket fails.
fn poll_discard_until_closed(stream: &mut TcpStream, cx: &mut Context<'_>) -> Poll<()> {
    let mut scratch = [0_u8; 8192];
    loop {
        let mut buf = ReadBuf::new(&mut scratch);
        match ready!(Pin::new(&mut *stream).poll_read(cx, &mut buf)) {
            Ok(()) if !buf.filled().is_empty() => {}
            Ok(()) | Err(_) => return Poll::Ready(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    #[test]
    fn a_head_has_the_header_limit_from_its_first_byte_and_a_response_has_none() {
        let (start, limits) = (Instant::now(), limits());
        let later = |secs| start + Duration::from_secs(secs);
        let mut phase = Phase::ReadingHead(start);
        assert_eq!(phase.deadline(&limits), Some(later(10)), "a new connection");
        assert!(
            !phase.bytes_received(later(1)),
            "a head's bytes keep its start"
        );
        phase.request_began();
        assert_eq!(phase.deadline(&limits), None, "serving is never cut");
        phase.response_ended(later(30));
        assert_eq!(
            phase.deadline(&limits),
            Some(later(90)),
            "idle from the end"
        );
        assert!(phase.bytes_sent(later(35)), "the tail still leaving");
        assert_eq!(phase.deadline(&limits), Some(later(95)));
        assert!(phase.bytes_received(later(40)), "the next head begins");
        assert_eq!(phase.deadline(&limits), Some(later(50)));
    }

    #[test]
    fn a_late_dropped_body_does_not_end_the_next_response() {
        let mut phase = Phase::ReadingHead(Instant::now());
        phase.request_began();
        phase.request_began();
        phase.response_ended(Instant::now());
        assert_eq!(phase, Phase::Serving(1));
        phase.response_ended(Instant::now());
        assert!(matches!(phase, Phase::Idle(_)));
    }
}
