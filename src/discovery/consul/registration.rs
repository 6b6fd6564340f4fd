//! Registering a service instance with the local Consul agent, keeping its
//! TTL check passing, and deregistering it on shutdown (Consul HTTP API,
//! Agent, "Register Service", "TTL Check Pass", "Deregister Service").

use std::{collections::BTreeMap, fmt, time::Duration};

use http::StatusCode;
use serde_json::{Map, Value, json};
use tokio::{task::JoinHandle, time::Instant};

use super::api::{ConsulClient, ConsulError, Query, go_duration, path_segment};

/// The health check Consul runs (or, for TTL, expects) for an instance.
///
/// ```
/// use std::time::Duration;
/// use tower_gateway::discovery::consul::ServiceCheck;
///
/// let http = ServiceCheck::http("https://10.0.0.7:3000/health", Duration::from_secs(10))
///     .timeout(Duration::from_secs(2))
///     .deregister_critical_service_after(Duration::from_secs(90 * 60));
/// let ttl = ServiceCheck::ttl(Duration::from_secs(15));
/// ```
#[derive(Debug, Clone)]
pub struct ServiceCheck {
    kind: CheckKind,
    interval: Option<Duration>,
    timeout: Option<Duration>,
    deregister_after: Option<Duration>,
    tls_skip_verify: bool,
    method: Option<String>,
    name: Option<String>,
    notes: Option<String>,
}

#[derive(Debug, Clone)]
enum CheckKind {
    Http(String),
    Tcp(String),
    Ttl(Duration),
}

impl ServiceCheck {
    fn new(kind: CheckKind, interval: Option<Duration>) -> Self {
        Self {
            kind,
            interval,
            timeout: None,
            deregister_after: None,
            tls_skip_verify: false,
            method: None,
            name: None,
            notes: None,
        }
    }

    /// Consul GETs `url` every `interval`: 2xx is passing, 429 warning,
    /// anything else critical (`HTTP`, `Interval`).
    pub fn http(url: impl Into<String>, interval: Duration) -> Self {
        Self::new(CheckKind::Http(url.into()), Some(interval))
    }

    /// Consul opens a TCP connection to `address` (`host:port`) every
    /// `interval` (`TCP`, `Interval`).
    pub fn tcp(address: impl Into<String>, interval: Duration) -> Self {
        Self::new(CheckKind::Tcp(address.into()), Some(interval))
    }

    /// The instance reports its own health: Consul marks it critical unless
    /// told "pass" within every `ttl` (`TTL`). [`ConsulRegistration`] does
    /// the telling, three times per `ttl`.
    pub fn ttl(ttl: Duration) -> Self {
        Self::new(CheckKind::Ttl(ttl), None)
    }

    /// Time allowed for one HTTP or TCP probe (`Timeout`; Consul's default
    /// is 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Consul removes the instance after it has been critical this long
    /// (`DeregisterCriticalServiceAfter`; Consul's minimum is one minute and
    /// its reaper runs every 30 s).
    pub fn deregister_critical_service_after(mut self, after: Duration) -> Self {
        self.deregister_after = Some(after);
        self
    }

    /// Whether an HTTPS check skips certificate verification
    /// (`TLSSkipVerify`, default false).
    pub fn tls_skip_verify(mut self, skip: bool) -> Self {
        self.tls_skip_verify = skip;
        self
    }

    /// The HTTP method of an HTTP check (`Method`, default `GET`).
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// A human-readable check name (`Name`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Notes for operators (`Notes`).
    pub fn notes(mut self, notes: impl Into<String>) -> Self {
        self.notes = Some(notes.into());
        self
    }

