//! The HTTP server loop: axum's, with the connection limits it does not
//! offer.
//!
//! - At most `max_connections` connections are open at once, and
//!   `max_connections_per_address` from one client address; a connection
//!   beyond either is answered 503 `overloaded` and closed at once (never
//!   left unanswered in a queue), so idle sockets cannot exhaust file
//!   descriptors and make `/healthz` stop answering, and one client cannot
//!   hold every connection.
//! - A connection must send a request's whole header within
//!   `header_read_timeout`, and an idle keep-alive connection is closed after
//!   the same time (hyper runs that timer whenever it waits for a request
//!   head), so slowloris clients and silent sockets are dropped.
//!
//! Graceful shutdown: close the listening socket, let every connection
//! finish its request in flight (for at most 30 s), then return.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// Limits of the connection layer.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// Connections from one client address open at once.
    pub max_connections_per_address: usize,
    pub header_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        use crate::config::defaults;
        ConnectionLimits {
            max_connections: defaults::MAX_CONNECTIONS,
            max_connections_per_address: defaults::MAX_CONNECTIONS_PER_ADDRESS,
            header_read_timeout: Duration::from_millis(defaults::HEADER_READ_TIMEOUT_MS),
        }
    }
}

/// How long shutdown waits for open connections to finish their requests.
pub const DRAIN: Duration = Duration::from_secs(30);

/// What a connection beyond a limit gets before it is closed: the same
/// 503 `overloaded` problem as a request over the in-flight limit (one
/// mapping, [`super::problem::problem_for`]), which a client can act on.
fn overloaded_response() -> Vec<u8> {
    let problem = super::problem::problem_for(&crate::error::Error::Overloaded);
    let body = serde_json::to_vec(&problem).expect("problems serialize");
    let mut response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    response
}

/// Answers a connection beyond a limit with [`overloaded_response`], once its request
/// head is in (an answer before the request confuses clients), and closes
/// it. A second at most, 8 KiB read at most.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut head = Vec::new();
        let mut buffer = [0u8; 1024];
        while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buffer[..n]),
            }
        }
        let _ = stream.write_all(&overloaded_response()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for the
/// open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_address = super::KeyedSlots::new(limits.max_connections_per_address);
    // Dropped to tell connections to finish; closed when all have.
    let (stop_tx, stop_rx) = watch::channel(());
    let (done_tx, done_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permits = slots
            .clone()
            .try_acquire_owned()
            .ok()
            .zip(per_address.try_acquire(&peer.ip().to_string()));
        let Some(permit) = permits else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service =
            TowerToHyperService::new(app.clone().map_request(move |request: Request<Incoming>| {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            }));
        let mut stop = stop_rx.clone();
        let done = done_rx.clone();
        let header_read_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            // HTTP/1.1 only: an HTTP/2-detecting server reads the first
            // bytes before any timer runs, so a silent socket would never
            // be closed.
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let mut connection =
                std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
            let finished = tokio::select! {
                result = connection.as_mut() => Some(result),
                _ = stop.changed() => None,
            };
            let result = match finished {
                Some(result) => result,
                None => {
                    // Finish the request in flight, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended");
            }
            drop(permit);
            drop(done);
        });
    }
    // New connections are refused from here on, not left unanswered.
    drop(listener);
    drop(stop_tx);
    drop(done_rx);
    // Every connection holds a receiver; `closed` resolves when all are gone.
    if tokio::time::timeout(DRAIN, done_tx.closed()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN:?}; shutting down anyway");
    }
    Ok(())
}
