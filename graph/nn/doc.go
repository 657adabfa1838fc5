// Package nn is how a model is written for gotrain: as modules, in Go,
// the way PyTorch's torch.nn writes them, over Gorgonia graphs.
//
// # Modules, scopes and parameters
//
// A [Module] is a value with a Forward method. Its constructor declares
// the module's parameters under a [Scope]; Forward adds its computation to
// a program being built, through the [Ctx] it is given. A scope gives
// dotted names: a Linear made under s.Sub("fc1") declares "fc1.weight"
// [out, in] and "fc1.bias" [out], exactly the names and layouts of
// PyTorch's state_dict, so that PyTorch loads gotrain's weights with
// strict=True when the two models are written alike. A Sequential's
// children are named by their index (s.Index(0) gives "0.weight"), as in
// PyTorch.
//
// Every declaration is a [Param]: a parameter (optimised, its gradient
// all-reduced across ranks) or a buffer (checkpointed, not optimised). Its
// [Init] draws its first values from a random stream seeded by the run's
// seed and the parameter's name alone: inserting a layer does not change
// the start of any other.
//
// # Programs
//
// A model is compiled into one program per batch size and mode (see
// package graph: [graph.Model.Program]). Forward runs once per program, not
// per step: it may look at c.Train() (training or evaluation, fixed per
// program), c.Batch() and the shapes of its input freely. The program is a
// Gorgonia graph; gradients come from Gorgonia's symbolic differentiation.
// The ops a program may hold are those of package graph's op set; [Ctx]
// has a method for each.
//
// Errors need no checking at each call: the first one is kept, later
// calls return nil, and building the model or program returns that error,
// naming the layer it came from. A model is checked when it is built: its
// modules must fit together, its output must be the class scores ([N,
// classes]), and every declared parameter must take part.
//
// # Layers
//
// [Linear], [Conv2d] (any stride, 1x1, [NewConv2dNoBias] without bias),
// [BatchNorm] (PyTorch's BatchNorm1d and BatchNorm2d, with the buffers
// running_mean, running_var and num_batches_tracked, declared with
// [Scope.Buffer]), [GlobalAvgPool2d], [AvgPool2d], [MaxPool2d], [ReLU], [Tanh],
// [Sigmoid], [Dropout], [Flatten], [Sequential], and [Func] for a Forward
// written inline. A residual connection is c.Add(x, f(x)): Gorgonia's own
// Add, which also sums the two gradients of x in the backward pass.
// [KaimingNormalFanOut] is torchvision's initialisation of a ResNet's
// convolutions.
//
// A Forward may also call Gorgonia's operators itself on the nodes it is
// given (c.Param(p) is a parameter's node): gorgonia.Mul, BroadcastAdd,
// Rectify, the elementwise arithmetic and functions, Reshape, Sum and
// Mean; gotrain differentiates and runs them on every device (see package
// graph, and cmd/examples/gorgoniamlp). A Gorgonia error goes to c.Fail.
//
// # A complete model
//
// A model is a [graph.ModelFunc]: it declares its modules under the root
// scope for the input shape and class count the data gives (spec), and
// returns the root module. Registering it by name makes it a --model of
// the command line (a program that embeds gotrain) and of trainer.Config:
//
//	type Net struct {
//		fc1, fc2, out *nn.Linear
//		drop          nn.Dropout
//	}
//
//	func NewNet(s *nn.Scope, spec graph.Spec) (nn.Module, error) {
//		in := spec.InC * spec.InH * spec.InW
//		return &Net{
//			fc1:  nn.NewLinear(s.Sub("fc1"), in, 64),
//			fc2:  nn.NewLinear(s.Sub("fc2"), 64, 32),
//			out:  nn.NewLinear(s.Sub("out"), 32, spec.Classes),
//			drop: nn.Dropout{P: 0.1},
//		}, nil
//	}
//
//	func (n *Net) Forward(c nn.Ctx, x nn.T) nn.T {
//		h := c.Tanh(n.fc1.Forward(c, x))
//		h = n.drop.Forward(c, h) // active in training programs only
//		h = c.Tanh(n.fc2.Forward(c, h))
//		return n.out.Forward(c, h)
//	}
//
//	func init() { _ = graph.Register("net", NewNet) }
//
//	// then: graph.New(graph.Spec{Kind: "net", InC: 1, InH: 1, InW: 20, Classes: 12}, seed)
//	// or trainer.Config{Model: "net", ...}, with the shape from the data.
//
// Its state_dict names are fc1.weight, fc1.bias, fc2.weight, fc2.bias,
// out.weight, out.bias. A model whose root module is a [Sequential] can be
// split into pipeline stages between its layers; any other trains in every
// other mode.
package nn
