package sandbox

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

// reasonApplied is the Event reason the agent gives when it caps a pod's GPU:
// part of the contract with users, so spelled out here.
const reasonApplied = "PowerLimitApplied"

// The planner scenario's names and numbers.
const (
	WorkNamespace = "inference"
	BudgetName    = "cluster"
	BudgetWatts   = 2400
)

// Step is one act of the planner scenario; Run fails when the system did
// not behave as documented.
type Step struct {
	Title string
	Run   func(ctx context.Context) error
}

// Planner plays what a Dynamo planner and its operator do on the sandbox,
// narrating each request, the webhook's answer and what the GPUs enforce.
type Planner struct {
	S   *Sandbox
	Out io.Writer
}

// Steps returns the scenario in order; each step builds on the ones before.
func (p *Planner) Steps() []Step {
	return []Step{
		{"An operator sets a cluster GPU power budget of 2400 W", p.setBudget},
		{"The planner starts prefill and decode workers with per-GPU limits", p.startWorkers},
		{"A worker asks for more than an H100 allows", p.overBoardLimit},
		{"A worker would push the cluster over its budget", p.overBudget},
		{"The planner lowers a worker's limit, raises it, and overreaches", p.changeLimits},
		{"The planner scales prefill down: GPUs restored, budget released", p.scaleDown},
		{"cert-manager renews the serving certificate under continuous admissions", p.renewCertificate},
		{"The webhook goes down, and comes back", p.webhookDown},
		{"The agent restarts mid-run (a rolling update)", p.agentRestart},
		{"Where things stand", p.summary},
	}
}

// Play runs every step in order, narrating, and stops at the first failure.
func (p *Planner) Play(ctx context.Context) error {
	for i, st := range p.Steps() {
		p.say("\n── Step %d: %s ──", i+1, st.Title)
		if err := st.Run(ctx); err != nil {
			return fmt.Errorf("step %d (%s): %w", i+1, st.Title, err)
		}
		if err := p.S.Err(); err != nil {
			return fmt.Errorf("step %d (%s): sandbox: %w", i+1, st.Title, err)
		}
	}
	return nil
}

func (p *Planner) say(format string, args ...any) {
	_, _ = fmt.Fprintf(p.Out, format+"\n", args...)
}

// kubectl runs kubectl, showing the command and its answer.
func (p *Planner) kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	p.say("$ kubectl %s", strings.Join(args, " "))
	out, err := p.S.Kubectl(ctx, stdin, args...)
	if err == nil {
		_, _ = io.WriteString(p.Out, indent(out))
	}
	return out, err
}

// refused runs a kubectl command that must fail, shows the answer, and checks
// it says want.
func (p *Planner) refused(ctx context.Context, want, stdin string, args ...string) error {
	p.say("$ kubectl %s", strings.Join(args, " "))
	out, err := p.S.Kubectl(ctx, stdin, args...)
	_, _ = io.WriteString(p.Out, indent(out))
	if err == nil {
		return fmt.Errorf("kubectl %s succeeded; want it refused with %q", strings.Join(args, " "), want)
	}
	if !strings.Contains(out, want) {
		return fmt.Errorf("refused with %q; want it to say %q", strings.TrimSpace(out), want)
	}
	return nil
}

func (p *Planner) setBudget(ctx context.Context) error {
	ns := fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %s
  labels:
    power.dynamo.nvidia.com/budget: %s
---
apiVersion: power.dynamo.nvidia.com/v1alpha1
kind: GPUPowerBudget
metadata:
  name: %s
spec:
  totalWatts: %d
  namespaceSelector:
    matchLabels:
      power.dynamo.nvidia.com/budget: %s
`, WorkNamespace, BudgetName, BudgetName, BudgetWatts, BudgetName)
	p.say("The planner runs with --total-gpu-power-limit=%d; the operator makes it a budget for namespace %q:", BudgetWatts, WorkNamespace)
	_, _ = io.WriteString(p.Out, indent(ns))
	if _, err := p.kubectl(ctx, ns, "apply", "-f", "-"); err != nil {
		return err
	}
	if err := p.budgetAt(ctx, 0); err != nil {
		return err
	}
	_, err := p.kubectl(ctx, "", "get", "gpupowerbudgets")
	return err
}

// WorkerPod is a Dynamo worker pod on the sandbox's node, as YAML for
// kubectl, asking gpus GPUs at limit watts each.
func WorkerPod(name, namespace, role string, gpus int, limit string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  labels:
    nvidia.com/dynamo-component-type: worker
    nvidia.com/dynamo-sub-component-type: %s
  annotations:
    %s: "%s"
spec:
  nodeName: %s
  containers:
  - name: worker
    image: nvcr.io/nvidia/ai-dynamo/vllm-runtime:0.4.0
    resources:
      limits:
        nvidia.com/gpu: %d
`, name, namespace, role, policy.AnnotationPowerLimit, limit, NodeName, gpus)
}

