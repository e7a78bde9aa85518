//! High availability for real (issue 22): a FederationGateway of two
//! replicas on one PostgreSQL (Debian's, on this host's pod-network
//! address, TLS verify-full against its own CA, a login that owns only its
//! database), on the real node. Messages flow both ways while the replica
//! running the bridge is force-deleted, while its process is killed -9, and
//! while PostgreSQL restarts; each time every message is delivered exactly
//! once (or, XMPP → Teams, bounced to its sender with an error: never lost
//! in silence), and the figures are printed.

mod traffic;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use xmppfed_config::POD_ROLE_LABEL;
use xmppfed_e2e::cluster::eventually;
use xmppfed_e2e::postgres::{Postgres, PostgresOptions};
use xmppfed_operator::crd::FederationGateway;

use crate::node_peers::{GraphPod, HOST_ON_POD_NETWORK, PEER, Peer, PeerFor, pod_ready};
use crate::support::{apply_all, licence_text};
use traffic::{Burst, Chat};

const GW: &str = "northwind";
const DOMAIN: &str = "teams.northwind.example";
/// The lease a standby waits out before it takes the bridge over.
const LEASE_SECS: u64 = 10;
const MANAGER: &str = "xmppfed-node-failover";

fn postgres_required() -> bool {
    std::env::var("XMPPFED_TEST_POSTGRES").is_ok_and(|v| v == "required")
}

/// PostgreSQL for the pods: on this host's pod-network address (pods reach
/// the host there), TLS with a certificate naming it.
fn start_postgres() -> Option<Postgres> {
    let options = PostgresOptions {
        tls: true,
        extra_address: Some(HOST_ON_POD_NETWORK.to_owned()),
    };
    match Postgres::start(&options) {
        Ok(pg) => Some(pg),
        Err(e) if !postgres_required() => {
            eprintln!("skipped: two replicas on PostgreSQL need a PostgreSQL server: {e:#}");
            None
        }
        Err(e) => panic!("XMPPFED_TEST_POSTGRES=required but PostgreSQL cannot start: {e:#}"),
    }
}

/// The gateway's own login, owning only its database.
fn gateway_login(pg: &Postgres) -> String {
    let password = format!("gw-{}", std::process::id());
    pg.psql("postgres", "CREATE DATABASE northwind").unwrap();
    pg.psql(
        "postgres",
        &format!("CREATE ROLE xmppfed LOGIN PASSWORD '{password}'"),
    )
    .unwrap();
    pg.psql("postgres", "ALTER DATABASE northwind OWNER TO xmppfed")
        .unwrap();
    password
}

/// The Secrets and the two-replica gateway, pointed at the emulator and
/// routing the partner's domain to `peer_port` on this host.
fn documents(
    pg: &Postgres,
    password: &str,
    graph: &GraphPod,
    private: &str,
    dir: &std::path::Path,
    peer_port: u16,
) -> Vec<Value> {
    let (cert, key) = xmppfed_e2e::prosody::self_signed(dir, DOMAIN).unwrap();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let ca = pg.ca_file.as_deref().expect("the server has TLS");
    let image = crate::support::examples("minimal-sqlite.yaml")
        .into_iter()
        .find(|d| d["kind"] == "FederationGateway")
        .map(|g| g["spec"]["image"].clone())
        .unwrap();
    let secret = |name: &str, data: Value| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data});
    vec![
        secret("northwind-pg", json!({"password": password})),
        secret("northwind-pg-ca", json!({"ca.crt": read(ca)})),
        secret(
            "northwind-graph",
            json!({"client-secret": "PLACEHOLDER-client-secret-of-the-entra-app-registration"}),
        ),
        secret(
            "northwind-licence",
            json!({"licence": licence_text(private, "node-failover", 2)}),
        ),
        {
            let mut tls = secret(
                "northwind-s2s-tls",
                json!({"tls.crt": read(&cert), "tls.key": read(&key)}),
            );
            tls["type"] = json!("kubernetes.io/tls");
            tls
        },
        json!({
            "apiVersion": "xmppfed.io/v1alpha1", "kind": "FederationGateway",
            "metadata": {"name": GW, "labels": {"xmppfed.io/tier": "production"}},
            "spec": {
                "domain": DOMAIN, "image": image, "replicas": 2,
                "tenant": {
                    "tenantId": "8f0d2a8e-1b2c-4d5e-9f00-112233445566",
                    "clientId": "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
                    "clientSecret": {"name": "northwind-graph", "key": "client-secret"},
                    "endpoints": {"authorityUrl": graph.url, "graphUrl": format!("{}/v1.0", graph.url),
                                  "caConfigMap": {"name": "graph-ca", "key": "ca.crt"}}
                },
                "shadowAccounts": {"upnDomain": "xmpp.contoso.example", "usageLocation": "GB",
                                   "licenceSku": "3b555118-da6a-4418-894f-7df1e2096870"},
                "bridge": {"leaderLeaseSeconds": LEASE_SECS},
                "s2s": {"tlsSecret": "northwind-s2s-tls",
                        "staticRoutes": [{"domain": PEER, "host": HOST_ON_POD_NETWORK, "port": peer_port}]},
                "database": {"engine": "postgres", "postgres": {
                    "host": HOST_ON_POD_NETWORK, "port": pg.port, "database": "northwind", "user": "xmppfed",
                    "passwordSecret": {"name": "northwind-pg", "key": "password"},
                    "sslMode": "verify-full", "caSecret": {"name": "northwind-pg-ca", "key": "ca.crt"}}},
                "licenceSecret": {"name": "northwind-licence", "key": "licence"}
            }
        }),
    ]
}

