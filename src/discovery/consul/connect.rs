//! Consul Connect certificates: the service's leaf certificate and the
//! CA roots from the local agent, kept current with blocking queries and
//! fed into the crate's mTLS material.
//!
//! Consul HTTP API, Agent, Connect: `GET /v1/agent/connect/ca/leaf/:service`
//! answers the leaf (`CertPEM`, `PrivateKeyPEM`, `ServiceURI`, …) the agent
//! holds for the service, and blocks (`index`, `wait`) until the agent
//! issues another — when it renews the leaf, or re-signs it after a CA
//! rotation. `GET /v1/agent/connect/ca/roots` answers every root the
//! cluster trusts, the active one and, during a rotation, the previous
//! ones, and blocks the same way.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::{Method, StatusCode};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde::Deserialize;
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

use super::{
    api::{ConsulClient, ConsulError, Query, go_duration, path_segment, status_error},
    watch::{BURST, BlockingIndex, MAX_WAIT, RateLimit, backoff},
};
use crate::tls::ReloadingCertificates;

/// Renew at two thirds of the leaf's validity by default.
const DEFAULT_RENEW_FRACTION: f64 = 2.0 / 3.0;

/// Configures the Connect certificates of one service; made by
/// [`ConsulClient::connect_certificates`].
///
/// ```no_run
/// use std::time::Duration;
/// use tower_gateway::discovery::consul::ConsulClient;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let consul = ConsulClient::new("127.0.0.1:8500")?;
/// let connect = consul
///     .connect_certificates("web")
///     .wait(Duration::from_secs(60))
///     .renew_at(0.5)
///     .start()
///     .await?;
/// println!("serving as {}", connect.status().service_uri);
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use = "nothing is fetched until `start` is awaited"]
pub struct ConnectCertificatesBuilder {
    client: ConsulClient,
    service: String,
    wait: Duration,
    renew_fraction: f64,
    min_query_interval: Duration,
    retry_min: Duration,
    retry_max: Duration,
}

impl fmt::Debug for ConnectCertificatesBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectCertificatesBuilder")
            .field("service", &self.service)
            .field("wait", &self.wait)
            .field("renew_fraction", &self.renew_fraction)
            .finish_non_exhaustive()
    }
}

impl ConnectCertificatesBuilder {
    pub(super) fn new(client: ConsulClient, service: String) -> Self {
        Self {
            client,
            service,
            wait: Duration::from_secs(300),
            renew_fraction: DEFAULT_RENEW_FRACTION,
            min_query_interval: Duration::from_secs(1),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }

    /// The `wait` of each blocking query (default 5 min, at most 10 min).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait.clamp(Duration::from_millis(1), MAX_WAIT);
        self
    }

    /// When, as a fraction of the leaf's validity (`NotBefore` to
    /// `NotAfter`), the leaf is fetched again even if no blocking query
    /// reported a change (default 2/3; clamped to 0.1..=0.95). The agent
    /// renews leaves itself; this re-read covers a change a blocking query
    /// missed.
    pub fn renew_at(mut self, fraction: f64) -> Self {
        self.renew_fraction = if fraction.is_nan() {
            DEFAULT_RENEW_FRACTION
        } else {
            fraction.clamp(0.1, 0.95)
        };
        self
    }

    /// The least time between two queries of the same endpoint, after a
    /// burst of two (default 1 s), so that a churning agent cannot turn
    /// the loops into busy loops.
    pub fn min_query_interval(mut self, interval: Duration) -> Self {
        self.min_query_interval = interval;
        self
    }

