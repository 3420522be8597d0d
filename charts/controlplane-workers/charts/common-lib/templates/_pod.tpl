{{/*
Pod building blocks: image, pull secrets, security contexts, scheduling, probes, /tmp.
*/}}

{{/* Image reference: [global.imageRegistry/]repository then @digest, else :tag, else :appVersion.
     Takes (dict "ctx" $ "image" .Values.image). */}}
{{- define "cpw.lib.image" -}}
{{- $img := .image -}}
{{- $reg := (.ctx.Values.global | default dict).imageRegistry | default "" -}}
{{- $repo := $img.repository -}}
{{- if $reg -}}{{- $repo = printf "%s/%s" (trimSuffix "/" $reg) $repo -}}{{- end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (toString (default .ctx.Chart.AppVersion $img.tag)) -}}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets from global.imagePullSecrets and the chart's imagePullSecrets (names or {name}). */}}
{{- define "cpw.lib.imagePullSecrets" -}}
{{- $names := list -}}
{{- range (concat ((.Values.global | default dict).imagePullSecrets | default list) (.Values.imagePullSecrets | default list)) -}}
{{- if kindIs "map" . }}{{ $names = append $names .name }}{{ else }}{{ $names = append $names . }}{{ end -}}
{{- end -}}
{{- with ($names | uniq) }}
imagePullSecrets:
{{- range . }}
  - name: {{ . | quote }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* Pod securityContext meeting Pod Security Standards "restricted". Takes .Values.podSecurityContext. */}}
{{- define "cpw.lib.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser | int64 }}
runAsGroup: {{ .runAsGroup | int64 }}
fsGroup: {{ .fsGroup | int64 }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container securityContext meeting "restricted": fixed, not configurable. Takes .Values.podSecurityContext. */}}
{{- define "cpw.lib.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser | int64 }}
runAsGroup: {{ .runAsGroup | int64 }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The only writable path: an emptyDir on /tmp (volume part). Takes .Values.tmpVolume. */}}
{{- define "cpw.lib.tmpVolume" -}}
- name: tmp
  emptyDir:
    {{- if .medium }}
    medium: {{ .medium }}
    {{- end }}
    sizeLimit: {{ .sizeLimit | default "256Mi" }}
{{- end -}}

{{- define "cpw.lib.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Fill a missing labelSelector of a pod (anti-)affinity term with the component's selector labels. */}}
{{- define "cpw.lib._fillTerm" -}}
{{- if not (hasKey .term "labelSelector") -}}
{{- $_ := set .term "labelSelector" (dict "matchLabels" (include "cpw.lib.selectorLabels" .sel | fromYaml)) -}}
{{- end -}}
{{- end -}}

{{/* affinity: the user's .Values.affinity (podAntiAffinity terms without labelSelector get the component's
     selector, so the seed's `- topologyKey: kubernetes.io/hostname` means "spread this component"), else the
     podAntiAffinityPreset (soft | hard | none) on kubernetes.io/hostname.
     Takes (dict "ctx" $ "component" "worker"). */}}
{{- define "cpw.lib.affinity" -}}
{{- $v := .ctx.Values -}}
{{- $sel := dict "ctx" .ctx "component" .component -}}
{{- if $v.affinity -}}
{{- $aff := deepCopy $v.affinity -}}
{{- range $kind := list "podAntiAffinity" "podAffinity" -}}
{{- with (get $aff $kind) -}}
{{- range (get . "requiredDuringSchedulingIgnoredDuringExecution" | default list) -}}
{{- include "cpw.lib._fillTerm" (dict "term" . "sel" $sel) -}}
{{- end -}}
{{- range (get . "preferredDuringSchedulingIgnoredDuringExecution" | default list) -}}
{{- include "cpw.lib._fillTerm" (dict "term" .podAffinityTerm "sel" $sel) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $aff -}}
{{- else if eq ($v.podAntiAffinityPreset | default "soft") "soft" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "cpw.lib.selectorLabels" $sel | nindent 12 }}
{{- else if eq $v.podAntiAffinityPreset "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "cpw.lib.selectorLabels" $sel | nindent 10 }}
{{- end -}}
{{- end -}}

{{/* topologySpreadConstraints: the user's list (missing labelSelector filled), else the zone preset
     topologySpreadPreset (soft = ScheduleAnyway | hard = DoNotSchedule | none). Takes (dict "ctx" $ "component" ..). */}}
{{- define "cpw.lib.topologySpread" -}}
{{- $v := .ctx.Values -}}
{{- $sel := dict "ctx" .ctx "component" .component -}}
{{- $out := list -}}
{{- if $v.topologySpreadConstraints -}}
{{- range $c := (deepCopy $v.topologySpreadConstraints) -}}
{{- include "cpw.lib._fillTerm" (dict "term" $c "sel" $sel) -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- else if has ($v.topologySpreadPreset | default "soft") (list "soft" "hard") -}}
{{- $out = list (dict "maxSkew" 1 "topologyKey" "topology.kubernetes.io/zone" "whenUnsatisfiable" (ternary "DoNotSchedule" "ScheduleAnyway" (eq $v.topologySpreadPreset "hard")) "labelSelector" (dict "matchLabels" (include "cpw.lib.selectorLabels" $sel | fromYaml))) -}}
{{- end -}}
{{- with $out }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/* Scheduling block of a pod spec: affinity, spread, nodeSelector, tolerations, priorityClassName. */}}
{{- define "cpw.lib.scheduling" -}}
{{- $v := .ctx.Values -}}
{{- with (include "cpw.lib.affinity" . | trim) }}
affinity:
  {{- . | nindent 2 }}
{{- end }}
{{- with (include "cpw.lib.topologySpread" . | trim) }}
topologySpreadConstraints:
  {{- . | nindent 2 }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($v.priorityClassName | default ((.ctx.Values.global | default dict).priorityClassName)) }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Startup, liveness and readiness probes on the ops port (named "ops", 8001). Takes .Values.probes. */}}
{{- define "cpw.lib.probes" -}}
startupProbe:
  httpGet:
    path: /health/live
    port: ops
  periodSeconds: {{ .startup.periodSeconds }}
  timeoutSeconds: {{ .startup.timeoutSeconds }}
  failureThreshold: {{ .startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /health/live
    port: ops
  periodSeconds: {{ .liveness.periodSeconds }}
  timeoutSeconds: {{ .liveness.timeoutSeconds }}
  failureThreshold: {{ .liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /health/ready
    port: ops
  periodSeconds: {{ .readiness.periodSeconds }}
  timeoutSeconds: {{ .readiness.timeoutSeconds }}
  failureThreshold: {{ .readiness.failureThreshold }}
{{- end -}}

{{/* The ops container port, on both images. */}}
{{- define "cpw.lib.opsPort" -}}
- name: ops
  containerPort: 8001
  protocol: TCP
{{- end -}}

{{/* A preStop sleep of N seconds (nothing for 0): the pod keeps serving while Services and ingress controllers
     drop its endpoint, then gets SIGTERM. An exec of the image's python, not `lifecycle.preStop.sleep`: that
     action is alpha (off) on Kubernetes 1.29, which the chart supports, and the images need no `sleep` binary.
     Takes the seconds. */}}
{{- define "cpw.lib.preStopSleep" -}}
{{- if gt (. | int) 0 }}
lifecycle:
  preStop:
    exec:
      command: ["python", "-c", "import time; time.sleep({{ . | int }})"]
{{- end }}
{{- end -}}
