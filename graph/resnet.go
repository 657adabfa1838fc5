package graph

import (
	"fmt"

	"github.com/gotrain/gotrain/graph/nn"
)

// resnet is the CIFAR ResNet of He et al. (2016, section 4.2) with
// torchvision's names and initialisation: a 3x3 convolution to 16
// channels, three stages of n basic blocks (16, 32 and 64 channels; the
// first block of stages 2 and 3 halves the resolution with stride 2 and
// takes its shortcut through a strided 1x1 convolution and BatchNorm,
// torchvision's "downsample"), global average pooling and a linear layer:
// 6n+2 layers. Parameter names are those of a torchvision-style module
// (conv1, bn1, layer1.0.conv1, ..., layer3.0.downsample.0, fc), so that
// PyTorch loads the weights with strict=True (cmd/gotrain/peer/resnet.py
// is that module).
func resnet(s *nn.Scope, spec Spec) (nn.Module, error) {
	depth := spec.Depth
	if depth == 0 {
		depth = 20
	}
	if depth < 8 || (depth-2)%6 != 0 {
		return nil, fmt.Errorf("resnet depth %d must be 6n+2 with n >= 1 (20, 32, 44, 56, 110)", depth)
	}
	if spec.InH < 4 || spec.InW < 4 {
		return nil, fmt.Errorf("resnet needs inputs of at least 4x4, got %dx%d", spec.InH, spec.InW)
	}
	n := (depth - 2) / 6
	layers := []nn.Module{
		kaimingConv(s.Sub("conv1"), spec.InC, 16, 3, 1, 1), nn.NewBatchNorm(s.Sub("bn1"), 16), nn.ReLU{},
	}
	in := 16
	for stage, width := range []int{16, 32, 64} {
		ls := s.Sub(fmt.Sprintf("layer%d", stage+1))
		for i := 0; i < n; i++ {
			stride := 1
			if stage > 0 && i == 0 {
				stride = 2
			}
			layers = append(layers, newBasicBlock(ls.Index(i), in, width, stride))
			in = width
		}
	}
	layers = append(layers, nn.GlobalAvgPool2d{}, nn.NewLinear(s.Sub("fc"), 64, spec.Classes))
	return nn.Seq(layers...), nil
}

// kaimingConv is a convolution without bias, initialised as torchvision's
// ResNets initialise theirs.
func kaimingConv(s *nn.Scope, in, out, k, stride, pad int) *nn.Conv2d {
	c := nn.NewConv2dNoBias(s, in, out, k, stride, pad)
	c.Weight.Init = nn.KaimingNormalFanOut(out * k * k)
	return c
}

// basicBlock is torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).
type basicBlock struct {
	conv1, conv2 *nn.Conv2d
	bn1, bn2     *nn.BatchNorm
	down         *nn.Sequential // nil: the identity
}

func newBasicBlock(s *nn.Scope, in, out, stride int) *basicBlock {
	b := &basicBlock{
		conv1: kaimingConv(s.Sub("conv1"), in, out, 3, stride, 1), bn1: nn.NewBatchNorm(s.Sub("bn1"), out),
		conv2: kaimingConv(s.Sub("conv2"), out, out, 3, 1, 1), bn2: nn.NewBatchNorm(s.Sub("bn2"), out),
	}
	if stride != 1 || in != out {
		d := s.Sub("downsample")
		b.down = nn.Seq(kaimingConv(d.Index(0), in, out, 1, stride, 0), nn.NewBatchNorm(d.Index(1), out))
	}
	return b
}

func (b *basicBlock) Forward(c nn.Ctx, x nn.T) nn.T {
	h := c.ReLU(b.bn1.Forward(c, b.conv1.Forward(c, x)))
	h = b.bn2.Forward(c, b.conv2.Forward(c, h))
	short := x
	if b.down != nil {
		short = b.down.Forward(c, x)
	}
	return c.ReLU(c.Add(h, short))
}
