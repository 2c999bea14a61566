{{/*
The chart's name.
*/}}
{{- define "realtime-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The objects' name: the release name when it contains the chart name.
*/}}
{{- define "realtime-relay.fullname" -}}
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

{{- define "realtime-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object. app.kubernetes.io/name is also the Prometheus job
(the ServiceMonitor's jobLabel), which the rules and the dashboard select on.
*/}}
{{- define "realtime-relay.labels" -}}
{{ include "realtime-relay.baseLabels" . }}
app.kubernetes.io/component: relay
{{- end }}

{{/*
Labels of the PrometheusRule and the dashboard (as in deploy/monitoring).
*/}}
{{- define "realtime-relay.monitoringLabels" -}}
{{ include "realtime-relay.baseLabels" . }}
app.kubernetes.io/component: monitoring
{{- end }}

{{- define "realtime-relay.baseLabels" -}}
helm.sh/chart: {{ include "realtime-relay.chart" . }}
{{ include "realtime-relay.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "realtime-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "realtime-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "realtime-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "realtime-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "realtime-relay.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The relay's configuration file: config, plus what the chart owns.
*/}}
{{- define "realtime-relay.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $listen := dict "host" "0.0.0.0" "port" (int .Values.ports.http) }}
{{- with .Values.tls.secretName }}
{{- $tls := dict "cert_file" "/etc/realtime-relay-tls/tls.crt" "key_file" "/etc/realtime-relay-tls/tls.key" }}
{{- with $.Values.tls.reloadInterval }}
{{- $_ := set $tls "reload_interval" . }}
{{- end }}
{{- if $.Values.tls.clientCASecretName }}
{{- $_ := set $tls "client_ca_file" (printf "/etc/realtime-relay-client-ca/%s" $.Values.tls.clientCAKey) }}
{{- end }}
{{- $_ := set $listen "tls" $tls }}
{{- end }}
{{- $_ := set $config "listen" $listen }}
{{- $_ := set $config "metrics" (dict "host" "0.0.0.0" "port" (int .Values.ports.metrics)) }}
{{- $_ := set $config "clients" .Values.clients }}
{{- if .Values.policies }}
{{- $_ := set $config "policies" .Values.policies }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
drain.grace_seconds of the configuration, rounded up (the relay's default: 600).
*/}}
{{- define "realtime-relay.drainGrace" -}}
{{- $drain := .Values.config.drain | default dict }}
{{- if hasKey $drain "grace_seconds" }}
{{- $drain.grace_seconds | ceil | int }}
{{- else }}
{{- 600 }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop hook waits up to grace + 15 s for
the drain (relay/service/app.py), then the relay needs a moment to exit.
*/}}
{{- define "realtime-relay.terminationGracePeriodSeconds" -}}
{{- $grace := include "realtime-relay.drainGrace" . | int }}
{{- $minimum := add $grace 25 }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $grace 30 }}
{{- else }}
{{- $value := .Values.terminationGracePeriodSeconds | int }}
{{- if lt $value $minimum }}
{{- fail (printf "terminationGracePeriodSeconds %d is too short: the preStop hook waits up to config.drain.grace_seconds + 15 s for the drain and the relay then needs time to exit; use at least %d (or leave it empty)" $value $minimum) }}
{{- end }}
{{- $value }}
{{- end }}
{{- end }}

{{/*
Average sessions per pod the HPA aims for: 70 % of limits.max_sessions.
*/}}
{{- define "realtime-relay.targetSessions" -}}
{{- if kindIs "invalid" .Values.autoscaling.targetSessionsPerPod }}
{{- $limits := .Values.config.limits | default dict }}
{{- $max := 500 }}
{{- if hasKey $limits "max_sessions" }}
{{- $max = $limits.max_sessions | int }}
{{- end }}
{{- max 1 (div (mul $max 7) 10) }}
{{- else }}
{{- .Values.autoscaling.targetSessionsPerPod | int }}
{{- end }}
{{- end }}

{{/*
Every api_key_env the configuration names.
*/}}
{{- define "realtime-relay.apiKeyEnvs" -}}
{{- $names := list }}
{{- $upstreams := list }}
{{- with .Values.config.upstream }}
{{- $upstreams = append $upstreams . }}
{{- end }}
{{- range $name, $deployment := (.Values.config.deployments | default dict) }}
{{- range (($deployment | default dict).upstreams | default list) }}
{{- $upstreams = append $upstreams . }}
{{- end }}
{{- end }}
{{- range $upstreams }}
{{- $auth := .auth | default dict }}
{{- if eq (toString $auth.type) "api_key" }}
{{- $names = append $names (toString $auth.api_key_env) }}
{{- end }}
{{- end }}
{{- toJson (uniq $names) }}
{{- end }}

{{/*
Refuse values that would render a relay that cannot start.
*/}}
{{- define "realtime-relay.validate" -}}
{{- $provided := list }}
{{- if .Values.azure.existingSecret }}
{{- $provided = append $provided .Values.azure.apiKeyEnv }}
{{- end }}
{{- range .Values.extraEnv }}
{{- $provided = append $provided .name }}
{{- end }}
{{- range (include "realtime-relay.apiKeyEnvs" . | fromJsonArray) }}
{{- if not (has . $provided) }}
{{- fail (printf "config names api_key_env %s, which nothing provides: set azure.existingSecret (with azure.apiKeyEnv: %s) or add it to extraEnv from a Secret" . .) }}
{{- end }}
{{- end }}
{{- if eq (int .Values.ports.http) (int .Values.ports.metrics) }}
{{- fail "ports.http and ports.metrics must differ" }}
{{- end }}
{{- if and .Values.tls.clientCASecretName (not .Values.tls.secretName) }}
{{- fail "tls.clientCASecretName needs tls.secretName: client certificates are a part of TLS" }}
{{- end }}
{{- end }}

{{/*
A probe of .Values, adapted to the listener: on port http, scheme HTTPS with
tls.secretName; on port metrics with tls.clientCASecretName (the kubelet
presents no client certificate; the relay serves /livez and /readyz there too).
Call with (dict "root" $ "probe" .Values.startupProbe).
*/}}
{{- define "realtime-relay.probe" -}}
{{- $probe := deepCopy .probe }}
{{- $values := .root.Values }}
{{- if and $values.tls.secretName (hasKey $probe "httpGet") }}
{{- if eq (toString $probe.httpGet.port) "http" }}
{{- if $values.tls.clientCASecretName }}
{{- $_ := set $probe.httpGet "port" "metrics" }}
{{- else }}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $probe }}
{{- end }}
