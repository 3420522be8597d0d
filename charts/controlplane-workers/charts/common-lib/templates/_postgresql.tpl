{{/*
The PostgreSQL operation store (global.operationStore.type: postgresql): the API answers from PostgreSQL and the
projector (`cpw indexer`) writes it. Both read the DSN from a file of a mounted Secret (CPW_POSTGRES_URL_FILE),
never from an env value.

Sources of the DSN Secret, in order (global.postgresql):
  cluster.enabled  -> the CloudNativePG operator's "<cluster>-app" Secret, key uri.
  existingSecret   -> that Secret, key existingSecretKey.
*/}}

{{/* "stream" or "postgresql". Takes the root context. */}}
{{- define "cpw.lib.operationStore" -}}
{{- (((.Values.global | default dict).operationStore | default dict).type) | default "stream" -}}
{{- end -}}

{{- define "cpw.lib.postgresql.values" -}}
{{- toYaml ((.Values.global | default dict).postgresql | default dict) -}}
{{- end -}}

{{- define "cpw.lib.postgresql.clusterName" -}}
{{- $p := include "cpw.lib.postgresql.values" . | fromYaml -}}
{{- (($p.cluster | default dict).name) | default (printf "%s-postgresql" (include "cpw.lib.base" .)) | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "cpw.lib.postgresql.secretName" -}}
{{- $p := include "cpw.lib.postgresql.values" . | fromYaml -}}
{{- if ($p.cluster | default dict).enabled -}}
{{- printf "%s-app" (include "cpw.lib.postgresql.clusterName" .) -}}
{{- else -}}
{{- $p.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "cpw.lib.postgresql.urlKey" -}}
{{- $p := include "cpw.lib.postgresql.values" . | fromYaml -}}
{{- if ($p.cluster | default dict).enabled -}}uri{{- else -}}{{ $p.existingSecretKey | default "url" }}{{- end -}}
{{- end -}}

{{/* Fail early, naming the value to set, when the PostgreSQL store has no DSN Secret. */}}
{{- define "cpw.lib.postgresql.validate" -}}
{{- if eq (include "cpw.lib.operationStore" .) "postgresql" -}}
{{- $p := include "cpw.lib.postgresql.values" . | fromYaml -}}
{{- $cluster := ($p.cluster | default dict).enabled -}}
{{- if and $cluster $p.existingSecret -}}
{{- fail "global.postgresql.cluster.enabled wires the CloudNativePG operator's <cluster>-app Secret: leave global.postgresql.existingSecret empty" -}}
{{- end -}}
{{- if not (or $cluster $p.existingSecret) -}}
{{- fail "global.operationStore.type postgresql needs the DSN: set global.postgresql.existingSecret (a Secret whose key global.postgresql.existingSecretKey holds postgresql://user:password@host:5432/db) or global.postgresql.cluster.enabled (a CloudNativePG Cluster)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "cpw.lib.postgresql.mountPath" -}}/var/run/secrets/controlplane-workers/postgresql{{- end -}}

{{/* The store's settings: CPW_API_STORE, and the DSN as a file. Takes the root context. */}}
{{- define "cpw.lib.postgresql.env" -}}
- name: CPW_API_STORE
  value: postgresql
- name: CPW_POSTGRES_URL_FILE
  value: {{ printf "%s/url" (include "cpw.lib.postgresql.mountPath" .) | quote }}
{{- end -}}

{{- define "cpw.lib.postgresql.volume" -}}
- name: postgresql
  secret:
    secretName: {{ include "cpw.lib.postgresql.secretName" . | quote }}
    defaultMode: 0440
    items:
      - key: {{ include "cpw.lib.postgresql.urlKey" . | quote }}
        path: url
{{- end -}}

{{- define "cpw.lib.postgresql.volumeMount" -}}
- name: postgresql
  mountPath: {{ include "cpw.lib.postgresql.mountPath" . }}
  readOnly: true
{{- end -}}
