package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// UnlimitedPodsPolicy says what a GPU pod without a power limit costs.
// +kubebuilder:validation:Enum=Count;Ignore
type UnlimitedPodsPolicy string

const (
	// UnlimitedPodsCount charges an unlimited GPU pod its GPUs' default board
	// limit: the most it can draw.
	UnlimitedPodsCount UnlimitedPodsPolicy = "Count"
	// UnlimitedPodsIgnore charges unlimited GPU pods nothing.
	UnlimitedPodsIgnore UnlimitedPodsPolicy = "Ignore"
)

// GPUPowerBudgetSpec is the budget an operator sets.
type GPUPowerBudgetSpec struct {
	// TotalWatts is the most GPU power the selected pods may commit, in watts:
	// the sum over pods of per-GPU limit x GPUs.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000000
	TotalWatts int64 `json:"totalWatts"`

	// NamespaceSelector picks the namespaces whose pods are charged to this
	// budget. Empty or absent selects every namespace.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`

	// Defaults give GPU pods created without a limit a per-GPU limit: the first
	// entry whose podSelector matches the pod's labels wins.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	Defaults []DefaultLimit `json:"defaults,omitempty"`

	// UnlimitedPods says what a GPU pod without a limit costs: Count (its
	// GPUs' default board limit) or Ignore (nothing).
	// +optional
	// +kubebuilder:default=Count
	UnlimitedPods UnlimitedPodsPolicy `json:"unlimitedPods,omitempty"`
}

// DefaultLimit is a default per-GPU limit for the pods a selector picks.
type DefaultLimit struct {
	// PodSelector picks pods by label; empty selects every GPU pod.
	// +optional
	PodSelector *metav1.LabelSelector `json:"podSelector,omitempty"`
	// Watts is the per-GPU limit the pods get.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=999999
	Watts int64 `json:"watts"`
}

// Reservation is GPU power admitted to a pod that the budget's reconciler has
// not yet seen charged through the pod itself.
type Reservation struct {
	// PodUID is the admitted pod's UID.
	PodUID types.UID `json:"podUID"`
	// Pod is namespace/name, for people.
	Pod string `json:"pod"`
	// Watts is the pod's whole cost: per-GPU limit x GPUs.
	Watts int64 `json:"watts"`
	// Expires is when the reservation stops counting if the pod never appears.
	Expires metav1.Time `json:"expires"`
}

// GPUPowerBudgetStatus is what the budget has committed.
type GPUPowerBudgetStatus struct {
	// CommittedWatts is the power committed to live pods and reservations.
	// +optional
	CommittedWatts int64 `json:"committedWatts"`
	// AvailableWatts is totalWatts - committedWatts, floored at zero.
	// +optional
	AvailableWatts int64 `json:"availableWatts"`
	// Pods is the number of live GPU pods charged to the budget.
	// +optional
	Pods int64 `json:"pods"`
	// GPUs is the number of GPUs those pods hold (saturating, never wrapping).
	// +optional
	GPUs int64 `json:"gpus"`
	// Reservations are admissions not yet seen as pods.
	// +optional
	// +listType=map
	// +listMapKey=podUID
	Reservations []Reservation `json:"reservations,omitempty"`
	// Conditions: Ready, OverCommitted.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// ObservedGeneration is the spec generation the status was computed for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// Condition types of a budget.
const (
	// ConditionReady is true once the reconciler has computed the status.
	ConditionReady = "Ready"
	// ConditionOverCommitted is true when live pods exceed totalWatts, for
	// example after the total was lowered or pods predate the budget.
	ConditionOverCommitted = "OverCommitted"
)

// GPUPowerBudget caps the GPU power that pods in a set of namespaces may
// commit. The power webhook refuses pods that would exceed it.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=gpb
// +kubebuilder:printcolumn:name="Total",type=integer,JSONPath=".spec.totalWatts",description="Total watts"
// +kubebuilder:printcolumn:name="Committed",type=integer,JSONPath=".status.committedWatts",description="Committed watts"
// +kubebuilder:printcolumn:name="Available",type=integer,JSONPath=".status.availableWatts",description="Available watts"
// +kubebuilder:printcolumn:name="Pods",type=integer,JSONPath=".status.pods"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type GPUPowerBudget struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   GPUPowerBudgetSpec   `json:"spec"`
	Status GPUPowerBudgetStatus `json:"status,omitempty"`
}

// GPUPowerBudgetList is a list of budgets.
// +kubebuilder:object:root=true
type GPUPowerBudgetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []GPUPowerBudget `json:"items"`
}
