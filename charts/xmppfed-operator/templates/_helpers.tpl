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
