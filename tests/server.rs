#![cfg(feature = "server")]
//! The library server over real loopback sockets: every wait a client can
//! cause has a deadline, connection caps, graceful shutdown, and the edge
//! checks. Timeouts are configured short; every wait in a test is bounded.

use std::{
    convert::Infallible,
    future::{Future, IntoFuture},
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::oneshot,
};
use tower::{BoxError, ServiceBuilder};
use tower_gateway::{
    connection::{ClientAddr, RequestBodyTimeout},
    server::{self, Serve, ShutdownReport},
};

/// The bound on any single wait in these tests.
const BOUND: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Runs the server in a task; returns its address.
fn spawn<S, F>(serve: Serve<S, F>) -> SocketAddr
where
    Serve<S, F>: IntoFuture<Output = ShutdownReport>,
    <Serve<S, F> as IntoFuture>::IntoFuture: Send + 'static,
{
    let addr = serve.local_addr().unwrap();
    tokio::spawn(serve.into_future());
    addr
}

/// A service answering with what the tests look at: the client address,
/// the `x-user-id` and `connection` headers it received.
fn echo() -> impl tower::Service<
    Request<server::Body>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|request: Request<server::Body>| async move {
        if request.uri().path() == "/slow" {
            // Keeps its connection busy (a stream open) for a while.
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let client = request
            .extensions()
            .get::<ClientAddr>()
            .map(|c| c.0.to_string());
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap_or("?").to_owned())
        };
        let text = format!(
            "client={} user={} connection={} upgrade={}",
            client.as_deref().unwrap_or("-"),
            header("x-user-id").as_deref().unwrap_or("-"),
            header("connection").as_deref().unwrap_or("-"),
            header("upgrade").as_deref().unwrap_or("-"),
        );
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
    })
}

/// Sends `request` and reads until the server closes or `wait` passes.
async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    read_all(&mut stream, wait).await
}

