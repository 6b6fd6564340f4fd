//! The HTTP server facing clients: HTTP/1.1 and HTTP/2 on one port, a
//! deadline on every wait a client can cause, connection caps, graceful
//! shutdown, and the [`EdgeLayer`] in front of your service.
//!
//! `axum::serve` and a bare hyper-util loop set none of these: a client
//! that sends its head a byte at a time (slowloris), sends nothing, never
//! reads its response or stops halfway through its upload holds a
//! connection — a task, a file descriptor, maybe an upstream stream —
//! forever. [`serve`] bounds each of them (see [`Limits`]):
//!
//! | a client that… | is stopped by |
//! | --- | --- |
//! | sends nothing, or its head slowly | [`header_read_timeout`](Serve::header_read_timeout): disconnected |
//! | idles between HTTP/1.1 requests | [`keep_alive_timeout`](Serve::keep_alive_timeout) |
//! | keeps an HTTP/2 connection without streams (answering PINGs) | [`http2_idle_timeout`](Serve::http2_idle_timeout): GOAWAY |
//! | stops sending the body it announced | [`progress_timeout`](Serve::progress_timeout): its [`Body`] fails with [`RequestBodyTimeout`](crate::connection::RequestBodyTimeout), 408 |
//! | stops reading its response | [`progress_timeout`](Serve::progress_timeout): disconnected |
//! | opens many connections | [`max_connections_per_ip`](Serve::max_connections_per_ip) (closed at once), [`max_connections`](Serve::max_connections) |
//! | sends a huge head | [`max_head_bytes`](Serve::max_head_bytes): 431 |
//!
//! Every request carries the connection's
//! [`ClientAddr`](crate::connection::ClientAddr), and passes the
//! [`EdgeLayer`] (hop-by-hop headers removed, `Host` and
//! `Transfer-Encoding` checked) before your service runs. An HTTP/1.1
//! response sent before the request body was read (a 401 for an upload)
//! carries `Connection: close`, since the connection cannot be reused.
//! With the `tls` feature, [`Serve::tls`] serves HTTPS, or mutual TLS.
//!
//! # Example
//!
//! An axum app, shut down gracefully on Ctrl-C:
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tokio::net::TcpListener;
//! use tower_gateway::server;
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let app = Router::new().route("/", get(|| async { "hello" }));
//! let listener = TcpListener::bind("0.0.0.0:8080").await?;
//! let report = server::serve(listener, app)
//!     .header_read_timeout(Duration::from_secs(5))
//!     .max_connections_per_ip(64)
//!     .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
//!     .shutdown_timeout(Duration::from_secs(20))
//!     .await;
//! println!("{} connections were open, {} cut", report.open, report.cut);
//! # Ok(()) }
//! ```
//!
//! A `ServiceBuilder` stack works the same; the request body type is
//! [`Body`]:
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tokio::net::TcpListener;
//! use tower::ServiceBuilder;
//! use tower_gateway::{connection::ClientAddr, server};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! let service = ServiceBuilder::new().service_fn(|request: Request<server::Body>| async move {
//!     let client = request.extensions().get::<ClientAddr>().map(|c| c.0.ip());
//!     Ok::<_, Infallible>(Response::new(format!("{client:?}")))
//! });
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(
//!     server::serve(listener, service)
//!         .with_graceful_shutdown(async { let _ = stopped.await; })
//!         .into_future(),
//! );
//! let _ = stop.send(());
//! let report = server.await.unwrap();
//! assert_eq!(report.cut, 0);
//! # Ok(()) }
//! ```

mod body;
mod conn;
mod edge;
mod io;
mod limits;
mod serve;
mod shutdown;

pub use body::Body;
pub use edge::{Edge, EdgeLayer};
pub use limits::Limits;
pub use serve::{Serve, serve};
pub use shutdown::ShutdownReport;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
