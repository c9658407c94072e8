package realnode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// Install applies both shipped manifests with kubectl, as the install guide
// says (the webhook's with the API server's client CA, WebhookManifests; the
// agent's with its one change, AgentManifest), and waits until the webhook's
// replicas and the agent pod are Ready through their own probes.
func (c *Cluster) Install(ctx context.Context, root string) error {
	ca, err := os.ReadFile(APIServerAuth().CA)
	if err != nil {
		return err
	}
	webhook, err := WebhookManifests(filepath.Join(root, "deploy", "webhook"), ca)
	if err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, string(webhook), "apply", "-f", "-"); err != nil {
		return err
	}
	if err := c.rollout(ctx, "deployment/power-webhook"); err != nil {
		return err
	}
	return c.InstallAgent(ctx, root)
}

// InstallAgent applies the agent manifest and waits for its pod to be Ready.
func (c *Cluster) InstallAgent(ctx context.Context, root string) error {
	agent, err := AgentManifest(filepath.Join(root, "deploy", "agent", "daemonset.yaml"))
	if err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, string(agent), "apply", "-f", "-"); err != nil {
		return err
	}
	return c.rollout(ctx, "daemonset/power-agent")
}

func (c *Cluster) rollout(ctx context.Context, what string) error {
	if out, err := c.Kubectl(ctx, "", "rollout", "status", "-n", "dynamo-system", what, "--timeout=5m"); err != nil {
		pods, _ := c.Kubectl(ctx, "", "get", "pods", "-A", "-o", "wide")
		ev, _ := c.Kubectl(ctx, "", "get", "events", "-A", "--sort-by=.lastTimestamp")
		return fmt.Errorf("%w\n%s\npods:\n%s\nevents:\n%s", err, out, pods, ev)
	}
	return nil
}
