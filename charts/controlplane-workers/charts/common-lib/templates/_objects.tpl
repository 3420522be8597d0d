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
     block forever), else maxUnavailable (above 0, for the same reason). */}}
{{- define "cpw.lib.pdb" -}}
{{- $v := .ctx.Values -}}
{{- $p := $v.podDisruptionBudget -}}
{{- if $p.enabled }}
{{- include "cpw.lib.pdbGuard" . }}
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

{{/* Fails when the PDB could never allow an eviction. The fewest pods that run is replicaCount, or
     autoscaling.minReplicas, but at least 1 when autoscaling may scale to zero (a single pod then runs at
     times). Kubernetes rounds a minAvailable percentage up, so "100%" (or "90%" of 3) blocks as 3 does. */}}
{{- define "cpw.lib.pdbGuard" -}}
{{- $v := .ctx.Values -}}
{{- $p := $v.podDisruptionBudget -}}
{{- $prefix := get (dict "worker" "workers" "api" "api" "projector" "api.projector") .component -}}
{{- $min := include "cpw.lib.minReplicas" .ctx | int -}}
{{- $scales := and $v.autoscaling $v.autoscaling.enabled -}}
{{- $fewest := ternary (max $min 1 | int) $min (and $scales true) -}}
{{- if not (kindIs "invalid" $p.minAvailable) -}}
{{- $need := 0 -}}
{{- $shown := toString $p.minAvailable -}}
{{- if kindIs "string" $p.minAvailable -}}
{{- $pct := trimSuffix "%" $p.minAvailable | int -}}
{{- $need = div (add (mul $pct $fewest) 99) 100 -}}
{{- if ge $pct 100 }}{{ $need = max $fewest 1 }}{{ end -}}
{{- else -}}
{{- $need = $p.minAvailable | int -}}
{{- end -}}
{{- if and (gt ($need | int) 0) (ge ($need | int) (max $fewest 1 | int)) (or (gt $fewest 0) $scales (kindIs "string" $p.minAvailable)) -}}
{{- fail (printf "%s.podDisruptionBudget.minAvailable (%s) must be below the fewest replicas (%d, from replicaCount or autoscaling.minReplicas, at least 1 when autoscaling scales to zero), or no pod can ever be evicted and node drains hang: lower it, or set it to null and use maxUnavailable" $prefix $shown $fewest) -}}
{{- end -}}
{{- else if or (eq (toString $p.maxUnavailable) "0") (eq (toString $p.maxUnavailable) "0%") -}}
{{- fail (printf "%s.podDisruptionBudget.maxUnavailable (%s) must be above 0, or no pod can ever be evicted and node drains hang" $prefix (toString $p.maxUnavailable)) -}}
{{- end -}}
{{- end -}}
