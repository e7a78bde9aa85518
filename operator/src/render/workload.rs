//! The Kubernetes objects that run one gateway.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::volumes::Storage;
use super::{names, paths, ports};
use crate::crd::{FederationGateway, FederationGatewaySpec};

/// Annotation on the pod template holding the rendered configuration's hash.
pub const CONFIG_HASH_ANNOTATION: &str = "xmppfed.io/config-hash";
const GATEWAY_UID: i64 = 65532;

/// Everything the operator applies for one gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayObjects {
    pub config_map: ConfigMap,
    pub stateful_set: StatefulSet,
    pub services: Vec<Service>,
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    /// With `spec.webhookIngress`: the webhook's Ingress.
    pub webhook_ingress: Option<Ingress>,
    /// Unless `spec.networkPolicy.enabled` is false.
    pub network_policy: Option<NetworkPolicy>,
    pub service_account: ServiceAccount,
    /// Lets the pods keep their role label (see `LEADER`): the chart's
    /// gateway ClusterRole (`patch` on pods; its ValidatingAdmissionPolicy
    /// lets a gateway's ServiceAccount change only its own pods' role label
    /// and sign-in annotation), bound in the namespace to the gateway's
    /// ServiceAccount.
    pub pod_role_binding: RoleBinding,
}

/// The pod label (and value) of the replica that runs the bridge: replicas
/// share the store and hold its lease in turn, and each labels its own pod
/// (gateway/src/leadership.rs). The s2s Service selects it, so remote servers
/// always reach the bridge; every replica stays Ready.
pub const LEADER: (&str, &str) = (xmppfed_config::POD_ROLE_LABEL, "leader");

/// The owner reference every child carries: the gateway, as controller, and
/// blocking its deletion, so that `kubectl delete --cascade=foreground`
/// waits for the children (the garbage collector waits only for dependents
/// that say `blockOwnerDeletion`).
pub fn owner_of(gateway: &FederationGateway) -> Option<OwnerReference> {
    use kube::Resource;
    gateway.controller_owner_ref(&()).map(|mut owner| {
        owner.block_owner_deletion = Some(true);
        owner
    })
}

/// A gateway container's resources when the spec gives none, so that its pod
/// is Burstable, not BestEffort (the first the kubelet evicts): measured on
/// the real node, a gateway works in under 40 MiB idle and after the s2s
/// torture test; the limit leaves room for 10,000 contacts' rosters and
/// bursts, and stops a runaway before it takes the node.
pub fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), q("100m")),
            ("memory".to_owned(), q("64Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), q("512Mi"))])),
        ..ResourceRequirements::default()
    }
}

/// The labels every child carries; the first two select the gateway's pods.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "xmppfed-gateway".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            "gateway".to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "xmppfed-operator".to_owned(),
        ),
    ])
}

/// The label selector of the gateway's pods, as a list call takes it.
pub fn pod_selector(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn selector_labels(name: &str) -> BTreeMap<String, String> {
    labels(name)
        .into_iter()
        .filter(|(k, _)| k == "app.kubernetes.io/name" || k == "app.kubernetes.io/instance")
        .collect()
}

/// The rendered configuration, and the hash of what the pods must restart for.
#[derive(Debug, Clone, Copy)]
pub struct Rendered<'a> {
    pub toml: &'a str,
    /// Put on the pod template: a change rolls the pods. The sections the
    /// gateway applies live (`[allow]`, `[throttle]`) are not in it.
    pub restart_hash: &'a str,
}

/// Builds the children of `gateway` running `replicas` pods (the licensed count)
/// with the rendered configuration.
pub fn build_objects(
    gateway: &FederationGateway,
    owner: OwnerReference,
    rendered: Rendered<'_>,
    replicas: i32,
    gateway_cluster_role: &str,
) -> GatewayObjects {
    let c = Children::new(gateway, owner);
    let config_map = ConfigMap {
        metadata: c.meta(names::config_map(&c.name)),
        data: Some(BTreeMap::from([(
            paths::CONFIG_FILE.to_owned(),
            rendered.toml.to_owned(),
        )])),
        ..ConfigMap::default()
    };
    let storage = super::volumes::storage(c.spec, &c.name);
    let stateful_set = c.stateful_set(replicas, rendered.restart_hash, storage);
    let pod_disruption_budget = (c.spec.replicas > 1).then(|| PodDisruptionBudget {
        metadata: c.meta(c.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&c.name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    });

    let webhook_ingress = c.webhook_ingress();
    let network_policy = super::network_policy::network_policy(
        c.spec,
        c.meta(c.name.clone()),
        LabelSelector {
            match_labels: Some(selector_labels(&c.name)),
            ..LabelSelector::default()
        },
    );
    let (service_account, pod_role_binding) = c.rbac(gateway_cluster_role);
    GatewayObjects {
        config_map,
        stateful_set,
        services: c.services(),
        pod_disruption_budget,
        webhook_ingress,
        network_policy,
        service_account,
        pod_role_binding,
    }
}

/// What every child of one gateway is made from: its name, spec and owner.
pub(super) struct Children<'a> {
    gateway: &'a FederationGateway,
    spec: &'a FederationGatewaySpec,
    name: String,
    owner: OwnerReference,
}

