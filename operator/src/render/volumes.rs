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
use crate::crd::{DatabaseEngine, FederationGatewaySpec};

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
    let mut add_secret = |volume: &str, secret: &str, dir: &str| {
        volumes.push(secret_volume(volume, secret));
        mounts.push(mount(volume, dir));
    };
    if let Some(tls) = &spec.s2s.tls_secret {
        add_secret("s2s-tls", tls, paths::S2S_TLS_DIR);
    }
    if let Some(s) = spec.tenant.as_ref().and_then(|t| t.client_secret.as_ref()) {
        add_secret("graph-secret", &s.name, paths::GRAPH_SECRET_DIR);
    }
    if let Some(cert) = spec
        .tenant
        .as_ref()
        .and_then(|t| t.client_certificate.as_ref())
    {
        add_secret("graph-cert", cert, paths::GRAPH_CERT_DIR);
    }
    if let Some(sip) = &spec.sip {
        add_secret("sip-tls", &sip.tls_secret, paths::SIP_TLS_DIR);
    }
    if let Some(tenant) = &spec.shadow_accounts.tenant {
        if let Some(s) = &tenant.client_secret {
            add_secret(
                "shadow-tenant-secret",
                &s.name,
                paths::SHADOW_TENANT_SECRET_DIR,
            );
        }
        if let Some(cert) = &tenant.client_certificate {
            add_secret("shadow-tenant-cert", cert, paths::SHADOW_TENANT_CERT_DIR);
        }
    }
    if let Some(db) = &spec.database.connection_string_secret {
        add_secret("database", &db.name, paths::DATABASE_SECRET_DIR);
    }
    if let Some(pg) = &spec.database.postgres {
        add_secret(
            "database",
            &pg.password_secret.name,
            paths::DATABASE_SECRET_DIR,
        );
        if let Some(ca) = &pg.ca_secret {
            add_secret("database-ca", &ca.name, paths::DATABASE_CA_DIR);
        }
    }
    let graph_ca = spec
        .tenant
        .as_ref()
        .and_then(|t| t.endpoints.as_ref())
        .and_then(|e| e.ca_config_map.as_ref());
    let shadow_ca = spec
        .shadow_accounts
        .tenant
        .as_ref()
        .and_then(|t| t.endpoints.as_ref())
        .and_then(|e| e.ca_config_map.as_ref());
    let cas = [
        ("graph-ca", graph_ca, paths::GRAPH_CA_DIR),
        ("shadow-tenant-ca", shadow_ca, paths::SHADOW_TENANT_CA_DIR),
        (
            "s2s-ca",
            spec.s2s.trusted_ca_config_map.as_ref(),
            paths::S2S_CA_DIR,
        ),
        (
            "sip-ca",
            spec.sip
                .as_ref()
                .and_then(|s| s.trusted_ca_config_map.as_ref()),
            paths::SIP_CA_DIR,
        ),
    ];
    for (volume, config_map, dir) in cas {
        let Some(config_map) = config_map else {
            continue;
        };
        volumes.push(Volume {
            name: volume.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map.name.clone(),
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