func (p *Planner) startWorkers(ctx context.Context) error {
	p.say("(The sandbox has no scheduler: the pods name their node, %s, with %d H100s.)", NodeName, GPUCount)
	workers := []struct {
		name, role string
		gpus       int
		watts      int64
	}{
		{"prefill-0", "prefill", 2, 350},
		{"decode-0", "decode", 2, 250},
		{"decode-1", "decode", 2, 250},
	}
	committed := int64(0)
	for _, w := range workers {
		p.say("The planner asks for %s: %d GPUs at %d W each.", w.name, w.gpus, w.watts)
		if _, err := p.kubectl(ctx, WorkerPod(w.name, WorkNamespace, w.role, w.gpus, strconv.FormatInt(w.watts, 10)), "apply", "-f", "-"); err != nil {
			return err
		}
		if err := p.stamped(ctx, w.name, w.watts); err != nil {
			return err
		}
		committed += int64(w.gpus) * w.watts
	}
	for _, w := range workers {
		if err := p.enforced(ctx, w.name, w.gpus, w.watts); err != nil {
			return err
		}
	}
	if err := p.budgetAt(ctx, committed); err != nil {
		return err
	}
	if err := p.appliedEvent(ctx, "decode-0"); err != nil {
		return err
	}
	if err := p.agentMetric(ctx, "decode-0", 250); err != nil {
		return err
	}
	return p.gpuTable()
}

// stamped checks the webhook stamped the limit it admitted.
func (p *Planner) stamped(ctx context.Context, name string, watts int64) error {
	var pod corev1.Pod
	if err := p.S.Client.Get(ctx, types.NamespacedName{Namespace: WorkNamespace, Name: name}, &pod); err != nil {
		return err
	}
	want := strconv.FormatInt(watts, 10)
	if got := pod.Annotations[policy.AnnotationPowerLimitValidated]; got != want {
		return fmt.Errorf("%s: stamp %s=%q; want %q", name, policy.AnnotationPowerLimitValidated, got, want)
	}
	p.say("  webhook: admitted and stamped %s=%s", policy.AnnotationPowerLimitValidated, want)
	return nil
}

// enforced waits until every GPU the kubelet gave the pod has the limit.
func (p *Planner) enforced(ctx context.Context, name string, gpus int, watts int64) error {
	return p.S.waitFor(ctx, fmt.Sprintf("%s's GPUs at %d W", name, watts), func(context.Context) (bool, string, error) {
		idx := p.S.GPUsOf(WorkNamespace, name)
		if len(idx) != gpus {
			return false, fmt.Sprintf("kubelet gave it GPUs %v", idx), nil
		}
		limits, err := p.limits()
		if err != nil {
			return false, "", err
		}
		for _, i := range idx {
			if limits[i] != watts {
				return false, fmt.Sprintf("GPU %d at %d W", i, limits[i]), nil
			}
		}
		p.say("  agent: %s holds GPUs %v; each is capped at %d W", name, idx, watts)
		return true, "", nil
	})
}

// restored waits until the GPUs are back at their default limit.
func (p *Planner) restored(ctx context.Context, idx []int) error {
	gpus, err := p.S.GPUs()
	if err != nil {
		return err
	}
	return p.S.waitFor(ctx, fmt.Sprintf("GPUs %v restored", idx), func(context.Context) (bool, string, error) {
		limits, err := p.limits()
		if err != nil {
			return false, "", err
		}
		for _, i := range idx {
			if want := int64(gpus[i].Default.WattsDown()); limits[i] != want {
				return false, fmt.Sprintf("GPU %d at %d W, default %d W", i, limits[i], want), nil
			}
		}
		p.say("  agent: GPUs %v are back at their default limit", idx)
		return true, "", nil
	})
}

