package nn

import (
	"fmt"
	"math"
	"strings"
)

// Linear is PyTorch's nn.Linear: y = x·Wᵀ + b with weight [Out, In] and
// bias [Out], both initialised uniform in ±1/sqrt(In). An input of more
// than two dimensions is flattened per sample first.
type Linear struct {
	Weight, Bias *Param
	In, Out      int
}

// NewLinear declares "weight" and "bias" under s.
func NewLinear(s *Scope, in, out int) *Linear {
	return &Linear{
		Weight: s.Param("weight", FanIn(in), out, in),
		Bias:   s.Param("bias", FanIn(in), out),
		In:     in, Out: out,
	}
}

// Forward adds the layer.
func (l *Linear) Forward(c Ctx, x T) T {
	if x != nil && x.Dims() > 2 {
		x = Flatten{}.Forward(c, x)
	}
	return c.Linear(x, l.Weight, l.Bias)
}

// Conv2d is PyTorch's nn.Conv2d with square kernels, one stride and
// padding on every side: weight [Out, In, K, K], bias [Out], both
// initialised uniform in ±1/sqrt(In·K·K). An input given flat per sample
// ([N, size]) is seen as the model's input shape, [N, C, H, W].
type Conv2d struct {
	Weight, Bias    *Param
	In, Out, Kernel int
	Stride, Padding int
}

// NewConv2d declares "weight" and "bias" under s.
func NewConv2d(s *Scope, in, out, kernel, stride, padding int) *Conv2d {
	fan := in * kernel * kernel
	return &Conv2d{
		Weight: s.Param("weight", FanIn(fan), out, in, kernel, kernel),
		Bias:   s.Param("bias", FanIn(fan), out),
		In:     in, Out: out, Kernel: kernel, Stride: stride, Padding: padding,
	}
}

// NewConv2dNoBias declares "weight" only (PyTorch's bias=False), with
// PyTorch's default initialisation; set Weight.Init to change it (e.g.
// KaimingNormalFanOut, as torchvision's ResNets).
func NewConv2dNoBias(s *Scope, in, out, kernel, stride, padding int) *Conv2d {
	return &Conv2d{
		Weight: s.Param("weight", FanIn(in*kernel*kernel), out, in, kernel, kernel),
		In:     in, Out: out, Kernel: kernel, Stride: stride, Padding: padding,
	}
}

// Forward adds the convolution.
func (l *Conv2d) Forward(c Ctx, x T) T {
	if x != nil && x.Dims() == 2 {
		in := c.Input()
		if len(in) != 3 {
			c.Fail(fmt.Errorf("nn: Conv2d %s needs [N,C,H,W] input; the model's input is %v per sample", l.Weight.Name, in))
			return nil
		}
		x = c.Reshape(x, c.Batch(), in[0], in[1], in[2])
	}
	return c.Conv2D(x, l.Weight, l.Bias, l.Stride, l.Padding)
}

// BatchNorm is PyTorch's BatchNorm1d (input [N,C]) and BatchNorm2d
// ([N,C,H,W]): weight (ones) and bias (zeros) are parameters;
// running_mean (zeros), running_var (ones) and num_batches_tracked (one
// value, 0) are buffers, under PyTorch's names. A training program
// normalises by the batch's statistics and updates the buffers,
// running = (1-Momentum)·running + Momentum·batch (the variance
// unbiased); an evaluation program normalises by the running statistics.
type BatchNorm struct {
	Weight, Bias                               *Param
	RunningMean, RunningVar, NumBatchesTracked *Param
	C                                          int
	Eps, Momentum                              float64
}

// NewBatchNorm declares a BatchNorm of c channels under s with PyTorch's
// defaults, eps 1e-5 and momentum 0.1.
func NewBatchNorm(s *Scope, c int) *BatchNorm {
	return &BatchNorm{
		Weight:            s.Param("weight", Ones(), c),
		Bias:              s.Param("bias", Zeros(), c),
		RunningMean:       s.Buffer("running_mean", Zeros(), c),
		RunningVar:        s.Buffer("running_var", Ones(), c),
		NumBatchesTracked: s.Buffer("num_batches_tracked", Zeros(), 1),
		C:                 c, Eps: 1e-5, Momentum: 0.1,
	}
}

// Forward adds the normalisation.
func (l *BatchNorm) Forward(c Ctx, x T) T { return c.BatchNorm(x, l) }

// LayerNorm is PyTorch's nn.LayerNorm(D) over the last dimension of its
// input ([N, D] or [N, T, D]): weight (ones) and bias (zeros) of D values,
// eps 1e-5.
type LayerNorm struct {
	Weight, Bias *Param
	D            int
	Eps          float64
}

// NewLayerNorm declares a LayerNorm of d values under s.
func NewLayerNorm(s *Scope, d int) *LayerNorm {
	return &LayerNorm{Weight: s.Param("weight", Ones(), d), Bias: s.Param("bias", Zeros(), d), D: d, Eps: 1e-5}
}