impl<'a> Children<'a> {
    fn new(gateway: &'a FederationGateway, owner: OwnerReference) -> Self {
        Self {
            gateway,
            spec: &gateway.spec,
            name: gateway.name_any(),
            owner,
        }
    }

    fn meta(&self, object_name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(object_name),
            namespace: self.gateway.namespace(),
            labels: Some(labels(&self.name)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// The gateway container: its arguments, ports, environment, probes and
    /// a locked-down security context.
    fn container(&self, mounts: Vec<VolumeMount>) -> Container {
        let (name, spec) = (&self.name, self.spec);
        // The pod's name (its licence seat, its lease), uid (a pod that replaces
        // a force-deleted one is another lease holder) and namespace (its label).
        let mut env = vec![
            pod_field("POD_NAME", "metadata.name"),
            pod_field("POD_UID", "metadata.uid"),
            pod_field("POD_NAMESPACE", "metadata.namespace"),
            env_var("OTEL_SERVICE_NAME", "xmppfed-gateway"),
            env_var(
                "OTEL_RESOURCE_ATTRIBUTES",
                &format!("xmppfed.gateway={name}"),
            ),
        ];
        if let Some(endpoint) = &spec.telemetry.otlp_endpoint {
            env.push(env_var("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
        }

        let probe = |path: &str, period: i32, failures: i32| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::String("admin".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(period),
            failure_threshold: Some(failures),
            ..Probe::default()
        };

        Container {
            name: "gateway".into(),
            image: Some(spec.image.clone()),
            args: Some(vec![
                "run".into(),
                "--config".into(),
                format!("{}/{}", paths::CONFIG_DIR, paths::CONFIG_FILE),
            ]),
            ports: Some(
                [
                    Some(container_port("s2s", spec.s2s.port)),
                    spec.sip_edge().map(|sip| container_port("sip", sip.port)),
                    Some(container_port("webhook", ports::WEBHOOK)),
                    Some(container_port("admin", ports::ADMIN)),
                ]
                .into_iter()
                .flatten()
                .collect(),
            ),
            env: Some(env),
            resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
            volume_mounts: Some(mounts),
            // A crashing gateway's last log lines become its termination
            // message, which the operator quotes in Ready (status::waiting_pods).
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            readiness_probe: Some(probe("/readyz", 5, 3)),
            liveness_probe: Some(probe("/healthz", 10, 6)),
            startup_probe: Some(probe("/healthz", 2, 30)),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                run_as_user: Some(GATEWAY_UID),
                run_as_group: Some(GATEWAY_UID),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Capabilities::default()
                }),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..SecurityContext::default()
            }),
            ..Container::default()
        }
    }

