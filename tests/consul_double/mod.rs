//! A double of the Consul HTTP API (Community Edition, one agent that is
//! also the server, one node, datacenter `dc1`) for tests: a real HTTP/1.1
//! server on 127.0.0.1 built with hyper.
//!
//! It follows Consul's documented behaviour for the endpoints the gateway
//! uses, and nothing more:
//! - `GET /v1/health/service/:service` with `passing`, `tag` (repeatable,
//!   all must match, compared without case), `dc` (an unknown datacenter
//!   answers 500 `No path to datacenter`), and blocking queries: `index`
//!   and `wait` (default 5 min, at most 10 min, plus up to `wait / 16` of
//!   jitter); the answer carries `X-Consul-Index` (never below 1). A query
//!   with `index` blocks while the service's index is not above it. A
//!   snapshot restore wakes blocked queries, which then answer at once with
//!   the restored (lower) index, as Consul's abandoned state store does.
//! - `PUT /v1/agent/service/register` (with `Check`/`Checks` of type TTL,
//!   HTTP or TCP, `replace-existing-checks`), `PUT
//!   /v1/agent/service/deregister/:id` (404 `Unknown service ID` for an
//!   unknown ID), `PUT /v1/agent/check/{pass,warn,fail}/:check_id` (404
//!   `Unknown check ID`; 500 `does not have associated TTL` for a check
//!   that is not TTL). Checks start `critical` unless `Status` says
//!   otherwise; a TTL check that is not updated within its TTL turns
//!   critical with output `TTL expired`. A check update that changes only
//!   the output does not change the index (Consul syncs such updates only
//!   every `check_update_interval`). Service health is derived from the
//!   node's `serfHealth` check (always passing) and the service's checks.
//! - ACLs when configured (default policy deny): the token comes from
//!   `X-Consul-Token`; an unknown token answers 403 `ACL not found`; a
//!   health read drops what the token may not read (`node:read` and
//!   `service:read`), with `X-Consul-Results-Filtered-By-ACLs: true` unless
//!   the token is anonymous; writes without `service:write` answer 403
//!   `Permission denied: token with AccessorID '…' lacks permission …`.
//! - Connect's built-in CA: `GET /v1/agent/connect/ca/roots` and `GET
//!   /v1/agent/connect/ca/leaf/:service`, both with blocking queries
//!   (`index`, `wait`; `X-Consul-Index` is the roots' or the leaf's
//!   `ModifyIndex`). A leaf is issued at the first request for its
//!   service, signed by the active root, with the URI SAN
//!   `spiffe://<trust-domain>/ns/default/dc/dc1/svc/<service>` and no DNS
//!   SAN, valid 72 h (Consul's default `leaf_cert_ttl`). Tests can rotate
//!   a leaf (new certificate, key, serial and index), and the CA in
//!   Consul's order: first the new root becomes active while the old one
//!   stays listed (inactive), then the leaves are re-issued by the new
//!   root; their `CertPEM` then carries, after the leaf, the new root
//!   cross-signed by the previous one, so that peers still trusting only
//!   the previous root accept them. These endpoints ignore ACLs (Consul requires
//!   `service:write` for a leaf).
//! - `ns` and `partition` parameters answer 400, as Community Edition does
//!   (they are Enterprise features).
//! - Wrong methods answer 405 with `Allow`; unknown paths 404.
//!
//! What it leaves out, and says so rather than pretending:
//! - HTTP and TCP checks are never probed: they keep their initial status.
//! - `DeregisterCriticalServiceAfter` is stored but never acted on (Consul's
//!   minimum is one minute, with a reaper every 30 s).
//! - `filter` expressions answer 400 (`consul double: filter expressions
//!   are not implemented`), as do check types other than TTL, HTTP, TCP.
//! - JSON bodies are read with Consul's documented PascalCase keys only
//!   (Consul also accepts snake_case); the token only from
//!   `X-Consul-Token` (Consul also reads `Authorization: Bearer` and
//!   `?token=`). Texts of validation errors (400) are approximations.
//! - Re-registering an instance resets its checks to their initial status.
//!
//! For tests it can also: change the catalog directly (as other agents
//! would), snapshot and restore its state — indexes included, as when a
//! rebuilt cluster is restored from an old snapshot, so indexes go
//! backwards —, answer health reads with garbage (what a broken proxy in
//! front of Consul returns) or with 500 `No cluster leader` (what Consul
//! answers during an election), stop accepting connections (dropping the
//! open ones) and come back on the same port. It records every request.
//! With the `tls` feature it can serve HTTPS (HTTP/1.1 only), and HTTPS
//! that requires a client certificate chaining to a given CA (an agent
//! with `tls.https.verify_incoming`); it then records the leaf each
//! request came with, and closes connections after every answer so that
//! each request shows the certificate of a fresh handshake.

#![allow(dead_code, unreachable_pub)]

pub mod pki;

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    hash::{BuildHasher, Hasher},
    net::SocketAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::watch,
    task::{JoinHandle, JoinSet},
    time::Instant,
};

pub const DATACENTER: &str = "dc1";
pub const NODE: &str = "node-1";
pub const NODE_ADDRESS: &str = "127.0.0.1";
const NODE_ID: &str = "5b7a0f6e-1a2b-4c3d-8e9f-0a1b2c3d4e5f";
const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";
const CLUSTER_ID: &str = "11111111-2222-3333-4444-555555555555";
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

/// ACL rules of one token: resource-name prefixes (`""` matches all).
/// `write` implies `read`, as in Consul's policy language.
#[derive(Debug, Clone, Default)]
pub struct AclRules {
    pub service_read: Vec<String>,
    pub service_write: Vec<String>,
    pub node_read: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AclToken {
    pub secret: String,
    pub accessor: String,
    pub rules: AclRules,
}

impl AclToken {
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.to_owned(),
            accessor: format!("accessor-{secret}"),
            rules: AclRules::default(),
        }
    }
    pub fn service_read(mut self, prefix: &str) -> Self {
        self.rules.service_read.push(prefix.to_owned());
        self
    }
    pub fn service_write(mut self, prefix: &str) -> Self {
        self.rules.service_write.push(prefix.to_owned());
        self
    }
    pub fn node_read(mut self, prefix: &str) -> Self {
        self.rules.node_read.push(prefix.to_owned());
        self
    }
}

/// ACLs enabled with default policy deny.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    pub tokens: Vec<AclToken>,
    pub anonymous: AclRules,
}

#[derive(Debug, Clone, Default)]
pub struct DoubleConfig {
    pub acl: Option<Acl>,
}

