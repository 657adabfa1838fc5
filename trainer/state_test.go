package trainer

import (
	"math"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseShares: the balancer's shares come from a checkpoint's
// metadata, which may be hostile. parseShares never panics, and what it
// accepts is a list of positive finite numbers that reads back the same.
func FuzzParseShares(f *testing.F) {
	for _, s := range []string{"", "0.7,0.3", "1", "0.5,,0.5", "x", "1e308,1e308", "NaN", "-1", "0x1p-3,4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		w, err := parseShares(s)
		if err != nil {
			return
		}
		if s == "" {
			if w != nil {
				t.Fatalf("%q: shares %v from nothing", s, w)
			}
			return
		}
		parts := strings.Split(s, ",")
		if len(w) != len(parts) {
			t.Fatalf("%q: %d shares from %d parts", s, len(w), len(parts))
		}
		for i, v := range w {
			if !(v > 0) || math.IsInf(v, 0) {
				t.Fatalf("%q: share %d is %v", s, i, v)
			}
			back, err := strconv.ParseFloat(parts[i], 64)
			if err != nil || back != v {
				t.Fatalf("%q: share %d is %v, the text says %q", s, i, v, parts[i])
			}
		}
	})
}
