//! The HTTP server loop: axum's, with the connection limits it does not
//! offer.
//!
//! - At most `max_connections` connections are open at once; beyond that,
//!   new ones wait in the kernel's accept queue instead of taking file
//!   descriptors (so ~1,000 idle sockets cannot make `/healthz` stop
//!   answering).
//! - A connection must send a request's whole header within
//!   `header_read_timeout`, and an idle keep-alive connection is closed after
//!   the same time (hyper runs that timer whenever it waits for a request
//!   head), so slowloris clients and silent sockets are dropped.
//!
//! Graceful shutdown is axum's: stop accepting, let every connection finish
//! its request in flight, then return.

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
    pub header_read_timeout: Duration,
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
    // Dropped to tell connections to finish; closed when all have.
    let (stop_tx, stop_rx) = watch::channel(());
    let (done_tx, done_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => break,
        };
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
    drop(stop_tx);
    drop(done_rx);
    // Every connection holds a receiver; `closed` resolves when all are gone.
    done_tx.closed().await;
    Ok(())
}
