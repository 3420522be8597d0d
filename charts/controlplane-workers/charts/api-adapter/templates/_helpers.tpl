{{/* API-specific helpers; everything shared is in the common-lib library chart (cpw.lib.*). */}}

{{- define "cpw.api.fullname" -}}
{{- include "cpw.lib.fullname" (dict "ctx" . "component" "api") -}}
{{- end -}}

{{/* Secret holding the token -> tenant mapping. */}}
{{- define "cpw.api.tokensSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-api-tokens" (include "cpw.lib.base" .)) -}}
{{- end -}}

{{- define "cpw.api.tokensKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKey }}{{ else }}tokens.yaml{{ end -}}
{{- end -}}
