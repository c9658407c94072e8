package e2enode_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
	"github.com/dynamo-power/gpu-power/test/framework/realnode"
	"github.com/dynamo-power/gpu-power/test/framework/testdeploy"
)

// agentPod returns the running agent pod, if there is exactly one.
func agentPod(t *testing.T) (*corev1.Pod, bool) {
	t.Helper()
	pods, err := cluster.Client.CoreV1().Pods("dynamo-system").List(t.Context(), metav1.ListOptions{LabelSelector: "app=power-agent"})
	if err != nil || len(pods.Items) != 1 {
		return nil, false
	}
	return &pods.Items[0], true
}

// watchLimits samples every GPU's limit until stop is called, and returns
// every change it saw.
func watchLimits(t *testing.T) (stop func() []string) {
	t.Helper()
	first := limits(t)
	var changes []string
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			now := limits(t)
			if !maps.Equal(now, first) {
				changes = append(changes, fmt.Sprintf("%s: %v (was %v)", time.Now().Format(time.TimeOnly), now, first))
				first = now
			}
		}
	}()
	return func() []string { close(done); <-finished; return changes }
}

// TestAgentRollingUpdateKeepsCaps: replacing the agent pod through the
// DaemonSet's rolling update changes no GPU limit, and the new pod adopts
// the caps.
func TestAgentRollingUpdateKeepsCaps(t *testing.T) {
	install(t)
	pod := createPod(t, gpuPod("rolling", "330"))
	t.Cleanup(func() { deletePod(t, pod) })
	eventually(t, "capped at 330 W", func() (bool, string) {
		_, ok := gpuAt(t, 330)
		return ok, fmt.Sprint(limits(t))
	})
	old, ok := agentPod(t)
	if !ok {
		t.Fatal("no single agent pod")
	}
	stop := watchLimits(t)
	kubectl(t, "", "rollout", "restart", "-n", "dynamo-system", "daemonset/power-agent")
	kubectl(t, "", "rollout", "status", "-n", "dynamo-system", "daemonset/power-agent", "--timeout=5m")
	eventually(t, "a new agent pod Ready", func() (bool, string) {
		p, ok := agentPod(t)
		return ok && p.UID != old.UID && podReady(p), "old pod still there or new one not Ready"
	})
	// A full reconcile of the new agent has passed once it is Ready.
	if changes := stop(); len(changes) > 0 {
		t.Errorf("GPU limits changed during the rolling update:\n%v", changes)
	}
	if _, ok := gpuAt(t, 330); !ok {
		t.Errorf("the cap is gone after the rolling update: %v", limits(t))
	}
}

// TestUninstallRestoresThenKubeletRestart: `kubectl delete -f
// deploy/agent/daemonset.yaml` restores every capped GPU before the agent
// pod is gone; installing again caps again. The kubelet restarts after, and
// enforcement resumes.
func TestUninstallRestoresThenKubeletRestart(t *testing.T) {
	install(t)
	pod := createPod(t, gpuPod("uninstall", "340"))
	t.Cleanup(func() { deletePod(t, pod) })
	var uuid string
	eventually(t, "capped at 340 W", func() (bool, string) {
		var ok bool
		uuid, ok = gpuAt(t, 340)
		return ok, fmt.Sprint(limits(t))
	})
	kubectl(t, "", "delete", "-f", testdeploy.AgentFile(), "--wait=false")
	eventually(t, "the agent pod is gone", func() (bool, string) {
		pods, err := cluster.Client.CoreV1().Pods("dynamo-system").List(t.Context(), metav1.ListOptions{LabelSelector: "app=power-agent"})
		return err == nil && len(pods.Items) == 0, fmt.Sprint(err)
	})
	if w := limits(t)[uuid]; w != 700 {
		t.Errorf("GPU %s at %d W once the agent pod is gone, want its original 700 W", uuid, w)
	}

	// Install again: the new agent caps the running pod again.
	reinstallAgent(t)
	eventually(t, "capped again after reinstall", func() (bool, string) {
		return limits(t)[uuid] == 340, fmt.Sprint(limits(t))
	})

	if err := cluster.RestartKubelet(logf); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the node advertises its GPUs again", func() (bool, string) {
		n, err := cluster.Client.CoreV1().Nodes().Get(t.Context(), "gpu-node-0", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		q := n.Status.Allocatable["nvidia.com/gpu"]
		return q.Value() == 2, q.String()
	})
	after := createPod(t, gpuPod("after-kubelet-restart", "360"))
	t.Cleanup(func() { deletePod(t, after) })
	eventually(t, "a new pod is capped after the kubelet restart", func() (bool, string) {
		_, ok := gpuAt(t, 360)
		return ok, fmt.Sprint(limits(t))
	})
	if w := limits(t)[uuid]; w != 340 {
		t.Errorf("the first pod's GPU is at %d W after the kubelet restart, want 340", w)
	}
	// The next test starts from a settled node: every replica Ready again.
	allReady(t)
}

