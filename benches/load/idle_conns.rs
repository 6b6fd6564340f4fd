//! Load benchmark helper: opens N keep-alive connections to a server, sends
//! one request on each (so the server has fully set the connection up), then
//! holds them all idle for the given time (or until killed).
//!
//! ```text
//! load_idle_conns <addr> <count> h1|h2 <hold-seconds> [<bearer-token>]
//! ```
//!
//! Connections are opened one after another, so the server's own pool to
//! its upstream stays small and the server's memory growth is what the
//! client connections cost. Prints `open <n>` (the connections that are up
//! and answered 2xx) once all are set up, then `closed` on exit.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What keeps one connection open: its request sender (dropping it closes
/// the connection; a spawned task drives it).
type Held = Box<dyn std::any::Any>;

async fn open(addr: SocketAddr, h2: bool, token: Option<&str>) -> Result<Held, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let io = TokioIo::new(stream);
    let mut req = Request::builder()
        .uri("/idle")
        .header(header::HOST, addr.to_string());
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let (held, res) = if h2 {
        let (mut send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        let req = req
            .uri(format!("http://{addr}/idle"))
            .body(Empty::<Bytes>::new())?;
        let res = send.send_request(req).await?;
        (Box::new(send) as Held, res)
    } else {
        let (mut send, conn) = http1::handshake(io).await?;
        tokio::spawn(conn);
        let res = send.send_request(req.body(Empty::<Bytes>::new())?).await?;
        (Box::new(send) as Held, res)
    };
    let status = res.status();
    res.into_body().collect().await?;
    if !status.is_success() {
        return Err(format!("status {status}").into());
    }
    Ok(held)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: load_idle_conns <addr> <count> h1|h2 <hold-seconds> [<token>]";
    let addr: SocketAddr = args.first().ok_or(usage)?.parse()?;
    let count: usize = args.get(1).ok_or(usage)?.parse()?;
    let h2 = match args.get(2).map(String::as_str) {
        Some("h1") => false,
        Some("h2") => true,
        _ => return Err(usage.into()),
    };
    let hold: u64 = args.get(3).ok_or(usage)?.parse()?;
    let token = args.get(4).map(String::as_str);
    let mut held = Vec::with_capacity(count);
    let mut failed = 0usize;
    for _ in 0..count {
        match open(addr, h2, token).await {
            Ok(conn) => held.push(conn),
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("connection failed: {e}");
                }
            }
        }
    }
    println!("open {}", held.len());
    tokio::time::sleep(Duration::from_secs(hold)).await;
    // Held until here: dropping the senders closes the connections.
    let n = held.len();
    drop(held);
    println!("closed {n}");
    Ok(())
}