// limits reads each simulated GPU's power limit in watts, by index.
func (p *Planner) limits() ([]int64, error) {
	gpus, err := p.S.GPUs()
	if err != nil {
		return nil, err
	}
	out := make([]int64, len(gpus))
	for _, g := range gpus {
		out[g.Index] = int64(g.Limit.WattsDown())
	}
	return out, nil
}

// budgetAt waits until the budget's status shows committed watts.
func (p *Planner) budgetAt(ctx context.Context, committed int64) error {
	return p.S.waitFor(ctx, fmt.Sprintf("budget %q at %d W committed", BudgetName, committed), func(ctx context.Context) (bool, string, error) {
		var b powerv1alpha1.GPUPowerBudget
		if err := p.S.Client.Get(ctx, types.NamespacedName{Name: BudgetName}, &b); err != nil {
			return false, err.Error(), nil
		}
		ok := b.Status.ObservedGeneration == b.Generation && b.Status.CommittedWatts == committed
		return ok, fmt.Sprintf("committed %d W (generation %d observed %d)", b.Status.CommittedWatts, b.Generation, b.Status.ObservedGeneration), nil
	})
}

// appliedEvent checks the agent told the pod's owner what it did.
func (p *Planner) appliedEvent(ctx context.Context, pod string) error {
	return p.S.waitFor(ctx, "a "+reasonApplied+" Event on "+pod, func(ctx context.Context) (bool, string, error) {
		var events corev1.EventList
		if err := p.S.Client.List(ctx, &events, client.InNamespace(WorkNamespace)); err != nil {
			return false, err.Error(), nil
		}
		for _, e := range events.Items {
			if e.InvolvedObject.Name == pod && e.Reason == reasonApplied {
				p.say("  Event on %s: %s %s: %s", pod, e.Type, e.Reason, e.Message)
				return true, "", nil
			}
		}
		return false, fmt.Sprintf("%d events in %s", len(events.Items), WorkNamespace), nil
	})
}

// agentMetric checks the agent's Prometheus metrics report the pod's GPUs
// capped at watts.
func (p *Planner) agentMetric(ctx context.Context, pod string, watts int64) error {
	gpus, err := p.S.GPUs()
	if err != nil {
		return err
	}
	for _, i := range p.S.GPUsOf(WorkNamespace, pod) {
		series := fmt.Sprintf(`dynamo_power_agent_gpu_applied_watts{gpu=%q}`, gpus[i].UUID)
		v, err := p.S.Metric(ctx, p.S.Agent, series)
		if err != nil {
			return err
		}
		if int64(v) != watts {
			return fmt.Errorf("%s = %v; want %d", series, v, watts)
		}
		p.say("  metrics: %s %v", series, v)
	}
	return nil
}

func (p *Planner) overBoardLimit(ctx context.Context) error {
	return p.refused(ctx, "above the 700 W maximum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W",
		WorkerPod("decode-2", WorkNamespace, "decode", 2, "900"), "apply", "-f", "-")
}

func (p *Planner) overBudget(ctx context.Context) error {
	if err := p.refused(ctx,
		`exceeded GPU power budget "cluster": requested 800 W (2 GPUs x 400 W), committed 1700 W of 2400 W, available 700 W`,
		WorkerPod("decode-2", WorkNamespace, "decode", 2, "400"), "apply", "-f", "-"); err != nil {
		return err
	}
	p.say("Nothing was reserved for the denied pod:")
	if err := p.budgetAt(ctx, 1700); err != nil {
		return err
	}
	_, err := p.kubectl(ctx, "", "get", "gpupowerbudgets")
	return err
}

func (p *Planner) changeLimits(ctx context.Context) error {
	annotate := func(pod string, watts int) []string {
		return []string{"annotate", "--overwrite", "-n", WorkNamespace, "pod/" + pod, fmt.Sprintf("%s=%d", policy.AnnotationPowerLimit, watts)}
	}
	for _, c := range []struct {
		watts, committed int64
	}{{200, 1600}, {300, 1800}} {
		if _, err := p.kubectl(ctx, "", annotate("decode-0", int(c.watts))...); err != nil {
			return err
		}
		if err := p.stamped(ctx, "decode-0", c.watts); err != nil {
			return err
		}
		if err := p.enforced(ctx, "decode-0", 2, c.watts); err != nil {
			return err
		}
		if err := p.budgetAt(ctx, c.committed); err != nil {
			return err
		}
	}
	return p.refused(ctx, `exceeded GPU power budget "cluster": requested 900 W more`, "", annotate("decode-1", 700)...)
}

