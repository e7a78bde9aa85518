//! Faults on the real node: the gateway pod killed, or rolled by a
//! configuration change, with messages in flight; a volume that cannot bind.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use xmppfed_e2e::cluster::eventually;
use xmppfed_e2e::xmpp_client::XmppClient;

use xmppfed_operator::crd::FederationGateway;

use crate::node_peers::{GraphPod, pod_ready};

/// Under the default per-contact throttle's burst (20), so that what comes
/// back to Bob is the disruption's doing, not the throttle's.
pub const BURST: usize = 12;

fn marker(tag: &str, i: usize) -> String {
    format!("{tag} #{i:02} of {BURST}.")
}

/// Bob writes a burst to Alice and the gateway's pod is killed at once
/// (grace period 0, as `kubectl delete --force` does): the StatefulSet
/// starts it again on the same volume, and every message of the burst is in
/// Alice's chat exactly once or came back to Bob as an error — none lost in
/// silence, none twice.
pub async fn killed_with_messages_in_flight(
    admin: &Client,
    ns: &str,
    graph: &GraphPod,
    bob: &mut XmppClient,
    chat: &str,
) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let kill = || async {
        pods.delete(
            "contoso-0",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await
        .unwrap();
    };
    disrupted(admin, ns, graph, bob, chat, "killed", true, kill).await;
}

/// The same burst while a DomainWhitelist changes: the gateway applies the
/// allow list live from its mounted configuration once the kubelet has
/// updated the file, and the pod is not replaced (a roll would drop the s2s
/// streams, and Prosody bounces rather than retries).
pub async fn whitelist_changed_with_messages_in_flight(
    admin: &Client,
    ns: &str,
    graph: &GraphPod,
    bob: &mut XmppClient,
    chat: &str,
) {
    let widened = json!({
        "apiVersion": "xmppfed.io/v1alpha1", "kind": "DomainWhitelist",
        "metadata": {"name": "partners"},
        "spec": {"gateways": {"matchLabels": {"xmppfed.io/tier": "production"}},
                 "remoteDomains": ["xmpp.partner.example", "*.allies.example", "later.example"]}
    });
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let change = || async {
        let changed = Instant::now();
        crate::support::apply_all(admin, ns, "xmppfed-node-roll", vec![widened.clone()]).await;
        eventually(
            "the gateway reloads the widened allow list",
            Duration::from_secs(180),
            || async {
                let logs = pods.logs("contoso-0", &Default::default()).await.ok()?;
                logs.contains("configuration reloaded").then_some(())
            },
        )
        .await;
        eprintln!(
            "DomainWhitelist widened: the running gateway applied it {:.1} s later (the kubelet's ConfigMap sync)",
            changed.elapsed().as_secs_f64()
        );
    };
    disrupted(admin, ns, graph, bob, chat, "reloaded", false, change).await;
}

/// The same burst while the licence Secret is replaced by a renewed licence:
/// the gateway reads its seat from the mounted Secret, the operator reports
/// the new licence in status; no message is lost either way.
pub async fn relicensed_with_messages_in_flight(
    admin: &Client,
    ns: &str,
    graph: &GraphPod,
    bob: &mut XmppClient,
    chat: &str,
    private: &str,
) {
    let gateways: Api<FederationGateway> = Api::namespaced(admin.clone(), ns);
    let renew = || async {
        let changed = Instant::now();
        crate::support::relicense(
            admin,
            ns,
            "xmppfed-licence",
            &crate::support::licence_text(private, "node-it-renewed", 1),
        )
        .await;
        let seen = eventually(
            "the renewed licence in the gateway's status",
            Duration::from_secs(60),
            || async {
                let g = gateways.get("contoso").await.ok()?;
                g.status?
                    .licence_assignments
                    .values()
                    .any(|a| a.licence_id == "node-it-renewed")
                    .then_some(())
            },
        )
        .await;
        eprintln!(
            "licence Secret replaced: the new licence in status {:.1} s later",
            changed.elapsed().as_secs_f64()
        );
        seen
    };
    disrupted(admin, ns, graph, bob, chat, "relicensed", false, renew).await;
}