    fn to_json(&self, check_id: &str) -> Value {
        let mut check = Map::new();
        check.insert("CheckID".into(), check_id.into());
        if let Some(name) = &self.name {
            check.insert("Name".into(), name.as_str().into());
        }
        if let Some(notes) = &self.notes {
            check.insert("Notes".into(), notes.as_str().into());
        }
        match &self.kind {
            CheckKind::Http(url) => {
                check.insert("HTTP".into(), url.as_str().into());
                if let Some(method) = &self.method {
                    check.insert("Method".into(), method.as_str().into());
                }
                check.insert("TLSSkipVerify".into(), self.tls_skip_verify.into());
            }
            CheckKind::Tcp(address) => {
                check.insert("TCP".into(), address.as_str().into());
            }
            CheckKind::Ttl(ttl) => {
                check.insert("TTL".into(), go_duration(*ttl).into());
            }
        }
        for (key, value) in [
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("DeregisterCriticalServiceAfter", self.deregister_after),
        ] {
            if let Some(value) = value {
                check.insert(key.into(), go_duration(value).into());
            }
        }
        Value::Object(check)
    }
}

/// A service instance to register with the local agent: the body of
/// `PUT /v1/agent/service/register`.
///
/// ```
/// use std::time::Duration;
/// use tower_gateway::discovery::consul::{ServiceCheck, ServiceRegistration};
///
/// // What `curl -X PUT …/v1/agent/service/register -d '{"ID": "order-service-1", …}'` sends.
/// let order_service = ServiceRegistration::new("order-service", "order-service-1")
///     .address("order-service")
///     .port(3000)
///     .tags(["microservice", "orders"])
///     .check(
///         ServiceCheck::http("https://order-service:3000/health", Duration::from_secs(10))
///             .timeout(Duration::from_secs(2)),
///     );
/// ```
#[derive(Debug, Clone)]
pub struct ServiceRegistration {
    name: String,
    id: String,
    address: Option<String>,
    port: Option<u16>,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    check: Option<ServiceCheck>,
}

impl ServiceRegistration {
    /// An instance `id` (unique on its agent) of the service `name`.
    pub fn new(name: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            id: id.into(),
            address: None,
            port: None,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            check: None,
        }
    }

    /// Where the instance listens (`Address`); without it Consul answers
    /// with the agent's node address.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// The instance's port (`Port`).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Tags (`Tags`).
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// One metadata entry (`Meta`).
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// The instance's health check (`Check`). Its ID is `service:<id>`.
    pub fn check(mut self, check: ServiceCheck) -> Self {
        self.check = Some(check);
        self
    }

    /// The instance ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn check_id(&self) -> String {
        format!("service:{}", self.id)
    }

    fn ttl(&self) -> Option<Duration> {
        match self.check.as_ref()?.kind {
            CheckKind::Ttl(ttl) => Some(ttl),
            _ => None,
        }
    }

    /// The JSON body Consul's register endpoint documents.
    fn to_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("ID".into(), self.id.as_str().into());
        body.insert("Name".into(), self.name.as_str().into());
        if let Some(address) = &self.address {
            body.insert("Address".into(), address.as_str().into());
        }
        if let Some(port) = self.port {
            body.insert("Port".into(), port.into());
        }
        if !self.tags.is_empty() {
            body.insert("Tags".into(), json!(self.tags));
        }
        if !self.meta.is_empty() {
            body.insert("Meta".into(), json!(self.meta));
        }
        if let Some(check) = &self.check {
            body.insert("Check".into(), check.to_json(&self.check_id()));
        }
        Value::Object(body)
    }
}

/// A registered instance. With a TTL check, a background task keeps the
/// check passing (and registers the instance again if the agent forgot
/// it); call [`deregister`](Self::deregister) on graceful shutdown.
/// Dropping the handle stops the task and, if a Tokio runtime is still
/// running, deregisters in the background, best effort.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_gateway::discovery::consul::{ConsulClient, ServiceCheck, ServiceRegistration};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let consul = ConsulClient::new("127.0.0.1:8500")?;
/// let registration = consul
///     .register(
///         ServiceRegistration::new("gateway", "gateway-1")
///             .address("10.0.0.5")
///             .port(8080)
///             .check(ServiceCheck::ttl(Duration::from_secs(15))
///                 .deregister_critical_service_after(Duration::from_secs(600))),
///     )
///     .await?;
/// // … serve until shutdown …
/// registration.deregister().await?;
/// # Ok(()) }
/// ```
pub struct ConsulRegistration {
    client: ConsulClient,
    service_id: String,
    check_id: Option<String>,
    keepalive: Option<JoinHandle<()>>,
    deregistered: bool,
}