/// The pod labelled leader (it holds the bridge's lease), when one is.
async fn leader(pods: &Api<Pod>) -> Option<Pod> {
    let selector = ListParams::default().labels(&format!(
        "app.kubernetes.io/instance={GW},{POD_ROLE_LABEL}=leader"
    ));
    pods.list(&selector).await.ok()?.items.into_iter().next()
}

/// Both replicas Ready and one of them the leader; the leader.
async fn both_ready(pods: &Api<Pod>, within: Duration) -> Pod {
    eventually("both replicas Ready, one leading", within, || async {
        let selector = ListParams::default().labels(&format!("app.kubernetes.io/instance={GW}"));
        let all = pods.list(&selector).await.ok()?.items;
        (all.len() == 2 && all.iter().all(pod_ready)).then_some(())?;
        leader(pods).await
    })
    .await
}

/// Kills the gateway process of a pod from the host, as `kill -9` would:
/// the processes of its containers named like our binaries (the pod's
/// sandbox stays, so the kubelet restarts the container in the same pod).
fn kill_gateway_process(uid: &str) -> usize {
    let mut killed = 0;
    for pid in crate::node_peers::pod_processes(uid) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim().starts_with("xmppfed") {
            let ok = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            killed += usize::from(ok);
        }
    }
    killed
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum())
}

/// Deletes the leader's pod with grace period 0 (killing its process -9
/// first when `hard`), and waits until another pod leads and is Ready:
/// how long that took, and which pod.
async fn replaced(pods: &Api<Pod>, leader_pod: &Pod, hard: bool) -> (Duration, String) {
    let old = leader_pod.uid().unwrap_or_default();
    if hard {
        assert!(
            kill_gateway_process(&old) > 0,
            "no gateway process found in {old}"
        );
    }
    pods.delete(
        &leader_pod.name_any(),
        &DeleteParams::default().grace_period(0),
    )
    .await
    .unwrap();
    let at = Instant::now();
    let next = eventually(
        "another replica leading and Ready",
        Duration::from_secs(LEASE_SECS * 12),
        || async {
            leader(pods)
                .await
                .filter(|p| p.uid().unwrap_or_default() != old && pod_ready(p))
        },
    )
    .await;
    (at.elapsed(), next.name_any())
}

