//! The Prometheus recorder. Metrics are recorded with the `metrics` macros
//! wherever things happen; this module installs the process-wide recorder
//! once and renders it for `GET /metrics`.
//!
//! Names (all prefixed `switchboard_`):
//! - `messages_received_total{channel}`, `inquiries_received_total{channel}`,
//!   `intake_duplicates_total{channel}`, `intake_errors_total{channel,kind}`
//! - `outbox_entries{status}` (pending / sent / failed, read at scrape time),
//!   `outbox_deliveries_total{channel,outcome}`
//! - `http_request_duration_seconds{method,route,status}` (histogram)
//! - `store_batch_size` (histogram of jobs per group commit)

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder on first call; later calls return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("switchboard_http_request_duration_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("switchboard_store_batch_size".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                    )
                })
                .expect("bucket lists are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist when the library is embedded; then
            // our handle renders nothing, which is better than panicking.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}
