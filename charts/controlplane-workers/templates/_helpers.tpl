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

{{/* Enabled components. */}}
{{- define "cpw.components" -}}
{{- $l := list -}}
{{- if .Values.workers.enabled }}{{ $l = append $l "worker" }}{{ end -}}
{{- if .Values.api.enabled }}{{ $l = append $l "api" }}{{ end -}}
{{- toJson $l -}}
{{- end -}}