/// How health reads are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// 200 with a body that is not JSON (a broken proxy in front).
    Garbage,
    /// 500 `No cluster leader` (Consul during a leader election).
    NoLeader,
}

/// One request as the double received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Decoded path.
    pub path: String,
    /// Decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    pub token: Option<String>,
    pub body: Bytes,
    pub at: Instant,
    /// The client certificate (DER leaf) the connection was opened with,
    /// under mutual TLS.
    pub client_cert: Option<Vec<u8>>,
}

impl Recorded {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub fn params(&self, key: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum CheckType {
    Ttl(Duration),
    Http(String),
    Tcp(String),
}

#[derive(Debug, Clone)]
struct Check {
    id: String,
    name: String,
    notes: String,
    service_id: String,
    service_name: String,
    status: String,
    output: String,
    kind: CheckType,
    /// Which TTL timer may expire this check.
    generation: u64,
    create_index: u64,
    modify_index: u64,
}

#[derive(Debug, Clone)]
struct Instance {
    id: String,
    name: String,
    tags: Option<Vec<String>>,
    address: String,
    port: i64,
    meta: Option<BTreeMap<String, String>>,
    create_index: u64,
    modify_index: u64,
}

/// One root of the Connect CA.
#[derive(Clone)]
struct ConnectRoot {
    id: String,
    name: String,
    ca: Arc<pki::TestCa>,
    /// This root signed by the previous one, if any.
    cross_signed: Option<String>,
    serial: u64,
    active: bool,
    create_index: u64,
    modify_index: u64,
}

/// One issued leaf.
#[derive(Clone)]
struct ConnectLeaf {
    leaf: pki::Leaf,
    serial: u64,
    valid_after: std::time::SystemTime,
    valid_before: std::time::SystemTime,
    create_index: u64,
    modify_index: u64,
}

/// The built-in Connect CA.
#[derive(Clone)]
struct ConnectState {
    trust_domain: String,
    roots: Vec<ConnectRoot>,
    roots_index: u64,
    leaves: BTreeMap<String, ConnectLeaf>,
    leaf_ttl: Duration,
    next_serial: u64,
}

impl std::fmt::Debug for ConnectState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectState")
            .field("trust_domain", &self.trust_domain)
            .field("roots_index", &self.roots_index)
            .finish_non_exhaustive()
    }
}

impl ConnectState {
    fn new() -> Self {
        Self {
            trust_domain: format!("{CLUSTER_ID}.consul"),
            roots: Vec::new(),
            roots_index: 0,
            leaves: BTreeMap::new(),
            leaf_ttl: Duration::from_secs(72 * 3600),
            next_serial: 10,
        }
    }

    fn serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    fn active(&self) -> Option<&ConnectRoot> {
        self.roots.iter().find(|r| r.active)
    }
}

