{{/*
Names and labels shared by every controlplane-workers chart.

Calling convention: helpers that need a component take a dict
  (dict "ctx" $ "component" "worker")
where ctx is the root context of the calling chart; the others take the root context.
*/}}

{{/* Base of every object name: global.fullnameOverride, else the release name (40 chars, so suffixes fit 63). */}}
{{- define "cpw.lib.base" -}}
{{- $g := .Values.global | default dict -}}
{{- default .Release.Name $g.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* "<base>-<component>" */}}
{{- define "cpw.lib.fullname" -}}
{{- printf "%s-%s" (include "cpw.lib.base" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select every pod of the release (NetworkPolicies). */}}
{{- define "cpw.lib.releaseSelectorLabels" -}}
app.kubernetes.io/name: controlplane-workers
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels that select one component's pods; immutable once installed (Deployment selectors). */}}
{{- define "cpw.lib.selectorLabels" -}}
{{ include "cpw.lib.releaseSelectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Full recommended label set for an object of one component. */}}
{{- define "cpw.lib.labels" -}}
{{ include "cpw.lib.selectorLabels" . }}
app.kubernetes.io/part-of: controlplane-workers
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | default .ctx.Chart.Version | quote }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- with (.ctx.Values.global | default dict).commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Checksum of a values subtree, for pod annotations that roll pods when a Secret's source changes. Anyone who
     can read pods reads it, so a bare hash of values that hold a password or a token lets them test guesses
     offline: callers pass `secret` (the subtree with credentials) and `public` (the same with them masked).
     With global.checksumSalt (kept with your values, which pod readers cannot read) the secret subtree is
     hashed behind the salt, so a credential change rolls the pods; without it, only the public one. Takes
     (dict "ctx" . "secret" X "public" Y). */}}
{{- define "cpw.lib.checksum" -}}
{{- $salt := (.ctx.Values.global | default dict).checksumSalt -}}
{{- if $salt -}}
{{- printf "%s\n%s" $salt (toJson .secret) | sha256sum -}}
{{- else -}}
{{- toJson .public | sha256sum -}}
{{- end -}}
{{- end -}}

{{/* checksum/rabbitmq: the broker values, URL credentials masked when unsalted. Takes the root context. */}}
{{- define "cpw.lib.checksum.rabbitmq" -}}
{{- $r := (.Values.global | default dict).rabbitmq | default dict -}}
{{- $public := deepCopy $r -}}
{{- range $key := list "url" "managementUrl" -}}
{{- if get $public $key -}}
{{- $_ := set $public $key (regexReplaceAll "//[^@/]*@" (get $public $key) "//***@") -}}
{{- end -}}
{{- end -}}
{{- include "cpw.lib.checksum" (dict "ctx" . "secret" $r "public" $public) -}}
{{- end -}}
