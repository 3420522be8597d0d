{{/* Umbrella helpers; the shared ones are in the common-lib library chart (cpw.lib.*). */}}

{{- define "cpw.fullname" -}}
{{- include "cpw.lib.fullname" . -}}
{{- end -}}

{{/* Labels of an umbrella-level object. Takes (dict "ctx" $ "component" "..."). */}}
{{- define "cpw.labels" -}}
{{- include "cpw.lib.labels" . -}}
{{- end -}}

{{/* Selector of the component pods of this release: (dict "ctx" $ "components" (list "worker" "api")). */}}
{{- define "cpw.componentsSelector" -}}
matchLabels:
  {{- include "cpw.lib.releaseSelectorLabels" .ctx | nindent 2 }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values:
      {{- toYaml .components | nindent 6 }}
{{- end -}}

{{/* Enabled components: worker, api, and the projector when the API keeps operations in PostgreSQL. */}}
{{- define "cpw.components" -}}
{{- $l := list -}}
{{- if .Values.workers.enabled }}{{ $l = append $l "worker" }}{{ end -}}
{{- if .Values.api.enabled }}{{ $l = append $l "api" }}{{ end -}}
{{- if and .Values.api.enabled (eq (include "cpw.lib.operationStore" .) "postgresql") }}{{ $l = append $l "projector" }}{{ end -}}
{{- toJson $l -}}
{{- end -}}

{{/* The `to` of a default egress rule (dns, rabbitmq, otlp): its peers plus `extra`; none, the cluster's pods in any
     namespace. Only `anyDestination: true` renders no `to` (any address): an explicit opt-in, never a default.
     Takes (dict "rule" R "extra" LIST). */}}
{{- define "cpw.egressTo" -}}
{{- $to := concat (.rule.to | default list) (.extra | default list) -}}
{{- if .rule.anyDestination -}}
{{- else if $to -}}
to:
{{ toYaml $to | indent 2 }}
{{- else -}}
to:
  - namespaceSelector: {}
{{- end -}}
{{- end -}}
