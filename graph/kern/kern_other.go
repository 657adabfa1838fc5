//go:build !cgo || !amd64

package kern

const (
	native = false
	why    = "built without cgo or not for amd64"
)

func conv3Scratch(c, h, w, k int) int                      { return 0 }
func conv3(x, wt, y, scratch []float32, c, h, w, k int)    {}
func conv3DW(x, dy, dw, scratch []float32, c, h, w, k int) {}

func cChanSum([]float32, int, int, int, int) float64                             { return 0 }
func cChanSqDev([]float32, int, int, int, int, float64) float64                  { return 0 }
func cChanGradSums(_, _ []float32, _, _, _, _ int, _ float64) (float64, float64) { return 0, 0 }
func cChanAffine(_, _ []float32, _, _, _, _ int, _, _ float32)                   {}
func cChanAffine2(_, _, _ []float32, _, _, _, _ int, _, _, _ float32)            {}
func cChanMoments([]float32, int, int, int, int, float64) (float64, float64)     { return 0, 0 }
func cPlaneMoments([]float32, int, int, []float32, []float64)                    {}
func cChanAffineReLU(_, _ []float32, _, _, _, _ int, _, _ float32)               {}
func cChanReLUGradSums(_, _, _, _ []float32, _, _, _, _ int, _ float64) (float64, float64) {
	return 0, 0
}
func cAdd(_, _, _ []float32)                          {}
func cReLU(_, _ []float32)                            {}
func cReLUGrad(_, _, _ []float32)                     {}
func cAdam(_, _, _, _ []float32, _ Adam)              {}
func cMaxPool2Grad(_, _, _, _ []float32, _, _, _ int) {}

func convkScratch(Geom) int                                    { return 0 }
func convk(Geom, []float32, []float32, []float32, []float32)   {}
func convkDW(Geom, []float32, []float32, []float32, []float32) {}

func conv3BwdScratch(c, h, w, k int) int                            { return 0 }
func conv3Bwd(x, dy, wT, dx, dw, scratch []float32, c, h, w, k int) {}

func cCol2Im(Geom, []float32, int, int, []float32) {}
func cIm2Col(Geom, []float32, []float32, int, int) {}

func cGatherWide(_, _ []float32, _, _, _, _ int)  {}
func cScatterWide(_, _ []float32, _, _, _, _ int) {}
