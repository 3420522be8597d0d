{{/* API-specific helpers; everything shared is in the common-lib library chart (cpw.lib.*). */}}

{{- define "cpw.api.fullname" -}}
{{- include "cpw.lib.fullname" (dict "ctx" . "component" "api") -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: the preStop sleep, then the longest long-poll, plus a margin; an override
     may not be shorter than the first two, or a rollout cuts long-polls. */}}
{{- define "cpw.api.terminationGracePeriodSeconds" -}}
{{- $floor := add (.Values.preStopSleepSeconds | int) (.Values.maxWait | float64 | ceil | int) -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add $floor (.Values.terminationGraceMarginSeconds | int) -}}
{{- else if lt (.Values.terminationGracePeriodSeconds | int) $floor -}}
{{- fail (printf "api.terminationGracePeriodSeconds (%d) is below api.preStopSleepSeconds + api.maxWait (%d): a rollout would cut long-polls; raise it or leave it null (derived)" (.Values.terminationGracePeriodSeconds | int) $floor) -}}
{{- else -}}
{{- .Values.terminationGracePeriodSeconds | int -}}
{{- end -}}
{{- end -}}

{{/* checksum/api-tokens (see cpw.lib.checksum): unsalted, the token count only; the API re-reads its tokens
     file, so a changed token needs no roll. */}}
{{- define "cpw.api.checksum.tokens" -}}
{{- $public := set (omit .Values.auth "tokens") "tokenCount" (len (.Values.auth.tokens | default dict)) -}}
{{- include "cpw.lib.checksum" (dict "ctx" . "secret" .Values.auth "public" $public) -}}
{{- end -}}

{{/* Secret holding the token -> tenant mapping. */}}
{{- define "cpw.api.tokensSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-api-tokens" (include "cpw.lib.base" .)) -}}
{{- end -}}

{{- define "cpw.api.tokensKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKey }}{{ else }}tokens.yaml{{ end -}}
{{- end -}}

{{/* The projector's values as the shared pod helpers read them (a component's own `.Values`): its `projector`
     block, with the pod keys it does not set taken from the API's, no autoscaling and no RBAC. */}}
{{- define "cpw.api.projectorValues" -}}
{{- $v := deepCopy .Values.projector -}}
{{- range $key := list "global" "image" "imagePullSecrets" "podSecurityContext" "tmpVolume" "probes" "logLevel" -}}
{{- if not (hasKey $v $key) }}{{ $_ := set $v $key (get $.Values $key) }}{{ end -}}
{{- end -}}
{{- $_ := set $v "autoscaling" (dict "enabled" false) -}}
{{- $_ := set $v "rbac" (dict "create" false "rules" list) -}}
{{- $_ := set $v.serviceAccount "automountToken" false -}}
{{- toYaml $v -}}
{{- end -}}