    /// Backoff after failures: from `min`, doubling up to `max`, with
    /// jitter (default 1 s to 60 s).
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max.max(min);
        self
    }

    /// Fetches the leaf and the roots now, then keeps them current on a
    /// background task. Fails if the agent cannot be reached, refuses
    /// (403 without `service:write`), or answers material that is not
    /// usable together.
    pub async fn start(self) -> Result<ConnectCertificates, ConsulError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConsulError::NoRuntime)?;
        let fetcher = Fetcher {
            client: self.client,
            leaf_path: format!("/v1/agent/connect/ca/leaf/{}", path_segment(&self.service)),
            wait: self.wait,
        };
        let (leaf, leaf_index) = fetcher.leaf(None).await?;
        let (roots, roots_index) = fetcher.roots(None).await?;
        let validity = leaf.validity()?;
        let certs = ReloadingCertificates::from_pem(
            leaf.cert_pem.as_bytes(),
            leaf.private_key_pem.as_bytes(),
            roots.bundle().as_bytes(),
        )?;
        let status = ConnectStatus::new(&leaf, &roots, validity);
        let (status_tx, status_rx) = watch::channel(status);
        let state = Arc::new(Loops {
            fetcher,
            service: self.service,
            certs: certs.clone(),
            latest: Mutex::new(Latest { leaf, roots }),
            status: status_tx,
            renew_fraction: self.renew_fraction,
            min_query_interval: self.min_query_interval,
            retry_min: self.retry_min,
            retry_max: self.retry_max,
        });
        let task = runtime.spawn(state.run(leaf_index, roots_index));
        Ok(ConnectCertificates {
            certs,
            status: status_rx,
            task: Arc::new(Task(task)),
        })
    }
}

/// The Consul Connect identity of a service: its leaf certificate and the
/// cluster's CA roots, as a [`ReloadingCertificates`] that an
/// [`MtlsAcceptor`](crate::tls::MtlsAcceptor) serves and an
/// [`MtlsClientConfig`](crate::tls::MtlsClientConfig) presents, updated
/// for the next handshake whenever the agent issues a new leaf or the
/// roots change.
///
/// Peers are verified against every listed root, so that during a CA
/// rotation a peer still holding a leaf of the previous root is accepted.
/// The leaf's URI SAN is the service's SPIFFE ID
/// (`spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>`), which
/// [`PeerRoles::san`](crate::tls::PeerRoles::san) maps to roles. Connect
/// leaves carry no DNS name: clients verify servers by that ID with
/// [`MtlsClientConfig::expect_server_uri`](crate::tls::MtlsClientConfig::expect_server_uri).
///
/// The background task ends when the last clone of this handle is
/// dropped, or on [`stop`](Self::stop); the certificates then keep their
/// last material.
///
/// ```no_run
/// use tokio::net::TcpListener;
/// use tower_gateway::{
///     discovery::consul::ConsulClient,
///     tls::{self, MtlsAcceptor, PeerRoles},
/// };
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let app = tower::service_fn(|_: http::Request<tower_gateway::server::Body>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// # });
/// let consul = ConsulClient::new("127.0.0.1:8500")?;
/// let connect = consul.connect_certificates("web").start().await?;
/// let domain = connect.status().trust_domain;
/// let acceptor = MtlsAcceptor::new(connect.certificates()).peer_roles(
///     PeerRoles::new().san(format!("spiffe://{domain}/ns/default/dc/dc1/svc/gateway"), ["gateway"]),
/// );
/// tls::serve(TcpListener::bind("0.0.0.0:8443").await?, acceptor, app).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use = "the certificates stop following Consul when the last handle is dropped"]
pub struct ConnectCertificates {
    certs: ReloadingCertificates,
    status: watch::Receiver<ConnectStatus>,
    task: Arc<Task>,
}

/// Aborts the background task with the last handle.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl fmt::Debug for ConnectCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectCertificates")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl ConnectCertificates {
    /// The leaf, its key and the roots, for
    /// [`MtlsAcceptor::new`](crate::tls::MtlsAcceptor::new) and
    /// [`MtlsClientConfig::new`](crate::tls::MtlsClientConfig::new) (and
    /// [`HttpClientConfig::client_certificate_resolver`](crate::client::HttpClientConfig::client_certificate_resolver)).
    pub fn certificates(&self) -> &ReloadingCertificates {
        &self.certs
    }

    /// What is in use now.
    pub fn status(&self) -> ConnectStatus {
        self.status.borrow().clone()
    }

    /// Follows updates: changes whenever new material is installed or an
    /// update fails.
    pub fn subscribe(&self) -> watch::Receiver<ConnectStatus> {
        self.status.clone()
    }

    /// Stops following Consul; the certificates keep their last material.
    pub fn stop(&self) {
        self.task.0.abort();
    }
}