async fn read_all(stream: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until the end of a response head.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    within("response head", async {
        let mut byte = [0u8; 1];
        while !out.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(0) | Err(_) => break,
                Ok(_) => out.push(byte[0]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).to_ascii_lowercase()
}

/// Whether the server closes `stream` within `wait` (end of stream or a
/// reset; data read on the way is discarded).
async fn closes_within(stream: &mut TcpStream, wait: Duration) -> bool {
    tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

fn status_of(text: &str) -> u16 {
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Connects from `ip` (any 127.0.0.0/8 address is loopback on Linux).
async fn connect_from(ip: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

// ---------------------------------------------------------------------------
// What every request carries

#[tokio::test]
async fn every_request_carries_its_client_addr() {
    let addr = spawn(server::serve(bind().await, echo()));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_all(&mut stream, BOUND).await;
    assert!(text.contains(&format!("client={local} ")), "{text}");
}

// ---------------------------------------------------------------------------
// Deadlines

#[tokio::test]
async fn silent_connection_is_closed_after_header_timeout() {
    let addr =
        spawn(server::serve(bind().await, echo()).header_read_timeout(Duration::from_millis(300)));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    assert!(closes_within(&mut stream, Duration::from_secs(3)).await);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn slowloris_head_is_cut_after_header_timeout() {
    let addr =
        spawn(server::serve(bind().await, echo()).header_read_timeout(Duration::from_millis(500)));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut cut = false;
    // A header byte every 100 ms, never finishing.
    while started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stream.write_all(b"X").await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await
        {
            // hyper answers 408 or just closes; either way the head is cut.
            let _ = read;
            cut = true;
            break;
        }
    }
    assert!(cut, "a slowloris head was still accepted after 3 s");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let addr = spawn(
        server::serve(bind().await, echo())
            .header_read_timeout(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_millis(300)),
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Two requests on the connection: it is kept alive between them.
    for _ in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        let mut body = vec![0u8; length];
        within("body", stream.read_exact(&mut body)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then it idles: closed after the keep-alive timeout, well before the
    // header read timeout.
    let started = Instant::now();
    assert!(closes_within(&mut stream, Duration::from_secs(3)).await);
    let idled = started.elapsed();
    assert!(
        idled >= Duration::from_millis(150) && idled < Duration::from_secs(2),
        "{idled:?}"
    );
}

/// An HTTP/2 client connection (prior knowledge) that pings the server
/// every 50 ms; the task ends when the connection does.
async fn h2_client(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<Instant>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(50))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    (sender, task)
}

#[tokio::test]
async fn idle_h2_connection_answering_pings_is_closed() {
    let service = tower::service_fn(|request: Request<server::Body>| async move {
        let wait: u64 = request.uri().path()[1..].parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("done"))))
    });
    let addr =
        spawn(server::serve(bind().await, service).http2_idle_timeout(Duration::from_millis(300)));
    let (mut sender, ended) = h2_client(addr).await;
    // A stream open longer than the idle timeout is not idle.
    let request = Request::get(format!("http://{addr}/700"))
        .body(Empty::new())
        .unwrap();
    let response = within("h2 request", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = within("h2 body", response.into_body().collect())
        .await
        .unwrap();
    assert_eq!(body.to_bytes(), "done");
    let idle_since = Instant::now();
    // Then no stream: GOAWAY after the idle timeout, pings or not.
    let ended = within("h2 connection end", ended).await.unwrap();
    let idled = ended - idle_since;
    assert!(
        idled >= Duration::from_millis(200) && idled < Duration::from_secs(2),
        "{idled:?}"
    );
}

// ---------------------------------------------------------------------------
// Connection caps

#[tokio::test]
async fn one_ip_at_its_cap_does_not_lock_out_another() {
    let addr = spawn(
        server::serve(bind().await, echo())
            .max_connections_per_ip(2)
            .header_read_timeout(Duration::from_secs(10)),
    );
    // 127.0.0.1 takes both its slots, busy with requests in flight (idle
    // ones would make room, see below).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from([127, 0, 0, 1], addr).await;
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    // Let the accept loop count them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third from the same IP is closed at once.
    let mut third = connect_from([127, 0, 0, 1], addr).await;
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n").await;
    let text = read_all(&mut third, Duration::from_secs(2)).await;
    assert_eq!(text, "", "served beyond the per-IP cap");
    // Another client is served.
    let mut other = connect_from([127, 0, 0, 2], addr).await;
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_all(&mut other, BOUND).await;
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(text.contains("client=127.0.0.2:"), "{text}");
    // A slot freed is a slot for the same IP again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        BOUND,
    )
    .await;
    assert_eq!(status_of(&text), 200, "{text}");
}

#[tokio::test]
async fn upgraded_connections_still_count_against_the_per_ip_cap() {
    // Upgrades to an echo protocol; plain requests get 200.
    let service = tower::service_fn(|mut request: Request<server::Body>| async move {
        if !request.headers().contains_key("upgrade") {
            return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("plain"))));
        }
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = io.read(&mut buf).await {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        let mut response = Response::new(Full::default());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert("connection", http::HeaderValue::from_static("upgrade"));
        response
            .headers_mut()
            .insert("upgrade", http::HeaderValue::from_static("echo"));
        Ok(response)
    });
    let addr = spawn(server::serve(bind().await, service).max_connections_per_ip(1));
    let mut upgraded = connect_from([127, 0, 0, 1], addr).await;
    upgraded
        .write_all(b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut upgraded).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    upgraded.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    within("echo", upgraded.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(&echoed, b"ping");
    // The upgraded connection holds the IP's only slot.
    let text = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(text, "", "served beyond the per-IP cap");
    // Closed, it frees the slot.
    drop(upgraded);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        BOUND,
    )
    .await;
    assert!(text.ends_with("plain"), "{text}");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_slot() {
    let addr = spawn(
        server::serve(bind().await, echo())
            .max_connections(1)
            .header_read_timeout(Duration::from_secs(10)),
    );
    let mut first = TcpStream::connect(addr).await.unwrap();
    first
        .write_all(b"GET /slow HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The second waits in the backlog while the first is busy...
    let mut second = TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let early = read_all(&mut second, Duration::from_millis(500)).await;
    assert_eq!(early, "", "served beyond the connection cap");
    // ...and is served once it closes.
    drop(first);
    let text = read_all(&mut second, BOUND).await;
    assert_eq!(status_of(&text), 200, "{text}");
}

/// A flood of idle connections (kept alive, or silent after a partial
/// head) cannot lock a client with work to do out: at the overall cap and
/// at the per-IP cap, the longest-idle connection makes room.
#[tokio::test]
async fn idle_connections_make_room_for_new_clients_at_either_cap() {
    for (overall, per_ip) in [(3, 100), (100, 3)] {
        let addr = spawn(
            server::serve(bind().await, echo())
                .max_connections(overall)
                .max_connections_per_ip(per_ip)
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10)),
        );
        let mut idle = Vec::new();
        // One kept alive after a request, two silent after a partial head.
        let mut kept = connect_from([127, 0, 0, 1], addr).await;
        kept.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut kept).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        idle.push(kept);
        for _ in 0..2 {
            let mut stream = connect_from([127, 0, 0, 1], addr).await;
            stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            idle.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A new client is served at once, in their place.
        for _ in 0..3 {
            let started = Instant::now();
            let text = raw(
                addr,
                b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
                BOUND,
            )
            .await;
            assert_eq!(status_of(&text), 200, "caps {overall}/{per_ip}: {text}");
            assert!(started.elapsed() < Duration::from_secs(1));
        }
        // The idle ones were closed to make room.
        let mut closed = 0;
        for stream in &mut idle {
            if closes_within(stream, Duration::from_secs(1)).await {
                closed += 1;
            }
        }
        assert!(
            closed >= 1,
            "caps {overall}/{per_ip}: no idle connection made room"
        );
    }
}

// ---------------------------------------------------------------------------
// Progress

/// Answers with how reading the request body went.
fn body_reader() -> impl tower::Service<
    Request<server::Body>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|request: Request<server::Body>| async move {
        let propagate = request.uri().path() == "/propagate";
        match request.into_body().collect().await {
            Ok(body) => Ok(Response::new(Full::new(Bytes::from(format!(
                "read {}",
                body.to_bytes().len()
            ))))),
            Err(error) if propagate => Err(error),
            Err(error) => {
                let timeout = error.downcast_ref::<RequestBodyTimeout>().copied();
                Ok(Response::new(Full::new(Bytes::from(format!(
                    "{timeout:?}"
                )))))
            }
        }
    })
}

