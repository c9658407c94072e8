package policy

import (
	"bufio"
	"bytes"
	_ "embed"
	"fmt"
	"io"
	"strings"
)

// Milliwatts is the unit of the catalog and of NVML: catalog figures such as
// 48.75 W are kept exact until bounds are rounded inward to whole watts.
type Milliwatts int64

// Range is the settable power-limit range of a GPU product.
type Range struct {
	Min, Default, Max Milliwatts
}

// Catalog maps a normalised GPU product label to its range.
type Catalog map[string]Range

//go:embed catalog.csv
var embeddedCatalog []byte

// catalogHeader is the first row of every catalog file.
const catalogHeader = "gpu_product,min_w,default_w,max_w"

// DefaultCatalog returns the catalog compiled into the binary.
func DefaultCatalog() Catalog {
	c, err := ParseCatalog(bytes.NewReader(embeddedCatalog))
	if err != nil {
		panic(fmt.Sprintf("embedded catalog.csv: %v", err)) // covered by TestDefaultCatalog
	}
	return c
}

// ParseCatalog reads a catalog in the CSV form of catalog.csv: '#' comments,
// the header row, then one product a row with watts as decimals (at most three
// fraction digits). Each row must satisfy 0 < min <= default <= max.
func ParseCatalog(r io.Reader) (Catalog, error) {
	c := Catalog{}
	sc := bufio.NewScanner(r)
	line, header := 0, false
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		if !header {
			if text != catalogHeader {
				return nil, fmt.Errorf("line %d: want header %q, got %q", line, catalogHeader, text)
			}
			header = true
			continue
		}
		fields := strings.Split(text, ",")
		if len(fields) != 4 {
			return nil, fmt.Errorf("line %d: want 4 fields (%s), got %d", line, catalogHeader, len(fields))
		}
		product := strings.TrimSpace(fields[0])
		if product == "" || NormalizeProduct(product) != product {
			return nil, fmt.Errorf("line %d: product %q must be a plain nvidia.com/gpu.product value without -SHARED or -MIG- suffix", line, product)
		}
		var mw [3]Milliwatts
		for i, f := range fields[1:] {
			v, err := parseWattsDecimal(strings.TrimSpace(f))
			if err != nil {
				return nil, fmt.Errorf("line %d: %s: %w", line, strings.Split(catalogHeader, ",")[i+1], err)
			}
			mw[i] = v
		}
		rng := Range{Min: mw[0], Default: mw[1], Max: mw[2]}
		if rng.Min <= 0 || rng.Min > rng.Default || rng.Default > rng.Max {
			return nil, fmt.Errorf("line %d: %s: want 0 < min <= default <= max, got %s", line, product, rng)
		}
		if _, dup := c[product]; dup {
			return nil, fmt.Errorf("line %d: product %s listed twice", line, product)
		}
		c[product] = rng
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read catalog: %w", err)
	}
	if !header {
		return nil, fmt.Errorf("no header %q", catalogHeader)
	}
	return c, nil
}

// parseWattsDecimal parses "48.75" as 48750 mW, exactly.
func parseWattsDecimal(s string) (Milliwatts, error) {
	whole, frac, _ := strings.Cut(s, ".")
	if whole == "" || len(whole) > 7 || len(frac) > 3 {
		return 0, fmt.Errorf("invalid watts %q: want a decimal such as 300 or 48.75", s)
	}
	var mw Milliwatts
	for _, c := range whole + (frac + "000")[:3] {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("invalid watts %q: want a decimal such as 300 or 48.75", s)
		}
		mw = mw*10 + Milliwatts(c-'0')
	}
	return mw, nil
}

// Merge returns c with the rows of o added, o winning where both name a product.
func (c Catalog) Merge(o Catalog) Catalog {
	out := make(Catalog, len(c)+len(o))
	for k, v := range c {
		out[k] = v
	}
	for k, v := range o {
		out[k] = v
	}
	return out
}

// Lookup finds the range of a product label as GFD writes it.
func (c Catalog) Lookup(label string) (Range, bool) {
	r, ok := c[NormalizeProduct(label)]
	return r, ok
}

// MinWatts is the smallest whole-watt limit in the range (rounded up).
func (r Range) MinWatts() Watts { return r.Min.WattsUp() }

// MaxWatts is the largest whole-watt limit in the range (rounded down).
func (r Range) MaxWatts() Watts { return r.Max.WattsDown() }

// DefaultWatts is the factory default limit, rounded up: what an unlimited pod can draw.
func (r Range) DefaultWatts() Watts { return r.Default.WattsUp() }

func (r Range) String() string {
	return fmt.Sprintf("min %s W, default %s W, max %s W", r.Min, r.Default, r.Max)
}

// The conversions to watts: NVML, the catalog and the ledger count
// milliwatts; pods, people and Prometheus read watts.

// WattsDown is m in whole watts, rounded down: the highest whole-watt limit
// m allows, and a limit as logs and Events say it.
func (m Milliwatts) WattsDown() Watts { return Watts(m / 1000) }

// WattsUp is m in whole watts, rounded up: the lowest whole-watt limit at or
// above m.
func (m Milliwatts) WattsUp() Watts { return Watts((m + 999) / 1000) }

// WattsExact is m in watts, exact: a metric's value.
func (m Milliwatts) WattsExact() float64 { return float64(m) / 1000 }

// String is m in exact decimal watts: "48.75".
func (m Milliwatts) String() string {
	s := fmt.Sprintf("%d.%03d", m/1000, m%1000)
	return strings.TrimSuffix(strings.TrimRight(s, "0"), ".")
}

// MW converts whole watts to milliwatts.
func (w Watts) MW() Milliwatts { return Milliwatts(w) * 1000 }
