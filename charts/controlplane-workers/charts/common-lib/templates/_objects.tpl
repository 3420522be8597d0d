{{/*
Whole objects both components need: ServiceAccount, optional RBAC, PodDisruptionBudget.
Each takes (dict "ctx" $ "component" "worker").
*/}}

{{/* Fewest replicas the component can run with: autoscaling.minReplicas when autoscaling, else replicaCount. */}}
{{- define "cpw.lib.minReplicas" -}}
{{- $v := .Values -}}
{{- if and $v.autoscaling $v.autoscaling.enabled -}}{{ $v.autoscaling.minReplicas | int }}{{- else -}}{{ $v.replicaCount | int }}{{- end -}}
{{- end -}}

{{- define "cpw.lib.serviceAccountName" -}}
{{- $sa := .ctx.Values.serviceAccount -}}
{{- if $sa.create -}}{{ $sa.name | default (include "cpw.lib.fullname" .) }}{{- else -}}{{ $sa.name | default "default" }}{{- end -}}
{{- end -}}

{{/* The pod mounts a token only when asked to, or when it has RBAC rules to use. */}}
{{- define "cpw.lib.automountToken" -}}
{{- if or .ctx.Values.serviceAccount.automountToken (and .ctx.Values.rbac.create .ctx.Values.rbac.rules) -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{- define "cpw.lib.serviceAccount" -}}
{{- $v := .ctx.Values -}}
{{- if $v.serviceAccount.create }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "cpw.lib.serviceAccountName" . }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "cpw.lib.labels" . | nindent 4 }}
  {{- with $v.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: {{ include "cpw.lib.automountToken" . }}
{{- end }}
{{- end -}}

{{/* Role (or ClusterRole with rbac.clusterScoped) + binding, rules from rbac.rules; nothing by default. */}}
{{- define "cpw.lib.rbac" -}}
{{- $v := .ctx.Values -}}
{{- if and $v.rbac.create $v.rbac.rules }}
{{- $kind := ternary "ClusterRole" "Role" (default false $v.rbac.clusterScoped) }}
{{- $name := include "cpw.lib.fullname" . }}
{{- if eq $kind "ClusterRole" }}{{ $name = printf "%s-%s" .ctx.Release.Namespace $name | trunc 63 | trimSuffix "-" }}{{ end }}
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ $kind }}
metadata:
  name: {{ $name }}
  {{- if eq $kind "Role" }}
  namespace: {{ .ctx.Release.Namespace }}
  {{- end }}
  labels:
    {{- include "cpw.lib.labels" . | nindent 4 }}
rules:
  {{- toYaml $v.rbac.rules | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ $kind }}Binding
metadata:
  name: {{ $name }}
  {{- if eq $kind "Role" }}
  namespace: {{ .ctx.Release.Namespace }}
  {{- end }}
  labels:
    {{- include "cpw.lib.labels" . | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {{ $kind }}
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ include "cpw.lib.serviceAccountName" . }}
    namespace: {{ .ctx.Release.Namespace }}
{{- end }}
{{- end -}}

{{/* PodDisruptionBudget: minAvailable when set (it must stay below the fewest replicas, or node drains
     block forever), else maxUnavailable. */}}
{{- define "cpw.lib.pdb" -}}
{{- $v := .ctx.Values -}}
{{- $p := $v.podDisruptionBudget -}}
{{- if $p.enabled }}
{{- $min := include "cpw.lib.minReplicas" .ctx | int }}
{{- $prefix := ternary "workers" "api" (eq .component "worker") }}
{{- if and (not (kindIs "invalid" $p.minAvailable)) (not (kindIs "string" $p.minAvailable)) (ge ($p.minAvailable | int) $min) (gt $min 0) }}
{{- fail (printf "%s.podDisruptionBudget.minAvailable (%d) must be below the fewest replicas (%d, from replicaCount or autoscaling.minReplicas), or no pod can ever be evicted and node drains hang: lower it, or set it to null and use maxUnavailable" $prefix ($p.minAvailable | int) $min) }}
{{- end }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "cpw.lib.fullname" . }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "cpw.lib.labels" . | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" $p.minAvailable) }}
  minAvailable: {{ $p.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $p.maxUnavailable | default 1 }}
  {{- end }}
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "cpw.lib.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* checkov skips for a workload, each with its reason (checkov reads checkov.io/skipN annotations). */}}
{{- define "cpw.lib.checkovSkips" -}}
{{- if not .Values.image.digest }}
checkov.io/skip1: CKV_K8S_43=Images are pinned by tag unless image.digest is set; production installs set the digest
{{- end }}
{{- end -}}
