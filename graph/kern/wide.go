package kern

import "fmt"

// WideW is the width of ns planes w wide side by side, a zero column
// between two of them: ns·(w+1)-1.
func WideW(w, ns int) int { return ns*(w+1) - 1 }

// GatherWide lays the c planes (h x w) of ns samples of src (sample-major,
// c·h·w values each) side by side into dst, c planes of h rows of
// WideW(w, ns): sample s's row in columns s·(w+1) to s·(w+1)+w-1, a zero
// column after each sample's row but the last. It writes nothing else
// and panics when a slice is too short.
func GatherWide(dst, src []float32, c, h, w, ns int) {
	checkWide("GatherWide", len(dst), len(src), c, h, w, ns)
	if native {
		cGatherWide(dst, src, c, h, w, ns)
		return
	}
	goGatherWide(dst, src, c, h, w, ns)
}

// ScatterWide is GatherWide's inverse: it copies the samples' rows of src
// (c planes of h rows of WideW(w, ns)) back to their planes in dst, the
// zero columns dropped, and writes nothing else.
func ScatterWide(dst, src []float32, c, h, w, ns int) {
	checkWide("ScatterWide", len(src), len(dst), c, h, w, ns)
	if native {
		cScatterWide(dst, src, c, h, w, ns)
		return
	}
	goScatterWide(dst, src, c, h, w, ns)
}

func checkWide(op string, wide, planes, c, h, w, ns int) {
	if c < 1 || h < 1 || w < 1 || ns < 1 {
		panic(fmt.Sprintf("kern.%s: %d planes of %dx%d, %d samples", op, c, h, w, ns))
	}
	if wide < c*h*WideW(w, ns) || planes < ns*c*h*w {
		panic(fmt.Sprintf("kern.%s: %d wide values (want %d), %d plane values (want %d)", op, wide, c*h*WideW(w, ns), planes, ns*c*h*w))
	}
}

func goGatherWide(dst, src []float32, c, h, w, ns int) {
	ww, hw := WideW(w, ns), h*w
	for ch := 0; ch < c; ch++ {
		for y := 0; y < h; y++ {
			row := dst[(ch*h+y)*ww:][:ww]
			for s := 0; s < ns; s++ {
				o := s * (w + 1)
				copy(row[o:o+w], src[(s*c+ch)*hw+y*w:][:w])
				if s+1 < ns {
					row[o+w] = 0
				}
			}
		}
	}
}

func goScatterWide(dst, src []float32, c, h, w, ns int) {
	ww, hw := WideW(w, ns), h*w
	for ch := 0; ch < c; ch++ {
		for y := 0; y < h; y++ {
			row := src[(ch*h+y)*ww:][:ww]
			for s := 0; s < ns; s++ {
				o := s * (w + 1)
				copy(dst[(s*c+ch)*hw+y*w:][:w], row[o:o+w])
			}
		}
	}
}
