{{/* Worker-specific helpers; everything shared is in the common-lib library chart (cpw.lib.*). */}}

{{- define "cpw.worker.fullname" -}}
{{- include "cpw.lib.fullname" (dict "ctx" . "component" "worker") -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: the drain timeout rounded up, plus a margin. Never set on its own. */}}
{{- define "cpw.worker.terminationGracePeriodSeconds" -}}
{{- add (.Values.drainTimeout | float64 | ceil | int) (.Values.terminationGraceMarginSeconds | int) -}}
{{- end -}}

{{/* Messages per replica for the KEDA trigger: autoscaling.jobsPerReplica, else maxConcurrentJobs. */}}
{{- define "cpw.worker.jobsPerReplica" -}}
{{- if kindIs "invalid" .Values.autoscaling.jobsPerReplica -}}{{ .Values.maxConcurrentJobs | int }}{{- else -}}{{ .Values.autoscaling.jobsPerReplica | int }}{{- end -}}
{{- end -}}

{{/* One rabbitmq trigger of the ScaledObject: what every one shares (the management API, queue length, the vhost
the workers use - always explicit, else KEDA takes it from the management URL's path -, the operator's Service in
cluster mode, the one TriggerAuthentication) plus its own `metadata`. Takes (dict "ctx" $ "name" N "metadata" D). */}}
{{- define "cpw.worker.rabbitmqTrigger" -}}
{{- $r := include "cpw.lib.rabbitmq.values" .ctx | fromYaml -}}
{{- $meta := dict "protocol" "http" "mode" "QueueLength" "vhostName" ($r.vhost | default "/") -}}
{{- if ($r.cluster | default dict).enabled -}}
{{- $_ := set $meta "host" (printf "http://%s.%s.svc:15672/" (include "cpw.lib.rabbitmq.clusterName" .ctx) .ctx.Release.Namespace) -}}
{{- end -}}
- type: rabbitmq
  name: {{ .name }}
  metadata:
    {{- toYaml (merge (deepCopy .metadata) $meta) | nindent 4 }}
  authenticationRef:
    name: {{ include "cpw.worker.fullname" .ctx }}-rabbitmq
{{- end -}}

{{/* The delay queues a worker moves retries from (Topology.retry_queue: "<jobs queue>.retry.<n>", n = 2 ..
maxAttempts), as one anchored regex with the jobs queue's name quoted; "" when maxAttempts is 1 (no retries). Not
"[0-9]+": a delay queue left by a larger maxAttempts has no consumer and would keep the fleet up for nothing. */}}
{{- define "cpw.worker.retryQueuesRegex" -}}
{{- $attempts := list -}}
{{- range $n := untilStep 2 (add (.Values.maxAttempts | int) 1 | int) 1 }}{{ $attempts = append $attempts (toString $n) }}{{ end -}}
{{- if $attempts -}}
{{- printf "^%s\\.retry\\.(%s)$" (regexQuoteMeta (include "cpw.lib.broker" . | fromYaml).jobsQueue) (join "|" $attempts) -}}
{{- end -}}
{{- end -}}