    fn stateful_set(&self, replicas: i32, restart_hash: &str, storage: Storage) -> StatefulSet {
        let name = &self.name;
        let Storage {
            volumes,
            mounts,
            claims: volume_claim_templates,
        } = storage;
        let container = self.container(mounts);
        StatefulSet {
            metadata: self.meta(name.clone()),
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                service_name: Some(names::headless_service(name)),
                selector: LabelSelector {
                    match_labels: Some(selector_labels(name)),
                    ..LabelSelector::default()
                },
                pod_management_policy: Some("Parallel".into()),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels(name)),
                        annotations: Some(BTreeMap::from([(
                            CONFIG_HASH_ANNOTATION.to_owned(),
                            restart_hash.to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        service_account_name: Some(names::service_account(name)),
                        // The token labels the pod with its role, and can do nothing
                        // else: the account may only patch the StatefulSet's pods.
                        automount_service_account_token: Some(true),
                        security_context: Some(PodSecurityContext {
                            run_as_non_root: Some(true),
                            run_as_user: Some(GATEWAY_UID),
                            run_as_group: Some(GATEWAY_UID),
                            fs_group: Some(GATEWAY_UID),
                            seccomp_profile: Some(SeccompProfile {
                                type_: "RuntimeDefault".into(),
                                ..SeccompProfile::default()
                            }),
                            ..PodSecurityContext::default()
                        }),
                        containers: vec![container],
                        volumes: Some(volumes),
                        termination_grace_period_seconds: Some(30),
                        ..PodSpec::default()
                    }),
                },
                volume_claim_templates,
                ..StatefulSetSpec::default()
            }),
            ..StatefulSet::default()
        }
    }

    /// The s2s Service (to the bridge's replica), the webhook's, and the headless one.
    fn services(&self) -> Vec<Service> {
        let (name, spec) = (&self.name, self.spec);
        let service = |object_name: String,
                       type_: Option<&str>,
                       headless: bool,
                       ports: Vec<ServicePort>| Service {
            metadata: self.meta(object_name),
            spec: Some(ServiceSpec {
                type_: type_.map(str::to_owned),
                cluster_ip: headless.then(|| "None".to_owned()),
                publish_not_ready_addresses: headless.then_some(true),
                selector: Some(selector_labels(name)),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        // Federation: XMPP servers, and with SIP federation the partner's
        // edge, on the one address the domain's SRV records name.
        let mut federation = vec![service_port("xmpp-server", spec.s2s.port)];
        federation.extend(spec.sip_edge().map(|sip| service_port("sip", sip.port)));
        let mut s2s = service(
            names::s2s_service(name),
            Some(spec.s2s.service_type.as_str()),
            false,
            federation,
        );
        // Remote servers reach the replica that runs the bridge (or the SIP
        // route); the webhook goes to any (notifications land in the shared store).
        if let Some(selector) = s2s.spec.as_mut().and_then(|s| s.selector.as_mut()) {
            selector.insert(LEADER.0.to_owned(), LEADER.1.to_owned());
        }
        vec![
            s2s,
            service(
                names::webhook_service(name),
                Some("ClusterIP"),
                false,
                vec![service_port("webhook", ports::WEBHOOK)],
            ),
            service(
                names::headless_service(name),
                None,
                true,
                vec![
                    service_port("xmpp-server", spec.s2s.port),
                    service_port("admin", ports::ADMIN),
                ],
            ),
        ]
    }

    /// The webhook's Ingress: the gateway's notification paths (`/graph/…`)
    /// on the public host, TLS with the named Secret, to the webhook Service.
    fn webhook_ingress(&self) -> Option<Ingress> {
        let asked = self.spec.webhook_ingress.as_ref()?;
        let backend = IngressBackend {
            service: Some(IngressServiceBackend {
                name: names::webhook_service(&self.name),
                port: Some(ServiceBackendPort {
                    name: Some("webhook".into()),
                    ..ServiceBackendPort::default()
                }),
            }),
            ..IngressBackend::default()
        };
        Some(Ingress {
            metadata: self.meta(names::webhook_service(&self.name)),
            spec: Some(IngressSpec {
                ingress_class_name: asked.class_name.clone(),
                tls: Some(vec![IngressTLS {
                    hosts: Some(vec![asked.host.clone()]),
                    secret_name: Some(asked.tls_secret.clone()),
                }]),
                rules: Some(vec![IngressRule {
                    host: Some(asked.host.clone()),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![HTTPIngressPath {
                            path: Some("/graph/".into()),
                            path_type: "Prefix".into(),
                            backend,
                        }],
                    }),
                }]),
                ..IngressSpec::default()
            }),
            ..Ingress::default()
        })
    }

    /// The pods' ServiceAccount, and the Role and RoleBinding that let them
    /// patch their own pods (their role label) and nothing else.
    fn rbac(&self, cluster_role: &str) -> (ServiceAccount, RoleBinding) {
        let name = &self.name;
        let service_account = ServiceAccount {
            metadata: self.meta(names::service_account(name)),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        };
        // A ClusterRole the operator may bind but does not hold: it never
        // needs `patch` on pods itself, nor to create Roles.
        let pod_role_binding = RoleBinding {
            metadata: self.meta(names::pod_role_binding(name)),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: cluster_role.to_owned(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: names::service_account(name),
                namespace: self.gateway.namespace(),
                ..Subject::default()
            }]),
        };
        (service_account, pod_role_binding)
    }
}

/// Volumes: configuration, generated keys, and each Secret and ConfigMap the
/// spec names; the SQLite engine's data volume.
/// An environment variable from the pod's own fields (the downward API).
fn pod_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name_of_container_port(name).into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// Service ports name their target by the container port's name.
fn name_of_container_port(service_port: &str) -> &str {
    match service_port {
        "xmpp-server" => "s2s",
        other => other,
    }
}