/// `0a:1b:…`, the way Consul prints serial numbers and key IDs.
fn colon_hex(value: u64) -> String {
    value
        .to_be_bytes()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// RFC 3339 in UTC, seconds precision, as Go's `time.Time` marshals.
fn rfc3339(at: std::time::SystemTime) -> String {
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap();
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The catalog, as the state store holds it.
#[derive(Debug, Clone)]
struct State {
    raft_index: u64,
    node_index: u64,
    instances: BTreeMap<String, Instance>,
    checks: BTreeMap<String, Check>,
    /// Index of the last write that touched each service name.
    service_index: BTreeMap<String, u64>,
    /// Index of the last write that removed a service's last instance.
    extinction_index: u64,
    next_generation: u64,
    connect: ConnectState,
}

impl State {
    fn new() -> Self {
        // A fresh cluster has made a few internal raft writes (raft
        // configuration, node registration) before any service exists.
        Self {
            raft_index: 5,
            node_index: 5,
            instances: BTreeMap::new(),
            checks: BTreeMap::new(),
            service_index: BTreeMap::new(),
            extinction_index: 0,
            next_generation: 1,
            connect: ConnectState::new(),
        }
    }

    /// The Connect CA's active root, created (one raft write) on first use.
    fn connect_root(&mut self) -> Arc<pki::TestCa> {
        if let Some(root) = self.connect.active() {
            return root.ca.clone();
        }
        self.rotate_connect_root()
    }

    /// A new active root; the previous ones stay listed, inactive.
    fn rotate_connect_root(&mut self) -> Arc<pki::TestCa> {
        self.raft_index += 1;
        let index = self.raft_index;
        let uri = format!("spiffe://{}", self.connect.trust_domain);
        let n = self.connect.roots.len() + 1;
        let ca = Arc::new(pki::TestCa::with_uri(
            &format!("Consul CA Root Cert {n}"),
            Some(&uri),
        ));
        let mut cross_signed = None;
        for root in &mut self.connect.roots {
            if root.active {
                root.active = false;
                root.modify_index = index;
                cross_signed = Some(ca.cross_signed_by(&root.ca));
            }
        }
        let serial = self.connect.serial();
        self.connect.roots.push(ConnectRoot {
            id: colon_hex(0x5a00_0000_0000_0000 | serial),
            name: format!("Consul CA Primary Cert {n}"),
            ca: ca.clone(),
            cross_signed,
            serial,
            active: true,
            create_index: index,
            modify_index: index,
        });
        self.connect.roots_index = index;
        ca
    }

    /// Issues (or re-issues) the leaf of `service` with the active root.
    fn issue_connect_leaf(&mut self, service: &str) {
        let ca = self.connect_root();
        let cross_signed = self.connect.active().and_then(|r| r.cross_signed.clone());
        self.raft_index += 1;
        let index = self.raft_index;
        let serial = self.connect.serial();
        let uri = format!(
            "spiffe://{}/ns/default/dc/{DATACENTER}/svc/{service}",
            self.connect.trust_domain
        );
        let short = &self.connect.trust_domain[..8];
        let cn = format!("{service}.svc.default.{short}.consul");
        let ttl = self.connect.leaf_ttl;
        let mut leaf = ca.leaf_with(&cn, &[uri.as_str()], Some(ttl), Some(serial));
        if let Some(intermediate) = cross_signed {
            leaf.cert_pem.push_str(&intermediate);
        }
        let now = std::time::SystemTime::now();
        let create_index = self
            .connect
            .leaves
            .get(service)
            .map_or(index, |l| l.create_index);
        self.connect.leaves.insert(
            service.to_owned(),
            ConnectLeaf {
                leaf,
                serial,
                valid_after: now - Duration::from_secs(60),
                valid_before: now + ttl,
                create_index,
                modify_index: index,
            },
        );
    }

    /// One raft write touching `names`.
    fn write(&mut self, names: &[String]) -> u64 {
        self.raft_index += 1;
        let index = self.raft_index;
        for name in names {
            if self.instances.values().any(|i| &i.name == name) {
                self.service_index.insert(name.clone(), index);
            } else {
                self.service_index.remove(name);
                self.extinction_index = index;
            }
        }
        index
    }

    /// The `X-Consul-Index` of a health read of `name`.
    fn index_of(&self, name: &str) -> u64 {
        let index = match self.service_index.get(name) {
            Some(index) => *index,
            None if self.extinction_index > 0 => self.extinction_index,
            None => self.node_index,
        };
        index.max(1)
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }
}

/// A copy of the double's state, indexes included.
#[derive(Debug, Clone)]
pub struct Snapshot(State);

struct Shared {
    config: DoubleConfig,
    state: Mutex<State>,
    /// Bumped after every write and every restore: wakes blocked queries.
    changes: watch::Sender<u64>,
    /// Bumped on every restore: blocked queries answer at once.
    restores: AtomicU64,
    fault: Mutex<Fault>,
    requests: Mutex<Vec<Recorded>>,
    /// Blocking queries currently parked, per service.
    parked: Mutex<BTreeMap<String, usize>>,
    /// Bumped on every request, park, unpark and write (for tests to wait on).
    activity: watch::Sender<u64>,
}

impl Shared {
    fn bump_activity(&self) {
        self.activity.send_modify(|n| *n += 1);
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
        self.bump_activity();
    }
}

/// The running double.
pub struct ConsulDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    transport: Transport,
    server: Mutex<Option<JoinHandle<()>>>,
}

/// Plain HTTP, or HTTPS as an agent with `tls.https` configured serves it.
#[derive(Clone)]
enum Transport {
    Plain,
    #[cfg(feature = "tls")]
    Tls(tokio_rustls::TlsAcceptor),
    /// Client certificates required.
    #[cfg(feature = "tls")]
    Mtls(tokio_rustls::TlsAcceptor),
}

impl ConsulDouble {
    pub async fn start() -> Self {
        Self::start_with(DoubleConfig::default()).await
    }

    pub async fn start_with(config: DoubleConfig) -> Self {
        Self::start_on(config, Transport::Plain).await
    }

    /// Serves HTTPS with this certificate chain and key (PEM).
    #[cfg(feature = "tls")]
    pub async fn start_tls(chain_pem: &str, key_pem: &str) -> Self {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start_on(DoubleConfig::default(), Transport::Tls(acceptor)).await
    }

    /// Serves HTTPS with this certificate chain and key (PEM), and refuses
    /// handshakes without a client certificate that chains to `ca_pem`.
    #[cfg(feature = "tls")]
    pub async fn start_mtls(chain_pem: &str, key_pem: &str, ca_pem: &str) -> Self {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start_on(DoubleConfig::default(), Transport::Mtls(acceptor)).await
    }

    async fn start_on(config: DoubleConfig, transport: Transport) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State::new()),
            changes: watch::channel(0).0,
            restores: AtomicU64::new(0),
            fault: Mutex::new(Fault::None),
            requests: Mutex::new(Vec::new()),
            parked: Mutex::new(BTreeMap::new()),
            activity: watch::channel(0).0,
        });
        let server = serve(listener, shared.clone(), transport.clone());
        Self {
            addr,
            shared,
            transport,
            server: Mutex::new(Some(server)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        match self.transport {
            Transport::Plain => format!("http://{}", self.addr),
            #[cfg(feature = "tls")]
            Transport::Tls(_) | Transport::Mtls(_) => format!("https://{}", self.addr),
        }
    }

    /// Stops accepting connections and drops the open ones (a crash).
    pub async fn stop(&self) {
        let server = self.server.lock().unwrap().take();
        if let Some(server) = server {
            server.abort();
            let _ = server.await;
        }
        self.shared.parked.lock().unwrap().clear();
    }

    /// Listens again on the same port.
    pub async fn resume(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let server = serve(listener, self.shared.clone(), self.transport.clone());
        *self.server.lock().unwrap() = Some(server);
    }

    pub fn set_fault(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    /// Registers an instance as another agent of the cluster would (no
    /// ACL): `definition` is a register body.
    pub fn register(&self, definition: Value) {
        register(&self.shared, &definition, false).expect("valid registration");
    }

    /// Removes an instance (and its checks).
    pub fn deregister(&self, id: &str) {
        deregister(&self.shared, id).expect("known service");
    }

    /// Sets a check's status as its agent would.
    pub fn set_check(&self, check_id: &str, status: &str) {
        update_check(&self.shared, check_id, status, None).expect("known TTL check");
    }

    pub fn check_status(&self, check_id: &str) -> Option<String> {
        let state = self.shared.state.lock().unwrap();
        state.checks.get(check_id).map(|c| c.status.clone())
    }

    pub fn has_instance(&self, id: &str) -> bool {
        self.shared.state.lock().unwrap().instances.contains_key(id)
    }

    /// The raft index.
    pub fn index(&self) -> u64 {
        self.shared.state.lock().unwrap().raft_index
    }

    /// The `X-Consul-Index` a health read of `service` would answer.
    pub fn service_index(&self, service: &str) -> u64 {
        self.shared.state.lock().unwrap().index_of(service)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot(self.shared.state.lock().unwrap().clone())
    }

    /// Restores `snapshot` (indexes go back to the snapshot's) and wakes
    /// blocked queries, which answer at once.
    pub fn restore(&self, snapshot: &Snapshot) {
        let ttls = {
            let mut state = self.shared.state.lock().unwrap();
            let mut restored = snapshot.0.clone();
            restored.next_generation = state.next_generation;
            let mut ttls = Vec::new();
            let ids: Vec<String> = restored.checks.keys().cloned().collect();
            for id in ids {
                let generation = restored.generation();
                if let Some(check) = restored.checks.get_mut(&id) {
                    check.generation = generation;
                    if let CheckType::Ttl(ttl) = check.kind {
                        ttls.push((id, generation, ttl));
                    }
                }
            }
            *state = restored;
            ttls
        };
        for (id, generation, ttl) in ttls {
            arm_ttl(&self.shared, id, generation, ttl);
        }
        self.shared.restores.fetch_add(1, Ordering::SeqCst);
        self.shared.changed();
    }

    /// Issues a new leaf for `service` (new key, serial and index), as
    /// the agent does when it renews one; wakes blocked leaf queries.
    pub fn rotate_connect_leaf(&self, service: &str) {
        self.shared
            .state
            .lock()
            .unwrap()
            .issue_connect_leaf(service);
        self.shared.changed();
    }

    /// Starts a Connect CA rotation: a new active root, the old one still
    /// listed. Leaves are re-issued by [`reissue_connect_leaves`](Self::reissue_connect_leaves).
    pub fn rotate_connect_ca(&self) {
        self.shared.state.lock().unwrap().rotate_connect_root();
        self.shared.changed();
    }

    /// Re-issues every leaf with the active root.
    pub fn reissue_connect_leaves(&self) {
        {
            let mut state = self.shared.state.lock().unwrap();
            let services: Vec<String> = state.connect.leaves.keys().cloned().collect();
            for service in services {
                state.issue_connect_leaf(&service);
            }
        }
        self.shared.changed();
    }

    /// Sets the validity of leaves issued from now on.
    pub fn set_connect_leaf_ttl(&self, ttl: Duration) {
        self.shared.state.lock().unwrap().connect.leaf_ttl = ttl;
    }

    /// The certificate (DER) of the current leaf of `service`, if issued.
    pub fn connect_leaf_der(&self, service: &str) -> Option<Vec<u8>> {
        let state = self.shared.state.lock().unwrap();
        state
            .connect
            .leaves
            .get(service)
            .map(|l| l.leaf.der.clone())
    }

    /// The Connect trust domain (`<cluster id>.consul`).
    pub fn connect_trust_domain(&self) -> String {
        self.shared
            .state
            .lock()
            .unwrap()
            .connect
            .trust_domain
            .clone()
    }

    /// The PEM of every listed Connect root, oldest first.
    pub fn connect_roots_pem(&self) -> Vec<String> {
        let state = self.shared.state.lock().unwrap();
        state
            .connect
            .roots
            .iter()
            .map(|r| r.ca.pem.clone())
            .collect()
    }

    /// Connect requests (roots and leaves) received so far.
    pub fn connect_requests(&self) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with("/v1/agent/connect/ca/"))
            .count()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Health reads of `service` received so far.
    pub fn health_requests(&self, service: &str) -> usize {
        let path = format!("/v1/health/service/{service}");
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    pub fn last_health_request(&self, service: &str) -> Option<Recorded> {
        let path = format!("/v1/health/service/{service}");
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|r| r.path == path)
            .cloned()
    }

    /// Waits until `condition` holds, re-checking after every request,
    /// park and write; false after `timeout`.
    pub async fn wait_until(&self, timeout: Duration, condition: impl Fn(&Self) -> bool) -> bool {
        let mut activity = self.shared.activity.subscribe();
        let wait = async {
            loop {
                activity.borrow_and_update();
                if condition(self) {
                    return;
                }
                if activity.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok() && condition(self)
    }

    /// Waits until a blocking query of `service` is parked in the double.
    pub async fn wait_parked(&self, service: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |d| d.parked(service) > 0).await
    }

    pub fn parked(&self, service: &str) -> usize {
        self.shared
            .parked
            .lock()
            .unwrap()
            .get(service)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        if let Some(server) = self.server.lock().unwrap().take() {
            server.abort();
        }
    }
}

fn serve(listener: TcpListener, shared: Arc<Shared>, transport: Transport) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Connections live in the set: aborting this task drops the set,
        // which aborts every connection (a crash, not a graceful close).
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let shared = shared.clone();
                    let transport = transport.clone();
                    connections.spawn(async move {
                        match transport {
                            Transport::Plain => serve_connection(stream, shared, None, true).await,
                            #[cfg(feature = "tls")]
                            Transport::Tls(acceptor) => {
                                if let Ok(stream) = acceptor.accept(stream).await {
                                    serve_connection(stream, shared, None, true).await;
                                }
                            }
                            #[cfg(feature = "tls")]
                            Transport::Mtls(acceptor) => {
                                if let Ok(stream) = acceptor.accept(stream).await {
                                    let leaf = stream
                                        .get_ref()
                                        .1
                                        .peer_certificates()
                                        .and_then(<[_]>::first)
                                        .map(|c| c.to_vec());
                                    serve_connection(stream, shared, leaf, false).await;
                                }
                            }
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

async fn serve_connection<S>(
    stream: S,
    shared: Arc<Shared>,
    client_cert: Option<Vec<u8>>,
    keep_alive: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let shared = shared.clone();
        let client_cert = client_cert.clone();
        async move { Ok::<_, Infallible>(handle(shared, request, client_cert).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(keep_alive)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

type Answer = Response<Full<Bytes>>;

/// An error answer: a status and Consul's plain-text explanation.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl From<Refusal> for Answer {
    fn from(Refusal(status, body): Refusal) -> Self {
        text(status, body)
    }
}

/// An agent endpoint: state, the path after its prefix, query, token, body.
type AgentEndpoint = fn(&Arc<Shared>, &str, &[(String, String)], Option<&str>, &Bytes) -> Answer;

fn text(status: StatusCode, body: impl Into<String>) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn bad_request(reason: &str) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, format!("Bad request: {reason}"))
}

fn method_not_allowed(method: &Method, allow: &str) -> Answer {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_str(allow).unwrap());
    response
}

fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    let Some(query) = query else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key, true), percent_decode(value, true))
        })
        .collect()
}

