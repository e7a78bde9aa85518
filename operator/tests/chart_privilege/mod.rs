//! Least privilege on the real API server, as the chart installs it (issue
//! 20): what the operator's ServiceAccount may and may not do, and what a
//! gateway's ServiceAccount may do to pods, through RBAC and then the
//! chart's ValidatingAdmissionPolicy.

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{SelfSubjectRulesReview, SubjectAccessReview};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use serde_json::{Value, json};
use xmppfed_e2e::cluster::eventually;

/// Whether `user` may do what `attributes` describe (the API server's
/// authorizer, asked by the admin).
pub async fn allowed(admin: &Client, user: &str, attributes: Value) -> bool {
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "resourceAttributes": attributes}
    }))
    .unwrap();
    Api::<SubjectAccessReview>::all(admin.clone())
        .create(&Default::default(), &review)
        .await
        .unwrap()
        .status
        .is_some_and(|s| s.allowed)
}

/// A client acting as `user` (the admin impersonates it).
async fn acting_as(user: &str) -> Client {
    let mut config = Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(user.to_owned());
    Client::try_from(config).unwrap()
}

/// What `client` may do in `ns`, one line per rule, as `kubectl auth can-i
/// --list` shows it.
async fn rules_in(client: &Client, ns: &str) -> Vec<String> {
    let review: SelfSubjectRulesReview = serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": ns}
    }))
    .unwrap();
    let answer = Api::<SelfSubjectRulesReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    let mut lines: Vec<String> = answer
        .status
        .map(|s| s.resource_rules)
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            let names = r
                .resource_names
                .map(|n| format!(" [{}]", n.join(",")))
                .unwrap_or_default();
            format!(
                "{} {}: {}{names}",
                r.api_groups.unwrap_or_default().join(","),
                r.resources.unwrap_or_default().join(","),
                r.verbs.join(",")
            )
        })
        .collect();
    lines.sort();
    lines
}

