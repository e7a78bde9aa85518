//! The OTLP trace pipeline, driven by the standard OpenTelemetry environment
//! variables (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/).

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::{TelemetryError, TelemetryOptions};

/// What the environment asks of the trace exporter. `None` from [`Self::from_env`]
/// means export is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The traces URL spans are POSTed to (`…/v1/traces`).
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtlpSettingsError {
    #[error(
        "{variable}={value} is not supported: this build exports OTLP over http/protobuf (usually port 4318)"
    )]
    Protocol {
        variable: &'static str,
        value: String,
    },
    #[error("OTEL_TRACES_EXPORTER={0} is not supported: use `otlp` or `none`")]
    Exporter(String),
    #[error("{variable}={value} is not an http(s) URL")]
    Endpoint {
        variable: &'static str,
        value: String,
    },
}

impl OtlpSettings {
    /// Reads the standard variables through `env` (injected so tests need not
    /// touch the process environment).
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, OtlpSettingsError> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());

        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match set("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => return Err(OtlpSettingsError::Exporter(other.to_owned())),
        }
        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = set(variable) {
                if value != "http/protobuf" {
                    return Err(OtlpSettingsError::Protocol { variable, value });
                }
                break;
            }
        }
        // The signal-specific endpoint is used as is; the generic one gets `/v1/traces`.
        let (variable, endpoint) = if let Some(v) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", v)
        } else if let Some(v) = set("OTEL_EXPORTER_OTLP_ENDPOINT") {
            let joined = format!("{}/v1/traces", v.trim_end_matches('/'));
            ("OTEL_EXPORTER_OTLP_ENDPOINT", joined)
        } else {
            return Ok(None);
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(OtlpSettingsError::Endpoint {
                variable,
                value: endpoint,
            });
        }
        Ok(Some(Self { endpoint }))
    }
}

pub(crate) fn tracer_provider(
    settings: &OtlpSettings,
    options: &TelemetryOptions,
) -> Result<SdkTracerProvider, TelemetryError> {
    // Headers, timeout and compression still come from OTEL_EXPORTER_OTLP_*,
    // read by the exporter itself; the endpoint is the one resolved above.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(settings.endpoint.clone())
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;

    // The default resource reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES;
    // our name applies only when the operator of the process set none.
    let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        options.service_version,
    ));
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(options.service_name);
    }

    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<OtlpSettings>, OtlpSettingsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtlpSettings::from_env(|k| map.get(k).cloned())
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]), Ok(None));
    }

    #[test]
    fn generic_endpoint_gets_the_traces_path() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]);
        assert_eq!(
            s.unwrap().unwrap().endpoint,
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn signal_endpoint_wins_and_is_used_as_is() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://b/custom"),
        ]);
        assert_eq!(s.unwrap().unwrap().endpoint, "https://b/custom");
    }

    #[test]
    fn disabled_sdk_or_none_exporter_turns_export_off() {
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318");
        assert_eq!(settings(&[ep, ("OTEL_SDK_DISABLED", "TRUE")]), Ok(None));
        assert_eq!(settings(&[ep, ("OTEL_TRACES_EXPORTER", "none")]), Ok(None));
        assert!(matches!(
            settings(&[ep, ("OTEL_TRACES_EXPORTER", "zipkin")]),
            Err(OtlpSettingsError::Exporter(_))
        ));
    }

    #[test]
    fn grpc_is_refused_with_a_clear_message() {
        let e = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("http/protobuf"), "{e}");
        // The signal-specific protocol takes precedence over the generic one.
        let ok = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ]);
        assert!(ok.unwrap().is_some());
    }

    #[test]
    fn non_http_endpoint_is_an_error() {
        assert!(matches!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]),
            Err(OtlpSettingsError::Endpoint { .. })
        ));
    }
}