/// Go's `time.ParseDuration`, for the units Consul users write.
fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::from_nanos((number * nanos_per_unit) as u64);
    }
    Some(total)
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn random_below(max: Duration) -> Duration {
    let span = max.as_nanos() as u64;
    if span == 0 {
        return Duration::ZERO;
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(span);
    Duration::from_nanos(hasher.finish() % span)
}

/// The caller's permissions; `None` when ACLs are disabled.
struct Authz {
    accessor: String,
    anonymous: bool,
    rules: AclRules,
}

fn prefix_match(prefixes: &[String], name: &str) -> bool {
    prefixes.iter().any(|p| name.starts_with(p.as_str()))
}

impl Authz {
    fn service_read(&self, name: &str) -> bool {
        prefix_match(&self.rules.service_read, name) || self.service_write(name)
    }
    fn service_write(&self, name: &str) -> bool {
        prefix_match(&self.rules.service_write, name)
    }
    fn node_read(&self, name: &str) -> bool {
        prefix_match(&self.rules.node_read, name)
    }
    fn denied(&self, permission: &str, name: &str) -> Answer {
        text(
            StatusCode::FORBIDDEN,
            format!(
                "Permission denied: token with AccessorID '{}' lacks permission '{permission}' on \"{name}\"",
                self.accessor
            ),
        )
    }
}

/// Resolves the token: `Ok(None)` when ACLs are off, 403 `ACL not found`
/// for an unknown token.
fn authorize(shared: &Shared, token: Option<&str>) -> Result<Option<Authz>, Refusal> {
    let Some(acl) = &shared.config.acl else {
        return Ok(None);
    };
    match token.filter(|t| !t.is_empty()) {
        None => Ok(Some(Authz {
            accessor: ANONYMOUS_ACCESSOR.to_owned(),
            anonymous: true,
            rules: acl.anonymous.clone(),
        })),
        Some(secret) => match acl.tokens.iter().find(|t| t.secret == secret) {
            Some(token) => Ok(Some(Authz {
                accessor: token.accessor.clone(),
                anonymous: false,
                rules: token.rules.clone(),
            })),
            None => Err(Refusal(StatusCode::FORBIDDEN, "ACL not found".into())),
        },
    }
}

/// Community Edition refuses the Enterprise tenancy parameters.
fn enterprise_params(query: &[(String, String)]) -> Result<(), Refusal> {
    for (key, value) in query {
        if key == "ns" && !value.is_empty() {
            return Err(bad_request(
                "Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise feature",
            ));
        }
        if key == "partition" && !value.is_empty() {
            return Err(bad_request(
                "Invalid query parameter: \"partition\" - Partitions are a Consul Enterprise feature",
            ));
        }
    }
    Ok(())
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    client_cert: Option<Vec<u8>>,
) -> Answer {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = percent_decode(parts.uri.path(), false);
    let query = parse_query(parts.uri.query());
    let token = parts
        .headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    shared.requests.lock().unwrap().push(Recorded {
        method: parts.method.clone(),
        path: path.clone(),
        query: query.clone(),
        token: token.clone(),
        body: body.clone(),
        at: Instant::now(),
        client_cert,
    });
    shared.bump_activity();

    let method = &parts.method;
    let token = token.as_deref();
    if let Some(service) = path.strip_prefix("/v1/health/service/") {
        if method != Method::GET {
            return method_not_allowed(method, "OPTIONS,GET");
        }
        return health_service(&shared, service, &query, token).await;
    }
    if path == "/v1/agent/connect/ca/roots" {
        if method != Method::GET {
            return method_not_allowed(method, "OPTIONS,GET");
        }
        return connect_roots(&shared, &query).await;
    }
    if let Some(service) = path.strip_prefix("/v1/agent/connect/ca/leaf/") {
        if method != Method::GET {
            return method_not_allowed(method, "OPTIONS,GET");
        }
        return connect_leaf(&shared, service, &query).await;
    }
    let put_only = |answer: AgentEndpoint, rest: &str| {
        if method != Method::PUT {
            return method_not_allowed(method, "OPTIONS,PUT");
        }
        answer(&shared, rest, &query, token, &body)
    };
    if path == "/v1/agent/service/register" {
        return put_only(agent_register, "");
    }
    if let Some(id) = path.strip_prefix("/v1/agent/service/deregister/") {
        return put_only(agent_deregister, id);
    }
    for status in ["pass", "warn", "fail"] {
        if let Some(id) = path.strip_prefix(&format!("/v1/agent/check/{status}/")) {
            let rest = format!("{status}/{id}");
            return put_only(agent_check_update, &rest);
        }
    }
    text(StatusCode::NOT_FOUND, "")
}

/// Removes a parked mark when the query ends, however it ends.
struct Parked<'a> {
    shared: &'a Shared,
    service: String,
}

