package cblas

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// naive is the reference: C = alpha*op(A)*op(B) + beta*C.
func naive(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				var av, bv float32
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				s += float64(av) * float64(bv)
			}
			c[i*ldc+j] = alpha*float32(s) + beta*c[i*ldc+j]
		}
	}
}

func TestSgemmMatchesReference(t *testing.T) {
	for _, th := range []int{1, 2, 3} {
		SetThreads(th)
		testSgemm(t)
	}
	SetThreads(1)
}

func testSgemm(t *testing.T) {
	t.Logf("backend: %s, threads %d", Backend(), Threads())
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		ta, tb  bool
		m, n, k int
		beta    float32
	}{
		{false, false, 7, 5, 3, 0}, {true, false, 4, 9, 6, 1}, {false, true, 33, 17, 65, 0.5}, {true, true, 8, 8, 8, 0}, {false, false, 128, 256, 784, 0},
		// Large enough to be split across goroutines, by rows and by columns.
		{true, false, 300, 70, 40, 1}, {false, true, 65, 301, 50, 0.5}, {true, true, 99, 97, 60, 0},
	} {
		rows := func(tr bool, r0, c0 int) (int, int) {
			if tr {
				return c0, r0
			}
			return r0, c0
		}
		ar, ac := rows(tc.ta, tc.m, tc.k)
		br, bc := rows(tc.tb, tc.k, tc.n)
		a, b := make([]float32, ar*ac), make([]float32, br*bc)
		c, want := make([]float32, tc.m*tc.n), make([]float32, tc.m*tc.n)
		for i := range a {
			a[i] = r.Float32() - 0.5
		}
		for i := range b {
			b[i] = r.Float32() - 0.5
		}
		for i := range c {
			c[i] = r.Float32()
			want[i] = c[i]
		}
		Sgemm(tc.ta, tc.tb, tc.m, tc.n, tc.k, 1.5, a, ac, b, bc, tc.beta, c, tc.n)
		naive(tc.ta, tc.tb, tc.m, tc.n, tc.k, 1.5, a, ac, b, bc, tc.beta, want, tc.n)
		for i := range c {
			require.InDelta(t, want[i], c[i], 1e-3, "case %+v element %d", tc, i)
		}
	}
}

func TestSgemmPanicsOnShortSlice(t *testing.T) {
	require.Panics(t, func() {
		Sgemm(false, false, 2, 2, 2, 1, make([]float32, 3), 2, make([]float32, 4), 2, 0, make([]float32, 4), 2)
	})
}

func TestBackendNamesItself(t *testing.T) {
	b := Backend()
	if Native() {
		require.Contains(t, b, "openblas")
	} else {
		require.Contains(t, b, "gonum")
	}
}
