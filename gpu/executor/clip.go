package executor

import (
	"fmt"
	"math"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/trainer/optim"
)

// clipParts is how many partial sums of squares a gradient is split into
// on the device: enough threads to read memory at speed, few enough that
// one thread adds them up quickly.
const clipParts = 4096

// Clipper clips gradients on a device by their global L2 norm, as
// trainer/optim.ClipGradNorm does on the host (torch.nn.utils.
// clip_grad_norm_): the squares are summed in float64 on the device, each
// gradient's sum comes to the host (8 bytes per gradient), and the factor
// is optim.ClipCoef's. The sums are taken in another order than the
// host's, so the norm can differ from the host's in its last bits.
type Clipper struct {
	dev     device.Device
	partial device.Buffer // clipParts float64s
	sums    device.Buffer // a float64 per gradient
	host    []float32     // sums, read back
}

// NewClipper prepares clipping of up to grads gradients on dev.
func NewClipper(dev device.Device, grads int) (*Clipper, error) {
	c := &Clipper{dev: dev, host: make([]float32, 2*grads)}
	var err error
	if c.partial, err = dev.Alloc(2 * clipParts); err != nil {
		return nil, fmt.Errorf("executor: clipping buffers: %w", err)
	}
	if c.sums, err = dev.Alloc(2 * max(grads, 1)); err != nil {
		dev.Free(c.partial)
		return nil, fmt.Errorf("executor: clipping buffers: %w", err)
	}
	return c, nil
}

// Norm returns the global L2 norm of grads: NaN or +Inf exactly when one of
// them holds a NaN or an infinity.
func (c *Clipper) Norm(grads []Tensor) (float64, error) {
	sum, err := c.SumSquares(grads)
	return math.Sqrt(sum), err
}

// SumSquares is the sum of the squares of grads: Norm squared, which
// gradients split over processes (pipeline stages) add up before the root.
func (c *Clipper) SumSquares(grads []Tensor) (float64, error) {
	if 2*len(grads) > len(c.host) {
		return 0, fmt.Errorf("executor: %d gradients for a clipper of %d", len(grads), len(c.host)/2)
	}
	for k, g := range grads {
		n := g.Size()
		parts := min(n, clipParts)
		if parts == 0 {
			if err := c.dev.Launch("fill", 2, c.partial, float32(0), 2); err != nil {
				return 0, err
			}
			parts = 1
		} else if err := c.dev.Launch("sum_squares_parts", parts, g.Buf, c.partial, n, parts); err != nil {
			return 0, err
		}
		if err := c.dev.Launch("sum_f64_at", 1, c.partial, c.sums, parts, k); err != nil {
			return 0, err
		}
	}
	host := c.host[:2*len(grads)]
	if err := c.dev.Read(host, c.sums); err != nil {
		return 0, err
	}
	var sum float64
	for k := range grads {
		sum += f64At(host, k)
	}
	return sum, nil
}

// Clip scales grads in place so that their global norm is at most maxNorm
// (see optim.ClipGradNorm) and returns the norm before clipping; grads
// whose norm is not finite are left as they are. maxNorm <= 0 only
// computes the norm.
func (c *Clipper) Clip(grads []Tensor, maxNorm float64) (float64, error) {
	norm, err := c.Norm(grads)
	if err != nil {
		return 0, err
	}
	if f, ok := optim.ClipCoef(norm, maxNorm); ok {
		if err := c.Scale(grads, f); err != nil {
			return 0, err
		}
	}
	return norm, nil
}

// Scale multiplies grads by f (optim.ClipCoef's factor).
func (c *Clipper) Scale(grads []Tensor, f float32) error {
	for _, g := range grads {
		if n := g.Size(); n > 0 {
			if err := c.dev.Launch("scale_f32", n, g.Buf, n, f); err != nil {
				return err
			}
		}
	}
	return nil
}

// Free releases the clipper's buffers.
func (c *Clipper) Free() {
	if c.partial != nil {
		c.dev.Free(c.partial)
		c.dev.Free(c.sums)
		c.partial, c.sums = nil, nil
	}
}
