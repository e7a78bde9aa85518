{{/* Name of the chart, or nameOverride. */}}
{{- define "xmppfed-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: fullnameOverride, or the release name when
it already contains the chart name, or "<release>-<chart>"; 63 characters at most.
*/}}
{{- define "xmppfed-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "xmppfed-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "xmppfed-operator.labels" -}}
helm.sh/chart: {{ include "xmppfed-operator.chart" . }}
{{ include "xmppfed-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: xmppfed
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the operator's pods. */}}
{{- define "xmppfed-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "xmppfed-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "xmppfed-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "xmppfed-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest, or repository:tag (default: appVersion). */}}
{{- define "xmppfed-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Whether replicas take turns through a Lease. */}}
{{- define "xmppfed-operator.leaderElection" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end }}
{{- end }}

{{/* Name of the leader-election Lease (and of its Role). */}}
{{/* The ClusterRole gateway pods are bound to (patch on their own pods). */}}
{{- define "xmppfed-operator.gatewayClusterRole" -}}
{{ include "xmppfed-operator.fullname" . }}-gateway
{{- end }}

{{- define "xmppfed-operator.leaseName" -}}
{{- include "xmppfed-operator.fullname" . }}
{{- end }}

{{/* Fails on combinations of values that the schema cannot express. */}}
{{- define "xmppfed-operator.validate" -}}
{{- if and .Values.licence.publicKey .Values.licence.existingSecret.name }}
{{- fail "licence: set either publicKey or existingSecret.name, not both" }}
{{- end }}
{{- end }}

{{/*
What the operator calls on the Kubernetes API (rbac-required.txt, section
[ClusterRole]): the rules of its ClusterRole, or of its Role in each watched
namespace in namespaced mode (watchNamespaces).
*/}}
{{- define "xmppfed-operator.operatorRules" -}}
  # The three controllers watch their resources in every namespace; the policy
  # reconcilers list the gateways of the policy's namespace.
  - apiGroups: ["xmppfed.io"]
    resources: ["federationgateways", "domainwhitelists", "throttlepolicies"]
    verbs: ["list", "watch"]
  # Status: server-side apply on the status subresource.
  - apiGroups: ["xmppfed.io"]
    resources: ["federationgateways/status", "domainwhitelists/status", "throttlepolicies/status"]
    verbs: ["patch"]
  # Children block their gateway's foreground deletion (blockOwnerDeletion).
  - apiGroups: ["xmppfed.io"]
    resources: ["federationgateways/finalizers"]
    verbs: ["update"]
  # Children: server-side apply (patch, and create when the object is new).
  # StatefulSets and ConfigMaps are also watched (Controller::owns).
  - apiGroups: ["apps"]
    resources: ["statefulsets"]
    verbs: ["create", "patch", "list", "watch"]
  - apiGroups: [""]
    resources: ["configmaps"]
    verbs: ["create", "patch", "list", "watch"]
  - apiGroups: [""]
    resources: ["services", "serviceaccounts"]
    verbs: ["create", "patch"]
  # The PodDisruptionBudget is deleted when a gateway scales down to one replica.
  - apiGroups: ["policy"]
    resources: ["poddisruptionbudgets"]
    verbs: ["create", "patch", "delete"]
  # The webhook's Ingress (spec.webhookIngress), deleted when no longer asked
  # for; the gateway's NetworkPolicy (spec.networkPolicy), deleted when turned off.
  - apiGroups: ["networking.k8s.io"]
    resources: ["ingresses", "networkpolicies"]
    verbs: ["create", "patch", "delete"]
  # Licences are read from the Secret a gateway names; the gateway's generated
  # keys Secret is looked up and created once. Secrets are watched by metadata
  # only, so that a changed licence or credential is reconciled at once.
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "create", "list", "watch"]
  # Each gateway's pods keep their role label (leader or standby; the s2s
  # Service selects the leader): a RoleBinding per gateway of the gateway
  # ClusterRole below to its ServiceAccount. The operator may bind that one
  # ClusterRole and holds none of its permissions; it makes no Roles.
  - apiGroups: ["rbac.authorization.k8s.io"]
    resources: ["rolebindings"]
    verbs: ["create", "patch"]
  - apiGroups: ["rbac.authorization.k8s.io"]
    resources: ["clusterroles"]
    resourceNames: [{{ include "xmppfed-operator.gatewayClusterRole" . | quote }}]
    verbs: ["bind"]
  # Ready names the gateway pods it waits for, and why.
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["list"]
  # kube::runtime::events::Recorder publishes events.k8s.io/v1 Events.
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
{{- end }}
