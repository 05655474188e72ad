{{/* Names and labels shared by the templates. */}}
{{- define "nexstor.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nexstor.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "nexstor.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "nexstor.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "nexstor.csiNodeImage" -}}
{{ .Values.image.csiNodeRepository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "nexstor.secretPrefix" -}}
{{- .Values.certificates.secretPrefix | default (printf "%s-certs" (include "nexstor.fullname" .)) -}}
{{- end -}}

{{/* accessPoints joined with commas, each with the port. */}}
{{- define "nexstor.accessPoints" -}}
{{- $port := .Values.port -}}
{{- $out := list -}}
{{- range .Values.accessPoints -}}
{{- if contains ":" . -}}{{- $out = append $out . -}}{{- else -}}{{- $out = append $out (printf "%s:%v" . $port) -}}{{- end -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/* Checks every template relies on. */}}
{{- define "nexstor.validate" -}}
{{- $n := len .Values.accessPoints -}}
{{- if not (has $n (list 1 3 5 7)) -}}
{{- fail (printf "accessPoints: give 1, 3, 5 or 7 storage node addresses (the management service replicas), not %d" $n) -}}
{{- end -}}
{{- if and .Values.tls.enabled .Values.certificates.generate (not .Values.certificates.hosts) -}}
{{- fail "certificates.hosts: list every address and name by which storage nodes are reached (each node's IP), for the server certificate" -}}
{{- end -}}
{{- end -}}

{{/* The pod's cert volume for a role, or nothing without TLS. */}}
{{- define "nexstor.certVolume" -}}
{{- if .root.Values.tls.enabled }}
- name: certs
  secret:
    secretName: {{ include "nexstor.secretPrefix" .root }}-{{ .role }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "nexstor.certMount" -}}
{{- if .Values.tls.enabled }}
- name: certs
  mountPath: /etc/nexstor/certs
  readOnly: true
{{- end }}
{{- end -}}
