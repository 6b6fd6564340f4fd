//! Load benchmark attacker: forged ES256 tokens at full speed from its own
//! loopback address, beside the valid users of target (d).
//!
//! ```text
//! load_forger <gateway-addr> <bind-ip> <connections> <seconds> distinct|repeat
//! ```
//!
//! Each connection binds `bind-ip` (for instance 127.0.0.2, so the
//! gateway's per-address failure budget tells the forger from the valid
//! users on 127.0.0.1) and sends `GET /` with a forged token, back to back
//! over HTTP/1.1 keep-alive. The tokens name the gateway's ES256 key
//! (`kid` `es-1`) and carry valid claims, so without defences each one
//! costs a full ECDSA verification: `distinct` gives each request a new
//! random signature (no cache can help), `repeat` sends one forged token
//! again and again. At the end it prints the count of answers per status.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str =
    "usage: load_forger <gateway-addr> <bind-ip> <connections> <seconds> distinct|repeat";

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A token the gateway's ES256 key would have to check: header and claims
/// as a real one has, a signature of random bytes.
fn forged() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = b64(br#"{"alg":"ES256","typ":"JWT","kid":"es-1"}"#);
    let claims = serde_json::json!({
        "iss": "https://auth.load.test",
        "aud": "load-upstream",
        "sub": "mallory",
        "roles": ["user"],
        "iat": now,
        "exp": now + 3600,
    });
    let claims = b64(claims.to_string().as_bytes());
    let signature: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
    format!("{header}.{claims}.{}", b64(&signature))
}

async fn connection(
    gateway: SocketAddr,
    bind: std::net::IpAddr,
    deadline: tokio::time::Instant,
    distinct: bool,
) -> Result<BTreeMap<u16, u64>, BoxError> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(bind, 0))?;
    let stream = socket.connect(gateway).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let repeated = forged();
    let mut statuses = BTreeMap::new();
    while tokio::time::Instant::now() < deadline {
        let token = if distinct { forged() } else { repeated.clone() };
        let request = Request::get(format!("http://{gateway}/"))
            .header("host", "gateway")
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::new())?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        *statuses.entry(response.status().as_u16()).or_insert(0) += 1;
        response.into_body().collect().await?;
    }
    Ok(statuses)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 5 {
        return Err(USAGE.into());
    }
    let gateway: SocketAddr = args[0].parse()?;
    let bind: std::net::IpAddr = args[1].parse()?;
    let connections: usize = args[2].parse()?;
    let seconds: u64 = args[3].parse()?;
    let distinct = match args[4].as_str() {
        "distinct" => true,
        "repeat" => false,
        _ => return Err(USAGE.into()),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        tasks.spawn(connection(gateway, bind, deadline, distinct));
    }
    let mut total: BTreeMap<u16, u64> = BTreeMap::new();
    let mut errors = 0u64;
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(statuses)) => {
                for (status, n) in statuses {
                    *total.entry(status).or_insert(0) += n;
                }
            }
            _ => errors += 1,
        }
    }
    let line: Vec<String> = total.iter().map(|(s, n)| format!("{s}={n}")).collect();
    println!("forged {} connection_errors={errors}", line.join(" "));
    Ok(())
}
