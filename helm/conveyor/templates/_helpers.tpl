{{/*
Names, labels, the image, Secret references and the checks every template shares.
*/}}

{{- define "conveyor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "conveyor.fullname" -}}
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

{{- define "conveyor.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "conveyor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels never change after install (a Deployment's selector is immutable). */}}
{{- define "conveyor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "conveyor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "conveyor.serverSelectorLabels" -}}
{{ include "conveyor.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/* The image reference of {repository, tag, digest}; the tag defaults to the appVersion. */}}
{{- define "conveyor.imageRef" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "conveyor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "conveyor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret credentials come from unless an item names its own. */}}
{{- define "conveyor.credentialsSecret" -}}
{{- default (printf "%s-credentials" (include "conveyor.fullname" .)) .Values.credentials.existingSecret }}
{{- end }}

{{/* An env entry read from a Secret key: (list NAME SECRET KEY [OPTIONAL]). */}}
{{- define "conveyor.secretEnv" -}}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ index . 1 | quote }}
      key: {{ index . 2 | quote }}
      {{- if and (gt (len .) 3) (index . 3) }}
      optional: true
      {{- end }}
{{- end }}

{{/*
OpenTelemetry env of a pod, when otel.endpoint is set: (list ROOT SERVICE-NAME). The resource
names the pod, namespace and node, so a trace leads to the replica or worker that made it.
*/}}
{{- define "conveyor.otelEnv" -}}
{{- $o := (index . 0).Values.otel }}
{{- if $o.endpoint }}
{{- if regexMatch "://[^/@\\s]+:[^/@\\s]*@" $o.endpoint }}
{{- fail "otel.endpoint holds a password: put collector credentials in a Secret (server.extraEnv, OTEL_EXPORTER_OTLP_HEADERS)" }}
{{- end }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $o.endpoint | quote }}
{{- with $o.protocol }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ . | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ index . 1 | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),k8s.node.name=$(NODE_NAME)%s" (ternary (printf ",%s" $o.resourceAttributes) "" (ne $o.resourceAttributes "")) | quote }}
{{- end }}
{{- end }}

{{/* The service name traces carry: otel.serviceName, else the fullname. */}}
{{- define "conveyor.otelServiceName" -}}
{{- default (include "conveyor.fullname" .) .Values.otel.serviceName }}
{{- end }}

{{/* The gRPC address workers dial: workers.addr, else this release's Service. */}}
{{- define "conveyor.workerAddr" -}}
{{- if .Values.workers.addr }}
{{- .Values.workers.addr }}
{{- else }}
{{- printf "%s://%s.%s.svc:%d" (ternary "https" "http" .Values.tls.enabled) (include "conveyor.fullname" .) .Release.Namespace (int .Values.server.grpcPort) }}
{{- end }}
{{- end }}

{{/*
The server's grace period: the drain wait, the shutdown timeout and the margin for the history
flush and exit. Built from its parts so it cannot be too short.
*/}}
{{- define "conveyor.serverGrace" -}}
{{- $s := .Values.server }}
{{- add $s.drainWaitSeconds $s.shutdownTimeoutSeconds $s.shutdownMarginSeconds }}
{{- end }}

{{/*
Names that hold credentials, which must come from a Secret (valueFrom), never from values or a
ConfigMap. values.schema.json refuses them first; this is the same rule for `--skip-schema`.
*/}}
{{- define "conveyor.credentialPattern" -}}
(^|_)(URL|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIALS?|HEADERS)($|_)|(^|_)KEY(_ID)?$
{{- end }}

{{/* Settings whose names look like credentials but hold file paths. */}}
{{- define "conveyor.pathSettings" -}}
CONVEYOR_TLS_KEY CONVEYOR_CLIENT_KEY
{{- end }}

{{/* Fails when a ConfigMap entry or a plain env value has a credential-like name: (list WHERE MAP-or-ENVLIST). */}}
{{- define "conveyor.refuseCredentials" -}}
{{- $where := index . 0 }}
{{- $pattern := include "conveyor.credentialPattern" . }}
{{- $paths := splitList " " (include "conveyor.pathSettings" .) }}
{{- $items := index . 1 }}
{{- if kindIs "map" $items }}
{{- range $name, $_ := $items }}
{{- if and (regexMatch $pattern $name) (not (has $name $paths)) }}
{{- fail (printf "%s.%s looks like a credential: put it in a Secret, never in values" $where $name) }}
{{- end }}
{{- end }}
{{- else }}
{{- range $items }}
{{- if and (regexMatch $pattern (toString .name)) (not (has (toString .name) $paths)) (hasKey . "value") }}
{{- fail (printf "%s: %s looks like a credential: use valueFrom.secretKeyRef, never value" $where .name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