func (p *Planner) scaleDown(ctx context.Context) error {
	idx := p.S.GPUsOf(WorkNamespace, "prefill-0")
	if _, err := p.kubectl(ctx, "", "delete", "-n", WorkNamespace, "pod/prefill-0"); err != nil {
		return err
	}
	if err := p.restored(ctx, idx); err != nil {
		return err
	}
	if err := p.budgetAt(ctx, 1100); err != nil {
		return err
	}
	_, err := p.kubectl(ctx, "", "get", "gpupowerbudgets")
	return err
}

// renewCertificate asks cert-manager to reissue the serving certificate (as
// `cmctl renew` does) while admissions run without a pause, and checks not
// one fails and the webhook serves the new certificate.
func (p *Planner) renewCertificate(ctx context.Context) error {
	before, err := p.S.ServedCertificate(ctx)
	if err != nil {
		return err
	}
	p.say("The webhook serves certificate serial %s (expires %s).", before.SerialNumber, before.NotAfter.Format(time.RFC3339))
	load := p.admitContinuously(ctx)
	if err := p.admittedBeyond(ctx, load, "admissions flowing before the renewal"); err != nil {
		load.stop()
		return err
	}
	var cert cmapi.Certificate
	key := types.NamespacedName{Namespace: Namespace, Name: CertificateRef}
	if err := p.S.Client.Get(ctx, key, &cert); err != nil {
		load.stop()
		return err
	}
	cert.Status.Conditions = append(cert.Status.Conditions, cmapi.CertificateCondition{
		Type: cmapi.CertificateConditionIssuing, Status: cmmeta.ConditionTrue, Reason: "ManuallyTriggered",
		Message: "Certificate re-issuance manually triggered", LastTransitionTime: &metav1.Time{Time: time.Now()},
		ObservedGeneration: cert.Generation,
	})
	p.say("Renewal triggered on Certificate %s/%s (what `cmctl renew` does); admissions keep coming.", Namespace, CertificateRef)
	if err := p.S.Client.Status().Update(ctx, &cert); err != nil {
		load.stop()
		return err
	}
	var after *x509.Certificate
	err = p.S.waitFor(ctx, "the webhook serving the renewed certificate", func(ctx context.Context) (bool, string, error) {
		c, err := p.S.ServedCertificate(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		after = c
		return c.SerialNumber.Cmp(before.SerialNumber) != 0, "serial " + c.SerialNumber.String(), nil
	})
	if err == nil {
		err = p.admittedBeyond(ctx, load, "admissions flowing on the new certificate")
	}
	load.stop()
	if err != nil {
		return err
	}
	p.say("The webhook now serves serial %s (expires %s), reloaded from its certificate folder without a restart.",
		after.SerialNumber, after.NotAfter.Format(time.RFC3339))
	p.say("Admissions during the renewal: %d admitted, %d failed.", load.ok.Load(), load.failed.Load())
	if load.failed.Load() != 0 || load.ok.Load() == 0 {
		return fmt.Errorf("%d admissions failed, %d passed; want none failed: first failure: %w", load.failed.Load(), load.ok.Load(), load.firstErr())
	}
	return nil
}

// admittedBeyond waits until 10 more admissions than now have passed.
func (p *Planner) admittedBeyond(ctx context.Context, load *admissions, what string) error {
	target := load.ok.Load() + 10
	return p.S.waitFor(ctx, what, func(context.Context) (bool, string, error) {
		return load.ok.Load() >= target, fmt.Sprintf("%d admitted, %d failed", load.ok.Load(), load.failed.Load()), nil
	})
}

// admissions is a stream of GPU pod admissions (server-side dry runs: the
// webhook decides, nothing is stored or reserved). Stopping it lets the
// requests in flight finish: cancelling them would hide their outcome.
type admissions struct {
	ok, failed atomic.Int64
	stopped    atomic.Bool
	wg         sync.WaitGroup
	mu         sync.Mutex
	first      error
}

func (a *admissions) firstErr() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.first
}

