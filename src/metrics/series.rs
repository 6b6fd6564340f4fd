//! The request series of one route and method, resolved once and reused.
//!
//! Every request records into six series of the request families; looking
//! each up by its label set hashes the route label every time. The
//! handles are resolved on a route and method's first request and kept
//! here, keyed by route label: a request then costs one lookup.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use http::Method;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};

use super::registry::{DurationHistogram, Families, RouteMethod, RouteMethodStatus};

/// The method label of every series: the standard methods by name, any
/// other as `OTHER` (client-chosen names would make unbounded series).
pub(crate) fn method_label(method: &Method) -> &'static str {
    METHODS[method_slot(method)]
}

/// The standard methods' labels, in the order of their slots.
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// A method's index in [`METHODS`]: the one mapping from methods to
/// labels, so that a series slot and its label cannot disagree.
fn method_slot(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// The handles of one route and method: clones of the families' own
/// series (they share their values), so what they record is what the
/// families export.
pub(crate) struct RouteSeries {
    pub(crate) labels: RouteMethod,
    pub(crate) in_flight: Gauge,
    pub(crate) duration: DurationHistogram,
    pub(crate) request_size: Histogram,
    pub(crate) response_size: Histogram,
    /// `requests_total` per status: a handful per route, scanned.
    requests: RwLock<Vec<(u16, Counter)>>,
}

impl RouteSeries {
    fn new(families: &Families, labels: RouteMethod) -> Self {
        Self {
            in_flight: families.in_flight.get_or_create(&labels).clone(),
            duration: families.duration.get_or_create(&labels).clone(),
            request_size: families.request_size.get_or_create(&labels).clone(),
            response_size: families.response_size.get_or_create(&labels).clone(),
            requests: RwLock::new(Vec::new()),
            labels,
        }
    }

    /// The `requests_total` counter of `status`.
    pub(crate) fn requests(&self, families: &Families, status: u16) -> Counter {
        if let Some((_, counter)) = self
            .requests
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(s, _)| *s == status)
        {
            return counter.clone();
        }
        let counter = families
            .requests
            .get_or_create(&RouteMethodStatus {
                route: self.labels.route.clone(),
                method: self.labels.method,
                status,
            })
            .clone();
        let mut statuses = self
            .requests
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Statuses are three digits: the list stays short.
        if !statuses.iter().any(|(s, _)| *s == status) {
            statuses.push((status, counter.clone()));
        }
        counter
    }
}

type Slots = [Option<Arc<RouteSeries>>; METHODS.len()];

/// Route label → the series of each method.
#[derive(Default)]
pub(crate) struct SeriesCache {
    routes: RwLock<HashMap<Arc<str>, Slots>>,
}

impl SeriesCache {
    /// The series of `route` (a capped route label) and `method`.
    pub(crate) fn get(
        &self,
        families: &Families,
        route: &Arc<str>,
        method: &Method,
    ) -> Arc<RouteSeries> {
        let slot = method_slot(method);
        let method = METHODS[slot];
        if let Some(series) = self
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&**route)
            .and_then(|slots| slots[slot].clone())
        {
            return series;
        }
        let series = Arc::new(RouteSeries::new(
            families,
            RouteMethod {
                route: route.clone(),
                method,
            },
        ));
        // Route labels are capped (`MetricsConfig::max_routes`), so the
        // map is bounded by the cap times the method labels.
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        routes.entry(route.clone()).or_default()[slot]
            .get_or_insert(series)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::GatewayMetrics;

    #[test]
    fn cached_handles_record_into_the_exported_series() {
        let metrics = GatewayMetrics::default();
        let inner = &metrics.inner;
        let route: Arc<str> = Arc::from("/orders");
        let first = inner.series.get(&inner.families, &route, &Method::GET);
        let again = inner.series.get(&inner.families, &route, &Method::GET);
        assert!(
            Arc::ptr_eq(&first, &again),
            "one resolution per route and method"
        );
        let other = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_label(&other), "OTHER");
        assert_eq!(
            inner
                .series
                .get(&inner.families, &route, &other)
                .labels
                .method,
            "OTHER"
        );
        let post = inner.series.get(&inner.families, &route, &Method::POST);
        assert!(!Arc::ptr_eq(&first, &post));

        first.requests(&inner.families, 200).inc();
        again.requests(&inner.families, 200).inc();
        first.requests(&inner.families, 404).inc();
        post.request_size.observe(10.0);
        let text = metrics.encode_prometheus_text();
        assert!(
            text.contains(r#"gateway_requests_total{route="/orders",method="GET",status="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gateway_requests_total{route="/orders",method="GET",status="404"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gateway_request_size_bytes_count{route="/orders",method="POST"} 1"#),
            "{text}"
        );
    }
}
