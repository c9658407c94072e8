package policy

import (
	"fmt"
	"strings"
)

// Bounds is the range of limits valid on every GPU product a pod can land on.
type Bounds struct {
	// Min and Max are whole watts: the highest minimum and the lowest maximum.
	Min, Max Watts
	// MinOf and MaxOf name the product that sets each bound.
	MinOf, MaxOf string
	// Known are the candidate products the catalog has, as normalised keys.
	Known []string
	// Unknown are the candidate labels the catalog lacks, as written.
	Unknown []string
	// Ranges describes each known product's range, for messages.
	Ranges []string
}

// BoundsOf intersects the ranges of the candidate products the catalog knows.
// Fractional catalog bounds round inward (ceil the minimum, floor the maximum).
func (c Catalog) BoundsOf(labels []string) Bounds {
	var b Bounds
	seen := map[string]bool{}
	for _, label := range labels {
		product := NormalizeProduct(label)
		r, ok := c[product]
		if !ok {
			b.Unknown = append(b.Unknown, label)
			continue
		}
		if seen[product] {
			continue
		}
		seen[product] = true
		if len(b.Known) == 0 || r.MinWatts() > b.Min {
			b.Min, b.MinOf = r.MinWatts(), product
		}
		if len(b.Known) == 0 || r.MaxWatts() < b.Max {
			b.Max, b.MaxOf = r.MaxWatts(), product
		}
		b.Known = append(b.Known, product)
		b.Ranges = append(b.Ranges, fmt.Sprintf("%s allows %d-%d W", product, r.MinWatts(), r.MaxWatts()))
	}
	return b
}

// ofWhich names the product that sets a bound, and says why it matters when
// the pod could land on several.
func (b Bounds) ofWhich(product, extreme string) string {
	if len(b.Known) == 1 {
		return product
	}
	return fmt.Sprintf("%s, the %s among the GPUs the pod can land on (%s)", product, extreme, strings.Join(b.Known, ", "))
}
