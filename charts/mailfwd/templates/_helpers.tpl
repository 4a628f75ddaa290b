{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "mailfwd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: the release name, plus the chart name
unless the release name already contains it. Truncated to leave room for the
longest suffix ("-ingress-metrics", 16 characters) within 63.
*/}}
{{- define "mailfwd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mailfwd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "mailfwd.labels" -}}
helm.sh/chart: {{ include "mailfwd.chart" . }}
app.kubernetes.io/name: {{ include "mailfwd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mailfwd
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "ingress"). */}}
{{- define "mailfwd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailfwd.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's resources: (dict "ctx" $ "component" "ingress"). */}}
{{- define "mailfwd.componentLabels" -}}
{{ include "mailfwd.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mailfwd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mailfwd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mailfwd.ctlServiceAccountName" -}}
{{- printf "%s-ctl" (include "mailfwd.fullname" .) }}
{{- end }}

{{/* Name of the policy ConfigMap mounted into the pods. */}}
{{- define "mailfwd.policyConfigMap" -}}
{{- default (printf "%s-policy" (include "mailfwd.fullname" .)) .Values.policy.existingConfigMap }}
{{- end }}

{{/* Name of the policy Secret (users, authinfo, dkim) projected into the policy directory. */}}
{{- define "mailfwd.policySecret" -}}
{{- default (printf "%s-policy-secret" (include "mailfwd.fullname" .)) .Values.policy.existingSecret }}
{{- end }}

{{/* Host names of this mail system for the worker's loop detection (--local-name):
the ingress Service's DNS names, ingress.hostname, worker.heloName, worker.localNames. */}}
{{- define "mailfwd.localNames" -}}
{{- $svc := printf "%s-ingress" (include "mailfwd.fullname" .) }}
{{- $ns := .Release.Namespace }}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) }}
{{- with .Values.clusterDomain }}{{ $names = append $names (printf "%s.%s.svc.%s" $svc $ns (trimSuffix "." .)) }}{{ end }}
{{- $names = append $names (include "mailfwd.ingressHostname" .) }}
{{- $h := include "mailfwd.heloName" . }}{{ if not (has $h $names) }}{{ $names = append $names $h }}{{ end }}
{{- range .Values.worker.localNames }}{{ $names = append $names . }}{{ end }}
{{- join "," (uniq $names) }}
{{- end }}

{{/* Name of the Secret with the S3 credentials. */}}
{{- define "mailfwd.s3Secret" -}}
{{- default (printf "%s-s3" (include "mailfwd.fullname" .)) .Values.s3.existingSecret }}
{{- end }}

{{- define "mailfwd.s3AccessKeyKey" -}}
{{- if .Values.s3.existingSecret }}{{ .Values.s3.existingSecretKeys.accessKeyId }}{{ else }}AWS_ACCESS_KEY_ID{{ end }}
{{- end }}

{{- define "mailfwd.s3SecretKeyKey" -}}
{{- if .Values.s3.existingSecret }}{{ .Values.s3.existingSecretKeys.secretAccessKey }}{{ else }}AWS_SECRET_ACCESS_KEY{{ end }}
{{- end }}

{{/* Image reference of one component: (dict "ctx" $ "name" .Values.image.ingress). */}}
{{- define "mailfwd.image" -}}
{{- if not .ctx.Values.image.registry }}
{{- fail "image.registry is required: the registry you pushed the release's image archives to (there is no public one; see docs/releases.md), e.g. --set image.registry=registry.example.com/mailfwd" }}
{{- end }}
{{- $tag := default .ctx.Chart.AppVersion .ctx.Values.image.tag }}
{{- printf "%s/%s:%s" (trimSuffix "/" .ctx.Values.image.registry) .name $tag }}
{{- end }}

{{/* The body store URL (no credentials: those come from the Secret as env). */}}
{{- define "mailfwd.blobStore" -}}
{{- $s3 := .Values.s3 }}
{{- $path := $s3.bucket }}
{{- with $s3.prefix }}{{ $path = printf "%s/%s" $path (trimPrefix "/" .) }}{{ end }}
{{- $q := printf "endpoint=%s&secure=%t" (tpl $s3.endpoint .) $s3.secure }}
{{- with $s3.region }}{{ $q = printf "%s&region=%s" $q . }}{{ end }}
{{- printf "s3://%s?%s" $path $q }}
{{- end }}

{{- define "mailfwd.natsURL" -}}
{{- tpl .Values.nats.url . }}
{{- end }}

{{/* Flags shared by ingress, worker and the bootstrap Job. */}}
{{- define "mailfwd.queueArgs" -}}
- {{ printf "--nats-url=%s" (include "mailfwd.natsURL" .) | quote }}
{{- if .Values.nats.credentials.existingSecret }}
- {{ printf "--nats-creds=/etc/mailfwd/nats/%s" .Values.nats.credentials.key | quote }}
{{- end }}
- {{ printf "--blob-store=%s" (include "mailfwd.blobStore" .) | quote }}
- {{ printf "--replicas=%v" .Values.queue.replicas | quote }}
- {{ printf "--ack-wait=%s" .Values.queue.ackWait | quote }}
{{- end }}

{{/* NATS login of one component: (dict "ctx" . "role" "ingress"|"worker"|"ctl").
The user name and the password from the Secret go into the environment
(the binaries read MAILFWD_NATS_USER and MAILFWD_NATS_PASSWORD), not into args.
A creds file (nats.credentials.existingSecret) replaces the user logins. */}}
{{- define "mailfwd.natsEnv" -}}
{{- $a := .ctx.Values.nats.auth }}
{{- if and $a.existingSecret (not .ctx.Values.nats.credentials.existingSecret) }}
{{- $u := index $a .role -}}
- name: MAILFWD_NATS_USER
  value: {{ $u.user | quote }}
