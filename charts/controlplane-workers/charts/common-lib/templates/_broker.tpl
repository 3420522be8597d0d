{{/*
RabbitMQ wiring shared by the worker and the API: which Secret holds the broker URLs, how it is mounted
as files (credentials never reach env vars), and the CPW_* settings both processes read.

Sources of the broker Secret, in order (global.rabbitmq):
  cluster.enabled  -> the RabbitmqCluster operator's "<cluster>-default-user" Secret; key connection_string
                      is mounted as the file "url". KEDA authenticates with its username/password keys.
  existingSecret   -> that Secret; keys existingSecretKeys.url / existingSecretKeys.managementUrl.
  url              -> a Secret the chart makes, "<base>-rabbitmq", keys url and management-url.
  (none)           -> a Secret "<base>-rabbitmq" with key url that you create before installing.
*/}}

{{- define "cpw.lib.rabbitmq.values" -}}
{{- toYaml ((.Values.global | default dict).rabbitmq | default dict) -}}
{{- end -}}

{{/* global.broker with the defaults filled in (the umbrella documents them; these serve a subchart installed
alone) and `auto` resolved: with the chart's operator cluster of 2+ nodes the jobs queue is quorum, and the
streams are created on every node. */}}
{{- define "cpw.lib.broker" -}}
{{- $d := dict "jobsQueue" "provider.jobs" "exchange" "provider.exchange" "resultsStream" "provider.results" "resultsMaxAge" "24h" "jobMaxDelay" 86400 "queueType" "auto" "deliveryLimit" 20 "streamReplicas" "auto" -}}
{{- $b := deepCopy ((.Values.global | default dict).broker | default dict) -}}
{{- range $k, $v := $d }}{{ if not (hasKey $b $k) }}{{ $_ := set $b $k $v }}{{ end }}{{ end -}}{{/* not merge: it takes 0 for unset */}}
{{- $dl := deepCopy ($b.deadLetter | default dict) -}}
{{- range $k, $v := (dict "maxLength" 10000 "maxAge" 604800 "overflow" "drop-head") }}{{ if not (hasKey $dl $k) }}{{ $_ := set $dl $k $v }}{{ end }}{{ end -}}
{{- $_ := set $b "deadLetter" $dl -}}
{{- $c := ((include "cpw.lib.rabbitmq.values" . | fromYaml).cluster) | default dict -}}
{{- $enabled := $c.enabled | default false -}}
{{- $replicas := int (hasKey $c "replicas" | ternary $c.replicas 3) -}}
{{- if eq (toString $b.queueType) "auto" -}}
{{- $_ := set $b "queueType" (ternary "quorum" "classic" (and $enabled (ge $replicas 2))) -}}
{{- end -}}
{{- if eq (toString $b.streamReplicas) "auto" -}}
{{- $_ := set $b "streamReplicas" (ternary $replicas 0 $enabled) -}}
{{- end -}}
{{- toYaml $b -}}
{{- end -}}

{{- define "cpw.lib.rabbitmq.clusterName" -}}
{{- $r := include "cpw.lib.rabbitmq.values" . | fromYaml -}}
{{- (($r.cluster | default dict).name) | default (printf "%s-rabbitmq" (include "cpw.lib.base" .)) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the Secret that holds the broker URL. */}}
{{- define "cpw.lib.rabbitmq.secretName" -}}
{{- $r := include "cpw.lib.rabbitmq.values" . | fromYaml -}}
{{- if ($r.cluster | default dict).enabled -}}
{{- printf "%s-default-user" (include "cpw.lib.rabbitmq.clusterName" .) -}}
{{- else if $r.existingSecret -}}
{{- $r.existingSecret -}}
{{- else -}}
{{- printf "%s-rabbitmq" (include "cpw.lib.base" .) -}}
{{- end -}}
{{- end -}}

{{/* Key of the amqp URL in that Secret. */}}
{{- define "cpw.lib.rabbitmq.urlKey" -}}
{{- $r := include "cpw.lib.rabbitmq.values" . | fromYaml -}}
{{- if ($r.cluster | default dict).enabled -}}connection_string
{{- else if $r.existingSecret -}}{{ ($r.existingSecretKeys | default dict).url | default "url" }}
{{- else -}}url
{{- end -}}
{{- end -}}

{{/* Key of the management (http) URL in that Secret, or "" when the Secret has none. */}}
{{- define "cpw.lib.rabbitmq.managementKey" -}}
{{- $r := include "cpw.lib.rabbitmq.values" . | fromYaml -}}
{{- if ($r.cluster | default dict).enabled -}}
{{- else if $r.existingSecret -}}
{{- $k := $r.existingSecretKeys | default dict -}}
{{- if hasKey $k "managementUrl" }}{{ $k.managementUrl | default "" }}{{ else }}management-url{{ end -}}
{{- else if and $r.url $r.managementUrl -}}management-url
{{- end -}}
{{- end -}}

{{/* "true" when the chart makes the broker Secret itself. */}}
{{- define "cpw.lib.rabbitmq.chartMadeSecret" -}}
{{- $r := include "cpw.lib.rabbitmq.values" . | fromYaml -}}
{{- if and (not ($r.cluster | default dict).enabled) (not $r.existingSecret) $r.url -}}true{{- end -}}
{{- end -}}