/// The Connect material in use, and how updates went.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectStatus {
    /// The leaf's SPIFFE ID (`ServiceURI`).
    pub service_uri: String,
    /// The leaf's serial number as Consul prints it (`SerialNumber`).
    pub serial_number: String,
    /// When the leaf expires (its `NotAfter`).
    pub valid_before: SystemTime,
    /// The cluster's trust domain (`TrustDomain`).
    pub trust_domain: String,
    /// The active root's ID (`ActiveRootID`).
    pub active_root_id: String,
    /// How many roots are trusted (more than one during a CA rotation).
    pub roots: usize,
    /// Material installed after the first (new leaves, new roots).
    pub updates: u64,
    /// Queries or installs that failed; the previous material stayed.
    pub failures: u64,
}

impl ConnectStatus {
    fn new(leaf: &LeafAnswer, roots: &RootsAnswer, validity: Validity) -> Self {
        Self {
            service_uri: leaf.service_uri.clone(),
            serial_number: leaf.serial_number.clone(),
            valid_before: validity.not_after,
            trust_domain: roots.trust_domain.clone(),
            active_root_id: roots.active_root_id.clone(),
            roots: roots.roots.len(),
            updates: 0,
            failures: 0,
        }
    }
}

/// `GET /v1/agent/connect/ca/leaf/:service`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct LeafAnswer {
    #[serde(rename = "SerialNumber", default)]
    serial_number: String,
    #[serde(rename = "CertPEM")]
    cert_pem: String,
    #[serde(rename = "PrivateKeyPEM")]
    private_key_pem: String,
    #[serde(rename = "ServiceURI", default)]
    service_uri: String,
}

/// `GET /v1/agent/connect/ca/roots`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct RootsAnswer {
    #[serde(rename = "ActiveRootID", default)]
    active_root_id: String,
    #[serde(rename = "TrustDomain", default)]
    trust_domain: String,
    #[serde(rename = "Roots", default)]
    roots: Vec<Root>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct Root {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "RootCert")]
    root_cert: String,
}

impl RootsAnswer {
    /// Every listed root as one PEM bundle: peers holding a leaf of a
    /// root being rotated out are still accepted.
    fn bundle(&self) -> String {
        let mut pem = String::new();
        for root in &self.roots {
            pem.push_str(root.root_cert.trim());
            pem.push('\n');
        }
        pem
    }
}

/// The leaf's validity period, read from the certificate itself.
#[derive(Debug, Clone, Copy)]
struct Validity {
    not_before: SystemTime,
    not_after: SystemTime,
}

impl LeafAnswer {
    fn validity(&self) -> Result<Validity, ConsulError> {
        let der = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .next()
            .ok_or(crate::tls::TlsError::NoCertificate {
                what: "certificate chain",
            })?
            .map_err(|source| crate::tls::TlsError::Pem {
                what: "certificate chain",
                source,
            })?;
        let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| {
            crate::tls::TlsError::Peer(crate::tls::PeerCertificateError::Malformed(e.to_string()))
        })?;
        let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
        Ok(Validity {
            not_before: at(cert.validity().not_before.timestamp()),
            not_after: at(cert.validity().not_after.timestamp()),
        })
    }
}

impl Validity {
    /// The time at `fraction` of the validity period.
    fn renew_at(self, fraction: f64) -> SystemTime {
        let span = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + span.mul_f64(fraction)
    }
}

/// Sends the two queries.
struct Fetcher {
    client: ConsulClient,
    leaf_path: String,
    wait: Duration,
}

