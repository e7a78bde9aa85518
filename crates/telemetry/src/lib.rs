//! Process telemetry shared by the gateway and the operator:
//! - logs through `tracing`, filtered by `RUST_LOG` (or a default directive), JSON
//!   unless a terminal is attached;
//! - OpenTelemetry traces over OTLP (HTTP/protobuf), configured only through the
//!   standard `OTEL_*` variables and off when no endpoint is set; W3C trace context;
//! - Prometheus metrics and `/healthz` + `/readyz` on an admin port.

mod admin;
mod health;
mod listener;
mod metrics;
mod otel;
mod propagation;

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use admin::{AdminServer, admin_router, shutdown_signal};
pub use health::{ComponentHealth, Health, HealthReport};
pub use listener::{ListenerBounds, Refused as ListenerRefused, refused_counter, serve_bounded};
pub use metrics::Metrics;
pub use otel::{OtlpSettings, OtlpSettingsError};
pub use propagation::{extract_context, inject_context};

/// What the binary tells telemetry about itself.
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
    pub service_name: &'static str,
    pub service_version: &'static str,
    /// Env-filter directive used when `RUST_LOG` is unset, e.g. `info`.
    pub default_log_filter: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter `{directive}`: {reason}")]
    Filter { directive: String, reason: String },
    #[error("invalid OpenTelemetry settings: {0}")]
    Otlp(#[from] OtlpSettingsError),
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the trace pipeline alive; `shutdown` (or drop) flushes pending spans.
#[must_use = "dropping the guard shuts the trace exporter down"]
pub struct TelemetryGuard {
    tracer_provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Flushes and stops the exporter. Blocks until pending spans are sent or
    /// the exporter's timeout passes.
    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    fn shutdown_inner(&mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("telemetry: flushing spans at shutdown failed: {e}");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

/// Installs the global subscriber (logs + traces) and the W3C propagator.
/// The environment is read once here.
pub fn init(options: &TelemetryOptions) -> Result<TelemetryGuard, TelemetryError> {
    let env = |name: &str| std::env::var(name).ok();
    let directive = env("RUST_LOG").unwrap_or_else(|| options.default_log_filter.clone());
    let filter = EnvFilter::builder()
        .parse(&directive)
        .map_err(|e| TelemetryError::Filter {
            directive: directive.clone(),
            reason: e.to_string(),
        })?;

    let json = match env("XMPPFED_LOG_FORMAT").as_deref() {
        Some("json") => true,
        Some("text") => false,
        _ => !std::io::stdout().is_terminal(),
    };
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };

    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );

    let settings = OtlpSettings::from_env(env)?;
    let tracer_provider = match &settings {
        Some(settings) => Some(otel::tracer_provider(settings, options)?),
        None => None,
    };
    let otel_layer = tracer_provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(provider.tracer(options.service_name))
    });

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;

    match &settings {
        Some(s) => tracing::info!(endpoint = %s.endpoint, "exporting traces over OTLP"),
        None => tracing::debug!("no OTLP endpoint set: traces are not exported"),
    }
    Ok(TelemetryGuard { tracer_provider })
}
