//! crmflow's HTTP server for operators and admins, beside the stream processor.
//!
//! - `GET /healthz`: 200 while the process runs, rebalancing included.
//! - `GET /readyz`: 200 once every assigned partition is restored and processing, else 503 with
//!   the reason as JSON (Kubernetes readiness).
//! - `GET /metrics`: Prometheus (OpenMetrics text), see [`crmflow_runtime::status`].
//! - `GET /v1/companies/{company}/integrations/{integration}/…`: JSON queries over the committed
//!   state of the partitions this instance holds ([`routes`]); a company held by another
//!   instance of the group is answered by it, through this one ([`forward`]).
//!
//! The server runs on a thread of its own with its own small tokio runtime, so the processing
//! loop (synchronous, librdkafka-driven) never waits for it. Queries, probes and scrapes read
//! what the processor publishes after each round (store views, counters, partition states),
//! never its processing lock, on tokio's blocking pool.
#![deny(missing_docs)]

mod error;
pub mod forward;
pub mod routes;

use std::net::SocketAddr;
use std::thread::JoinHandle;

use crmflow_runtime::Status;
use tokio::sync::oneshot;

pub use error::ApiError;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address does not parse or cannot be bound.
    #[error("cannot listen on `{address}` (config key `http_listen`; e.g. \"0.0.0.0:8080\", or \"\" to turn HTTP off): {source}")]
    Bind {
        /// The configured address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server's thread or runtime could not start.
    #[error("cannot start the HTTP server: {0}")]
    Start(std::io::Error),
}

/// The running server; dropping it stops it.
pub struct HttpServer {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `address` (`host:port`; port 0 picks a free one) and serves `status` until dropped.
    pub fn start(address: &str, status: Status) -> Result<HttpServer, HttpError> {
        let bind_error = |source| HttpError::Bind { address: address.to_owned(), source };
        let listener = std::net::TcpListener::bind(address).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .thread_name("http")
            .enable_all()
            .build()
            .map_err(HttpError::Start)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => return tracing::error!("HTTP server: {e}"),
                    };
                    let serve = axum::serve(listener, routes::router(status)).with_graceful_shutdown(async {
                        stopped.await.ok();
                    });
                    if let Err(e) = serve.await {
                        tracing::error!("HTTP server stopped: {e}");
                    }
                });
            })
            .map_err(HttpError::Start)?;
        tracing::info!(address = %local, "HTTP server listening (/healthz, /readyz, /metrics, /v1/…)");
        Ok(HttpServer { address: local, stop: Some(stop), thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}