// allReady waits until the webhook's replicas and the agent pod are Ready
// and the Service's endpoints list every replica as ready.
func allReady(t *testing.T) {
	t.Helper()
	eventually(t, "every pod in dynamo-system Ready and in the Service's endpoints", func() (bool, string) {
		pods, err := cluster.Client.CoreV1().Pods("dynamo-system").List(t.Context(), metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		webhooks := 0
		for _, p := range pods.Items {
			if !podReady(&p) {
				return false, p.Name + " not Ready"
			}
			if p.Labels["app"] == "power-webhook" {
				webhooks++
			}
		}
		slices, err := cluster.Client.DiscoveryV1().EndpointSlices("dynamo-system").List(t.Context(),
			metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=power-webhook"})
		if err != nil {
			return false, err.Error()
		}
		ready := 0
		for _, s := range slices.Items {
			for _, e := range s.Endpoints {
				if e.Conditions.Ready != nil && *e.Conditions.Ready {
					ready++
				}
			}
		}
		return ready == webhooks && webhooks == 3, fmt.Sprintf("%d ready endpoints, %d replicas", ready, webhooks)
	})
}

func reinstallAgent(t *testing.T) {
	t.Helper()
	if err := cluster.InstallAgent(t.Context(), envtestenv.Root()); err != nil {
		t.Fatal(err)
	}
}

// TestCertificateRenewalUnderLoad: cert-manager renews the serving
// certificate, the kubelet refreshes the Secret volume of every webhook
// replica and each replica serves the new certificate, while admissions go
// on without a single failure.
func TestCertificateRenewalUnderLoad(t *testing.T) {
	install(t)
	allReady(t)
	oldSerial := secretSerial(t)

	// The load runs until stopped, and a request in flight then still
	// counts: cancelling it would hide its outcome.
	var stop atomic.Bool
	var admitted, failed atomic.Int64
	var errsMu sync.Mutex
	var errs []string // the first few, with their time
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load() && i < 100000; i++ {
			p := gpuPod(fmt.Sprintf("renewal-%d", i), "300")
			_, err := cluster.Client.CoreV1().Pods("default").Create(context.Background(), p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				failed.Add(1)
				errsMu.Lock()
				if len(errs) < 5 {
					errs = append(errs, time.Now().Format(time.StampMilli)+" "+err.Error())
				}
				errsMu.Unlock()
			} else {
				admitted.Add(1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	stopLoad := func() { stop.Store(true); wg.Wait() }
	t.Cleanup(stopLoad)
	// admittedBeyond waits until n more admissions than now have passed.
	admittedBeyond := func(what string, n int64) {
		target := admitted.Load() + n
		eventually(t, what, func() (bool, string) {
			return admitted.Load() >= target, fmt.Sprintf("%d admitted, %d failed", admitted.Load(), failed.Load())
		})
	}
	admittedBeyond("admissions flow before the renewal", 10)

	// What `cmctl renew` does.
	t.Logf("renewal triggered at %s", time.Now().Format(time.StampMilli))
	now := time.Now().UTC().Format(time.RFC3339)
	kubectl(t, "", "patch", "certificate", "-n", "dynamo-system", "power-webhook-serving", "--subresource=status", "--type=json", "-p",
		`[{"op":"add","path":"/status/conditions/-","value":{"type":"Issuing","status":"True","reason":"ManuallyTriggered","message":"renewal test","lastTransitionTime":"`+now+`"}}]`)
	var newSerial string
	eventually(t, "cert-manager issued a new certificate", func() (bool, string) {
		newSerial = secretSerial(t)
		return newSerial != oldSerial, "serial " + newSerial
	})
	pods, err := cluster.Client.CoreV1().Pods("dynamo-system").List(t.Context(), metav1.ListOptions{LabelSelector: "app=power-webhook"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		poll.Eventually(t, 4*time.Minute, "replica "+p.Name+" serves the new certificate", func() (bool, string) {
			s := servedSerial(p.Status.PodIP)
			return s == newSerial, "serves " + s
		})
	}
	admittedBeyond("admissions flow after the renewal", 10)
	stopLoad()
	if failed.Load() > 0 {
		t.Errorf("%d of %d admissions failed during the renewal; the first ones:\n%s", failed.Load(), failed.Load()+admitted.Load(), strings.Join(errs, "\n"))
		pods, _ := cluster.Kubectl(context.Background(), "", "get", "pods", "-n", "dynamo-system", "-o", "wide")
		eps, _ := cluster.Kubectl(context.Background(), "", "get", "endpointslices", "-n", "dynamo-system", "-o", "wide")
		ev, _ := cluster.Kubectl(context.Background(), "", "get", "events", "-n", "dynamo-system", "--sort-by=.lastTimestamp")
		t.Logf("pods:\n%s\nendpoint slices:\n%s\nevents:\n%s", pods, eps, ev)
		return
	}
	t.Logf("%d admissions before, during and after the renewal, none failed", admitted.Load())
}

func secretSerial(t *testing.T) string {
	t.Helper()
	s, err := cluster.Client.CoreV1().Secrets("dynamo-system").Get(t.Context(), "power-webhook-serving-cert", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(s.Data["tls.crt"])
	if block == nil {
		t.Fatal("no certificate in the Secret")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.String()
}

// servedSerial is the serial of the certificate a replica serves now, read
// with the API server's client certificate (the webhook takes no other).
func servedSerial(podIP string) string {
	auth := realnode.APIServerAuth()
	client, err := tls.LoadX509KeyPair(auth.Cert, auth.Key)
	if err != nil {
		return err.Error()
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", net.JoinHostPort(podIP, "9443"),
		&tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{client}}) //nolint:gosec // reads the served certificate, trusts nothing
	if err != nil {
		return err.Error()
	}
	defer func() { _ = conn.Close() }()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// TestBridgeAddressSurvivesPodChurn: a pod's veth with a lower MAC joining
// the node's bridge, and leaving it, does not change the bridge's address.
// If it did, every pod would keep a stale ARP entry for the node and the API
// server for tens of seconds: probes time out and the webhook Service loses
// all its endpoints at once.
func TestBridgeAddressSurvivesPodChurn(t *testing.T) {
	install(t)
	before := bridgeAddress(t)
	ports := bridgePorts(t)
	pod := createPod(t, gpuPod("churn", "320"))
	var veth string
	eventually(t, "the pod's veth joined the bridge", func() (bool, string) {
		for _, p := range bridgePorts(t) {
			if !slices.Contains(ports, p) {
				veth = p
				return true, p
			}
		}
		return false, fmt.Sprint(bridgePorts(t))
	})
	// The lowest unicast address there is: a bridge that follows its ports
	// takes it.
	if err := exec.CommandContext(t.Context(), "ip", "link", "set", "dev", veth, "address", "00:00:00:00:00:01").Run(); err != nil {
		t.Fatalf("set the address of %s: %v", veth, err)
	}
	if got := bridgeAddress(t); got != before {
		t.Errorf("bridge address %s after a port with a lower MAC joined, was %s", got, before)
	}
	deletePod(t, pod)
	if got := bridgeAddress(t); got != before {
		t.Errorf("bridge address %s after the pod left, was %s", got, before)
	}
	allReady(t)
}

func bridgeAddress(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/class/net", realnode.Bridge, "address"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func bridgePorts(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join("/sys/class/net", realnode.Bridge, "brif"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
