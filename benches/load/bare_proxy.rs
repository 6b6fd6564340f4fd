//! Load benchmark, target (b), the reference: the least a hyper-based
//! reverse proxy does. A hyper HTTP/1.1 server hands each request to
//! hyper-util's legacy `Client` (pooled HTTP/1.1 keep-alive connections to
//! the one upstream) with the URI rewritten to the upstream and the
//! `Connection`-related hop-by-hop headers removed; bodies stream both ways.
//!
//! `load_bare_proxy <listen-addr> <upstream-addr> [auto]`. Prints
//! `listening <addr>` once bound. With `auto` it serves through hyper-util's
//! auto (HTTP/1.1 + HTTP/2) server like `load_gateway` does, which
//! separates the cost of the server flavour from the crate's own.

use std::{net::SocketAddr, sync::Arc};

use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::{
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;

const HOP_BY_HOP: [header::HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

async fn forward(
    client: Arc<Client<HttpConnector, Incoming>>,
    authority: Arc<str>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, hyper::Error> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri = Uri::builder()
        .scheme("http")
        .authority(&*authority)
        .path_and_query(path)
        .build();
    let Ok(uri) = uri else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    *req.uri_mut() = uri;
    for name in HOP_BY_HOP {
        req.headers_mut().remove(name);
    }
    req.headers_mut().remove("keep-alive");
    match client.request(req).await {
        Ok(res) => {
            let (mut parts, body) = res.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(name);
            }
            Ok(Response::from_parts(parts, body.boxed()))
        }
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut res = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *res.status_mut() = code;
    res
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: load_bare_proxy <listen-addr> <upstream-addr> [auto]";
    let listen: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let upstream: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let auto = match args.next().as_deref() {
        None => false,
        Some("auto") => true,
        Some(_) => return Err(usage.into()),
    };
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Arc::new(Client::builder(TokioExecutor::new()).build(connector));
    let authority: Arc<str> = upstream.to_string().into();
    let listener = TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| forward(client.clone(), authority.clone(), req));
            let io = TokioIo::new(stream);
            let _ = if auto {
                auto::Builder::new(TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await
            } else {
                http1::Builder::new()
                    .serve_connection(io, svc)
                    .await
                    .map_err(Into::into)
            };
        });
    }
}