func (a *admissions) stop() {
	a.stopped.Store(true)
	a.wg.Wait()
}

func (p *Planner) admitContinuously(ctx context.Context) *admissions {
	a := &admissions{}
	for w := range 2 {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			for i := 0; !a.stopped.Load() && ctx.Err() == nil; i++ {
				pod := gpuPod(fmt.Sprintf("probe-%d-%d", w, i), WorkNamespace, 1, "250")
				err := p.S.Client.Create(ctx, pod, client.DryRunAll)
				switch {
				case ctx.Err() != nil: // the whole run is ending
				case err == nil && pod.Annotations[policy.AnnotationPowerLimitValidated] == "250":
					a.ok.Add(1)
				default:
					a.failed.Add(1)
					a.mu.Lock()
					if a.first == nil {
						a.first = fmt.Errorf("%s: %w (stamp %q)", pod.Name, err, pod.Annotations[policy.AnnotationPowerLimitValidated])
					}
					a.mu.Unlock()
				}
			}
		}()
	}
	return a
}

func gpuPod(name, namespace string, gpus int64, limit string) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: corev1.PodSpec{NodeName: NodeName, Containers: []corev1.Container{{
			Name: "worker", Image: "nvcr.io/nvidia/ai-dynamo/vllm-runtime:0.4.0",
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{policy.ResourceGPU: *resource.NewQuantity(gpus, resource.DecimalSI)}},
		}}},
	}
	if gpus == 0 {
		pod.Spec.Containers[0].Resources = corev1.ResourceRequirements{}
	}
	if limit != "" {
		pod.Annotations = map[string]string{policy.AnnotationPowerLimit: limit}
	}
	return pod
}

func (p *Planner) webhookDown(ctx context.Context) error {
	p.say("The webhook process is killed (node failure, OOM). failurePolicy is Fail, so GPU pods wait for it:")
	if err := p.S.Webhook.Kill(); err != nil {
		return err
	}
	if err := p.refused(ctx, "failed calling webhook", WorkerPod("decode-2", WorkNamespace, "decode", 1, "250"), "apply", "-f", "-"); err != nil {
		return err
	}
	p.say("Pods without GPUs never reach the webhook, and kube-system is never intercepted:")
	plain := gpuPod("frontend-0", WorkNamespace, 0, "")
	system := gpuPod("gpu-feature-discovery-probe", "kube-system", 1, "")
	for _, pod := range []*corev1.Pod{plain, system} {
		if err := p.S.Client.Create(ctx, pod); err != nil {
			return fmt.Errorf("create %s/%s with the webhook down: %w", pod.Namespace, pod.Name, err)
		}
		p.say("  created %s/%s", pod.Namespace, pod.Name)
	}
	p.say("(docs/install.md, break-glass, says what to do when it cannot come back.) The webhook starts again:")
	if err := p.S.Webhook.Start(ctx); err != nil {
		return err
	}
	if _, err := p.kubectl(ctx, WorkerPod("decode-2", WorkNamespace, "decode", 1, "250"), "apply", "-f", "-"); err != nil {
		return err
	}
	if err := p.stamped(ctx, "decode-2", 250); err != nil {
		return err
	}
	if err := p.enforced(ctx, "decode-2", 1, 250); err != nil {
		return err
	}
	for _, pod := range []*corev1.Pod{plain, system} {
		if err := p.S.Client.Delete(ctx, pod, client.GracePeriodSeconds(0)); err != nil {
			return err
		}
	}
	return p.budgetAt(ctx, 1350)
}