/// The operator's ServiceAccount: binds the gateway ClusterRole and nothing
/// else, patches no pod, makes no Role; its rules are printed.
pub async fn operator_holds_least(admin: &Client, ns: &str, operator: &str, gateway_role: &str) {
    let may = |attributes: Value| allowed(admin, operator, attributes);
    let cannot = [
        (
            "patch a pod",
            json!({"namespace": ns, "verb": "patch", "resource": "pods", "name": "contoso-0"}),
        ),
        (
            "patch a pod in kube-system",
            json!({"namespace": "kube-system", "verb": "patch", "resource": "pods"}),
        ),
        (
            "create a Role",
            json!({"namespace": ns, "verb": "create", "group": "rbac.authorization.k8s.io", "resource": "roles"}),
        ),
        (
            "create a Role in kube-system",
            json!({"namespace": "kube-system", "verb": "create", "group": "rbac.authorization.k8s.io", "resource": "roles"}),
        ),
        (
            "bind cluster-admin",
            json!({"verb": "bind", "group": "rbac.authorization.k8s.io", "resource": "clusterroles", "name": "cluster-admin"}),
        ),
        (
            "bind admin",
            json!({"verb": "bind", "group": "rbac.authorization.k8s.io", "resource": "clusterroles", "name": "admin"}),
        ),
        (
            "escalate a ClusterRole",
            json!({"verb": "escalate", "group": "rbac.authorization.k8s.io", "resource": "clusterroles"}),
        ),
        (
            "delete a Secret",
            json!({"namespace": ns, "verb": "delete", "resource": "secrets"}),
        ),
        (
            "update a Secret",
            json!({"namespace": "kube-system", "verb": "update", "resource": "secrets"}),
        ),
        (
            "exec into a pod",
            json!({"namespace": ns, "verb": "create", "resource": "pods", "subresource": "exec"}),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, attributes) in cannot {
        if may(attributes).await {
            wrong.push(format!("the operator may {what}"));
        }
    }
    let can = [
        (
            "bind the gateway ClusterRole",
            json!({"verb": "bind", "group": "rbac.authorization.k8s.io", "resource": "clusterroles", "name": gateway_role}),
        ),
        (
            "apply a RoleBinding",
            json!({"namespace": ns, "verb": "patch", "group": "rbac.authorization.k8s.io", "resource": "rolebindings"}),
        ),
        (
            "list a gateway's pods",
            json!({"namespace": ns, "verb": "list", "resource": "pods"}),
        ),
    ];
    for (what, attributes) in can {
        if !may(attributes).await {
            wrong.push(format!("the operator may not {what}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let client = acting_as(operator).await;
    eprintln!(
        "the operator's ServiceAccount in a gateway's namespace (kubectl auth can-i --list):\n  {}",
        rules_in(&client, ns).await.join("\n  ")
    );
}

/// A gateway's ServiceAccount: RBAC lets it patch pods of its namespace
/// only; the chart's admission policy keeps it to its own pods' role label
/// and the annotations it reports in.
pub async fn gateway_touches_only_its_own_label(admin: &Client, ns: &str, gw: &str) {
    let account = format!("system:serviceaccount:{ns}:{gw}-gateway");
    let own = format!("{gw}-0");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    eventually("the gateway's pod", Duration::from_secs(60), || async {
        pods.get_opt(&own).await.ok()?
    })
    .await;
    let bystander: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bystander", "labels": {"app": "bystander"}},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/none:1"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &bystander)
        .await
        .unwrap();
    assert!(
        !allowed(
            admin,
            &account,
            json!({"namespace": "default", "verb": "patch", "resource": "pods"})
        )
        .await,
        "RBAC: no pod outside its namespace"
    );
    let as_gateway: Api<Pod> = Api::namespaced(acting_as(&account).await, ns);
    let patch = |pod: &str, body: Value| {
        let (api, pod) = (as_gateway.clone(), pod.to_owned());
        async move {
            api.patch(&pod, &PatchParams::default(), &Patch::Merge(body))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    };
    // The binding reaches the authorizer's cache within moments.
    eventually(
        "the gateway labelling its own pod",
        Duration::from_secs(30),
        || async {
            patch(
                &own,
                json!({"metadata": {"labels": {"xmppfed.io/role": "standby"}}}),
            )
            .await
            .ok()
        },
    )
    .await;
    patch(
        &own,
        json!({"metadata": {"annotations": {"xmppfed.io/tenant-sign-in": "ok"}}}),
    )
    .await
    .unwrap();
    // The API server loads a new admission policy within moments of its
    // creation: until it refuses, nothing below would mean anything.
    let probe = json!({"metadata": {"labels": {"xmppfed.io/probe": "x"}}});
    let in_force = std::time::Instant::now();
    eventually(
        "the chart's admission policy in force",
        Duration::from_secs(60),
        || async {
            patch(&own, probe.clone())
                .await
                .err()
                .filter(|e| e.contains("only its pod's label"))
        },
    )
    .await;
    eprintln!(
        "the chart's admission policy refused its first patch {:.1} s after the first try",
        in_force.elapsed().as_secs_f64()
    );
    let refused = [
        (
            "another pod's labels",
            "bystander",
            json!({"metadata": {"labels": {"app": "hijacked"}}}),
            "only its own pods",
        ),
        (
            "another label of its own pod",
            own.as_str(),
            json!({"metadata": {"labels": {"app.kubernetes.io/instance": "elsewhere"}}}),
            "only its pod's label xmppfed.io/role",
        ),
        (
            "another annotation of its own pod",
            own.as_str(),
            json!({"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}}}),
            "only its pod's annotation",
        ),
        (
            "its own pod's spec",
            own.as_str(),
            json!({"spec": {"activeDeadlineSeconds": 1}}),
            "may not change a pod's spec",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, pod, body, says) in refused {
        match patch(pod, body).await {
            Ok(()) => wrong.push(format!("a gateway changed {what}")),
            Err(e) if !e.contains(says) => {
                wrong.push(format!("{what}: refused, but not saying {says:?}: {e}"))
            }
            Err(e) => {
                let said = e.split(": Invalid (").next().unwrap_or(&e);
                eprintln!("a gateway changing {what}: refused: {said}");
            }
        }
    }
    // What the leader reports, with the policy in force, then taken back
    // (the pod's own reports are its gateway's to write).
    for key in ["xmppfed.io/tenant-sign-in", "xmppfed.io/sip-partner"] {
        for value in [json!("PartnerUnreachable: x"), Value::Null] {
            let report = json!({"metadata": {"annotations": {key: value}}});
            if let Err(e) = patch(&own, report).await {
                wrong.push(format!("a gateway could not set {key} to {value}: {e}"));
            }
        }
    }
    let _ = pods.delete("bystander", &Default::default()).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Namespaced mode (`watchNamespaces`): the operator's ServiceAccount may do
/// what it needs in the watched namespace and nothing anywhere else, not even
/// in its own release namespace; its rules in each are printed.
pub async fn namespaced_operator_holds_nothing_elsewhere(
    admin: &Client,
    operator: &str,
    watched: &str,
    release_ns: &str,
    gateway_role: &str,
) {
    let may = |attributes: Value| allowed(admin, operator, attributes);
    let gateways = |ns: Option<&str>| json!({"namespace": ns, "verb": "list", "group": "xmppfed.io", "resource": "federationgateways"});
    let secrets =
        |ns: &str, verb: &str| json!({"namespace": ns, "verb": verb, "resource": "secrets"});
    let bind = |ns: &str| {
        json!({"namespace": ns, "verb": "bind", "group": "rbac.authorization.k8s.io",
               "resource": "clusterroles", "name": gateway_role})
    };
    let mut wrong = Vec::new();
    for (what, attributes) in [
        ("list gateways in every namespace", gateways(None)),
        (
            "list gateways in its release namespace",
            gateways(Some(release_ns)),
        ),
        (
            "list Secrets in kube-system",
            secrets("kube-system", "list"),
        ),
        (
            "read a Secret in kube-system",
            secrets("kube-system", "get"),
        ),
        (
            "watch Secrets in every namespace",
            json!({"verb": "watch", "resource": "secrets"}),
        ),
        (
            "read a Secret in its release namespace",
            secrets(release_ns, "get"),
        ),
        (
            "bind the gateway ClusterRole in kube-system",
            bind("kube-system"),
        ),
        (
            "apply a StatefulSet in kube-system",
            json!({"namespace": "kube-system", "verb": "patch", "group": "apps", "resource": "statefulsets"}),
        ),
        (
            "patch a pod in the watched namespace",
            json!({"namespace": watched, "verb": "patch", "resource": "pods"}),
        ),
    ] {
        if may(attributes).await {
            wrong.push(format!("namespaced mode: the operator may {what}"));
        }
    }
    for (what, attributes) in [
        (
            "list gateways in the watched namespace",
            gateways(Some(watched)),
        ),
        (
            "read a Secret in the watched namespace",
            secrets(watched, "get"),
        ),
        (
            "bind the gateway ClusterRole in the watched namespace",
            bind(watched),
        ),
    ] {
        if !may(attributes).await {
            wrong.push(format!("namespaced mode: the operator may not {what}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let client = acting_as(operator).await;
    for ns in [watched, release_ns, "kube-system"] {
        eprintln!(
            "namespaced mode: the operator's ServiceAccount in {ns} (kubectl auth can-i --list):\n  {}",
            rules_in(&client, ns).await.join("\n  ")
        );
    }
}