{{/* Fail early, with the value to fix, on contradictory broker settings. */}}
{{- define "cpw.lib.rabbitmq.validate" -}}
{{- $r := include "cpw.lib.rabbitmq.values" . | fromYaml -}}
{{- $cluster := ($r.cluster | default dict).enabled -}}
{{- if and $cluster (or $r.url $r.existingSecret) -}}
{{- fail "global.rabbitmq.cluster.enabled wires the operator's default-user Secret: leave global.rabbitmq.url and global.rabbitmq.existingSecret empty" -}}
{{- end -}}
{{- if and $r.url $r.existingSecret -}}
{{- fail "set either global.rabbitmq.url (the chart makes the Secret) or global.rabbitmq.existingSecret, not both" -}}
{{- end -}}
{{- if and $r.url (not (regexMatch "^amqps?://" $r.url)) -}}
{{- fail (printf "global.rabbitmq.url must start with amqp:// or amqps:// (got %q)" (regexReplaceAll "//[^@/]*@" $r.url "//***@")) -}}
{{- end -}}
{{- if and $r.managementUrl (not (regexMatch "^https?://" $r.managementUrl)) -}}
{{- fail "global.rabbitmq.managementUrl must start with http:// or https:// (the management API, used by KEDA's rabbitmq trigger with protocol http)" -}}
{{- end -}}
{{- if and $r.managementUrl (not $r.url) -}}
{{- fail "global.rabbitmq.managementUrl goes into the chart-made Secret together with global.rabbitmq.url: set url too, or put both keys in global.rabbitmq.existingSecret" -}}
{{- end -}}
{{- end -}}

{{- define "cpw.lib.rabbitmq.mountPath" -}}/var/run/secrets/controlplane-workers/rabbitmq{{- end -}}

{{/* Volume holding the broker URL(s) as files. Takes the root context. */}}
{{- define "cpw.lib.rabbitmq.volume" -}}
{{- $name := include "cpw.lib.rabbitmq.secretName" . -}}
{{- $mgmt := include "cpw.lib.rabbitmq.managementKey" . -}}
- name: rabbitmq
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ $name | quote }}
          items:
            - key: {{ include "cpw.lib.rabbitmq.urlKey" . | quote }}
              path: url
      {{- if $mgmt }}
      - secret:
          name: {{ $name | quote }}
          items:
            - key: {{ $mgmt | quote }}
              path: management-url
      {{- end }}
{{- end -}}

{{- define "cpw.lib.rabbitmq.volumeMount" -}}
- name: rabbitmq
  mountPath: {{ include "cpw.lib.rabbitmq.mountPath" . }}
  readOnly: true
{{- end -}}

{{/* Settings both processes read. Takes (dict "ctx" $ "component" "worker"). */}}
{{- define "cpw.lib.commonEnv" -}}
{{- $g := .ctx.Values.global | default dict -}}
{{- $b := include "cpw.lib.broker" .ctx | fromYaml -}}
{{- $t := $g.tracing | default dict -}}
- name: CPW_RABBITMQ_URL_FILE
  value: {{ printf "%s/url" (include "cpw.lib.rabbitmq.mountPath" .ctx) | quote }}
{{- if include "cpw.lib.rabbitmq.managementKey" .ctx }}
- name: CPW_RABBITMQ_MANAGEMENT_URL_FILE
  value: {{ printf "%s/management-url" (include "cpw.lib.rabbitmq.mountPath" .ctx) | quote }}
{{- end }}
- name: CPW_WORKER_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: CPW_LOG_LEVEL
  value: {{ .ctx.Values.logLevel | quote }}
- name: CPW_HEALTH_PORT
  value: "8001"
- name: CPW_QUEUE_TYPE
  value: {{ $b.queueType | quote }}
- name: CPW_QUEUE_DELIVERY_LIMIT
  value: {{ $b.deliveryLimit | toString | quote }}
- name: CPW_STREAM_REPLICAS
  value: {{ $b.streamReplicas | toString | quote }}
- name: CPW_JOBS_QUEUE
  value: {{ $b.jobsQueue | quote }}
- name: CPW_EXCHANGE
  value: {{ $b.exchange | quote }}
- name: CPW_RESULTS_STREAM
  value: {{ $b.resultsStream | quote }}
- name: CPW_RESULTS_MAX_AGE
  value: {{ $b.resultsMaxAge | quote }}
- name: CPW_JOB_MAX_DELAY
  value: {{ $b.jobMaxDelay | toString | quote }}
- name: CPW_DLQ_MAX_LENGTH
  value: {{ $b.deadLetter.maxLength | int64 | toString | quote }}
- name: CPW_DLQ_MAX_AGE
  value: {{ $b.deadLetter.maxAge | int64 | toString | quote }}
- name: CPW_DLQ_OVERFLOW
  value: {{ $b.deadLetter.overflow | quote }}
{{- if $t.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $t.otlpEndpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $t.protocol | default "http/protobuf" | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "controlplane-workers-%s" .component | quote }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $t.samplerRatio | default 1 | toString | quote }}
{{- end }}
{{- end -}}

{{/* User extraEnv, appended last. Takes the root context. */}}
{{- define "cpw.lib.extraEnv" -}}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Port of the OTLP endpoint (explicit port, else 443 for https, 80 for http, 4317 otherwise). */}}
{{- define "cpw.lib.otlpPort" -}}
{{- $t := (.Values.global | default dict).tracing | default dict -}}
{{- if $t.otlpEndpoint -}}
{{- $u := urlParse $t.otlpEndpoint -}}
{{- $hp := splitList ":" $u.host -}}
{{- if gt (len $hp) 1 -}}{{ last $hp }}
{{- else if eq $u.scheme "https" -}}443
{{- else if eq $u.scheme "http" -}}80
{{- else -}}4317
{{- end -}}
{{- end -}}
{{- end -}}
