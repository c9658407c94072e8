{{/*
gpu-power.image: the image reference of one component.
Call: include "gpu-power.image" (list "webhook" .Values.webhook.image)
repository@digest when digest is set, else repository:tag. Refuses the tag
latest (a node would run whatever was pushed last, and a rollout would not
notice a new image) and an empty tag without a digest.
*/}}
{{- define "gpu-power.image" -}}
{{- $name := index . 0 -}}
{{- $img := index . 1 -}}
{{- if not $img.repository -}}
{{- fail (printf "%s.image.repository must be set" $name) -}}
{{- end -}}
{{- $tag := toString (default "" $img.tag) -}}
{{- $digest := toString (default "" $img.digest) -}}
{{- if eq $tag "latest" -}}
{{- fail (printf "%s.image.tag: latest is refused; set a release tag (e.g. %s) or %s.image.digest" $name "v0.1.0" $name) -}}
{{- end -}}
{{- if $digest -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" $digest) -}}
{{- fail (printf "%s.image.digest %q: want sha256:<64 hex digits>" $name $digest) -}}
{{- end -}}
{{- printf "%s@%s" $img.repository $digest -}}
{{- else -}}
{{- if not $tag -}}
{{- fail (printf "%s.image: set tag (a release, never latest) or digest" $name) -}}
{{- end -}}
{{- if not (regexMatch "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$" $tag) -}}
{{- fail (printf "%s.image.tag %q is not an image tag" $name $tag) -}}
{{- end -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
gpu-power.skippedNamespaces: .Values.skippedNamespaces plus the release
namespace, without repeats, as a JSON list. Every pod webhook's
namespaceSelector and the agent's --webhook-skipped-namespaces take it.
*/}}
{{- define "gpu-power.skippedNamespaces" -}}
{{- $list := list -}}
{{- range $ns := .Values.skippedNamespaces -}}
{{- if not (and (kindIs "string" $ns) (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" $ns)) -}}
{{- fail (printf "skippedNamespaces: %v is not a namespace name" $ns) -}}
{{- end -}}
{{- $list = append $list $ns -}}
{{- end -}}
{{- $list = append $list .Release.Namespace | uniq -}}
{{- toJson $list -}}
{{- end -}}

{{/*
gpu-power.agentDefaultSkippedNamespaces: what the agent skips without
--webhook-skipped-namespaces (policy.SkippedNamespaces in pkg/policy), sorted
and comma-joined. The DaemonSet sets the flag only when the chart's list
differs, so the default rendering is deploy/agent/daemonset.yaml unchanged;
test/helm fails when this and policy.SkippedNamespaces part.
*/}}
{{- define "gpu-power.agentDefaultSkippedNamespaces" -}}
dynamo-system,kube-system
{{- end -}}

{{/*
gpu-power.namespaceSelector: the namespaceSelector of a pod webhook.
*/}}
{{- define "gpu-power.namespaceSelector" -}}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: {{ include "gpu-power.skippedNamespaces" . }}
{{- end -}}

{{/*
gpu-power.catalogCSV: webhook.catalog as the CSV --catalog-file reads.
*/}}
{{- define "gpu-power.catalogCSV" -}}
gpu_product,min_w,default_w,max_w
{{- range $i, $p := .Values.webhook.catalog }}
{{- $product := toString (get $p "product") }}
{{- if not (get $p "product") }}
{{- fail (printf "webhook.catalog[%d]: product is required (the node label nvidia.com/gpu.product)" $i) }}
{{- end }}
{{- if regexMatch "[,[:space:]]" $product }}
{{- fail (printf "webhook.catalog[%d]: product %q: no commas or spaces (the value of nvidia.com/gpu.product)" $i $product) }}
{{- end }}
{{- $watts := list }}
{{- range $k := list "minWatts" "defaultWatts" "maxWatts" }}
{{- $w := toString (get $p $k) }}
{{- if not (regexMatch "^[0-9]{1,7}(\\.[0-9]{1,3})?$" $w) }}
{{- fail (printf "webhook.catalog[%d] (%s): %s %q: want watts as a decimal such as 300 or 48.75" $i $product $k $w) }}
{{- end }}
{{- $watts = append $watts $w }}
{{- end }}
{{ $product }},{{ join "," $watts }}
{{- end }}
{{- end -}}

{{/*
gpu-power.agent.validate: the agent's guards. A stopping agent restores (or
keeps for its successor) every GPU it capped, so it needs the grace period of
deploy/agent/daemonset.yaml at least; and a rolling update replaces one
node's agent at a time.
*/}}
{{- define "gpu-power.agent.validate" -}}
{{- $grace := .Values.agent.terminationGracePeriodSeconds -}}
{{- if not (or (kindIs "float64" $grace) (kindIs "int" $grace) (kindIs "int64" $grace)) -}}
{{- fail (printf "agent.terminationGracePeriodSeconds %v: must be a number of seconds, at least 60" $grace) -}}
{{- else if lt (int64 $grace) 60 -}}
{{- fail (printf "agent.terminationGracePeriodSeconds %v: must be at least 60 (long enough to restore every capped GPU on uninstall)" $grace) -}}
{{- end -}}
{{- if ne (toString .Values.agent.maxUnavailable) "1" -}}
{{- fail (printf "agent.maxUnavailable %v: must be 1 (a rolling update replaces one node's agent at a time)" .Values.agent.maxUnavailable) -}}
{{- end -}}
{{- end -}}
