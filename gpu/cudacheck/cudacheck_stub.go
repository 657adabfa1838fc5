//go:build !gpu

package cudacheck

import "errors"

// Err says that this build has no CUDA to check: only the gpu build
// (go build -tags gpu) uses the driver.
var Err = errors.New("cudacheck: this gotrain was built without the gpu tag and does not use CUDA")