impl<'a> Parked<'a> {
    fn new(shared: &'a Shared, service: &str) -> Self {
        *shared
            .parked
            .lock()
            .unwrap()
            .entry(service.to_owned())
            .or_default() += 1;
        shared.bump_activity();
        Self {
            shared,
            service: service.to_owned(),
        }
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.shared.parked.lock().unwrap().get_mut(&self.service) {
            *n = n.saturating_sub(1);
        }
        self.shared.bump_activity();
    }
}

async fn health_service(
    shared: &Arc<Shared>,
    service: &str,
    query: &[(String, String)],
    token: Option<&str>,
) -> Answer {
    if let Err(refusal) = enterprise_params(query) {
        return refusal.into();
    }
    let get = |key: &str| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if let Some(dc) = get("dc")
        && !dc.is_empty()
        && dc != DATACENTER
    {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter");
    }
    if get("filter").is_some_and(|f| !f.is_empty()) {
        return bad_request("consul double: filter expressions are not implemented").into();
    }
    let passing = match get("passing") {
        None => false,
        Some("") => true,
        Some(value) => match parse_go_bool(value) {
            Some(passing) => passing,
            None => return bad_request("Invalid value for ?passing").into(),
        },
    };
    let tags: Vec<String> = query
        .iter()
        .filter(|(k, v)| k == "tag" && !v.is_empty())
        .map(|(_, v)| v.to_lowercase())
        .collect();
    let mut wait = DEFAULT_WAIT;
    if let Some(text_wait) = get("wait").filter(|w| !w.is_empty()) {
        match parse_go_duration(text_wait) {
            Some(d) => {
                wait = if d.is_zero() {
                    DEFAULT_WAIT
                } else {
                    d.min(MAX_WAIT)
                }
            }
            None => return text(StatusCode::BAD_REQUEST, "Invalid wait time"),
        }
    }
    let min_index = match get("index").filter(|i| !i.is_empty()) {
        None => 0,
        Some(index) => match index.parse::<u64>() {
            Ok(index) => index,
            Err(_) => return text(StatusCode::BAD_REQUEST, "Invalid index"),
        },
    };
    let authz = match authorize(shared, token) {
        Ok(authz) => authz,
        Err(refusal) => return refusal.into(),
    };
    // Consul adds up to wait/16 so that concurrent queries spread out.
    let deadline = Instant::now() + wait + random_below(wait / 16);
    let restores = shared.restores.load(Ordering::SeqCst);
    let mut changes = shared.changes.subscribe();
    loop {
        changes.borrow_and_update();
        let (index, entries, filtered) = {
            let state = shared.state.lock().unwrap();
            let (entries, filtered) =
                health_entries(&state, service, passing, &tags, authz.as_ref());
            (state.index_of(service), entries, filtered)
        };
        let abandoned = shared.restores.load(Ordering::SeqCst) != restores;
        if min_index == 0 || index > min_index || abandoned || Instant::now() >= deadline {
            return health_answer(shared, index, entries, filtered, authz.as_ref());
        }
        let _parked = Parked::new(shared, service);
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return text(StatusCode::INTERNAL_SERVER_ERROR, "shutting down");
                }
            }
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// `index` and `wait` of a blocking query; an error answer if malformed.
fn blocking_params(query: &[(String, String)]) -> Result<(u64, Duration), Refusal> {
    let get = |key: &str| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let mut wait = DEFAULT_WAIT;
    if let Some(text_wait) = get("wait").filter(|w| !w.is_empty()) {
        match parse_go_duration(text_wait) {
            Some(d) if d.is_zero() => {}
            Some(d) => wait = d.min(MAX_WAIT),
            None => return Err(bad_request("Invalid wait time")),
        }
    }
    let index = match get("index").filter(|i| !i.is_empty()) {
        None => 0,
        Some(index) => match index.parse::<u64>() {
            Ok(index) => index,
            Err(_) => return Err(bad_request("Invalid index")),
        },
    };
    Ok((index, wait))
}

