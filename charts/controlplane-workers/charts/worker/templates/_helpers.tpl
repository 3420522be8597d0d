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
