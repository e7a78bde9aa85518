//! The gateway pod's volumes: its configuration, keys and licence, the
//! Secrets and ConfigMaps the spec names (each at the path the rendered
//! configuration reads it from), and the SQLite engine's claim.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, PersistentVolumeClaim, PersistentVolumeClaimSpec, SecretVolumeSource,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::workload::labels;
use super::{names, paths};
use crate::crd::{DatabaseEngine, FederationGatewaySpec, TenantSpec};

/// The pod's volumes and their mounts, and the SQLite volume's claim.
pub(super) struct Storage {
    pub(super) volumes: Vec<Volume>,
    pub(super) mounts: Vec<VolumeMount>,
    pub(super) claims: Option<Vec<PersistentVolumeClaim>>,
}

pub(super) fn storage(spec: &FederationGatewaySpec, name: &str) -> Storage {
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::config_map(name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        secret_volume("keys", &names::keys_secret(name)),
        secret_volume("licence", &spec.licence_secret.name),
        Volume {
            name: "tmp".into(),
            empty_dir: Some(Default::default()),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        mount("config", paths::CONFIG_DIR),
        mount("keys", paths::KEYS_DIR),
        mount("licence", paths::LICENCE_DIR),
        mount("tmp", "/tmp"),
    ];
    for (volume, secret, dir) in secrets(spec) {
        volumes.push(secret_volume(volume, secret));
        mounts.push(mount(volume, dir));
    }
    for (volume, config_map, dir) in config_maps(spec) {
        volumes.push(Volume {
            name: volume.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map.into(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(mount(volume, dir));
    }
    let claims = (spec.database.engine == DatabaseEngine::Sqlite).then(|| {
        mounts.push(mount("data", paths::DATA_DIR));
        vec![data_claim(spec, name)]
    });
    Storage {
        volumes,
        mounts,
        claims,
    }
}

/// The Secrets the spec names: (volume, Secret, where it is mounted).
fn secrets(spec: &FederationGatewaySpec) -> Vec<(&'static str, &str, &'static str)> {
    let graph = spec.graph_tenant();
    let shadow = spec.shadow_accounts.tenant.as_ref();
    let postgres = spec.database.postgres.as_ref();
    [
        spec.s2s
            .tls_secret
            .as_deref()
            .map(|s| ("s2s-tls", s, paths::S2S_TLS_DIR)),
        graph
            .and_then(|t| t.client_secret.as_ref())
            .map(|s| ("graph-secret", s.name.as_str(), paths::GRAPH_SECRET_DIR)),
        graph
            .and_then(|t| t.client_certificate.as_deref())
            .map(|s| ("graph-cert", s, paths::GRAPH_CERT_DIR)),
        spec.sip_edge()
            .map(|sip| ("sip-tls", sip.tls_secret.as_str(), paths::SIP_TLS_DIR)),
        shadow.and_then(|t| t.client_secret.as_ref()).map(|s| {
            let dir = paths::SHADOW_TENANT_SECRET_DIR;
            ("shadow-tenant-secret", s.name.as_str(), dir)
        }),
        shadow
            .and_then(|t| t.client_certificate.as_deref())
            .map(|s| ("shadow-tenant-cert", s, paths::SHADOW_TENANT_CERT_DIR)),
        spec.database
            .connection_string_secret
            .as_ref()
            .map(|s| ("database", s.name.as_str(), paths::DATABASE_SECRET_DIR)),
        postgres.map(|pg| {
            let secret = pg.password_secret.name.as_str();
            ("database", secret, paths::DATABASE_SECRET_DIR)
        }),
        postgres
            .and_then(|pg| pg.ca_secret.as_ref())
            .map(|s| ("database-ca", s.name.as_str(), paths::DATABASE_CA_DIR)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The ConfigMaps of CA roots the spec names: (volume, ConfigMap, where).
fn config_maps(spec: &FederationGatewaySpec) -> Vec<(&'static str, &str, &'static str)> {
    fn endpoint_ca(t: &TenantSpec) -> Option<&str> {
        t.endpoints
            .as_ref()
            .and_then(|e| e.ca_config_map.as_ref())
            .map(|c| c.name.as_str())
    }
    [
        spec.graph_tenant()
            .and_then(endpoint_ca)
            .map(|c| ("graph-ca", c, paths::GRAPH_CA_DIR)),
        spec.shadow_accounts
            .tenant
            .as_ref()
            .and_then(endpoint_ca)
            .map(|c| ("shadow-tenant-ca", c, paths::SHADOW_TENANT_CA_DIR)),
        spec.s2s
            .trusted_ca_config_map
            .as_ref()
            .map(|c| ("s2s-ca", c.name.as_str(), paths::S2S_CA_DIR)),
        spec.sip_edge()
            .and_then(|s| s.trusted_ca_config_map.as_ref())
            .map(|c| ("sip-ca", c.name.as_str(), paths::SIP_CA_DIR)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The SQLite engine's volume, `spec.database.storageSize` (1Gi by default).
fn data_claim(spec: &FederationGatewaySpec, name: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(labels(name)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(
                        spec.database
                            .storage_size
                            .clone()
                            .unwrap_or_else(|| "1Gi".into()),
                    ),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn secret_volume(volume: &str, secret: &str) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: Some(volume != "data" && volume != "tmp"),
        ..VolumeMount::default()
    }
}
