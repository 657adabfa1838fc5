// Command fashioncnn is gotrain with a model of its own: a convolutional
// network written with package graph/nn and registered as "fashioncnn",
// for Fashion-MNIST (or any image data). Everything else is gotrain's
// command line (cli.Main), so every command takes the model by name:
//
//	gotrain launch --standalone --nproc-per-node 3 -- ./fashioncnn train --model fashioncnn \
//	    --dataset fashion-mnist --balance adaptive --checkpoint-dir ckpt --out w.safetensors
//	./fashioncnn train --model fashioncnn --dataset fashion-mnist --resume ckpt
//	./fashioncnn eval --checkpoint w.safetensors
//
// The network is LeNet-5's shape (as gotrain's built-in cnn), written as a
// user writes one: two 5x5 convolutions with ReLU and 2x2 max pooling, a
// hidden fully connected layer and the classifier, its Forward spelled
// out. Its parameters are named as PyTorch's state_dict names them:
// conv1.weight [16 C 5 5], conv2, fc1, fc2.
package main

import (
	"fmt"
	"os"

	"github.com/gotrain/gotrain/cmd/gotrain/cli"
	"github.com/gotrain/gotrain/graph"
	"github.com/gotrain/gotrain/graph/nn"
)

// CNN is the example's network.
type CNN struct {
	conv1, conv2 *nn.Conv2d
	fc1, fc2     *nn.Linear
	drop         nn.Dropout
}

// NewCNN declares the network for spec's input (C×H×W) and classes;
// --hidden sets the fully connected width (default 128), --dropout the
// dropout after it.
func NewCNN(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
	hidden := 128
	if len(spec.Hidden) > 0 {
		hidden = spec.Hidden[0]
	}
	if hidden < 1 || len(spec.Hidden) > 1 {
		return nil, fmt.Errorf("fashioncnn takes one --hidden width, got %v", spec.Hidden)
	}
	h, w := (spec.InH/2-4)/2, (spec.InW/2-4)/2 // after conv1 (same) + pool, conv2 (valid) + pool
	if h < 1 || w < 1 {
		return nil, fmt.Errorf("fashioncnn needs images of at least 12x12, got %dx%d", spec.InH, spec.InW)
	}
	return &CNN{
		conv1: nn.NewConv2d(s.Sub("conv1"), spec.InC, 16, 5, 1, 2),
		conv2: nn.NewConv2d(s.Sub("conv2"), 16, 32, 5, 1, 0),
		fc1:   nn.NewLinear(s.Sub("fc1"), 32*h*w, hidden),
		fc2:   nn.NewLinear(s.Sub("fc2"), hidden, spec.Classes),
		drop:  nn.Dropout{P: spec.Dropout},
	}, nil
}

// Forward is the network's computation, once per compiled program.
func (m *CNN) Forward(c nn.Ctx, x nn.T) nn.T {
	x = c.MaxPool2D(c.ReLU(m.conv1.Forward(c, x)), 2)
	x = c.MaxPool2D(c.ReLU(m.conv2.Forward(c, x)), 2)
	x = m.drop.Forward(c, c.ReLU(m.fc1.Forward(c, x))) // fc1 flattens its input
	return m.fc2.Forward(c, x)
}

func main() {
	if err := graph.Register("fashioncnn", NewCNN); err != nil {
		fmt.Fprintln(os.Stderr, "fashioncnn:", err)
		os.Exit(1)
	}
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
