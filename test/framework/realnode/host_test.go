package realnode_test

import (
	"slices"
	"testing"

	"github.com/dynamo-power/gpu-power/test/framework/realnode"
)

// TestDiffAcceptsOnlyFirstUseArtefactsOfTheirKind: what the node's tools
// make once and keep (libmount's /run/mount, iptables' lock) is no
// difference; anything else left behind, or a first-use path holding the
// wrong kind of file, still is.
func TestDiffAcceptsOnlyFirstUseArtefactsOfTheirKind(t *testing.T) {
	before := realnode.HostState{Entries: map[string][]string{"/run": {"lock", "user"}, "/var/lib": {"dpkg"}}}
	for _, tc := range []struct {
		name     string
		run      []string
		varLib   []string
		firstUse map[string]string
		want     []string
		kept     int
	}{
		{name: "nothing changed", run: []string{"lock", "user"}, varLib: []string{"dpkg"}},
		{
			name: "libmount and iptables ran for the first time", run: []string{"lock", "mount", "user", "xtables.lock"}, varLib: []string{"dpkg"},
			firstUse: map[string]string{"/run/mount": "dir", "/run/xtables.lock": "file"}, kept: 2,
		},
		{
			name: "a file where libmount keeps a folder", run: []string{"lock", "mount", "user"}, varLib: []string{"dpkg"},
			firstUse: map[string]string{"/run/mount": "file"}, want: []string{"entry of /run mount: added"},
		},
		{
			name: "a symlink where iptables keeps its lock", run: []string{"lock", "user", "xtables.lock"}, varLib: []string{"dpkg"},
			firstUse: map[string]string{"/run/xtables.lock": "other"}, want: []string{"entry of /run xtables.lock: added"},
		},
		{
			name: "state the node left beside a first-use artefact", run: []string{"lock", "mount", "user"}, varLib: []string{"dpkg", "kubelet"},
			firstUse: map[string]string{"/run/mount": "dir"}, want: []string{"entry of /var/lib kubelet: added"}, kept: 1,
		},
		{
			name: "a folder of the same name elsewhere is not the artefact", run: []string{"lock", "user"}, varLib: []string{"dpkg", "mount"},
			firstUse: map[string]string{"/run/mount": "dir"}, want: []string{"entry of /var/lib mount: added"},
		},
		{name: "teardown removed something that was there", run: []string{"user"}, varLib: []string{"dpkg"}, want: []string{"entry of /run lock: removed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			after := realnode.HostState{Entries: map[string][]string{"/run": tc.run, "/var/lib": tc.varLib}, FirstUse: tc.firstUse}
			if got := before.Diff(after); !slices.Equal(got, tc.want) {
				t.Errorf("Diff = %q, want %q", got, tc.want)
			}
			if kept := before.KeptFirstUse(after); len(kept) != tc.kept {
				t.Errorf("KeptFirstUse = %q, want %d", kept, tc.kept)
			}
		})
	}
}
