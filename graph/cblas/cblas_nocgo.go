//go:build !cgo

package cblas

func loadNative() (native, string) {
	return nil, "built with CGO_ENABLED=0, so no native BLAS can be loaded; rebuild with cgo for OpenBLAS"
}