// Forward adds the normalisation.
func (l *LayerNorm) Forward(c Ctx, x T) T { return c.LayerNorm(x, l) }

// GlobalAvgPool2d is PyTorch's AdaptiveAvgPool2d(1) followed by
// flatten(1): [N,C,H,W] -> [N,C].
type GlobalAvgPool2d struct{}

// Forward adds the pooling.
func (GlobalAvgPool2d) Forward(c Ctx, x T) T { return c.GlobalAvgPool2D(x) }

// AvgPool2d is PyTorch's AvgPool2d(Kernel, stride=Stride) without
// padding: the mean of each Kernel×Kernel window, Stride apart (Stride 0:
// Kernel, PyTorch's default).
type AvgPool2d struct{ Kernel, Stride int }

// Forward adds the pooling.
func (p AvgPool2d) Forward(c Ctx, x T) T {
	s := p.Stride
	if s == 0 {
		s = p.Kernel
	}
	return c.AvgPool2D(x, p.Kernel, s)
}

// KaimingNormalFanOut is torchvision's initialisation of a ResNet's
// convolutions (kaiming_normal_, mode fan_out, relu): N(0, 2/fanOut) with
// fanOut = out channels · kernel area.
func KaimingNormalFanOut(fanOut int) Init { return Normal(0, math.Sqrt(2/float64(max(fanOut, 1)))) }

// MaxPool2d is PyTorch's nn.MaxPool2d(K) (stride K, no padding).
type MaxPool2d struct{ K int }

// Forward adds the pooling.
func (l MaxPool2d) Forward(c Ctx, x T) T { return c.MaxPool2D(x, l.K) }

// ReLU, Tanh and Sigmoid are the activations.
type ReLU struct{}

// Forward adds max(x, 0).
func (ReLU) Forward(c Ctx, x T) T { return c.ReLU(x) }

// Tanh is the hyperbolic tangent.
type Tanh struct{}

// Forward adds tanh(x).
func (Tanh) Forward(c Ctx, x T) T { return c.Tanh(x) }

// Sigmoid is the logistic function.
type Sigmoid struct{}

// Forward adds 1/(1+e^-x).
func (Sigmoid) Forward(c Ctx, x T) T { return c.Sigmoid(x) }

// GELU is PyTorch's nn.GELU() (the exact form, x·Φ(x)).
type GELU struct{}

// Forward adds x·Φ(x).
func (GELU) Forward(c Ctx, x T) T { return c.GELU(x) }

// SiLU is PyTorch's nn.SiLU(): x·σ(x).
type SiLU struct{}

// Forward adds x·σ(x).
func (SiLU) Forward(c Ctx, x T) T { return c.SiLU(x) }

// Activations are the activations Activation knows by name.
var Activations = []string{"relu", "tanh", "sigmoid", "gelu", "silu"}

// Activation returns the activation named name ("relu", "tanh", "sigmoid",
// "gelu" or "silu").
func Activation(name string) (Module, error) {
	switch name {
	case "relu":
		return ReLU{}, nil
	case "tanh":
		return Tanh{}, nil
	case "sigmoid":
		return Sigmoid{}, nil
	case "gelu":
		return GELU{}, nil
	case "silu":
		return SiLU{}, nil
	}
	return nil, fmt.Errorf("nn: unknown activation %q (valid: %s)", name, strings.Join(Activations, ", "))
}

// Dropout is PyTorch's nn.Dropout(P): in a training program each value is
// zeroed with probability P and the others scaled by 1/(1-P); in an
// evaluation program it passes x through.
type Dropout struct{ P float64 }

// Forward adds the dropout.
func (l Dropout) Forward(c Ctx, x T) T {
	if l.P < 0 || l.P >= 1 {
		c.Fail(fmt.Errorf("nn: dropout probability %v is outside [0,1)", l.P))
		return nil
	}
	if l.P == 0 {
		return x
	}
	return c.Dropout(x, l.P)
}

// Flatten keeps the batch dimension and flattens the rest.
type Flatten struct{}

// Forward adds the reshape (nothing when x is already [N, size]).
func (Flatten) Forward(c Ctx, x T) T {
	if x == nil {
		return c.Reshape(nil)
	}
	s := x.Shape()
	if len(s) == 2 {
		return x
	}
	return c.Reshape(x, s[0], s.TotalSize()/s[0])
}

// Sequential runs its layers in order, as PyTorch's nn.Sequential. A
// model whose root is a Sequential can be split into pipeline stages
// between its layers.
type Sequential struct{ Layers []Module }

// Seq returns a Sequential of ms.
func Seq(ms ...Module) *Sequential { return &Sequential{Layers: ms} }

// Forward runs the layers.
func (q *Sequential) Forward(c Ctx, x T) T {
	for _, l := range q.Layers {
		if x == nil {
			return nil
		}
		x = l.Forward(c, x)
	}
	return x
}
