//! Connections that hold a file descriptor without making progress are closed
//! (`--header-read-timeout-secs`, `--idle-timeout-secs`), while a normal request is still
//! answered and an open event feed is never cut (issue 11).

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::helpers::{PATIENCE, TestApp};
use crate::probe::{HELD, Probe};

const HEADER_READ: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(2);
/// Beyond a limit, how long the server may take to close on a busy machine.
const SLACK: Duration = Duration::from_secs(2);
/// Slow clients opened at once.
const TRICKLERS: usize = 20;

async fn app_with_short_limits(probe: &Probe) -> TestApp {
    TestApp::with_config(probe.registry(), |config| {
        config.limits.header_read_timeout = HEADER_READ;
        config.limits.idle_timeout = IDLE;
    })
    .await
}

/// The `host:port` of `app`, for raw connections.
fn address(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Sends a request head one byte every 300 ms until the server closes the connection;
/// returns how long that took, or panics once `limit` has passed with it still open.
async fn trickle_until_closed(address: String, limit: Duration) -> Duration {
    let mut stream = TcpStream::connect(&address).await.expect("a connection");
    let started = Instant::now();
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: reembed\r\nX-Padding: ".to_vec();
    head.extend([b'x'; 64]);
    let mut buf = [0u8; 256];
    for byte in head {
        assert!(
            started.elapsed() < limit,
            "a trickled head still open after {limit:?}"
        );
        if stream.write_all(&[byte]).await.is_err() {
            return started.elapsed();
        }
        let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
        match read {
            Err(_waiting) => {}
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(n)) => panic!(
                "an answer to half a head: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
        }
    }
    panic!(
        "the whole trickled head was read, {:?} after connecting",
        started.elapsed()
    )
}

#[tokio::test]
async fn a_head_trickled_byte_by_byte_is_cut_while_a_fresh_request_is_answered() {
    let app = app_with_short_limits(&Probe::new()).await;
    let mut tricklers = JoinSet::new();
    for _ in 0..TRICKLERS {
        tricklers.spawn(trickle_until_closed(address(&app), HEADER_READ + SLACK));
    }
    tokio::time::sleep(HEADER_READ / 2).await;
    let fresh = reqwest::get(format!("{}/healthz", app.base))
        .await
        .expect("an answer");
    assert_eq!(
        fresh.status(),
        200,
        "a normal request on a fresh connection"
    );
    for open_for in tricklers.join_all().await {
        assert!(open_for >= HEADER_READ / 2, "cut early, after {open_for:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_kept_alive_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let app = app_with_short_limits(&Probe::new()).await;
    let mut stream = TcpStream::connect(address(&app))
        .await
        .expect("a connection");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: reembed\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.expect("a response");
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&response)
        );
        response.extend_from_slice(&buf[..n]);
    }
    let response = String::from_utf8_lossy(&response).to_lowercase();
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(
        response.contains("content-length: 0"),
        "no body to wait for: {response}"
    );

    let answered = Instant::now();
    let read = tokio::time::timeout(IDLE + SLACK, stream.read(&mut buf)).await;
    let closed =
        read.unwrap_or_else(|_| panic!("an idle connection still open after {:?}", IDLE + SLACK));
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "closed, not answered: {closed:?}"
    );
    let open_for = answered.elapsed();
    // Past the header limit: that clock does not run between requests.
    assert!(
        open_for >= HEADER_READ + (IDLE - HEADER_READ) / 2,
        "closed after {open_for:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_event_feed_with_nothing_to_say_stays_open_past_the_idle_timeout() {
    let probe = Probe::new();
    probe.hold();
    let app = app_with_short_limits(&probe).await;
    let docs: Vec<(String, String)> = (1..=3)
        .map(|i| (format!("doc-{i}"), format!("{HELD} document number {i}")))
        .collect();
    app.bulk(&docs).await;
    app.start_migration(&json!({"id": "fed", "target_model": "hash-v2"}))
        .await;
    let mut feed = reqwest::get(format!("{}/v1/migrations/fed/events", app.base))
        .await
        .expect("the feed");
    assert_eq!(feed.status(), 200);
    let mut received = String::new();
    let snapshot = feed
        .chunk()
        .await
        .expect("a readable feed")
        .expect("a snapshot");
    received.push_str(&String::from_utf8_lossy(&snapshot));

    // The batch is held, so the feed sends nothing while the idle limit passes.
    let quiet_until = Instant::now() + IDLE + IDLE / 2;
    while let Ok(chunk) = tokio::time::timeout_at(quiet_until, feed.chunk()).await {
        let chunk = chunk
            .expect("a feed still open")
            .expect("a feed not ended yet");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    probe.release();
    while let Some(chunk) = tokio::time::timeout(PATIENCE, feed.chunk())
        .await
        .expect("the feed ends with its migration")
        .expect("a feed still open")
    {
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        received.contains("event: state"),
        "the final transition: {received}"
    );
    assert!(received.contains("\"completed\""), "{received}");
    app.stop().await;
}