impl Fetcher {
    async fn get(
        &self,
        path: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<(bytes::Bytes, Option<u64>), ConsulError> {
        let mut query = Query::default();
        self.client.tenancy(&mut query);
        let timeout = match index {
            Some(index) => {
                query.push("index", &index.to_string());
                query.push("wait", &go_duration(wait));
                // Consul adds up to wait/16 to the wait it was given.
                wait + wait / 16 + self.client.request_timeout()
            }
            None => self.client.request_timeout(),
        };
        let path = if query.as_str().is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", query.as_str())
        };
        let fetched = self.client.send(Method::GET, &path, None, timeout).await?;
        if fetched.status != StatusCode::OK {
            return Err(status_error(&fetched));
        }
        let index = fetched
            .headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        Ok((fetched.body, index))
    }

    async fn leaf(&self, index: Option<u64>) -> Result<(LeafAnswer, Option<u64>), ConsulError> {
        self.leaf_waiting(index, self.wait).await
    }

    async fn leaf_waiting(
        &self,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<(LeafAnswer, Option<u64>), ConsulError> {
        let (body, index) = self.get(&self.leaf_path, index, wait).await?;
        let leaf = serde_json::from_slice(&body).map_err(ConsulError::Decode)?;
        Ok((leaf, index))
    }

    async fn roots(&self, index: Option<u64>) -> Result<(RootsAnswer, Option<u64>), ConsulError> {
        let (body, index) = self
            .get("/v1/agent/connect/ca/roots", index, self.wait)
            .await?;
        let roots = serde_json::from_slice(&body).map_err(ConsulError::Decode)?;
        Ok((roots, index))
    }
}

/// The last answers of both endpoints.
struct Latest {
    leaf: LeafAnswer,
    roots: RootsAnswer,
}

/// The two blocking-query loops and what they share.
struct Loops {
    fetcher: Fetcher,
    service: String,
    certs: ReloadingCertificates,
    latest: Mutex<Latest>,
    status: watch::Sender<ConnectStatus>,
    renew_fraction: f64,
    min_query_interval: Duration,
    retry_min: Duration,
    retry_max: Duration,
}

/// Which answer changed.
enum Update {
    Leaf(LeafAnswer),
    Roots(RootsAnswer),
}

impl Loops {
    async fn run(self: Arc<Self>, leaf_index: Option<u64>, roots_index: Option<u64>) {
        tokio::join!(
            self.clone().leaf_loop(leaf_index),
            self.roots_loop(roots_index)
        );
    }