/// Bob's burst, `disrupt` 200 ms into it, the pod Ready again (replaced
/// first, when `replaced`), then every message of the burst accounted for:
/// delivered once or bounced.
#[allow(clippy::too_many_arguments)] // the test's world, and what this disruption is
async fn disrupted<F: std::future::Future<Output = ()>>(
    admin: &Client,
    ns: &str,
    graph: &GraphPod,
    bob: &mut XmppClient,
    chat: &str,
    tag: &str,
    replaced: bool,
    disrupt: impl FnOnce() -> F,
) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let before = pods.get("contoso-0").await.unwrap();
    let old_uid = before.uid().unwrap_or_default();
    let alice = "alice@teams.contoso.example";
    for i in 0..BURST {
        bob.command(json!({"cmd": "message", "to": alice, "body": marker(tag, i), "id": format!("{tag}-{i}")}))
            .unwrap();
    }
    // Some of the burst reaches the gateway, some is still on its way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let disrupted = Instant::now();
    disrupt().await;
    // Read right after: what reached Teams before the pod went.
    let early = graph.chat_contents(chat).await;
    let early = (0..BURST)
        .filter(|i| early.iter().any(|c| c.contains(&marker(tag, *i))))
        .count();
    eventually(
        "contoso-0 Ready (replaced, where it must be)",
        Duration::from_secs(120),
        || async {
            let p = pods.get("contoso-0").await.ok()?;
            let new = p.uid().unwrap_or_default() != old_uid;
            ((new || !replaced) && pod_ready(&p)).then_some(())
        },
    )
    .await;
    let ready_after = disrupted.elapsed();
    if !replaced {
        let now = pods.get("contoso-0").await.unwrap();
        assert_eq!(
            now.uid().unwrap_or_default(),
            old_uid,
            "{tag}: the pod must not be replaced"
        );
    }

    // Each message delivered once, or bounced to Bob with an error.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (counts, bounced) = loop {
        let contents = graph.chat_contents(chat).await;
        tokio::task::block_in_place(|| bob.drain(Duration::from_millis(500)));
        let bounced: Vec<usize> = (0..BURST)
            .filter(|i| {
                bob.seen().iter().any(|e| {
                    e["event"] == "message"
                        && e["id"] == format!("{tag}-{i}").as_str()
                        && e["error"].is_string()
                })
            })
            .collect();
        let counts: Vec<usize> = (0..BURST)
            .map(|i| {
                contents
                    .iter()
                    .filter(|c| c.contains(&marker(tag, i)))
                    .count()
            })
            .collect();
        if (0..BURST).all(|i| counts[i] > 0 || bounced.contains(&i)) {
            break (counts, bounced);
        }
        assert!(
            Instant::now() < deadline,
            "{tag}: lost in silence, neither delivered nor bounced after 180 s: {:?}",
            (0..BURST)
                .filter(|i| counts[*i] == 0 && !bounced.contains(i))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let why: std::collections::BTreeSet<String> = bob
        .seen()
        .iter()
        .filter(|e| {
            e["event"] == "message"
                && e["id"].as_str().is_some_and(|id| id.starts_with(tag))
                && e["error"].is_string()
        })
        .map(|e| format!("{} {}", e["error"], e["error_text"]))
        .collect();
    assert!(
        !why.iter().any(|w| w.contains("resource-constraint")),
        "{tag}: the throttle refused some of the burst, not the disruption: {why:?}"
    );
    let twice: Vec<usize> = (0..BURST).filter(|i| counts[*i] > 1).collect();
    assert!(
        twice.is_empty(),
        "{tag}: delivered more than once: {twice:?}"
    );
    let delivered = counts.iter().filter(|c| **c == 1).count();
    // A stanza the gateway stored just before the pod went, whose ack was
    // lost with the connection, can come back to Bob as well as reach Alice.
    let both = bounced.iter().filter(|i| counts[**i] == 1).count();
    eprintln!(
        "gateway pod {tag} with {BURST} messages in flight ({early} in Teams when it went): {} and Ready in {:.1} s; \
         {delivered} delivered exactly once, {} bounced to the sender ({both} of them delivered \
         too: {why:?}), none lost in silence or doubled (settled {:.1} s after)",
        if replaced { "replaced" } else { "not replaced" },
        ready_after.as_secs_f64(),
        bounced.len(),
        disrupted.elapsed().as_secs_f64()
    );
}

/// A gateway whose volume cannot bind (more storage than any of the node's
/// volumes holds): it is never Ready, and Ready says why in the scheduler's
/// words within a reconcile.
pub async fn unbindable_volume_is_named(admin: &Client, ns: &str, private: &str) {
    let gateways: Api<FederationGateway> = Api::namespaced(admin.clone(), ns);
    let contoso = gateways.get("contoso").await.unwrap();
    let mut spec = serde_json::to_value(&contoso.spec).unwrap();
    spec["database"]["storageSize"] = json!("900Gi");
    spec["licenceSecret"] = json!({"name": "unbound-licence", "key": "licence"});
    let licence = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "unbound-licence"},
        "stringData": {"licence": crate::support::licence_text(private, "node-unbound", 1)}
    });
    let unbound = json!({
        "apiVersion": "xmppfed.io/v1alpha1", "kind": "FederationGateway",
        "metadata": {"name": "unbound"}, "spec": spec
    });
    let applied = Instant::now();
    crate::support::apply_all(admin, ns, "xmppfed-node-unbound", vec![licence, unbound]).await;
    let named = eventually(
        "Ready=False naming the volume that cannot bind",
        Duration::from_secs(90),
        || async {
            let g = gateways.get("unbound").await.ok()?;
            let ready = g
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.status == "False" && ready.message.contains("persistent volume"))
                .then_some(ready.message)
        },
    )
    .await;
    eprintln!(
        "a volume that cannot bind: Ready=False {:.1} s after the apply: {named}",
        applied.elapsed().as_secs_f64()
    );
    gateways
        .delete("unbound", &DeleteParams::default())
        .await
        .unwrap();
}