#[tokio::test]
async fn stalled_upload_fails_with_request_body_timeout() {
    let addr = spawn(
        server::serve(bind().await, body_reader()).progress_timeout(Duration::from_millis(300)),
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // 10 of 100 bytes, then nothing.
    stream
        .write_all(b"POST /read HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let text = read_all(&mut stream, BOUND).await;
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(text.contains("Some(RequestBodyTimeout(300ms))"), "{text}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // The body was not read to its end: the connection is not reused.
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
}

#[tokio::test]
async fn a_reader_pausing_longer_than_the_progress_timeout_is_no_stall() {
    // Polls the body once, pauses for twice the timeout (as a proxy waiting
    // for upstream capacity would), then reads on.
    let service = tower::service_fn(|request: Request<server::Body>| async move {
        let mut body = request.into_body();
        let first = tokio::time::timeout(Duration::from_millis(20), body.frame()).await;
        assert!(first.is_err(), "the client sends its body later");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let rest = body.collect().await?.to_bytes();
        Ok::<_, BoxError>(Response::new(Full::new(rest)))
    });
    let addr =
        spawn(server::serve(bind().await, service).progress_timeout(Duration::from_millis(300)));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(b"hello").await.unwrap();
    let text = read_all(&mut stream, BOUND).await;
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(text.ends_with("hello"), "{text}");
}

#[tokio::test]
async fn service_failing_on_a_stalled_upload_answers_408() {
    let addr = spawn(
        server::serve(bind().await, body_reader()).progress_timeout(Duration::from_millis(300)),
    );
    let text = raw(
        addr,
        b"POST /propagate HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        BOUND,
    )
    .await;
    assert_eq!(status_of(&text), 408, "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("application/problem+json"), "{text}");
    assert!(lower.contains("connection: close"), "{text}");
    // A complete upload is read.
    let text = raw(
        addr,
        b"POST /propagate HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        BOUND,
    )
    .await;
    assert!(text.ends_with("read 5"), "{text}");
}

/// A response body of `remaining` bytes, made on demand; `dropped`
/// completes when the server lets go of it.
struct Endless {
    remaining: usize,
    _dropped: Option<oneshot::Sender<()>>,
}

/// The server renders refusals into the service's own body type, so it
/// asks for an empty one.
impl Default for Endless {
    fn default() -> Self {
        Self {
            remaining: 0,
            _dropped: None,
        }
    }
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK.len());
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }
}

#[tokio::test]
async fn client_that_never_reads_its_response_is_disconnected() {
    let (dropped_tx, dropped) = oneshot::channel();
    let dropped_tx = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
    let service = tower::service_fn(move |_request: Request<server::Body>| {
        let tx = dropped_tx.lock().unwrap().take();
        async move {
            let Some(tx) = tx else {
                return Ok(Response::new(Endless::default()));
            };
            Ok::<_, Infallible>(Response::new(Endless {
                remaining: 64 * 1024 * 1024,
                _dropped: Some(tx),
            }))
        }
    });
    let addr =
        spawn(server::serve(bind().await, service).progress_timeout(Duration::from_millis(300)));
    // A small receive window, and nothing read after the request.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // The server gives up on the response (drops its body) and the
    // connection.
    within("response body dropped", dropped).await.unwrap_err();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(closes_within(&mut stream, Duration::from_secs(3)).await);
}

// ---------------------------------------------------------------------------
// Graceful shutdown

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_cuts_late_ones() {
    let started = Arc::new(AtomicUsize::new(0));
    let counter = started.clone();
    let service = tower::service_fn(move |request: Request<server::Body>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let wait: u64 = request.uri().path()[1..].parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("done"))))
        }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let serve = server::serve(bind().await, service)
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .shutdown_timeout(Duration::from_millis(800));
    let addr = serve.local_addr().unwrap();
    let server = tokio::spawn(serve.into_future());

    let slow = tokio::spawn(raw(addr, b"GET /400 HTTP/1.1\r\nHost: gw\r\n\r\n", BOUND));
    let late = tokio::spawn(raw(addr, b"GET /10000 HTTP/1.1\r\nHost: gw\r\n\r\n", BOUND));
    within("requests start", async {
        while started.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let signalled = Instant::now();
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Not accepting any more.
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");

    let slow = within("slow request", slow).await.unwrap();
    assert_eq!(status_of(&slow), 200, "{slow}");
    assert!(slow.ends_with("done"), "{slow}");
    // HTTP/1.1: told that the connection closes after this response.
    assert!(
        slow.to_ascii_lowercase().contains("connection: close"),
        "{slow}"
    );

    let report = within("shutdown", server).await.unwrap();
    let took = signalled.elapsed();
    assert_eq!(report.open, 2, "{report:?}");
    assert_eq!(report.cut, 1, "{report:?}");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let late = within("late request", late).await.unwrap();
    assert_eq!(late, "", "the cut request got an answer");
}

#[tokio::test]
async fn dropping_the_server_loop_asks_connections_to_finish() {
    // `Serve::with_graceful_shutdown`: dropping the running loop (aborting
    // its task) asks connections to finish, with no deadline.
    let serve = server::serve(bind().await, echo())
        .header_read_timeout(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(60))
        .http2_idle_timeout(Duration::from_secs(60));
    let addr = serve.local_addr().unwrap();
    let server = tokio::spawn(serve.into_future());
    // Idle after a request, in the middle of one, and not started.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut idle).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let busy = tokio::spawn(raw(addr, b"GET /slow HTTP/1.1\r\nHost: gw\r\n\r\n", BOUND));
    let mut silent = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.abort();
    let _ = server.await;
    assert!(
        closes_within(&mut idle, Duration::from_secs(2)).await,
        "an idle connection stayed open"
    );
    assert!(
        closes_within(&mut silent, Duration::from_secs(2)).await,
        "a connection waiting for its first request stayed open"
    );
    // The request in flight finishes, told that the connection closes.
    let busy = within("busy request", busy).await.unwrap();
    assert_eq!(status_of(&busy), 200, "{busy}");
    assert!(
        busy.to_ascii_lowercase().contains("connection: close"),
        "{busy}"
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_an_h2_stream_finish_after_goaway() {
    let service = tower::service_fn(|request: Request<server::Body>| async move {
        let wait: u64 = request.uri().path()[1..].parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("done"))))
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let serve = server::serve(bind().await, service)
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .shutdown_timeout(Duration::from_secs(3));
    let addr = serve.local_addr().unwrap();
    let server = tokio::spawn(serve.into_future());
    let (mut sender, ended) = h2_client(addr).await;
    let request = Request::get(format!("http://{addr}/400"))
        .body(Empty::new())
        .unwrap();
    let in_flight = tokio::spawn(sender.send_request(request));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let response = within("h2 response", in_flight).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = within("h2 body", response.into_body().collect())
        .await
        .unwrap();
    assert_eq!(body.to_bytes(), "done");
    // GOAWAY: the client may open no more streams, and the connection ends.
    within("h2 connection end", ended).await.unwrap();
    let report = within("shutdown", server).await.unwrap();
    assert_eq!((report.open, report.cut), (1, 0), "{report:?}");
}

// ---------------------------------------------------------------------------
// The edge

#[tokio::test]
async fn client_connection_header_cannot_remove_a_header_set_inside() {
    // A layer inside the server asserts the caller (as authentication
    // does with a forwarded identity header).
    let service = ServiceBuilder::new()
        .map_request(|mut request: Request<server::Body>| {
            if request.uri().path() == "/as-alice" {
                request
                    .headers_mut()
                    .insert("x-user-id", http::HeaderValue::from_static("alice"));
            }
            request
        })
        .service(echo());
    let addr = spawn(server::serve(bind().await, service));
    let text = raw(
        addr,
        b"GET /as-alice HTTP/1.1\r\nHost: gw\r\nConnection: close, x-user-id\r\nX-User-Id: mallory\r\n\r\n",
        BOUND,
    )
    .await;
    assert!(text.contains("user=alice connection=-"), "{text}");
    // The client's own value, named in `Connection`, never gets in.
    let text = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close, x-user-id\r\nX-User-Id: mallory\r\n\r\n",
        BOUND,
    )
    .await;
    assert!(text.contains("user=- connection=-"), "{text}");
    // Upgrades keep what they need.
    let text = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(
        text.contains("connection=upgrade upgrade=websocket"),
        "{text}"
    );
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_501() {
    let addr = spawn(server::serve(bind().await, body_reader()));
    let text = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        BOUND,
    )
    .await;
    assert_eq!(status_of(&text), 501, "{text}");
    assert!(text.contains("unsupported_transfer_coding"), "{text}");
    // gRPC clients get a trailers-only answer.
    let text = raw(
        addr,
        b"POST /pkg.Svc/Call HTTP/1.1\r\nHost: gw\r\nContent-Type: application/grpc\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        BOUND,
    )
    .await;
    let lower = text.to_ascii_lowercase();
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(lower.contains("grpc-status: 12"), "{text}");
    // A single chunked coding is served.
    let text = raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        BOUND,
    )
    .await;
    assert!(text.ends_with("read 5"), "{text}");
}