pub async fn two_replicas_on_postgres(
    admin: &Client,
    ns: &str,
    graph: &GraphPod,
    private: &str,
    dir: &std::path::Path,
) {
    let Some(mut pg) = start_postgres() else {
        return;
    };
    let password = gateway_login(&pg);
    let peer_port = xmppfed_e2e::prosody::kernel_port().unwrap();
    let applied = Instant::now();
    apply_all(
        admin,
        ns,
        MANAGER,
        documents(&pg, &password, graph, private, dir, peer_port),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let first_leader = both_ready(&pods, Duration::from_secs(240)).await;
    eprintln!(
        "two replicas on PostgreSQL: both Ready, {} leading, {:.1} s after the apply",
        first_leader.name_any(),
        applied.elapsed().as_secs_f64()
    );
    let tables = pg
        .psql(
            "northwind",
            "SELECT count(*) FROM pg_tables WHERE tableowner = 'xmppfed'",
        )
        .unwrap();
    assert!(
        tables.parse::<u32>().unwrap() >= 8,
        "the gateway made its tables as its own login: {tables}"
    );
    let peer = Peer::start_for(
        admin,
        ns,
        PeerFor {
            gateway: GW,
            domain: DOMAIN,
            user: "dave",
            s2s_port: peer_port,
        },
    )
    .await;
    let Some(dave) = peer.bob else {
        return;
    };
    let service = format!("{}:5269", peer.s2s_service);
    eventually(
        "the s2s Service accepting connections",
        Duration::from_secs(60),
        || async {
            tokio::net::TcpStream::connect(&service)
                .await
                .ok()
                .map(drop)
        },
    )
    .await;
    let mut chat = Chat::open(graph, dave, &format!("alice@{DOMAIN}")).await;

    // The node under the leader lost: its process killed -9 (it cannot give
    // its lease up) and its pod force-deleted. The pod that replaces it is
    // another lease holder (pod name and uid), so the bridge moves to the
    // standby or the replacement only once the lease has lapsed.
    let lost = Burst::new("node-lost");
    let taken = chat
        .disrupted(&lost, || replaced(&pods, &first_leader, true))
        .await;
    eprintln!(
        "leader {} lost (killed -9 and force-deleted): {} leading and Ready {:.1} s later (lease {LEASE_SECS} s); {}",
        first_leader.name_any(),
        taken.1,
        taken.0.as_secs_f64(),
        chat.report(&lost)
    );
    let leading = both_ready(&pods, Duration::from_secs(180)).await;

    // Deleted with grace period 0 through the API: the kubelet still sends
    // SIGTERM first, and the leader gives its lease up on the way out.
    let deleted = Burst::new("deleted");
    let taken = chat
        .disrupted(&deleted, || replaced(&pods, &leading, false))
        .await;
    eprintln!(
        "leader {} deleted (grace period 0): {} leading and Ready {:.1} s later; {}",
        leading.name_any(),
        taken.1,
        taken.0.as_secs_f64(),
        chat.report(&deleted)
    );
    let leading = both_ready(&pods, Duration::from_secs(180)).await;

    // Its process killed -9 alone: the kubelet restarts the container in the
    // same pod, the same lease holder, which takes its lease straight back.
    let killed = Burst::new("killed");
    let uid = leading.uid().unwrap_or_default();
    let restarts_before = restarts(&leading);
    let back = chat
        .disrupted(&killed, || async {
            assert!(
                kill_gateway_process(&uid) > 0,
                "no gateway process found in {uid}"
            );
            let at = Instant::now();
            let next = eventually(
                "the bridge back after the kill",
                Duration::from_secs(120),
                || async {
                    let p = leader(&pods).await?;
                    let again =
                        p.uid().unwrap_or_default() != uid || restarts(&p) > restarts_before;
                    (again && pod_ready(&p)).then_some(p)
                },
            )
            .await;
            (at.elapsed(), next.name_any())
        })
        .await;
    eprintln!(
        "leader {} killed -9: {} leading and Ready {:.1} s later; {}",
        leading.name_any(),
        back.1,
        back.0.as_secs_f64(),
        chat.report(&killed)
    );
    both_ready(&pods, Duration::from_secs(180)).await;

    // PostgreSQL restarted under load: every session dropped.
    let restarted = Burst::new("db-restart");
    let took = chat
        .disrupted(&restarted, || async {
            let at = Instant::now();
            tokio::task::block_in_place(|| pg.restart()).unwrap();
            at.elapsed()
        })
        .await;
    eprintln!(
        "PostgreSQL restarted under load (down {:.1} s): {}",
        took.as_secs_f64(),
        chat.report(&restarted)
    );

    // PostgreSQL gone for good: the gateway says so in its status. The
    // leader cannot renew its lease and stops; started again, it cannot
    // open its store, and Ready quotes its last words.
    let gateways: Api<FederationGateway> = Api::namespaced(admin.clone(), ns);
    tokio::task::block_in_place(|| pg.stop()).unwrap();
    let stopped = Instant::now();
    let said = eventually(
        "Ready naming the database it cannot reach",
        Duration::from_secs(240),
        || async {
            let g = gateways.get(GW).await.ok()?;
            let ready = g
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.status == "False" && ready.message.contains("PostgreSQL"))
                .then_some(ready.message)
        },
    )
    .await;
    eprintln!(
        "PostgreSQL stopped: Ready=False {:.1} s later: {said}",
        stopped.elapsed().as_secs_f64()
    );
    gateways.delete(GW, &DeleteParams::default()).await.unwrap();
    eventually("northwind gone", Duration::from_secs(60), || async {
        gateways.get_opt(GW).await.ok()?.is_none().then_some(())
    })
    .await;
    drop(peer.server);
}