    async fn leaf_loop(self: Arc<Self>, first: Option<u64>) {
        let mut index = BlockingIndex::default();
        index.observe(first);
        let mut limiter = RateLimit::new(self.min_query_interval, BURST);
        let mut failures = 0_u32;
        // Renewal reads in a row that found the same leaf.
        let mut unrenewed = 0_u32;
        loop {
            tokio::time::sleep(limiter.acquire(Instant::now())).await;
            let renew_at = {
                let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
                latest
                    .leaf
                    .validity()
                    .map(|v| v.renew_at(self.renew_fraction))
                    .ok()
            };
            let until_renewal = renew_at
                .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
                .unwrap_or(Duration::ZERO);
            // Past the renewal point: a plain read, whatever the index.
            let (param, wait) = if until_renewal.is_zero() {
                (None, self.fetcher.wait)
            } else {
                (index.param(), self.fetcher.wait.min(until_renewal))
            };
            match self.fetcher.leaf_waiting(param, wait).await {
                Ok((leaf, returned)) => {
                    failures = 0;
                    index.observe(returned);
                    let renewed = self.apply(Update::Leaf(leaf));
                    if renewed {
                        unrenewed = 0;
                    } else if param.is_none() {
                        // The agent still holds the same leaf past the
                        // renewal point: ask again later, backing off as
                        // after failures, rather than in a loop.
                        unrenewed = unrenewed.saturating_add(1);
                        tokio::time::sleep(backoff(unrenewed, self.retry_min, self.retry_max))
                            .await;
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    index.reset();
                    self.failed("leaf", &error);
                    tokio::time::sleep(backoff(failures, self.retry_min, self.retry_max)).await;
                }
            }
        }
    }

    async fn roots_loop(self: Arc<Self>, first: Option<u64>) {
        let mut index = BlockingIndex::default();
        index.observe(first);
        let mut limiter = RateLimit::new(self.min_query_interval, BURST);
        let mut failures = 0_u32;
        loop {
            tokio::time::sleep(limiter.acquire(Instant::now())).await;
            match self.fetcher.roots(index.param()).await {
                Ok((roots, returned)) => {
                    failures = 0;
                    index.observe(returned);
                    self.apply(Update::Roots(roots));
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    index.reset();
                    self.failed("roots", &error);
                    tokio::time::sleep(backoff(failures, self.retry_min, self.retry_max)).await;
                }
            }
        }
    }

    /// Installs the leaf and roots if `update` changed them; true if new
    /// material is in use.
    fn apply(&self, update: Update) -> bool {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = Latest {
            leaf: latest.leaf.clone(),
            roots: latest.roots.clone(),
        };
        match update {
            Update::Leaf(leaf) if leaf != latest.leaf => next.leaf = leaf,
            Update::Roots(roots) if roots != latest.roots => next.roots = roots,
            _ => return false,
        }
        let installed = next.leaf.validity().and_then(|validity| {
            self.certs.replace_pem(
                next.leaf.cert_pem.as_bytes(),
                next.leaf.private_key_pem.as_bytes(),
                next.roots.bundle().as_bytes(),
            )?;
            Ok(validity)
        });
        match installed {
            Ok(validity) => {
                let updates = self.status.borrow().updates + 1;
                let failures = self.status.borrow().failures;
                let mut status = ConnectStatus::new(&next.leaf, &next.roots, validity);
                status.updates = updates;
                status.failures = failures;
                tracing::info!(
                    target: "tower_gateway::consul",
                    service = %self.service,
                    serial = %status.serial_number,
                    roots = status.roots,
                    "consul connect certificates updated"
                );
                *latest = next;
                self.status.send_replace(status);
                true
            }
            Err(error) => {
                self.failed("install", &error);
                false
            }
        }
    }

    fn failed(&self, what: &'static str, error: &ConsulError) {
        tracing::warn!(
            target: "tower_gateway::consul",
            service = %self.service,
            %error,
            "consul connect {what} update failed; keeping the current certificates"
        );
        self.status.send_modify(|s| s.failures += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_the_given_fraction_of_the_validity() {
        let validity = Validity {
            not_before: UNIX_EPOCH + Duration::from_secs(1000),
            not_after: UNIX_EPOCH + Duration::from_secs(4000),
        };
        assert_eq!(
            validity.renew_at(2.0 / 3.0),
            UNIX_EPOCH + Duration::from_secs(3000)
        );
        let inverted = Validity {
            not_before: validity.not_after,
            not_after: validity.not_before,
        };
        assert_eq!(inverted.renew_at(0.5), inverted.not_before);
    }

    #[test]
    fn roots_bundle_lists_every_root_and_answers_decode() {
        let roots: RootsAnswer = serde_json::from_str(
            r#"{"ActiveRootID":"b","TrustDomain":"t.consul","Roots":[
                {"ID":"a","Name":"old","RootCert":"-----A-----\n","Active":false},
                {"ID":"b","Name":"new","RootCert":"-----B-----","Active":true,"IntermediateCerts":null}
            ]}"#,
        )
        .unwrap();
        assert_eq!(roots.bundle(), "-----A-----\n-----B-----\n");
        assert_eq!(roots.roots[0].id, "a");
        let leaf: Result<LeafAnswer, _> = serde_json::from_str(r#"{"SerialNumber":"1"}"#);
        assert!(leaf.is_err(), "a leaf without its certificate is garbage");
    }
}
