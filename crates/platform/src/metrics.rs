//! The process-wide Prometheus recorder. Installed once; services in one process (tests) share
//! it, which is what Prometheus would see of one process anyway.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder on first call; later calls return the same handle. `None` only if
/// another recorder was installed by someone else.
pub fn prometheus() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "could not install the Prometheus recorder");
                None
            }
        })
        .clone()
}