/// Runs a blocking query: `read` gives the current index and answer body
/// under the state lock; it is answered once the index is above
/// `min_index`, or at the deadline.
async fn block_on_index(
    shared: &Arc<Shared>,
    query: &[(String, String)],
    parked_as: &str,
    read: impl Fn(&mut State) -> (u64, Value),
) -> Answer {
    let (min_index, wait) = match blocking_params(query) {
        Ok(params) => params,
        Err(refusal) => return refusal.into(),
    };
    let deadline = Instant::now() + wait + random_below(wait / 16);
    let mut changes = shared.changes.subscribe();
    loop {
        changes.borrow_and_update();
        let (index, body) = read(&mut shared.state.lock().unwrap());
        if min_index == 0 || index > min_index || Instant::now() >= deadline {
            let mut answer = Response::new(Full::new(Bytes::from(body.to_string())));
            let headers = answer.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert("x-consul-index", HeaderValue::from(index.max(1)));
            return answer;
        }
        let _parked = Parked::new(shared, parked_as);
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return text(StatusCode::INTERNAL_SERVER_ERROR, "shutting down");
                }
            }
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// `GET /v1/agent/connect/ca/roots` (Consul HTTP API, Agent, Connect,
/// "List Certificate Authority (CA) Root Certificates").
async fn connect_roots(shared: &Arc<Shared>, query: &[(String, String)]) -> Answer {
    block_on_index(shared, query, "connect-roots", |state| {
        state.connect_root();
        let connect = &state.connect;
        let roots: Vec<Value> = connect
            .roots
            .iter()
            .map(|root| {
                json!({
                    "ID": root.id,
                    "Name": root.name,
                    "SerialNumber": root.serial,
                    "SigningKeyID": root.id,
                    "ExternalTrustDomain": CLUSTER_ID,
                    "NotBefore": "2026-01-01T00:00:00Z",
                    "NotAfter": "2036-01-01T00:00:00Z",
                    "RootCert": root.ca.pem,
                    "IntermediateCerts": null,
                    "Active": root.active,
                    "PrivateKeyType": "ec",
                    "PrivateKeyBits": 256,
                    "CreateIndex": root.create_index,
                    "ModifyIndex": root.modify_index,
                })
            })
            .collect();
        let active = connect.active().map(|r| r.id.clone()).unwrap_or_default();
        (
            connect.roots_index,
            json!({
                "ActiveRootID": active,
                "TrustDomain": connect.trust_domain,
                "Roots": roots,
            }),
        )
    })
    .await
}

/// `GET /v1/agent/connect/ca/leaf/:service` (Consul HTTP API, Agent,
/// Connect, "Service Leaf Certificate").
async fn connect_leaf(shared: &Arc<Shared>, service: &str, query: &[(String, String)]) -> Answer {
    if service.is_empty() {
        return text(StatusCode::NOT_FOUND, "");
    }
    let parked_as = format!("connect-leaf/{service}");
    block_on_index(shared, query, &parked_as, |state| {
        if !state.connect.leaves.contains_key(service) {
            state.issue_connect_leaf(service);
        }
        let uri = format!(
            "spiffe://{}/ns/default/dc/{DATACENTER}/svc/{service}",
            state.connect.trust_domain
        );
        let leaf = &state.connect.leaves[service];
        (
            leaf.modify_index,
            json!({
                "SerialNumber": colon_hex(leaf.serial),
                "CertPEM": leaf.leaf.cert_pem,
                "PrivateKeyPEM": leaf.leaf.key_pem,
                "Service": service,
                "ServiceURI": uri,
                "ValidAfter": rfc3339(leaf.valid_after),
                "ValidBefore": rfc3339(leaf.valid_before),
                "CreateIndex": leaf.create_index,
                "ModifyIndex": leaf.modify_index,
            }),
        )
    })
    .await
}

