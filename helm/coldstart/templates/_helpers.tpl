{{/* Names, labels and checks shared by the templates. */}}

{{- define "coldstart.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name; names of objects derive from it (63 characters at most). */}}
{{- define "coldstart.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "coldstart.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "coldstart.labels" -}}
helm.sh/chart: {{ include "coldstart.chart" . }}
{{ include "coldstart.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: coldstart
{{- end }}

{{/* The service pods' selector; the trainer's pods carry component=trainer instead. */}}
{{- define "coldstart.selectorLabels" -}}
app.kubernetes.io/name: {{ include "coldstart.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "coldstart.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "coldstart.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "coldstart.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "coldstart.trainerImage" -}}
{{- $image := .Values.trainer.image }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}

{{- define "coldstart.secretName" -}}
{{- default (include "coldstart.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "coldstart.modelsClaim" -}}
{{- default (printf "%s-models" (include "coldstart.fullname" .)) .Values.models.existingClaim }}
{{- end }}

{{/*
Seconds the kubelet waits between SIGTERM and SIGKILL. The service first drains
in-flight RPCs for up to grace_s (+1 s), then waits up to grace_s + 10 s for the consumer
to finish its batch and commit, then up to 10 s for the ingest producer to close; the
preStop sleep comes before SIGTERM; 5 s spare.
*/}}
{{- define "coldstart.terminationGracePeriodSeconds" -}}
{{- $grace := int (ceil .Values.settings.graceSeconds) }}
{{- add (mul 2 $grace) 1 10 10 5 (int .Values.preStopSleepSeconds) }}
{{- end }}

{{/*
Cross-field rules the schema does not express; each failure says which value to set.
*/}}
{{- define "coldstart.validate" -}}
{{- $kafka := .Values.kafka }}
{{- $_ := required "kafka.bootstrap is required: the Kafka bootstrap servers (host:port[,host:port]); without it the service would start an embedded broker" $kafka.bootstrap }}
{{- $_ := required "redis.url is required: redis://host:port/db or rediss:// for TLS; without it the service would start an embedded Redis" .Values.redis.url }}
{{- if regexMatch "^rediss?://[^/@]*:[^/@]*@" .Values.redis.url }}
{{- fail "redis.url must not carry a password (it would be stored in a ConfigMap): set redis.password or existingSecret" }}
{{- end }}
{{- if and (hasPrefix "SASL_" $kafka.securityProtocol) (not $kafka.sasl.mechanism) }}
{{- fail (printf "kafka.sasl.mechanism is required with kafka.securityProtocol %s (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)" $kafka.securityProtocol) }}
{{- end }}
{{- if and (hasPrefix "SASL_" $kafka.securityProtocol) (not $kafka.sasl.username) }}
{{- fail (printf "kafka.sasl.username is required with kafka.securityProtocol %s" $kafka.securityProtocol) }}
{{- end }}
{{- if and $kafka.caSecret (not (hasSuffix "SSL" $kafka.securityProtocol)) }}
{{- fail "kafka.caSecret is set but kafka.securityProtocol is neither SSL nor SASL_SSL" }}
{{- end }}
{{- if and .Values.redis.caSecret (not (hasPrefix "rediss://" .Values.redis.url)) }}
{{- fail "redis.caSecret is set but redis.url is not rediss:// (TLS)" }}
{{- end }}
{{- if and .Values.grpc.tls.enabled (not .Values.grpc.tls.secretName) }}
{{- fail "grpc.tls.secretName is required when grpc.tls.enabled: a kubernetes.io/tls Secret (tls.crt, tls.key; ca.crt with clientCA)" }}
{{- end }}
{{- if eq (int .Values.grpc.port) (int .Values.metrics.port) }}
{{- fail "grpc.port and metrics.port must differ" }}
{{- end }}
{{- if .Values.trainer.enabled }}
{{- $_ := required "trainer.data.existingClaim is required when trainer.enabled: the PVC holding the training data" .Values.trainer.data.existingClaim }}
{{- end }}
{{- end }}

{{/* The pods run as the image's numeric non-root user; fsGroup lets it read the mounted
secrets and lets the trainer write the models volume. */}}
{{- define "coldstart.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Every container: no privilege escalation, no capabilities, a read-only root
filesystem (the image writes only to /tmp, an emptyDir). */}}
{{- define "coldstart.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The probe action: the grpc.health.v1 service, or a TCP connect when gRPC speaks TLS
(the kubelet's gRPC probe has no TLS). */}}
{{- define "coldstart.probe" -}}
{{- if .Values.grpc.tls.enabled -}}
tcpSocket:
  port: grpc
{{- else -}}
grpc:
  port: {{ int64 .Values.grpc.port }}
{{- end }}
{{- end }}
