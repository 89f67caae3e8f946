{{/* Names, labels and the operator's RBAC rules (defined once, used by the ClusterRole or each Role). */}}

{{- define "kestrel.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kestrel.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kestrel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kestrel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kestrel.labels" -}}
{{ include "kestrel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kestrel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kestrel.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kestrel.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kestrel.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) -}}
{{- end -}}

{{- define "kestrel.trainerGpuImage" -}}
{{- printf "%s:%s" .Values.trainer.gpuImage.repository (default .Chart.AppVersion .Values.trainer.gpuImage.tag) -}}
{{- end -}}

{{- define "kestrel.webhookService" -}}{{ include "kestrel.fullname" . }}-webhook{{- end -}}
{{- define "kestrel.webhookSecret" -}}{{ include "kestrel.fullname" . }}-webhook-tls{{- end -}}
{{- define "kestrel.webhookConfig" -}}{{ include "kestrel.fullname" . }}.kestrel.dev{{- end -}}
{{- define "kestrel.lease" -}}{{ include "kestrel.fullname" . }}-leader{{- end -}}
{{- define "kestrel.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicas) 1) }}true{{ end -}}
{{- end -}}

{{/*
What the reconciler calls in each watched namespace (operator/kestrel_operator/kube.py, handlers/, docs/operator.md#rbac).
The per-resource Role it creates grants get/patch on <plural>/status, which it holds itself, so no escalate/bind.
*/}}
{{- define "kestrel.watchedRules" -}}
- apiGroups: ["kestrel.dev"]
  resources: ["classificationtrains", "classificationprunes", "classificationexports"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kestrel.dev"]
  resources: ["classificationtrains/status", "classificationprunes/status", "classificationexports/status"]
  verbs: ["get", "patch"]
- apiGroups: ["kestrel.dev"]
  resources: ["classificationtrains/finalizers", "classificationprunes/finalizers", "classificationexports/finalizers"]
  verbs: ["update"]
- apiGroups: ["kubeflow.org"]
  resources: ["mpijobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "create", "delete"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "patch"]
{{- end -}}