fn health_answer(
    shared: &Shared,
    index: u64,
    entries: Vec<Value>,
    filtered: bool,
    authz: Option<&Authz>,
) -> Answer {
    match *shared.fault.lock().unwrap() {
        Fault::Garbage => {
            let mut answer = text(StatusCode::OK, "[{\"Node\": {\"Node\": \"node-1\", <html>");
            answer.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return answer;
        }
        Fault::NoLeader => return text(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader"),
        Fault::None => {}
    }
    let mut answer = Response::new(Full::new(Bytes::from(Value::Array(entries).to_string())));
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-consul-index", HeaderValue::from(index.max(1)));
    headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    // Consul does not tell anonymous callers that something was hidden.
    if filtered && authz.is_some_and(|a| !a.anonymous) {
        headers.insert(
            "x-consul-results-filtered-by-acls",
            HeaderValue::from_static("true"),
        );
    }
    answer
}

fn node_json() -> Value {
    json!({
        "ID": NODE_ID,
        "Node": NODE,
        "Address": NODE_ADDRESS,
        "Datacenter": DATACENTER,
        "TaggedAddresses": {"lan": NODE_ADDRESS, "lan_ipv4": NODE_ADDRESS, "wan": NODE_ADDRESS, "wan_ipv4": NODE_ADDRESS},
        "Meta": {"consul-network-segment": ""},
        "CreateIndex": 5,
        "ModifyIndex": 5
    })
}

fn serf_check() -> Value {
    json!({
        "Node": NODE,
        "CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": "passing",
        "Notes": "",
        "Output": "Agent alive and reachable",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
        "Type": "",
        "CreateIndex": 5,
        "ModifyIndex": 5
    })
}

fn check_json(check: &Check, instance: &Instance) -> Value {
    let kind = match check.kind {
        CheckType::Ttl(_) => "ttl",
        CheckType::Http(_) => "http",
        CheckType::Tcp(_) => "tcp",
    };
    json!({
        "Node": NODE,
        "CheckID": check.id,
        "Name": check.name,
        "Status": check.status,
        "Notes": check.notes,
        "Output": check.output,
        "ServiceID": check.service_id,
        "ServiceName": check.service_name,
        "ServiceTags": instance.tags.clone().unwrap_or_default(),
        "Type": kind,
        "CreateIndex": check.create_index,
        "ModifyIndex": check.modify_index
    })
}

fn health_entries(
    state: &State,
    service: &str,
    passing: bool,
    tags: &[String],
    authz: Option<&Authz>,
) -> (Vec<Value>, bool) {
    let mut entries = Vec::new();
    let mut filtered = false;
    for instance in state.instances.values().filter(|i| i.name == service) {
        let instance_tags: BTreeSet<String> = instance
            .tags
            .iter()
            .flatten()
            .map(|t| t.to_lowercase())
            .collect();
        if !tags.iter().all(|t| instance_tags.contains(t)) {
            continue;
        }
        let mut checks = vec![serf_check()];
        let mut all_passing = true;
        for check in state
            .checks
            .values()
            .filter(|c| c.service_id == instance.id)
        {
            all_passing &= check.status == "passing";
            checks.push(check_json(check, instance));
        }
        if passing && !all_passing {
            continue;
        }
        if let Some(authz) = authz
            && !(authz.node_read(NODE) && authz.service_read(&instance.name))
        {
            filtered = true;
            continue;
        }
        entries.push(json!({
            "Node": node_json(),
            "Service": {
                "ID": instance.id,
                "Service": instance.name,
                "Tags": instance.tags,
                "Address": instance.address,
                "Meta": instance.meta,
                "Port": instance.port,
                "Weights": {"Passing": 1, "Warning": 1},
                "EnableTagOverride": false,
                "CreateIndex": instance.create_index,
                "ModifyIndex": instance.modify_index
            },
            "Checks": checks
        }));
    }
    (entries, filtered)
}

/// A check definition from a register body.
struct CheckDefinition {
    id: String,
    name: String,
    notes: String,
    status: String,
    kind: CheckType,
}

fn parse_check(
    value: &Value,
    service_id: &str,
    service_name: &str,
    position: Option<usize>,
) -> Result<CheckDefinition, String> {
    let field = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or("");
    let id = match (field("CheckID"), field("ID")) {
        ("", "") => match position {
            None => format!("service:{service_id}"),
            Some(n) => format!("service:{service_id}:{n}"),
        },
        ("", id) | (id, _) => id.to_owned(),
    };
    let name = match field("Name") {
        "" => format!("Service '{service_name}' check"),
        name => name.to_owned(),
    };
    let status = match field("Status") {
        "" => "critical".to_owned(),
        s @ ("passing" | "warning" | "critical") => s.to_owned(),
        other => return Err(format!("Invalid check: status {other:?} is not valid")),
    };
    let interval = match field("Interval") {
        "" => None,
        text => Some(parse_go_duration(text).ok_or("Invalid check: bad Interval")?),
    };
    let kind = if !field("TTL").is_empty() {
        let ttl = parse_go_duration(field("TTL")).ok_or("Invalid check: bad TTL")?;
        if ttl.is_zero() {
            return Err("Invalid check: TTL must be > 0 for TTL checks".into());
        }
        CheckType::Ttl(ttl)
    } else if !field("HTTP").is_empty() || !field("TCP").is_empty() {
        if interval.is_none_or(|i| i.is_zero()) {
            return Err("Invalid check: Interval must be > 0 for HTTP and TCP checks".into());
        }
        if field("HTTP").is_empty() {
            CheckType::Tcp(field("TCP").to_owned())
        } else {
            CheckType::Http(field("HTTP").to_owned())
        }
    } else {
        return Err("consul double: only TTL, HTTP and TCP checks are modelled".into());
    };
    Ok(CheckDefinition {
        id,
        name,
        notes: field("Notes").to_owned(),
        status,
        kind,
    })
}

/// Applies a register body; returns the TTL timers to arm.
fn register(shared: &Arc<Shared>, body: &Value, replace_checks: bool) -> Result<(), Refusal> {
    let field = |key: &str| body.get(key).and_then(Value::as_str).unwrap_or("");
    let name = field("Name").to_owned();
    if name.is_empty() {
        return Err(bad_request("Missing service name"));
    }
    let id = match field("ID") {
        "" => name.clone(),
        id => id.to_owned(),
    };
    let tags = match body.get("Tags") {
        None | Some(Value::Null) => None,
        Some(tags) => Some(
            serde_json::from_value::<Vec<String>>(tags.clone())
                .map_err(|e| bad_request(&format!("Request decode failed: {e}")))?,
        ),
    };
    let meta = match body.get("Meta") {
        None | Some(Value::Null) => None,
        Some(meta) => Some(
            serde_json::from_value::<BTreeMap<String, String>>(meta.clone())
                .map_err(|e| bad_request(&format!("Request decode failed: {e}")))?,
        ),
    };
    let port = body.get("Port").and_then(Value::as_i64).unwrap_or(0);
    let mut definitions = Vec::new();
    match (body.get("Check"), body.get("Checks")) {
        (Some(check), None) if !check.is_null() => {
            definitions.push(parse_check(check, &id, &name, None).map_err(|e| bad_request(&e))?);
        }
        (_, Some(Value::Array(checks))) => {
            for (n, check) in checks.iter().enumerate() {
                let position = (checks.len() > 1).then_some(n + 1);
                definitions
                    .push(parse_check(check, &id, &name, position).map_err(|e| bad_request(&e))?);
            }
        }
        _ => {}
    }

    let mut ttls = Vec::new();
    {
        let mut state = shared.state.lock().unwrap();
        let previous = state
            .instances
            .get(&id)
            .map(|i| (i.name.clone(), i.create_index));
        let index = state.raft_index + 1;
        if replace_checks {
            let defined: BTreeSet<&str> = definitions.iter().map(|d| d.id.as_str()).collect();
            state
                .checks
                .retain(|cid, c| c.service_id != id || defined.contains(cid.as_str()));
        }
        state.instances.insert(
            id.clone(),
            Instance {
                id: id.clone(),
                name: name.clone(),
                tags,
                address: field("Address").to_owned(),
                port,
                meta,
                create_index: previous.as_ref().map_or(index, |p| p.1),
                modify_index: index,
            },
        );
        for definition in definitions {
            let generation = state.generation();
            let create_index = state
                .checks
                .get(&definition.id)
                .map_or(index, |c| c.create_index);
            if let CheckType::Ttl(ttl) = definition.kind {
                ttls.push((definition.id.clone(), generation, ttl));
            }
            state.checks.insert(
                definition.id.clone(),
                Check {
                    id: definition.id,
                    name: definition.name,
                    notes: definition.notes,
                    service_id: id.clone(),
                    service_name: name.clone(),
                    status: definition.status,
                    output: String::new(),
                    kind: definition.kind,
                    generation,
                    create_index,
                    modify_index: index,
                },
            );
        }
        let mut names = vec![name];
        if let Some((old_name, _)) = previous
            && old_name != names[0]
        {
            names.push(old_name);
        }
        state.write(&names);
    }
    for (check, generation, ttl) in ttls {
        arm_ttl(shared, check, generation, ttl);
    }
    shared.changed();
    Ok(())
}

fn deregister(shared: &Shared, id: &str) -> Result<(), Refusal> {
    {
        let mut state = shared.state.lock().unwrap();
        let Some(instance) = state.instances.remove(id) else {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!(
                    "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
                ),
            ));
        };
        state.checks.retain(|_, c| c.service_id != id);
        state.write(&[instance.name]);
    }
    shared.changed();
    Ok(())
}

