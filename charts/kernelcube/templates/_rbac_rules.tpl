{{/* What the gateway does in sandbox namespaces: read CodeInterpreters and AgentRuntimes (its
templates), adopt warm Sandboxes (a conditional update), fall back to SandboxClaims, delete what
a session used, and read Pods and Events to report scheduling failures at once. */}}
{{- define "kernelcube.gatewayRules" -}}
- apiGroups: [runtime.agentcube.volcano.sh]
  resources: [codeinterpreters, agentruntimes]
  verbs: [get, list, watch]
- apiGroups: [agents.x-k8s.io]
  resources: [sandboxes]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [extensions.agents.x-k8s.io]
  resources: [sandboxclaims]
  verbs: [get, list, watch, create, delete]
- apiGroups: [extensions.agents.x-k8s.io]
  resources: [sandboxwarmpools, sandboxtemplates]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods, events]
  verbs: [get, list, watch]
{{- end -}}

{{/* What the controller does in sandbox namespaces. The AgentCube reconcilers turn
CodeInterpreters into SandboxTemplates + SandboxWarmPools; the GC deletes Sandboxes and
SandboxClaims; unless an upstream agent-sandbox controller does it (agentSandbox.external), it
also reconciles the agent-sandbox API down to Pods, Services, PVCs and NetworkPolicies.
Updates of the finalizers subresources let it set blockOwnerDeletion on what it owns. */}}
{{- define "kernelcube.controllerRules" -}}
- apiGroups: [runtime.agentcube.volcano.sh]
  resources: [codeinterpreters, agentruntimes]
  verbs: [get, list, watch, update, patch]
- apiGroups: [runtime.agentcube.volcano.sh]
  resources: [codeinterpreters/status, agentruntimes/status]
  verbs: [get, update, patch]
- apiGroups: [runtime.agentcube.volcano.sh]
  resources: [codeinterpreters/finalizers, agentruntimes/finalizers]
  verbs: [update]
- apiGroups: [extensions.agents.x-k8s.io]
  resources: [sandboxtemplates, sandboxwarmpools]
  verbs: [get, list, watch, create, update, patch, delete]
{{- if .Values.agentSandbox.external }}
- apiGroups: [agents.x-k8s.io]
  resources: [sandboxes]
  verbs: [get, list, watch, delete]
- apiGroups: [extensions.agents.x-k8s.io]
  resources: [sandboxclaims]
  verbs: [get, list, watch, delete]
{{- else }}
- apiGroups: [agents.x-k8s.io]
  resources: [sandboxes]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [agents.x-k8s.io]
  resources: [sandboxes/status]
  verbs: [get, update, patch]
- apiGroups: [agents.x-k8s.io]
  resources: [sandboxes/finalizers]
  verbs: [update]
- apiGroups: [extensions.agents.x-k8s.io]
  resources: [sandboxclaims]
  verbs: [get, list, watch, update, patch, delete]
- apiGroups: [extensions.agents.x-k8s.io]
  resources: [sandboxclaims/status, sandboxwarmpools/status]
  verbs: [get, update, patch]
- apiGroups: [extensions.agents.x-k8s.io]
  resources: [sandboxclaims/finalizers, sandboxwarmpools/finalizers, sandboxtemplates/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [pods, services, persistentvolumeclaims]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, update, patch, delete]
{{- end }}
- apiGroups: [""]
  resources: [events]
  verbs: [create, update, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, update, patch]
{{- end -}}
