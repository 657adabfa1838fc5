package cuda

import "errors"

// ErrNotBuilt is returned by Open and Count in a build without the gpu tag.
var ErrNotBuilt = errors.New("this gotrain was built without GPU support: build it with 'make build-gpu' (go build -tags gpu, needs the CUDA 11.8 or 12 headers) or use the gotrain GPU image")