- name: MAILFWD_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $a.existingSecret }}
      key: {{ $u.passwordKey }}
{{- end }}
{{- end }}

{{/* Tracing: the OTLP endpoint for the ingress and the workers. */}}
{{- define "mailfwd.otelEnv" -}}
{{- with .Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ tpl . $ | quote }}
{{- end }}
{{- end }}

{{/* Environment shared by every container: S3 credentials from the Secret. */}}
{{- define "mailfwd.s3Env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "mailfwd.s3Secret" . }}
      key: {{ include "mailfwd.s3AccessKeyKey" . }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "mailfwd.s3Secret" . }}
      key: {{ include "mailfwd.s3SecretKeyKey" . }}
{{- end }}

{{/* Volumes shared by ingress and worker: /tmp, policy, NATS credentials. */}}
{{- define "mailfwd.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
# The ConfigMap and the policy Secret as one directory: the kubelet swaps both
# atomically (..data), so the hot reload sees one consistent policy. The Secret
# is optional: without it the pods start with the ConfigMap's keys only.
- name: policy
  projected:
    sources:
      - configMap:
          name: {{ include "mailfwd.policyConfigMap" . }}
      - secret:
          name: {{ include "mailfwd.policySecret" . }}
          optional: true
    defaultMode: 0440
{{- if .Values.nats.credentials.existingSecret }}
- name: nats-creds
  secret:
    secretName: {{ .Values.nats.credentials.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.nats.credentials.key }}
        path: {{ .Values.nats.credentials.key }}
{{- end }}
{{- end }}

{{- define "mailfwd.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: policy
  mountPath: /etc/mailfwd/policy
  readOnly: true
{{- if .Values.nats.credentials.existingSecret }}
- name: nats-creds
  mountPath: /etc/mailfwd/nats
  readOnly: true
{{- end }}
{{- end }}

{{/* Probes on the health port: (dict "probe" .Values.ingress.readinessProbe "path" "/readyz"). */}}
{{- define "mailfwd.probe" -}}
httpGet:
  path: {{ .path }}
  port: http
{{- range $k, $v := .probe }}
{{ $k }}: {{ $v }}
{{- end }}
{{- end }}

{{/* Topology spread constraints with the component's selector filled in. */}}
{{- define "mailfwd.topologySpread" -}}
{{- $sel := include "mailfwd.selectorLabels" (dict "ctx" .ctx "component" .component) | fromYaml }}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $sel) }}
{{- end }}
- {{ toYaml $c | indent 2 | trim }}
{{- end }}
{{- end }}

{{/* Validation of combinations the schema cannot express. */}}
{{- define "mailfwd.validate" -}}
{{- if and (not .Values.s3.existingSecret) (or (not .Values.s3.accessKeyId) (not .Values.s3.secretAccessKey)) }}
{{- fail "s3: set s3.existingSecret, or both s3.accessKeyId and s3.secretAccessKey" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret)" }}
{{- end }}
{{- $i := .Values.ingress }}
{{- if and (or $i.submission.enabled $i.smtps.enabled) (not .Values.tls.enabled) }}
{{- fail "ingress.submission.enabled and ingress.smtps.enabled need tls.enabled and tls.secretName (AUTH is offered only over TLS)" }}
{{- end }}
{{- $ports := list (int $i.containerPort) (int $i.httpPort) }}
{{- if $i.submission.enabled }}{{ $ports = append $ports (int $i.submission.containerPort) }}{{ end }}
{{- if $i.smtps.enabled }}{{ $ports = append $ports (int $i.smtps.containerPort) }}{{ end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail "ingress: containerPort, httpPort, submission.containerPort and smtps.containerPort must differ" }}
{{- end }}
{{- $ca := .Values.worker.tls.caBundle }}
{{- if and $ca.secretName $ca.configMapName }}
{{- fail "worker.tls.caBundle: set secretName or configMapName, not both" }}
{{- end }}
{{- if and .Values.keda.enabled .Values.worker.autoscaling.enabled }}
{{- fail "keda.enabled and worker.autoscaling.enabled both create an HPA for the workers: enable one" }}
{{- end }}
{{- end }}

{{/* The mail system's host name (.Values.hostname): required, fully qualified.
Pod names make a non-FQDN EHLO that internet MX hosts refuse or score down, and
a banner no one can resolve; so the chart does not install without it. */}}
{{- define "mailfwd.hostname" -}}
{{- $h := .Values.hostname | default "" | trimSuffix "." -}}
{{- if not $h -}}
{{- fail "hostname is required: the fully qualified name of this mail system, used in the ingress banner, EHLO towards destinations and Received: headers (e.g. --set hostname=mail.example.com); it should resolve and match the reverse DNS of the outbound address" -}}
{{- end -}}
{{- if not (regexMatch "^([a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?\\.)+[a-zA-Z]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?$" $h) -}}
{{- fail (printf "hostname %q is not a fully qualified domain name (want e.g. mail.example.com)" $h) -}}
{{- end -}}
{{- $h -}}
{{- end -}}

{{/* Banner and Received: name: ingress.hostname, else hostname. */}}
{{- define "mailfwd.ingressHostname" -}}
{{- .Values.ingress.hostname | default (include "mailfwd.hostname" .) -}}
{{- end -}}

{{/* EHLO name of the workers: worker.heloName, else hostname. */}}
{{- define "mailfwd.heloName" -}}
{{- .Values.worker.heloName | default (include "mailfwd.hostname" .) -}}
{{- end -}}
