{{- define "caracal.labels" -}}
app.kubernetes.io/name: caracal
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