/// Sets a TTL check's status (pass/warn/fail), resetting its TTL clock.
fn update_check(
    shared: &Arc<Shared>,
    check_id: &str,
    status: &str,
    note: Option<&str>,
) -> Result<(), Refusal> {
    let (generation, ttl, changed) = {
        let mut state = shared.state.lock().unwrap();
        let generation = state.generation();
        let next_index = state.raft_index + 1;
        let Some(check) = state.checks.get_mut(check_id) else {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!(
                    "Unknown check ID {check_id:?}. Ensure that the check ID is passed, not the check name."
                ),
            ));
        };
        let CheckType::Ttl(ttl) = check.kind else {
            return Err(Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("CheckID {check_id:?} does not have associated TTL"),
            ));
        };
        check.generation = generation;
        check.output = note.unwrap_or("").to_owned();
        let changed = check.status != status;
        if changed {
            check.status = status.to_owned();
            check.modify_index = next_index;
            let name = check.service_name.clone();
            state.write(&[name]);
        }
        (generation, ttl, changed)
    };
    arm_ttl(shared, check_id.to_owned(), generation, ttl);
    if changed {
        shared.changed();
    }
    Ok(())
}

/// Marks the check critical ("TTL expired") unless updated within `ttl`.
fn arm_ttl(shared: &Arc<Shared>, check_id: String, generation: u64, ttl: Duration) {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    tokio::spawn(async move {
        tokio::time::sleep(ttl).await;
        let Some(shared) = weak.upgrade() else { return };
        let changed = {
            let mut state = shared.state.lock().unwrap();
            let next_index = state.raft_index + 1;
            match state.checks.get_mut(&check_id) {
                Some(check) if check.generation == generation => {
                    check.output = "TTL expired".to_owned();
                    if check.status == "critical" {
                        false
                    } else {
                        check.status = "critical".to_owned();
                        check.modify_index = next_index;
                        let name = check.service_name.clone();
                        state.write(&[name]);
                        true
                    }
                }
                _ => false,
            }
        };
        if changed {
            shared.changed();
        }
    });
}

fn agent_register(
    shared: &Arc<Shared>,
    _rest: &str,
    query: &[(String, String)],
    token: Option<&str>,
    body: &Bytes,
) -> Answer {
    if let Err(refusal) = enterprise_params(query) {
        return refusal.into();
    }
    let authz = match authorize(shared, token) {
        Ok(authz) => authz,
        Err(refusal) => return refusal.into(),
    };
    let definition: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => return bad_request(&format!("Request decode failed: {e}")).into(),
    };
    let name = definition.get("Name").and_then(Value::as_str).unwrap_or("");
    if let Some(authz) = &authz
        && !name.is_empty()
        && !authz.service_write(name)
    {
        return authz.denied("service:write", name);
    }
    let replace = query.iter().any(|(k, _)| k == "replace-existing-checks");
    match register(shared, &definition, replace) {
        Ok(()) => text(StatusCode::OK, ""),
        Err(refusal) => refusal.into(),
    }
}

fn agent_deregister(
    shared: &Arc<Shared>,
    id: &str,
    query: &[(String, String)],
    token: Option<&str>,
    _body: &Bytes,
) -> Answer {
    if let Err(refusal) = enterprise_params(query) {
        return refusal.into();
    }
    let authz = match authorize(shared, token) {
        Ok(authz) => authz,
        Err(refusal) => return refusal.into(),
    };
    let name = shared
        .state
        .lock()
        .unwrap()
        .instances
        .get(id)
        .map(|i| i.name.clone());
    if let (Some(authz), Some(name)) = (&authz, &name)
        && !authz.service_write(name)
    {
        return authz.denied("service:write", name);
    }
    match deregister(shared, id) {
        Ok(()) => text(StatusCode::OK, ""),
        Err(refusal) => refusal.into(),
    }
}

fn agent_check_update(
    shared: &Arc<Shared>,
    rest: &str,
    query: &[(String, String)],
    token: Option<&str>,
    _body: &Bytes,
) -> Answer {
    if let Err(refusal) = enterprise_params(query) {
        return refusal.into();
    }
    let Some((verb, check_id)) = rest.split_once('/') else {
        return text(StatusCode::NOT_FOUND, "");
    };
    let status = match verb {
        "pass" => "passing",
        "warn" => "warning",
        _ => "critical",
    };
    let authz = match authorize(shared, token) {
        Ok(authz) => authz,
        Err(refusal) => return refusal.into(),
    };
    let service = shared
        .state
        .lock()
        .unwrap()
        .checks
        .get(check_id)
        .map(|c| c.service_name.clone());
    if let (Some(authz), Some(service)) = (&authz, &service)
        && !authz.service_write(service)
    {
        return authz.denied("service:write", service);
    }
    let note = query
        .iter()
        .find(|(k, _)| k == "note")
        .map(|(_, v)| v.as_str());
    match update_check(shared, check_id, status, note) {
        Ok(()) => text(StatusCode::OK, ""),
        Err(refusal) => refusal.into(),
    }
}
