"""The rendered chart's objects, checked by scripts/check-chart.sh: Kubernetes
schemas, RBAC against rbac-required.txt, CRDs, the dashboard and NOTES.

Usage: check_chart_objects.py OUT_DIR KUBE_VERSION CHART_DIR
(OUT_DIR holds what check-chart.sh rendered; run with the chart venv's python).
"""
import json, pathlib, sys
import yaml
import kubernetes_validate

out, kube_version, chart = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
failures = []
checked = 0

def ok(cond, what):
    global checked
    checked += 1
    if not cond:
        failures.append(what)
        print(f"FAIL {what}")

def load(name):
    return [d for d in yaml.safe_load_all((out / name).read_text()) if d]

# Which (group, resource, verb) the operator needs, from rbac-required.txt.
required, section = {"ClusterRole": set(), "Role": set(), "GatewayClusterRole": set()}, None
for n, line in enumerate((chart / "rbac-required.txt").read_text().splitlines(), 1):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    if line.startswith("[") and line.endswith("]"):
        section = line[1:-1]
        if section not in required:
            sys.exit(f"rbac-required.txt:{n}: unknown section {line}")
        continue
    parts = line.split()
    if len(parts) not in (3, 4) or section is None:
        sys.exit(f"rbac-required.txt:{n}: expected '<group> <resource> <verb> [@name]' in a section: {line}")
    group, resource, verb = parts[:3]
    name = parts[3] if len(parts) == 4 else None
    if name is not None and name != "@gateway-cluster-role":
        sys.exit(f"rbac-required.txt:{n}: unknown object {name}")
    required[section].add(("" if group == "core" else group, resource, verb, name))

def grants(rules, what, gateway_role=None):
    """(group, resource, verb, name) per rule; name is "@gateway-cluster-role"
    for a rule limited to the gateway ClusterRole, None for an unlimited one."""
    got = set()
    for r in rules:
        for field in ("apiGroups", "resources", "verbs"):
            ok("*" not in r.get(field, []), f"{what}: no wildcard in {field}")
        ok(not r.get("nonResourceURLs"), f"{what}: no nonResourceURLs")
        names = r.get("resourceNames")
        if names:
            ok(names == [gateway_role], f"{what}: a rule limited by name names the gateway ClusterRole only (got {names})")
        name = "@gateway-cluster-role" if names else None
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for v in r["verbs"]:
                    got.add((g, res, v, name))
    return got

def fmt(grants):
    return ", ".join(f"{g or 'core'} {r} {v}{' ' + n if n else ''}" for g, r, v, n in sorted(grants, key=str))

def by_kind(docs):
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    return kinds

def one(kinds, kind):
    items = kinds.get(kind, [])
    ok(len(items) == 1, f"exactly one {kind} (got {len(items)})")
    return items[0] if items else {}

