package graph

import (
	"fmt"

	"github.com/gotrain/gotrain/graph/nn"
)

// The built-in models are ordinary users of package nn, registered by
// name like a program's own.
func init() {
	mustRegister("mlp", mlp)
	mustRegister("cnn", cnn)
	mustRegister("resnet", resnet)
}

// checkCommon refuses the settings both built-in models read.
func checkCommon(spec Spec) (nn.Module, error) {
	act, err := nn.Activation(spec.Activation)
	if err != nil {
		return nil, err
	}
	if spec.Dropout < 0 || spec.Dropout >= 1 {
		return nil, fmt.Errorf("dropout probability %v is outside [0,1)", spec.Dropout)
	}
	for _, h := range spec.Hidden {
		if h <= 0 {
			return nil, fmt.Errorf("hidden width %d must be positive", h)
		}
	}
	return act, nil
}

// mlp: Flatten, then Linear + activation (+ Dropout) per hidden width,
// then a Linear to the classes; parameters fc1 ... fcN+1.
func mlp(s *nn.Scope, spec Spec) (nn.Module, error) {
	act, err := checkCommon(spec)
	if err != nil {
		return nil, err
	}
	in := spec.InC * spec.InH * spec.InW
	layers := []nn.Module{nn.Flatten{}}
	for i, h := range spec.Hidden {
		layers = append(layers, nn.NewLinear(s.Sub(fmt.Sprintf("fc%d", i+1)), in, h), act)
		if spec.Dropout > 0 {
			layers = append(layers, nn.Dropout{P: spec.Dropout})
		}
		in = h
	}
	layers = append(layers, nn.NewLinear(s.Sub(fmt.Sprintf("fc%d", len(spec.Hidden)+1)), in, spec.Classes))
	return nn.Seq(layers...), nil
}

// cnn: LeNet-5 style, conv5x5(pad 2)-act-pool2-conv5x5-act-pool2-fc-act-fc;
// parameters conv1, conv2, fc1, fc2.
func cnn(s *nn.Scope, spec Spec) (nn.Module, error) {
	act, err := checkCommon(spec)
	if err != nil {
		return nil, err
	}
	c1, c2 := 16, 32
	h, w := spec.InH/2, spec.InW/2 // after conv1 (same size) and pool
	h, w = (h-4)/2, (w-4)/2        // after conv2 (valid) and pool
	if h <= 0 || w <= 0 {
		return nil, fmt.Errorf("cnn needs inputs of at least 12x12, got %dx%d", spec.InH, spec.InW)
	}
	layers := []nn.Module{
		nn.NewConv2d(s.Sub("conv1"), spec.InC, c1, 5, 1, 2), act, nn.MaxPool2d{K: 2},
		nn.NewConv2d(s.Sub("conv2"), c1, c2, 5, 1, 0), act, nn.MaxPool2d{K: 2},
		nn.Flatten{},
		nn.NewLinear(s.Sub("fc1"), c2*h*w, spec.Hidden[0]), act,
	}
	if spec.Dropout > 0 {
		layers = append(layers, nn.Dropout{P: spec.Dropout})
	}
	layers = append(layers, nn.NewLinear(s.Sub("fc2"), spec.Hidden[0], spec.Classes))
	return nn.Seq(layers...), nil
}
