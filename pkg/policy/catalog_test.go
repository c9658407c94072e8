package policy_test

import (
	"strings"
	"testing"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func TestDefaultCatalog(t *testing.T) {
	c := policy.DefaultCatalog()
	h100, ok := c["NVIDIA-H100-80GB-HBM3"]
	if !ok {
		t.Fatal("embedded catalog lacks NVIDIA-H100-80GB-HBM3")
	}
	// The H100 row as NVML reported it on a real board (facts/h100-nvml-probe.json).
	if want := (policy.Range{Min: 200_000, Default: 700_000, Max: 700_000}); h100 != want {
		t.Errorf("H100 = %v; want %v", h100, want)
	}
	a16 := c["NVIDIA-A16"]
	if a16.Min != 48_750 || a16.MinWatts() != 49 || a16.MaxWatts() != 62 || a16.DefaultWatts() != 63 {
		t.Errorf("A16 = %v (whole watts %d-%d, default %d); want 48.75 W rounded inward to 49-62, default up to 63",
			a16, a16.MinWatts(), a16.MaxWatts(), a16.DefaultWatts())
	}
	if r, ok := c.Lookup("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb-SHARED"); !ok || r.MaxWatts() != 400 {
		t.Errorf("Lookup of a MIG shared label = %v, %v; want the A100-SXM4-40GB range", r, ok)
	}
	if len(c) < 25 {
		t.Errorf("embedded catalog has %d products; want the whole facts table", len(c))
	}
}

func TestParseCatalogErrors(t *testing.T) {
	const header = "gpu_product,min_w,default_w,max_w\n"
	tests := []struct{ name, csv, want string }{
		{"no header", "NVIDIA-L4,40,72,72\n", `line 1: want header`},
		{"empty", "# only a comment\n", `no header`},
		{"too few fields", header + "NVIDIA-L4,40,72\n", "line 2: want 4 fields"},
		{"not a number", header + "NVIDIA-L4,forty,72,72\n", `line 2: min_w: invalid watts "forty"`},
		{"negative", header + "NVIDIA-L4,-40,72,72\n", `line 2: min_w: invalid watts "-40"`},
		{"too precise", header + "NVIDIA-L4,40.0001,72,72\n", `line 2: min_w: invalid watts "40.0001"`},
		{"min above default", header + "NVIDIA-L4,80,72,72\n", "line 2: NVIDIA-L4: want 0 < min <= default <= max, got min 80 W, default 72 W, max 72 W"},
		{"zero min", header + "NVIDIA-L4,0,72,72\n", "line 2: NVIDIA-L4: want 0 < min"},
		{"suffixed product", header + "NVIDIA-L4-SHARED,40,72,72\n", `line 2: product "NVIDIA-L4-SHARED" must be a plain`},
		{"duplicate", header + "NVIDIA-L4,40,72,72\nNVIDIA-L4,40,72,72\n", "line 3: product NVIDIA-L4 listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := policy.ParseCatalog(strings.NewReader(tt.csv))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseCatalog error = %v; want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestCatalogMerge(t *testing.T) {
	base := policy.DefaultCatalog()
	override, err := policy.ParseCatalog(strings.NewReader("gpu_product,min_w,default_w,max_w\nNVIDIA-L4,50,60,60\nACME-X1,100,200,300\n"))
	if err != nil {
		t.Fatal(err)
	}
	merged := base.Merge(override)
	if merged["NVIDIA-L4"].Max != 60_000 || merged["ACME-X1"].Max != 300_000 || merged["NVIDIA-H100-80GB-HBM3"].Max != 700_000 {
		t.Errorf("merge: L4 %v, ACME-X1 %v, H100 %v", merged["NVIDIA-L4"], merged["ACME-X1"], merged["NVIDIA-H100-80GB-HBM3"])
	}
	if base["NVIDIA-L4"].Max != 72_000 {
		t.Error("Merge changed its receiver")
	}
}

func FuzzParseCatalog(f *testing.F) {
	f.Add("gpu_product,min_w,default_w,max_w\nNVIDIA-A16,48.75,62.5,62.5\n")
	f.Add("# c\ngpu_product,min_w,default_w,max_w\nX,1,1,1\nY,0.001,1.5,9999999.999\n")
	f.Add("gpu_product,min_w,default_w,max_w\n,,,\n")
	f.Fuzz(func(t *testing.T, csv string) {
		c, err := policy.ParseCatalog(strings.NewReader(csv))
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		for product, r := range c {
			if r.Min <= 0 || r.Min > r.Default || r.Default > r.Max || policy.NormalizeProduct(product) != product {
				t.Fatalf("accepted an invalid row %q: %v", product, r)
			}
		}
	})
}

func TestMilliwattsToWatts(t *testing.T) {
	for _, tt := range []struct {
		mw       policy.Milliwatts
		down, up policy.Watts
		exact    float64
		text     string
	}{
		{48750, 48, 49, 48.75, "48.75"},
		{700000, 700, 700, 700, "700"},
		{1, 0, 1, 0.001, "0.001"},
		{0, 0, 0, 0, "0"},
	} {
		if got := tt.mw.WattsDown(); got != tt.down {
			t.Errorf("%d mW WattsDown = %d; want %d", tt.mw, got, tt.down)
		}
		if got := tt.mw.WattsUp(); got != tt.up {
			t.Errorf("%d mW WattsUp = %d; want %d", tt.mw, got, tt.up)
		}
		if got := tt.mw.WattsExact(); got != tt.exact {
			t.Errorf("%d mW WattsExact = %v; want %v", tt.mw, got, tt.exact)
		}
		if got := tt.mw.String(); got != tt.text {
			t.Errorf("%d mW String = %q; want %q", tt.mw, got, tt.text)
		}
		if tt.down.MW() > tt.mw || tt.up.MW() < tt.mw {
			t.Errorf("%d mW: %d W and %d W do not bracket it", tt.mw, tt.down, tt.up)
		}
	}
}
