package nodeindex

import (
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Index is the cluster view admission reads (a policy.Cluster): the GPU
// product label of each node, and, through DRA, the products of the devices
// dynamic resource allocation publishes. Informer events keep it current, so
// a request costs a map lookup, not a scan of every node.
type Index struct {
	// DRA, when set, answers DRAProducts: the devices dynamic resource
	// allocation publishes (pkg/draindex). Nil: a cluster without DRA.
	DRA interface {
		Products(resource corev1.ResourceName, node string) []string
	}

	mu       sync.RWMutex
	product  map[string]string // node name -> nvidia.com/gpu.product ("" when unlabelled)
	nodesPer map[string]int    // product -> number of nodes with it
	products []string          // keys of nodesPer, sorted; replaced, never modified
}

var _ policy.Cluster = (*Index)(nil)

// New returns an empty index.
func New() *Index {
	return &Index{product: map[string]string{}, nodesPer: map[string]int{}}
}

// NodeGPUProduct implements policy.Cluster.
func (x *Index) NodeGPUProduct(node string) (string, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	p, ok := x.product[node]
	return p, ok
}

// GPUProducts implements policy.Cluster. Callers must not modify the slice.
func (x *Index) GPUProducts() []string {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.products
}

// DRAProducts implements policy.Cluster.
func (x *Index) DRAProducts(resource corev1.ResourceName, node string) []string {
	if x.DRA == nil {
		return nil
	}
	return x.DRA.Products(resource, node)
}

// Set records a node's product label.
func (x *Index) Set(node, product string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old, ok := x.product[node]; ok {
		if old == product {
			return
		}
		x.forget(old)
	}
	x.product[node] = product
	if product != "" {
		x.nodesPer[product]++
		if x.nodesPer[product] == 1 {
			x.products = slices.Sorted(func(yield func(string) bool) {
				for p := range x.nodesPer {
					if !yield(p) {
						return
					}
				}
			})
		}
	}
}

// Delete forgets a node.
func (x *Index) Delete(node string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old, ok := x.product[node]; ok {
		x.forget(old)
		delete(x.product, node)
	}
}

func (x *Index) forget(product string) {
	if product == "" {
		return
	}
	x.nodesPer[product]--
	if x.nodesPer[product] == 0 {
		delete(x.nodesPer, product)
		x.products = slices.DeleteFunc(slices.Clone(x.products), func(p string) bool { return p == product })
	}
}

// EventHandler keeps the index in step with a node informer.
func (x *Index) EventHandler() toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { x.setNode(obj) },
		UpdateFunc: func(_, obj any) { x.setNode(obj) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if n, ok := obj.(*corev1.Node); ok {
				x.Delete(n.Name)
			}
		},
	}
}

func (x *Index) setNode(obj any) {
	if n, ok := obj.(*corev1.Node); ok {
		x.Set(n.Name, n.Labels[policy.LabelGPUProduct])
	}
}

// Trim keeps what admission reads of a node: its name and GPU product
// label. A GPU node carries dozens of labels (GPU Feature Discovery, node
// feature discovery, the cloud's); the cache of a five-thousand-node cluster
// keeps one of each.
func Trim(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	out := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion}}
	if product, ok := n.Labels[policy.LabelGPUProduct]; ok {
		out.Labels = map[string]string{policy.LabelGPUProduct: product}
	}
	return out, nil
}
