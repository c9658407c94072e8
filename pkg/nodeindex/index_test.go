package nodeindex

import (
	"fmt"
	"testing"
)

func TestIndex(t *testing.T) {
	x := New()
	x.Set("a", "NVIDIA-L4")
	x.Set("b", "NVIDIA-L4")
	x.Set("c", "NVIDIA-H200")
	x.Set("d", "")
	if got := fmt.Sprint(x.GPUProducts()); got != "[NVIDIA-H200 NVIDIA-L4]" {
		t.Errorf("products = %s", got)
	}
	x.Set("c", "NVIDIA-L4") // relabelled
	x.Delete("a")
	if got := fmt.Sprint(x.GPUProducts()); got != "[NVIDIA-L4]" {
		t.Errorf("after relabel and delete: products = %s", got)
	}
	if p, ok := x.NodeGPUProduct("d"); !ok || p != "" {
		t.Errorf("unlabelled node: %q, %v", p, ok)
	}
	x.Delete("b")
	x.Delete("c")
	if got := x.GPUProducts(); len(got) != 0 {
		t.Errorf("all GPU nodes gone: products = %v", got)
	}
}