// agentRestart stops the agent as a rolling update does and starts it again,
// sampling the GPUs all along: no limit may change, and the new agent adopts
// the caps (it reports them applied without writing, and restores them later).
func (p *Planner) agentRestart(ctx context.Context) error {
	before, err := p.limits()
	if err != nil {
		return err
	}
	watch, changed := p.watchLimits(ctx, before)
	p.say("SIGTERM to the agent while its DaemonSet still exists (a rolling update):")
	stopErr := p.S.Agent.Stop(time.Minute)
	if stopErr == nil {
		stopErr = p.S.Agent.Start(ctx)
	}
	watch()
	if stopErr != nil {
		return stopErr
	}
	if c := changed(); c != "" {
		return fmt.Errorf("GPU limits changed during the agent's restart: %s", c)
	}
	p.say("  the GPUs kept their limits through the restart: %v W", before)
	gpus, err := p.S.GPUs()
	if err != nil {
		return err
	}
	for _, i := range p.S.GPUsOf(WorkNamespace, "decode-1") {
		writes, err := p.S.Metric(ctx, p.S.Agent, fmt.Sprintf(`dynamo_power_agent_power_limit_writes_total{gpu=%q}`, gpus[i].UUID))
		if err != nil && !errors.Is(err, errNoSeries) {
			return err
		}
		if writes != 0 {
			return fmt.Errorf("the new agent wrote GPU %d's limit %v times; want it adopted", i, writes)
		}
	}
	if err := p.agentMetric(ctx, "decode-1", 250); err != nil {
		return err
	}
	p.say("The new agent owns the caps it adopted: deleting decode-1 gives its GPUs back.")
	idx := p.S.GPUsOf(WorkNamespace, "decode-1")
	if _, err := p.kubectl(ctx, "", "delete", "-n", WorkNamespace, "pod/decode-1"); err != nil {
		return err
	}
	if err := p.restored(ctx, idx); err != nil {
		return err
	}
	return p.budgetAt(ctx, 850)
}

// watchLimits samples the GPUs' limits until stop is called; changed says
// what differed from want, if anything.
func (p *Planner) watchLimits(ctx context.Context, want []int64) (stop func(), changed func() string) {
	ctx, cancel := context.WithCancel(ctx)
	var (
		mu   sync.Mutex
		seen string
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		// Until stop: ending ctx is how the wait ends when nothing changed.
		_ = poll.Until(ctx, poll.Opts{Interval: 20 * time.Millisecond}, "a limit change", func(context.Context) (bool, string, error) {
			got, err := p.limits()
			if err == nil && !slices.Equal(got, want) {
				mu.Lock()
				seen = fmt.Sprintf("%v W, was %v W", got, want)
				mu.Unlock()
				return true, "", nil
			}
			return false, "", nil
		})
	})
	return func() { cancel(); wg.Wait() }, func() string { mu.Lock(); defer mu.Unlock(); return seen }
}

func (p *Planner) summary(ctx context.Context) error {
	if _, err := p.kubectl(ctx, "", "get", "gpupowerbudgets"); err != nil {
		return err
	}
	if _, err := p.kubectl(ctx, "", "get", "pods", "-n", WorkNamespace, "-o",
		`custom-columns=POD:.metadata.name,LIMIT:.metadata.annotations.dynamo\.nvidia\.com/gpu-power-limit,VALIDATED:.metadata.annotations.dynamo\.nvidia\.com/gpu-power-limit-validated`); err != nil {
		return err
	}
	return p.gpuTable()
}

// gpuTable prints what each simulated GPU enforces and who holds it.
func (p *Planner) gpuTable() error {
	gpus, err := p.S.GPUs()
	if err != nil {
		return err
	}
	holders := map[int]string{}
	var pods corev1.PodList
	if err := p.S.Client.List(context.Background(), &pods, client.InNamespace(WorkNamespace)); err != nil {
		return err
	}
	for _, pod := range pods.Items {
		for _, i := range p.S.GPUsOf(pod.Namespace, pod.Name) {
			holders[i] = pod.Namespace + "/" + pod.Name
		}
	}
	p.say("The simulated GPUs (%s):", p.S.NVMLState)
	tw := tabwriter.NewWriter(p.Out, 0, 4, 2, ' ', 0)
	_, _ = fmt.Fprintln(tw, "    GPU\tUUID\tLIMIT\tDEFAULT\tHELD BY")
	for _, g := range gpus {
		_, _ = fmt.Fprintf(tw, "    %d\t%s\t%d W\t%d W\t%s\n", g.Index, g.UUID, g.Limit.WattsDown(), g.Default.WattsDown(), orDash(holders[g.Index]))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

var errNoSeries = errors.New("no such series")

// Metric reads one series from a process's Prometheus endpoint, written as
// `name{label="value"}` exactly as the exposition format prints it.
func (s *Sandbox) Metric(ctx context.Context, p *Process, series string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.MetricsAddr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("%s on %s: %w", series, p.Name, errNoSeries)
}