impl fmt::Debug for ConsulRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulRegistration")
            .field("service_id", &self.service_id)
            .field("check_id", &self.check_id)
            .field("keepalive", &self.keepalive.is_some())
            .finish()
    }
}

impl ConsulRegistration {
    pub(super) async fn start(
        client: ConsulClient,
        registration: ServiceRegistration,
    ) -> Result<Self, ConsulError> {
        let ttl = registration.ttl();
        let runtime = match ttl {
            Some(_) => {
                Some(tokio::runtime::Handle::try_current().map_err(|_| ConsulError::NoRuntime)?)
            }
            None => None,
        };
        let body = registration.to_json().to_string().into_bytes();
        let register = agent_path(&client, "/v1/agent/service/register");
        client.put(&register, Some(body.clone())).await?;
        let mut handle = Self {
            check_id: registration.check.as_ref().map(|_| registration.check_id()),
            service_id: registration.id,
            client,
            keepalive: None,
            deregistered: false,
        };
        if let (Some(ttl), Some(runtime), Some(check_id)) = (ttl, runtime, &handle.check_id) {
            // A TTL check starts critical: pass it now so the instance is
            // routable as soon as this returns.
            if let Err(error) = pass(&handle.client, check_id).await {
                handle.deregistered = true;
                let _ = remove(&handle.client, &handle.service_id).await;
                return Err(error);
            }
            let keepalive = Keepalive {
                client: handle.client.clone(),
                check_id: check_id.clone(),
                register,
                body,
                interval: (ttl / 3).max(Duration::from_millis(10)),
            };
            handle.keepalive = Some(runtime.spawn(keepalive.run()));
        }
        tracing::info!(target: "tower_gateway::consul", service_id = %handle.service_id, "registered with consul");
        Ok(handle)
    }

    /// The instance ID.
    pub fn service_id(&self) -> &str {
        &self.service_id
    }

    /// The ID of the instance's check (`service:<id>`), if it has one.
    pub fn check_id(&self) -> Option<&str> {
        self.check_id.as_deref()
    }

    /// Stops the TTL keep-alive and removes the instance from the agent
    /// (`PUT /v1/agent/service/deregister/<id>`). An instance the agent no
    /// longer knows counts as removed.
    pub async fn deregister(mut self) -> Result<(), ConsulError> {
        if let Some(keepalive) = self.keepalive.take() {
            keepalive.abort();
            // Wait for it to be gone so it cannot register the instance
            // again behind our back.
            let _ = keepalive.await;
        }
        self.deregistered = true;
        remove(&self.client, &self.service_id).await
    }
}

impl Drop for ConsulRegistration {
    fn drop(&mut self) {
        if let Some(keepalive) = self.keepalive.take() {
            keepalive.abort();
        }
        if self.deregistered {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(target: "tower_gateway::consul", service_id = %self.service_id, "registration dropped outside a runtime; not deregistered");
            return;
        };
        let client = self.client.clone();
        let service_id = std::mem::take(&mut self.service_id);
        runtime.spawn(async move {
            if let Err(error) = remove(&client, &service_id).await {
                tracing::warn!(target: "tower_gateway::consul", %service_id, %error, "best-effort deregistration failed");
            }
        });
    }
}

/// An agent endpoint path with the client's tenancy parameters.
fn agent_path(client: &ConsulClient, path: &str) -> String {
    let mut query = Query::default();
    client.tenancy(&mut query);
    if query.as_str().is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.as_str())
    }
}

async fn pass(client: &ConsulClient, check_id: &str) -> Result<(), ConsulError> {
    let path = format!("/v1/agent/check/pass/{}", path_segment(check_id));
    client.put(&agent_path(client, &path), None).await
}

