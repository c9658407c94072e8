package draindex

import (
	"context"
	"maps"
	"slices"
	"sync"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	dracel "k8s.io/dynamic-resource-allocation/cel"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Index is what admission knows of the devices DRA can give pods: for each
// extended resource a DeviceClass serves, the NVIDIA products of the
// published devices its selectors match, by node. DeviceClass and
// ResourceSlice events keep it current (ClassHandler, SliceHandler); the
// selectors are evaluated then, with the scheduler's own CEL library, so
// that a query costs a map lookup.
type Index struct {
	log logr.Logger

	mu      sync.RWMutex
	classes map[string]*class
	slices  map[string]*slice  // by name
	pools   map[poolKey]counts // what each pool's current generation adds
	newest  map[poolKey]int64  // each pool's current generation
	// byNode and all count the devices of each product, by extended
	// resource: on one node ("" for slices that name none), and in all.
	byNode map[corev1.ResourceName]map[string]map[string]int
	all    map[corev1.ResourceName]map[string]int
}

// New returns an empty index that logs selectors it cannot evaluate to log.
func New(log logr.Logger) *Index {
	return &Index{log: log, classes: map[string]*class{}, slices: map[string]*slice{}, pools: map[poolKey]counts{}, newest: map[poolKey]int64{},
		byNode: map[corev1.ResourceName]map[string]map[string]int{}, all: map[corev1.ResourceName]map[string]int{}}
}

// class is a DeviceClass: the extended resources it serves and its
// compiled selectors (nil when one does not compile: it matches nothing).
type class struct {
	resources []corev1.ResourceName
	selectors []dracel.CompilationResult
}

// slice is a ResourceSlice, with what each of its devices gives (matches),
// evaluated against every class.
type slice struct {
	pool       poolKey
	generation int64
	node       string
	devices    []resourcev1.Device
	driver     string
	matches    counts
	// byClass are the devices each class matches (indexes into devices),
	// for requests that narrow a class (Match).
	byClass map[string][]int
}

type poolKey struct{ driver, pool string }

// counts are devices by resource, node and product.
type counts map[corev1.ResourceName]map[string]map[string]int

func (c counts) add(r corev1.ResourceName, node, product string, n int) {
	if c[r] == nil {
		c[r] = map[string]map[string]int{}
	}
	if c[r][node] == nil {
		c[r][node] = map[string]int{}
	}
	c[r][node][product] += n
}

// Products implements nodeindex.Index's DRA view (policy.Cluster.DRAProducts).
func (x *Index) Products(r corev1.ResourceName, node string) []string {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []string
	if node == "" {
		out = slices.Collect(maps.Keys(x.all[r]))
	} else {
		out = slices.Concat(slices.Collect(maps.Keys(x.byNode[r][node])), slices.Collect(maps.Keys(x.byNode[r][""])))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// maxProductName bounds a productName attribute kept: a driver writes the
// board's name; anything longer is not one.
const maxProductName = 128

// productOf is the catalog key of a device NVIDIA's driver publishes, "" for
// other drivers' devices and devices that are not GPUs. A MIG device is its
// board's product marked as MIG, which admission refuses a limit for.
func productOf(driver string, d *resourcev1.Device) string {
	if driver != policy.DriverGPU {
		return ""
	}
	name, typ := policy.DriverAttribute(d, "productName"), policy.DriverAttribute(d, "type")
	if name == "" || len(name) > maxProductName {
		return ""
	}
	switch typ {
	case "gpu":
		return policy.DRAProduct(name)
	case "mig":
		return policy.DRAProduct(name) + "-MIG-" + policy.DriverAttribute(d, "profile")
	}
	return "" // vfio: not driven by the node's NVML
}

// setClass records a DeviceClass and evaluates every slice against it again.
func (x *Index) setClass(dc *resourcev1.DeviceClass) {
	c := &class{resources: []corev1.ResourceName{corev1.ResourceName(policy.ResourceDeviceClassPrefix + dc.Name)}}
	if r := dc.Spec.ExtendedResourceName; r != nil && *r != "" {
		c.resources = append(c.resources, corev1.ResourceName(*r))
	}
	compiler := dracel.GetCompiler(dracel.Features{})
	for i, s := range dc.Spec.Selectors {
		if s.CEL == nil {
			continue
		}
		res := compiler.CompileCELExpression(s.CEL.Expression, dracel.Options{})
		if res.Error != nil {
			// It matches nothing: admission then knows no product for it.
			x.log.Info("DeviceClass selector does not compile: pods it serves are checked against no device", "deviceClass", dc.Name,
				"selector", i, "error", res.Error.Error())
			c.resources = nil
			break
		}
		c.selectors = append(c.selectors, res)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.classes[dc.Name] = c
	x.reevaluate()
}

func (x *Index) deleteClass(name string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.classes, name)
	x.reevaluate()
}

// reevaluate matches every slice against every class again, after a class
// changed. Called with mu held.
func (x *Index) reevaluate() {
	for _, s := range x.slices {
		s.matches = x.match(s)
	}
	x.pools, x.newest = map[poolKey]counts{}, map[poolKey]int64{}
	x.byNode = map[corev1.ResourceName]map[string]map[string]int{}
	x.all = map[corev1.ResourceName]map[string]int{}
	pools := map[poolKey]bool{}
	for _, s := range x.slices {
		pools[s.pool] = true
	}
	for p := range pools {
		x.recount(p)
	}
}

// match is what a slice's devices give, class by class, and records which
// devices each class matches. Called with mu held.
func (x *Index) match(s *slice) counts {
	out := counts{}
	s.byClass = map[string][]int{}
	for i := range s.devices {
		d := &s.devices[i]
		product := productOf(s.driver, d)
		for name, c := range x.classes {
			if len(c.resources) == 0 || !x.matches(name, c.selectors, s.driver, d) {
				continue
			}
			// Every device a class matches is kept, an NVIDIA GPU or not:
			// a request that matches only other drivers' devices is known
			// to ask for no GPU.
			s.byClass[name] = append(s.byClass[name], i)
			if product != "" {
				for _, r := range c.resources {
					out.add(r, s.node, product, 1)
				}
			}
		}
	}
	return out
}

// Match counts the published devices a claim's request can get, by node
// and product: those its DeviceClass matches that its own selectors match
// too, in the newest generation of each pool; others counts the matching
// devices that are no NVIDIA GPU. A class that does not exist, or a
// selector that does not compile, matches nothing (the API server refuses
// such a claim when it is written).
func (x *Index) Match(class string, selectors []resourcev1.DeviceSelector) (gpus map[string]map[string]int, others int) {
	var compiled []dracel.CompilationResult
	compiler := dracel.GetCompiler(dracel.Features{})
	for _, s := range selectors {
		if s.CEL == nil {
			continue
		}
		res := compiler.CompileCELExpression(s.CEL.Expression, dracel.Options{})
		if res.Error != nil {
			return nil, 0
		}
		compiled = append(compiled, res)
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := map[string]map[string]int{}
	for _, s := range x.slices {
		if s.generation != x.newest[s.pool] {
			continue
		}
		for _, i := range s.byClass[class] {
			d := &s.devices[i]
			if !x.matches(class, compiled, s.driver, d) {
				continue
			}
			product := productOf(s.driver, d)
			if product == "" {
				others++
				continue
			}
			if out[s.node] == nil {
				out[s.node] = map[string]int{}
			}
			out[s.node][product]++
		}
	}
	return out, others
}

// matches reports whether a device passes every selector (a class's, or a
// request's), as the scheduler evaluates them; an evaluation error is no
// match.
func (x *Index) matches(name string, selectors []dracel.CompilationResult, driver string, d *resourcev1.Device) bool {
	for _, sel := range selectors {
		ok, _, err := sel.DeviceMatches(context.Background(), dracel.Device{Driver: driver, Attributes: d.Attributes, Capacity: d.Capacity})
		if err != nil {
			x.log.V(1).Info("DeviceClass selector failed on a device", "deviceClass", name, "device", d.Name, "error", err.Error())
			return false
		}
		if !ok {
			return false
		}
	}
	return true
}

// setSlice records a ResourceSlice.
func (x *Index) setSlice(rs *resourcev1.ResourceSlice) {
	s := &slice{pool: poolKey{rs.Spec.Driver, rs.Spec.Pool.Name}, generation: rs.Spec.Pool.Generation, driver: rs.Spec.Driver, devices: rs.Spec.Devices}
	if rs.Spec.NodeName != nil {
		s.node = *rs.Spec.NodeName
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	old := x.slices[rs.Name]
	s.matches = x.match(s)
	x.slices[rs.Name] = s
	if old != nil && old.pool != s.pool {
		x.recount(old.pool)
	}
	x.recount(s.pool)
}

func (x *Index) deleteSlice(name string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old, ok := x.slices[name]; ok {
		delete(x.slices, name)
		x.recount(old.pool)
	}
}

// recount replaces what a pool adds with what its slices of the newest
// generation give: while a driver replaces its slices, the older
// generation's no longer count, as the scheduler ignores them. Called with
// mu held.
func (x *Index) recount(p poolKey) {
	if old, ok := x.pools[p]; ok {
		x.apply(old, -1)
		delete(x.pools, p)
	}
	newest, found := int64(0), false
	for _, s := range x.slices {
		if s.pool == p && (!found || s.generation > newest) {
			newest, found = s.generation, true
		}
	}
	if !found {
		delete(x.newest, p)
		return
	}
	x.newest[p] = newest
	sum := counts{}
	for _, s := range x.slices {
		if s.pool != p || s.generation != newest {
			continue
		}
		for r, nodes := range s.matches {
			for node, products := range nodes {
				for product, n := range products {
					sum.add(r, node, product, n)
				}
			}
		}
	}
	x.pools[p] = sum
	x.apply(sum, 1)
}

// apply adds (sign 1) or takes away (sign -1) a pool's counts from the
// index's totals. Called with mu held.
func (x *Index) apply(c counts, sign int) {
	for r, nodes := range c {
		for node, products := range nodes {
			for product, n := range products {
				if x.byNode[r] == nil {
					x.byNode[r] = map[string]map[string]int{}
				}
				if x.byNode[r][node] == nil {
					x.byNode[r][node] = map[string]int{}
				}
				if x.all[r] == nil {
					x.all[r] = map[string]int{}
				}
				x.byNode[r][node][product] += sign * n
				x.all[r][product] += sign * n
				if x.byNode[r][node][product] <= 0 {
					delete(x.byNode[r][node], product)
				}
				if x.all[r][product] <= 0 {
					delete(x.all[r], product)
				}
			}
		}
	}
}

// ClassHandler keeps the index in step with a DeviceClass informer.
func (x *Index) ClassHandler() toolscache.ResourceEventHandler {
	return handler(func(dc *resourcev1.DeviceClass) { x.setClass(dc) }, x.deleteClass)
}

// SliceHandler keeps the index in step with a ResourceSlice informer.
func (x *Index) SliceHandler() toolscache.ResourceEventHandler {
	return handler(func(rs *resourcev1.ResourceSlice) { x.setSlice(rs) }, x.deleteSlice)
}

func handler[T metav1.Object](set func(T), forget func(name string)) toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { setAs(obj, set) },
		UpdateFunc: func(_, obj any) { setAs(obj, set) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if o, ok := obj.(metav1.Object); ok {
				forget(o.GetName())
			}
		},
	}
}

func setAs[T any](obj any, set func(T)) {
	if o, ok := obj.(T); ok {
		set(o)
	}
}

// TrimSlice keeps what the index reads of a ResourceSlice (driver, pool,
// node, each device's name, attributes and capacity) in the informer's
// cache: a node's slices carry managed fields and device details besides.
func TrimSlice(obj any) (any, error) {
	rs, ok := obj.(*resourcev1.ResourceSlice)
	if !ok {
		return obj, nil
	}
	out := &resourcev1.ResourceSlice{ObjectMeta: metav1.ObjectMeta{Name: rs.Name, UID: rs.UID, ResourceVersion: rs.ResourceVersion},
		Spec: resourcev1.ResourceSliceSpec{Driver: rs.Spec.Driver, Pool: rs.Spec.Pool, NodeName: rs.Spec.NodeName, AllNodes: rs.Spec.AllNodes}}
	for _, d := range rs.Spec.Devices {
		out.Spec.Devices = append(out.Spec.Devices, resourcev1.Device{Name: d.Name, Attributes: d.Attributes, Capacity: d.Capacity})
	}
	return out, nil
}

// TrimClass keeps a DeviceClass's name, selectors and extended resource.
func TrimClass(obj any) (any, error) {
	dc, ok := obj.(*resourcev1.DeviceClass)
	if !ok {
		return obj, nil
	}
	return &resourcev1.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: dc.Name, UID: dc.UID, ResourceVersion: dc.ResourceVersion},
		Spec: resourcev1.DeviceClassSpec{Selectors: dc.Spec.Selectors, ExtendedResourceName: dc.Spec.ExtendedResourceName}}, nil
}