# 1. Every object of every scenario against the Kubernetes schemas.
scenarios = ["default", "full", "key", "set", "namespaced"]
rendered = {s: load(f"helm3-{s}.yaml") for s in scenarios}
skipped, validated = {}, 0
for s, docs in rendered.items():
    for d in docs:
        ident = f"{s}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if d.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            skipped[d["kind"]] = skipped.get(d["kind"], 0) + 1
            continue
        try:
            kubernetes_validate.validate(d, kube_version, strict=True)
            validated += 1
            ok(True, ident)
        except kubernetes_validate.ValidationError as e:
            ok(False, f"{ident} invalid for Kubernetes {kube_version}: {e.message} at {'/'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError as e:
            ok(False, f"{ident}: {e.message}")
        meta = d.get("metadata", {})
        ok(len(meta.get("name", "")) <= 63 or d["kind"] == "CustomResourceDefinition", f"{ident}: name at most 63 characters")
        cluster_scoped = d["kind"] in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                                       "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
        ok(cluster_scoped or meta.get("namespace"), f"{ident}: namespaced objects name their namespace")
kinds = sorted({d["kind"] for docs in rendered.values() for d in docs} - set(skipped))
print(f"ok  {validated} rendered objects ({', '.join(kinds)}) valid for Kubernetes {kube_version} (strict: unknown fields rejected)")
for kind, n in sorted(skipped.items()):
    print(f"skip {n} {kind}: a CRD type (monitoring.coreos.com), no schema offline; checked structurally below")

# 2. Default values.
k = by_kind(rendered["default"])
ok(sorted(k) == sorted(["ServiceAccount", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment",
                        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]),
   f"default: the expected kinds (got {sorted(k)})")
dep = one(k, "Deployment")
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
ok(dep["spec"]["replicas"] == 1, "default: 1 replica")
ok(dep["spec"]["strategy"]["type"] == "Recreate", "default: Recreate (two operators never reconcile side by side)")
ok(not any(a.startswith("--leader-election") for a in c["args"]), "default: no leader election with one replica")
ok("--admin-listen=0.0.0.0:8080" in c["args"] and "--log-level=info" in c["args"], "default: --admin-listen and --log-level")
ok(c["image"] == "ghcr.io/xmppfed/operator:0.1.0", f"default: image tag is the appVersion (got {c['image']})")
env = {e["name"]: e for e in c.get("env", [])}
ok(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name", "POD_NAME from the downward API")
ok(env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace", "POD_NAMESPACE from the downward API")
ok("XMPPFED_LICENCE_PUBLIC_KEY" not in env, "default: no licence key")
psc, sc = pod["securityContext"], c["securityContext"]
ok(psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod securityContext: runAsNonRoot, seccomp RuntimeDefault")
ok(sc.get("runAsNonRoot") is True and sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
   and sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
   "container securityContext: restricted (non-root, read-only root, no escalation, drop ALL, RuntimeDefault)")
ok(not sc.get("privileged") and not sc.get("capabilities", {}).get("add"), "container: not privileged, adds no capability")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
ok(ports == {"admin": 8080}, "admin port 8080")
ok(c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, "liveness probe: /healthz on the admin port")
ok(c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, "readiness probe: /readyz on the admin port")
ok(c["resources"].get("requests") and c["resources"].get("limits", {}).get("memory"), "resources: requests and a memory limit")
ok(pod["serviceAccountName"] == one(k, "ServiceAccount")["metadata"]["name"], "the pod runs as the chart's ServiceAccount")
svc = one(k, "Service")
ok(svc["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "admin", "protocol": "TCP"}], "metrics Service → admin port")
ok(svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items(), "metrics Service selects the operator's pods")
ok(dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items(), "Deployment selector matches its pods")

# 3. RBAC: exactly rbac-required.txt.
def check_cluster_rbac(kinds, scenario, sa_name, namespace="xmppfed-system", args=()):
    roles = {r["metadata"]["name"]: r for r in kinds.get("ClusterRole", [])}
    gateway_names = [n for n in roles if n.endswith("-gateway")]
    ok(len(roles) == 2 and len(gateway_names) == 1, f"{scenario}: two ClusterRoles, the operator's and the gateway pods' (got {sorted(roles)})")
    gateway_name = gateway_names[0] if gateway_names else None
    role = next((r for n, r in roles.items() if n != gateway_name), {})
    got = grants(role.get("rules", []), f"{scenario}: ClusterRole", gateway_name)
    missing, extra = required["ClusterRole"] - got, got - required["ClusterRole"]
    ok(not missing, f"{scenario}: ClusterRole grants everything in rbac-required.txt (missing: {fmt(missing)})")
    ok(not extra, f"{scenario}: ClusterRole grants nothing beyond rbac-required.txt (extra: {fmt(extra)})")
    gateway = grants(roles.get(gateway_name, {}).get("rules", []), f"{scenario}: gateway ClusterRole")
    ok(gateway == required["GatewayClusterRole"], f"{scenario}: the gateway ClusterRole = [GatewayClusterRole] (got {fmt(gateway)})")
    ok(f"--gateway-cluster-role={gateway_name}" in args, f"{scenario}: the operator is told the gateway ClusterRole's name")
    policy = one(kinds, "ValidatingAdmissionPolicy")
    policy_binding = one(kinds, "ValidatingAdmissionPolicyBinding")
    ok(policy_binding.get("spec", {}).get("policyName") == policy.get("metadata", {}).get("name")
       and policy_binding["spec"].get("validationActions") == ["Deny"],
       f"{scenario}: the gateway pods' admission policy is bound, denying")
    binding = one(kinds, "ClusterRoleBinding")
    ok(binding.get("roleRef") == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
       f"{scenario}: ClusterRoleBinding binds the ClusterRole")
    ok(binding.get("subjects") == [{"kind": "ServiceAccount", "name": sa_name, "namespace": namespace}],
       f"{scenario}: ClusterRoleBinding binds the operator's ServiceAccount")
check_cluster_rbac(k, "default", pod["serviceAccountName"], args=c["args"])
print(f"ok  ClusterRole = rbac-required.txt [ClusterRole] ({len(required['ClusterRole'])} grants)")

def check_namespaced_rbac(kinds, scenario, sa_name, watched, args, namespace="xmppfed-system"):
    """Namespaced mode: the operator's rules in a Role per watched namespace,
    no ClusterRole of its own, nothing bound cluster-wide."""
    cluster_roles = [r["metadata"]["name"] for r in kinds.get("ClusterRole", [])]
    ok(len(cluster_roles) == 1 and cluster_roles[0].endswith("-gateway"),
       f"{scenario}: the only ClusterRole is the gateway pods' (bound per namespace, granting the operator nothing) (got {cluster_roles})")
    gateway_name = cluster_roles[0] if cluster_roles else None
    ok("ClusterRoleBinding" not in kinds, f"{scenario}: no ClusterRoleBinding")
    operator_roles = {r["metadata"]["namespace"]: r for r in kinds.get("Role", []) if "leader-election" not in r["metadata"]["name"]}
    ok(sorted(operator_roles) == sorted(watched), f"{scenario}: a Role in each watched namespace (got {sorted(operator_roles)})")
    for ns, role in operator_roles.items():
        got = grants(role.get("rules", []), f"{scenario}: Role in {ns}", gateway_name)
        ok(got == required["ClusterRole"], f"{scenario}: the Role in {ns} = rbac-required.txt [ClusterRole] (missing: {fmt(required['ClusterRole'] - got)}; extra: {fmt(got - required['ClusterRole'])})")
    bindings = {b["metadata"]["namespace"]: b for b in kinds.get("RoleBinding", []) if "leader-election" not in b["metadata"]["name"]}
    for ns in watched:
        b = bindings.get(ns, {})
        ok(b.get("roleRef", {}).get("kind") == "Role" and b.get("roleRef", {}).get("name") == operator_roles.get(ns, {}).get("metadata", {}).get("name")
           and b.get("subjects") == [{"kind": "ServiceAccount", "name": sa_name, "namespace": namespace}],
           f"{scenario}: the RoleBinding in {ns} binds the Role to the operator's ServiceAccount")
    ok(f"--watch-namespaces={','.join(watched)}" in args, f"{scenario}: the operator is told which namespaces to watch")
    ok(any(r["metadata"]["name"].endswith("leader-election") and r["metadata"]["namespace"] == namespace for r in kinds.get("Role", [])),
       f"{scenario}: the leader-election Role stays in the release namespace")
kn = by_kind(rendered["namespaced"])
nd = one(kn, "Deployment")["spec"]["template"]["spec"]
check_namespaced_rbac(kn, "namespaced", nd["serviceAccountName"], ["team-a", "team-b"], nd["containers"][0]["args"])
print(f"ok  namespaced mode: a Role per watched namespace = rbac-required.txt [ClusterRole], no ClusterRole of the operator's")
ok("Role" not in k and "RoleBinding" not in k, "default: no leader-election Role with one replica")

# 4. CRDs: the repository's crds/, plus labels and the keep annotation.
repo_crds = {}
for f in sorted(pathlib.Path("crds").glob("*.yaml")):
    d = yaml.safe_load(f.read_text())
    repo_crds[d["metadata"]["name"]] = d
def check_crds(kinds, scenario, keep):
    crds = {d["metadata"]["name"]: d for d in kinds.get("CustomResourceDefinition", [])}
    ok(sorted(crds) == sorted(repo_crds), f"{scenario}: the CRDs of crds/ (got {sorted(crds)})")
    for name, d in crds.items():
        meta = dict(d["metadata"])
        annotations = meta.pop("annotations", {}) or {}
        meta.pop("labels", None)
        want = dict(repo_crds.get(name, {}))
        want_meta = dict(want.get("metadata", {}))
        ok({**d, "metadata": meta} == {**want, "metadata": want_meta}, f"{scenario}: CRD {name} equals crds/ (but labels, annotations)")
        ok((annotations.get("helm.sh/resource-policy") == "keep") == keep, f"{scenario}: CRD {name} keep annotation is {keep}")
check_crds(k, "default", keep=True)
print("ok  rendered CRDs equal crds/*.yaml (labels and annotations aside), kept on uninstall")

# 5. Non-default values: values-full.yaml.
k = by_kind(rendered["full"])
ok("CustomResourceDefinition" not in k, "full: crds.install=false renders no CRD")
dep = one(k, "Deployment")
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
full = yaml.safe_load((out / "values-full.yaml").read_text())
lease = "xmppfed-operator"
ok(dep["spec"]["replicas"] == 3, "full: 3 replicas")
ok(f"--leader-election-lease={lease}" in c["args"], f"full: --leader-election-lease={lease}")
ok("--admin-listen=0.0.0.0:9095" in c["args"] and "--log-level=debug,kube=info" in c["args"], "full: admin port and log level")
ok(c["ports"] == [{"name": "admin", "containerPort": 9095, "protocol": "TCP"}], "full: admin container port 9095")
ok(dep["spec"]["strategy"] == full["updateStrategy"], "full: update strategy from values")
ok(c["image"] == "registry.example.com/mirror/xmppfed-operator:0.1.0-rc.1" and c["imagePullPolicy"] == "Always", "full: image and pull policy")
ok(pod.get("imagePullSecrets") == [{"name": "mirror-credentials"}], "full: imagePullSecrets")
ok(c["resources"] == full["resources"], "full: resources from values")
env = {e["name"]: e for e in c.get("env", [])}
ok(env.get("XMPPFED_LICENCE_PUBLIC_KEY", {}).get("valueFrom", {}).get("secretKeyRef") == {"name": "xmppfed-licence-key", "key": "licence-signing.pub"},
   "full: licence key from the existing Secret")
ok("OTEL_EXPORTER_OTLP_ENDPOINT" in env and "POD_NAME" in env and "POD_NAMESPACE" in env, "full: extra env beside POD_NAME and POD_NAMESPACE")
for key in ("nodeSelector", "tolerations", "topologySpreadConstraints", "priorityClassName"):
    ok(pod.get(key) == full[key], f"full: {key}")
ok(dep["spec"]["template"]["metadata"]["labels"].get("team") == "messaging", "full: podLabels")
ok(dep["spec"]["template"]["metadata"].get("annotations") == full["podAnnotations"], "full: podAnnotations")
ok(all(d["metadata"]["labels"].get("environment") == "production" for d in rendered["full"]), "full: commonLabels on every object")
sa = one(k, "ServiceAccount")
ok(sa["metadata"]["name"] == "xmppfed-operator-sa" == pod["serviceAccountName"], "full: serviceAccount.name")
check_cluster_rbac(k, "full", "xmppfed-operator-sa", args=c["args"])
role = one(k, "Role")
got = {(g, r, v, None) for g, r, v, _ in grants(role.get("rules", []), "full: Role", lease)}
missing, extra = required["Role"] - got, got - required["Role"]
ok(not missing and not extra, f"full: leader-election Role = rbac-required.txt [Role] (missing: {fmt(missing)}; extra: {fmt(extra)})")
for r in role.get("rules", []):
    if set(r["verbs"]) & {"get", "update", "patch", "delete"}:
        ok(r.get("resourceNames") == [lease], f"full: Role {r['verbs']} limited to Lease {lease}")
binding = one(k, "RoleBinding")
ok(binding["roleRef"]["name"] == role["metadata"]["name"] and binding["subjects"][0]["name"] == "xmppfed-operator-sa", "full: RoleBinding")
print(f"ok  leader-election Role = rbac-required.txt [Role] ({len(required['Role'])} grants), get/update limited to Lease {lease}")
svc = one(k, "Service")
ok(svc["spec"]["ports"][0]["port"] == 9100, "full: Service port 9100")
monitors = {d["metadata"]["name"]: d for d in k.get("ServiceMonitor", [])}
ok(sorted(monitors) == ["xmppfed-operator", "xmppfed-operator-gateways"], f"full: two ServiceMonitors (got {sorted(monitors)})")
for m in monitors.values():
    ok(m["apiVersion"] == "monitoring.coreos.com/v1" and m["metadata"]["labels"].get("release") == "kube-prometheus-stack", f"full: {m['metadata']['name']} labels")
    ep = m["spec"]["endpoints"][0]
    ok(ep["path"] == "/metrics" and ep["interval"] == "15s", f"full: {m['metadata']['name']} scrapes /metrics every 15s")
op = monitors.get("xmppfed-operator", {})
ok(op.get("spec", {}).get("selector", {}).get("matchLabels", {}).items() <= svc["metadata"]["labels"].items()
   and op["spec"]["endpoints"][0]["port"] == "metrics", "full: the operator's ServiceMonitor selects the metrics Service and port")
gw = monitors.get("xmppfed-operator-gateways", {})
ok(gw.get("spec", {}).get("namespaceSelector") == {"any": True} and gw["spec"]["endpoints"][0]["port"] == "admin"
   and gw["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "xmppfed-gateway", "app.kubernetes.io/component": "gateway",
                                                 "app.kubernetes.io/managed-by": "xmppfed-operator"},
   "full: the gateways' ServiceMonitor selects the operator's gateway Services (workload.rs labels), port admin, any namespace")
cm = one(k, "ConfigMap")
ok(cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["labels"].get("grafana_dashboard") == "1", "full: dashboard ConfigMap in monitoring, grafana_dashboard=1")
ok(cm.get("data", {}).get("xmppfed-gateway.json") == pathlib.Path("dashboards/xmppfed-gateway.json").read_text().rstrip("\n"),
   "full: the dashboard ConfigMap holds dashboards/xmppfed-gateway.json")
print("ok  full values: 3 replicas with leader election, custom image and resources, ServiceMonitors, dashboard, no CRDs")

# 6. values-key.yaml: inline key, CRDs not kept, an existing ServiceAccount.
k = by_kind(rendered["key"])
c = one(k, "Deployment")["spec"]["template"]["spec"]["containers"][0]
env = {e["name"]: e for e in c.get("env", [])}
ok(env.get("XMPPFED_LICENCE_PUBLIC_KEY", {}).get("value") == "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "key: inline licence key, trimmed")
ok("ServiceAccount" not in k, "key: serviceAccount.create=false renders no ServiceAccount")
check_cluster_rbac(k, "key", "existing-operator-account", args=c["args"])
check_crds(k, "key", keep=False)
print("ok  key values: inline licence key, existing ServiceAccount, CRDs without the keep annotation")

# 7. --set form.
k = by_kind(rendered["set"])
dep = one(k, "Deployment")
c = dep["spec"]["template"]["spec"]["containers"][0]
ok(dep["spec"]["replicas"] == 3 and "--leader-election-lease=xmppfed-operator" in c["args"], "set: 3 replicas, leader election")
ok(c["image"] == "example.org/op:1.2.3" and c["resources"]["limits"]["memory"] == "1Gi", "set: image and resources")
ok("CustomResourceDefinition" not in k and len(k.get("ServiceMonitor", [])) == 2 and len(k.get("ConfigMap", [])) == 1 and "Role" in k,
   "set: no CRDs, ServiceMonitors, dashboard, Role")

# 8. NOTES.txt.
notes = (out / "notes-default.txt").read_text()
for want in ("kubectl apply -n xmpp -f examples/domain-whitelist.yaml -f examples/minimal-sqlite.yaml", "kubectl get fgw",
             "kubectl wait -n xmpp --for=condition=Ready fgw/contoso", "WARNING: no licence public key"):
    ok(want in notes, f"NOTES (default) says: {want}")
notes = (out / "notes-full.txt").read_text()
ok("leader election on Lease xmppfed-operator" in notes and "WARNING" not in notes and "crds.install is false" in notes,
   "NOTES (full): leader election, no licence warning, CRDs to apply")
print("ok  NOTES.txt names the examples, kubectl get fgw and kubectl wait --for=condition=Ready")

# 9. The dashboard.
dash = json.loads(pathlib.Path("dashboards/xmppfed-gateway.json").read_text())
ok(dash.get("uid") == "xmppfed-gateway" and dash.get("schemaVersion", 0) >= 36, "dashboard: uid and schemaVersion")
ids = [p["id"] for p in dash["panels"]]
ok(len(ids) == len(set(ids)), "dashboard: unique panel ids")
exprs = "\n".join(t.get("expr", "") for p in dash["panels"] for t in p.get("targets", []))
for metric in ("xmppfed_s2s_stanzas_total", "xmppfed_s2s_streams", "xmppfed_s2s_stream_errors_total", "xmppfed_s2s_authentications_total",
               "xmppfed_s2s_bounced_stanzas_total", "xmppfed_s2s_refused_total", "xmppfed_licence_valid",
               "xmppfed_licence_expiry_timestamp_seconds", "xmppfed_gateway_info", "xmppfed_graph_requests_total",
               "xmppfed_graph_throttled_total", "xmppfed_throttled_total", "xmppfed_outbox_depth", "xmppfed_messages_total"):
    ok(metric in exprs, f"dashboard: a panel uses {metric}")
for p in dash["panels"]:
    if p["type"] != "row":
        ok(p.get("datasource", {}).get("uid") == "${datasource}" and p.get("targets"), f"dashboard: panel '{p['title']}' queries the chosen data source")
        ok(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, f"dashboard: panel '{p['title']}' fits the grid")
print(f"ok  dashboard: {len(dash['panels'])} panels, every named metric used")

print(f"\n{checked} object checks, {len(failures)} failed")
sys.exit(1 if failures else 0)
