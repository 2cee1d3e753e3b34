{{/* Names, labels and the values derived from several keys, shared by every template. */}}

{{- define "kernelcube.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kernelcube.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of a component: include "kernelcube.labels" (list . "gateway") */}}
{{- define "kernelcube.labels" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kernelcube.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: kernelcube
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The labels that select a component's pods: include "kernelcube.selectorLabels" (list . "gateway") */}}
{{- define "kernelcube.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "kernelcube.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "kernelcube.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kernelcube.sandboxImage" -}}
{{- printf "%s:%s" .Values.sandbox.image.repository (default .Chart.AppVersion .Values.sandbox.image.tag) -}}
{{- end -}}

{{/* The namespaces sandboxes live in, as a JSON list (use with fromJsonArray). */}}
{{- define "kernelcube.sandboxNamespaces" -}}
{{- if .Values.sandboxNamespaces.list -}}
{{- uniq .Values.sandboxNamespaces.list | toJson -}}
{{- else -}}
{{- list .Release.Namespace | toJson -}}
{{- end -}}
{{- end -}}

{{/* The router identity Secret (RSA key pair signing the sandboxes' JWTs). The gateway or the
controller creates it at run time, whichever starts first; the chart never renders it, so an
upgrade never replaces the key that running sandboxes trust. */}}
{{- define "kernelcube.identitySecret" -}}picod-router-identity{{- end -}}

{{- define "kernelcube.tokenSecretName" -}}
{{- default (printf "%s-token" (include "kernelcube.fullname" .)) .Values.gateway.auth.existingSecret -}}
{{- end -}}

{{- define "kernelcube.redisSecretName" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- printf "%s-redis" (include "kernelcube.fullname" .) -}}
{{- else -}}
{{- .Values.redis.external.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "kernelcube.redisPasswordKey" -}}
{{- if .Values.redis.bundled.enabled -}}password{{- else -}}{{ .Values.redis.external.passwordKey }}{{- end -}}
{{- end -}}

{{/* The Redis URL the gateway and the controller use. With a password it contains
$(REDIS_PASSWORD), which Kubernetes expands from the container's REDIS_PASSWORD variable (read
from a Secret), so the password never appears in a rendered manifest. */}}
{{- define "kernelcube.redisUrl" -}}
{{- $url := "" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- $url = printf "redis://%s-redis:6379/0" (include "kernelcube.fullname" .) -}}
{{- else -}}
{{- $url = required "redis.external.url is required when redis.bundled.enabled is false" .Values.redis.external.url -}}
{{- if not (regexMatch "^rediss?://[^/@]+(/[0-9]+)?$" $url) -}}
{{- fail (printf "redis.external.url %q: expected redis://host:port/db or rediss://host:port/db, without a password (put it in redis.external.existingSecret)" $url) -}}
{{- end -}}
{{- end -}}
{{- if include "kernelcube.redisSecretName" . -}}
{{- $parts := splitn "://" 2 $url -}}
{{- $url = printf "%s://:$(REDIS_PASSWORD)@%s" $parts._0 $parts._1 -}}
{{- end -}}
{{- $url -}}
{{- end -}}

{{/* The env entries that give a container the Redis URL's password (none without one). */}}
{{- define "kernelcube.redisPasswordEnv" -}}
{{- if include "kernelcube.redisSecretName" . }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "kernelcube.redisSecretName" . }}
      key: {{ include "kernelcube.redisPasswordKey" . }}
{{- end }}
{{- end -}}

{{/* A random secret value, or the one already in the cluster so upgrades keep it:
include "kernelcube.keptSecret" (dict "root" . "name" "<secret>" "key" "<key>" "value" "<given>") */}}
{{- define "kernelcube.keptSecret" -}}
{{- if .value -}}
{{- .value -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 40 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The security context of the chart's own containers. */}}
{{- define "kernelcube.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "kernelcube.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}
