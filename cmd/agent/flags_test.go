package main

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func TestParseNamespaces(t *testing.T) {
	tests := []struct {
		name, flag string
		want       []string
		wantErr    bool
	}{
		{"the default: the webhook's list", strings.Join(policy.SkippedNamespaces, ","), policy.SkippedNamespaces, false},
		{"spaces and empty items ignored", " kube-system, ,gpu-operator ,", []string{"kube-system", "gpu-operator"}, false},
		{"empty: the webhook intercepts every namespace", "", nil, false},
		{"not a namespace name: refused", "kube-system,Kube_System", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseNamespaces(tt.flag)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseNamespaces(%q) error %v; want error %v", tt.flag, err, tt.wantErr)
			}
			if err == nil && !got.Equal(sets.New(tt.want...)) {
				t.Errorf("parseNamespaces(%q) = %v; want %v", tt.flag, sets.List(got), tt.want)
			}
		})
	}
}
