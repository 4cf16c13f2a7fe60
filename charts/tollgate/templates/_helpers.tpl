{{/* The operator's name: the Service, Deployment, webhooks and RBAC carry it. */}}
{{- define "tollgate.fullname" -}}
{{- if contains "tollgate" .Release.Name -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-tollgate-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The cluster-wide McpClusterPolicy the operator applies (defaultAction, mode). */}}
{{- define "tollgate.baseline" -}}
{{- printf "%s-baseline" .Release.Name -}}
{{- end -}}

{{- define "tollgate.labels" -}}
app.kubernetes.io/name: tollgate-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tollgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: tollgate-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tollgate.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (.Values.operator.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "tollgate.sidecarImage" -}}
{{- printf "%s:%s" .Values.sidecar.image.repository (.Values.sidecar.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "tollgate.tlsSecret" -}}
{{- printf "%s-tls" (include "tollgate.fullname" .) -}}
{{- end -}}

{{/* Namespaces the webhooks never touch: the system's and Tollgate's own. */}}
{{- define "tollgate.systemNamespaces" -}}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: [kube-system, kube-node-lease, kube-public, {{ .Release.Namespace | quote }}]
{{- end -}}

{{/* Those namespaces, and Tollgate's own pods (injection never waits on the operator's own). */}}
{{- define "tollgate.namespaceSelector" -}}
{{ include "tollgate.systemNamespaces" . }}
objectSelector:
  matchExpressions:
    - key: app.kubernetes.io/part-of
      operator: NotIn
      values: [tollgate]
{{- end -}}