async fn remove(client: &ConsulClient, service_id: &str) -> Result<(), ConsulError> {
    let path = format!("/v1/agent/service/deregister/{}", path_segment(service_id));
    match client.put(&agent_path(client, &path), None).await {
        // "Unknown service ID": already gone.
        Err(error) if error.status() == Some(StatusCode::NOT_FOUND) => Ok(()),
        Ok(()) => {
            tracing::info!(target: "tower_gateway::consul", %service_id, "deregistered from consul");
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// The task that keeps a TTL check passing.
struct Keepalive {
    client: ConsulClient,
    check_id: String,
    register: String,
    body: Vec<u8>,
    interval: Duration,
}

impl Keepalive {
    async fn run(self) {
        let retry = self.interval.min(Duration::from_secs(1));
        let mut next = Instant::now() + self.interval;
        loop {
            tokio::time::sleep_until(next).await;
            let started = Instant::now();
            next = match pass(&self.client, &self.check_id).await {
                Ok(()) => started + self.interval,
                Err(error) if error.status() == Some(StatusCode::NOT_FOUND) => {
                    // "Unknown check ID": the agent lost the instance (it
                    // restarted without its data directory, or the service
                    // was deregistered by someone else while we still run).
                    tracing::warn!(target: "tower_gateway::consul", check_id = %self.check_id, "consul forgot the instance; registering again");
                    let again = match self
                        .client
                        .put(&self.register, Some(self.body.clone()))
                        .await
                    {
                        // Registered again, so critical again: pass at once.
                        Ok(()) => pass(&self.client, &self.check_id).await,
                        Err(error) => Err(error),
                    };
                    match again {
                        Ok(()) => started + self.interval,
                        Err(error) => {
                            tracing::warn!(target: "tower_gateway::consul", %error, "registering again failed");
                            started + retry
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(target: "tower_gateway::consul", check_id = %self.check_id, %error, "TTL check pass failed");
                    started + retry
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_body_matches_consul_register_schema() {
        let body = ServiceRegistration::new("order-service", "order-service-1")
            .address("order-service")
            .port(3000)
            .tags(["microservice", "orders"])
            .meta("version", "1.4.2")
            .check(
                ServiceCheck::http("https://order-service:3000/health", Duration::from_secs(10))
                    .timeout(Duration::from_secs(2))
                    .deregister_critical_service_after(Duration::from_secs(90 * 60)),
            )
            .to_json();
        assert_eq!(
            body,
            json!({
                "ID": "order-service-1",
                "Name": "order-service",
                "Address": "order-service",
                "Port": 3000,
                "Tags": ["microservice", "orders"],
                "Meta": {"version": "1.4.2"},
                "Check": {
                    "CheckID": "service:order-service-1",
                    "HTTP": "https://order-service:3000/health",
                    "Interval": "10s",
                    "Timeout": "2s",
                    "TLSSkipVerify": false,
                    "DeregisterCriticalServiceAfter": "5400s"
                }
            })
        );
    }

    #[test]
    fn ttl_and_tcp_checks() {
        let ttl = ServiceRegistration::new("gw", "gw-1")
            .check(ServiceCheck::ttl(Duration::from_millis(1500)))
            .to_json();
        assert_eq!(
            ttl["Check"],
            json!({"CheckID": "service:gw-1", "TTL": "1500ms"})
        );
        let tcp = ServiceRegistration::new("db", "db-1")
            .check(ServiceCheck::tcp("10.0.0.9:5432", Duration::from_secs(5)))
            .to_json();
        assert_eq!(
            tcp["Check"],
            json!({"CheckID": "service:db-1", "TCP": "10.0.0.9:5432", "Interval": "5s"})
        );
        let bare = ServiceRegistration::new("db", "db-2").to_json();
        assert_eq!(bare, json!({"ID": "db-2", "Name": "db"}));
    }
}