#[tokio::test]
async fn bad_targets_and_hosts_are_400() {
    let addr = spawn(server::serve(bind().await, echo()));
    for (what, head) in [
        (
            "user info in the target",
            "GET http://user:pw@gw/ HTTP/1.1\r\nHost: gw\r\n",
        ),
        ("absolute form without Host", "GET http://gw/ HTTP/1.1\r\n"),
        ("origin form without Host", "GET / HTTP/1.1\r\n"),
        ("two Host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n"),
        (
            "user info in Host",
            "GET / HTTP/1.1\r\nHost: alice@evil\r\n",
        ),
        ("invalid Host", "GET / HTTP/1.1\r\nHost: a b\r\n"),
    ] {
        let text = raw(
            addr,
            format!("{head}Connection: close\r\n\r\n").as_bytes(),
            BOUND,
        )
        .await;
        assert_eq!(status_of(&text), 400, "{what}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("application/problem+json"),
            "{what}: {text}"
        );
    }
    for (what, head) in [
        (
            "absolute form with Host",
            "GET http://gw/ HTTP/1.1\r\nHost: gw\r\n",
        ),
        ("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n"),
    ] {
        let text = raw(
            addr,
            format!("{head}Connection: close\r\n\r\n").as_bytes(),
            BOUND,
        )
        .await;
        assert_eq!(status_of(&text), 200, "{what}: {text}");
    }
}

#[tokio::test]
async fn early_response_to_an_unread_upload_closes_the_connection() {
    // Refuses without reading the body, as authentication does.
    let service = tower::service_fn(|request: Request<server::Body>| async move {
        if request.uri().path() == "/refuse" {
            let mut response = Response::new(Full::new(Bytes::from("no")));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            return Ok::<_, BoxError>(response);
        }
        let body = request.into_body().collect().await?.to_bytes();
        Ok(Response::new(Full::new(body)))
    });
    let addr = spawn(server::serve(bind().await, service));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /refuse HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    // A body that was read keeps the connection.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
}

#[tokio::test]
async fn oversized_head_is_431() {
    let addr = spawn(server::serve(bind().await, echo()).max_head_bytes(8192));
    let big = "a".repeat(16 * 1024);
    let text = raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: gw\r\nX-Big: {big}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        BOUND,
    )
    .await;
    assert_eq!(status_of(&text), 431, "{text}");
}

// ---------------------------------------------------------------------------
// With the proxy

/// An upstream that reads the whole request body and answers with its
/// length.
#[cfg(feature = "proxy")]
async fn counting_upstream() -> SocketAddr {
    let listener = bind().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc =
                hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
                    let length = request.into_body().collect().await?.to_bytes().len();
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(length.to_string()))))
                });
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .into_owned(),
            );
        }
    });
    addr
}

#[cfg(feature = "proxy")]
#[tokio::test]
async fn stalled_upload_through_the_proxy_is_408_not_an_upstream_failure() {
    use tower_gateway::{
        discovery::{Endpoint, StaticDiscovery},
        proxy::{Proxy, Upstream},
        route::{Route, RouteLayer, Routes},
    };
    let upstream = counting_upstream().await;
    let discovery = StaticDiscovery::new([Endpoint::new("u1", "127.0.0.1", upstream.port())]);
    let table = Routes::builder()
        .route(
            Route::prefix("/").upstream(Upstream::new("svc", discovery.watch()).build().unwrap()),
        )
        .build()
        .unwrap();
    let gateway = ServiceBuilder::new()
        .layer(RouteLayer::new(&table))
        .service(Proxy::new(&table));
    let addr =
        spawn(server::serve(bind().await, gateway).progress_timeout(Duration::from_millis(300)));
    // 10 of 100 bytes, then nothing.
    let started = Instant::now();
    let text = raw(
        addr,
        b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n0123456789",
        BOUND,
    )
    .await;
    assert_eq!(status_of(&text), 408, "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // A complete upload passes.
    let text = raw(
        addr,
        b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789",
        BOUND,
    )
    .await;
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(text.ends_with("10"), "{text}");
    drop(discovery);
}
