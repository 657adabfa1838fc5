// Package graph defines gotrain's models as Gorgonia computation graphs
// built from a small, closed set of ops.
//
// # Models
//
// A model is written in Go with package graph/nn: modules that declare
// named parameters under a scope and add their computation to a program
// in Forward (see that package's manual). A [ModelFunc] makes one for a
// [Spec] (the input shape and class count, which usually come from the
// data); [Build] builds it, [Register] names it, and [New] builds a
// registered model by Spec.Kind. Three are registered here, written with
// nn like any program's own:
//
//   - "mlp": Flatten, then Linear+activation (+Dropout) per hidden width,
//     then a Linear to the classes. Default 784-256-10.
//   - "cnn": LeNet-5 style: Conv2D 5x5 (16 filters, padding 2), activation,
//     MaxPool2D 2x2, Conv2D 5x5 (32 filters), activation, MaxPool2D 2x2,
//     Flatten, Linear to Hidden[0] (default 128), activation (+Dropout),
//     Linear to the classes.
//   - "resnet": the CIFAR ResNet of He et al. (Spec.Depth = 6n+2 layers,
//     default 20): a 3x3 convolution to 16 channels, BatchNorm, ReLU, three
//     stages of n basic blocks (16, 32, 64 channels; stride 2 and a 1x1
//     strided "downsample" shortcut where the shape changes), global average
//     pooling and a linear layer, under torchvision's names (conv1, bn1,
//     layer1.0.conv1, ..., layer2.0.downsample.0, fc), so that the same
//     module in PyTorch (cmd/gotrain/peer/resnet.py) loads the weights with
//     strict=True. Convolutions have no bias and torchvision's
//     initialisation (kaiming normal, fan out).
//
// Building checks the model once at batch 1: its modules fit together,
// its output is [Classes] per sample, and every declared parameter takes
// part; errors name the layer.
//
// Parameters live in [Model.Params], in the order they were declared,
// under PyTorch's state_dict names and layouts ("fc1.weight" is [out, in],
// "conv1.weight" is [out, in, kh, kw]). Checkpoints, gradient buckets,
// device executors and pipeline stages all address them by name and
// index. Each is initialised by its declaration's nn.Init (PyTorch's
// default for Linear and Conv2d: uniform in ±1/sqrt(fan_in) for weights
// and biases), drawn from a PCG stream seeded by the model seed and the
// parameter's name, so the same seed gives the same model on every
// machine and adding a layer does not change the others.
//
// A parameter may be a buffer (nn.Scope.Buffer: BatchNorm's running_mean,
// running_var and num_batches_tracked): checkpointed and loaded like the
// others, never optimised. A training program updates BatchNorm's buffers
// in place, and its gradient slot for a buffer ([Program.Grad]) holds the
// buffer itself, so that a reduction of the gradients across ranks by
// their shares averages the buffers, and the optimiser sets each buffer to
// that average (trainer/optim.Param.Buffer): every rank ends a step with
// the same buffers. [Program.SyncBatchNorm] makes BatchNorm normalise by
// the statistics of the global batch instead, summed across the ranks.
//
// A model compiles one [Program] per batch size and mode ([Model.Program]):
// a training program computes the loss and every parameter's gradient
// (Gorgonia's symbolic differentiation, [gorgonia.Grad], over the ops'
// SymDiff) and applies dropout; an evaluation program computes the logits
// and loss only. A program is run by Gorgonia's tape machine. Every op owns
// its output buffer and reuses it from run to run, so buffers are planned
// once per program and the steady-state step allocates only the tape
// machine's small bookkeeping.
//
// # The op set
//
// Every node of a program is one of these ops (each implements [Op]:
// gorgonia.Op plus Kind and Attrs), and every gradient is expressed in the
// same set, so a device executor that implements these kinds can run any
// model this package builds. Shapes: N batch, C/K channels, H,W sizes.
//
//	Kind                     inputs                 output        gradient ops
//	Linear                   X[N,in] W[out,in] b    X·Wᵀ+b        MatMul(dY,W), MatMul(dYᵀ,X), SumRows(dY)
//	MatMul{trans_a,trans_b}  A, B                   op(A)·op(B)   (gradient op only)
//	SumRows                  X[N,M]                 [M]           (gradient op only)
//	Conv2D{stride,pad}       X[N,C,H,W] W[K,C,kh,kw] b[K]  [N,K,OH,OW]  Conv2DGradInput, Conv2DGradW, Conv2DGradB
//	Conv2D{no_bias}          X, W (no bias: before a BatchNorm)        Conv2DGradInput, Conv2DGradW
//	Conv2DGradInput          dY, W                  dX            (gradient op only)
//	Conv2DGradW              X, dY                  dW            (gradient op only)
//	Conv2DGradB              dY                     db[K]         (gradient op only)
//	MaxPool2D{kernel=stride} X[N,C,H,W]             [N,C,H/k,W/k] MaxPool2DGrad(X, Y, dY)
//	MaxPool2DGrad            X, Y, dY               dX            (to the first maximum of each window)
//	ReLU, Tanh, Sigmoid      X                      Y             ReLUGrad/TanhGrad/SigmoidGrad(Y, dY)
//	ReLUGrad, TanhGrad, SigmoidGrad  Y, dY          dX            (gradient ops only)
//	Mul                      X, M                   X·M           Mul(dY, M)  (dropout: M holds 0 or 1/(1-p))
//	Reshape{shape}           X                      X, new shape  Reshape(dY, shape of X)
//	SoftmaxCrossEntropy      logits[N,K] labels[N]  mean loss     SoftmaxCrossEntropyGrad
//	SoftmaxCrossEntropyGrad  logits, labels, g      (softmax−onehot)·g/N
//	Dot                      X, G                   Σ X·G         DotGrad(G, g)  (a pipeline stage's cost)
//	DotGrad                  G, g                   G·g           (gradient op only)
//	BatchNorm{eps,momentum,train}  X[N,C] or [N,C,H,W], weight, bias, running_mean, running_var, num_batches_tracked
//	                         Y (training: batch statistics, buffers updated; evaluation: running ones)
//	                                                              BatchNormGrad, BatchNormGradGamma, Conv2DGradB/SumRows (dbias)
//	BatchNormGrad{eps}       X, weight, dY          dX            (gradient op only: the statistics of X)
//	BatchNormGradGamma{eps}  X, dY                  dweight[C]    (gradient op only)
//	GlobalAvgPool            X[N,C,H,W]             [N,C]         GlobalAvgPoolGrad
//	GlobalAvgPoolGrad{h,w}   dY[N,C]                dX            (gradient op only)
//	AvgPool2D{kernel,stride} X[N,C,H,W]             window means  AvgPool2DGrad  (no padding, floor: PyTorch's AvgPool2d)
//	AvgPool2DGrad{kernel,stride,h,w}  dY            dX            (gradient op only)
//
// Gorgonia's own operators are recognised too (see the next section), as
// these kinds; Gorgonia differentiates them itself:
//
//	Add, Sub, Mul, Div       A, B (equal shapes)    elementwise    (Add: nn.Ctx.Add, and Grad's sum of a fan-out)
//	ElemScalar{op,scalar_first}  X and a scalar     X op s, s op X  + - ⊙ ÷, and < > <= >= giving 1 or 0
//	ElemUnary{fn}            X                      f(X)           neg exp ln sqrt square tanh sigmoid abs inv invSqrt cube
//	MatMul{trans_a,trans_b}  A, B                   gorgonia.Mul of matrices
//	Reshape, Repeat{axis}    X                      broadcasting   (Repeat: an axis of size 1 repeated; its count, SizeOf, is a constant)
//	ReduceSum{axis | all}    X                      Σ over an axis, or over all (Sum, Mean's first half)
//	Softmax{axis,log}        X                      SoftMax, LogSoftMax along an axis
//	SoftmaxGrad{axis,log}    X, Y, dY               dX (Gorgonia's SoftmaxDiff)
//	Transpose{perm}          X                      the axes permuted (perm "1,0,2")
//	Slice{axis,start,step}   X                      a range with a step along an axis, or one index (the axis goes)
//	SliceGrad{axis,start,step}  X, dY               zeros of X's shape with dY at the slice (Gorgonia's sliceIncrOp)
//	Concat{axis}             X1, X2, ...            the inputs one after another along an axis
//	BatchedMatMul{trans_a,trans_b}  A[B,M,K], B[B,K,N]  op(A[b])·op(B[b])
//
// # Gorgonia's own operators
//
// A model may call Gorgonia directly on the nodes nn.Ctx gives it
// (gorgonia.Mul, BroadcastAdd, Rectify, ...: cmd/examples/gorgoniamlp), and
// Gorgonia's Grad sums the gradients of a node with several consumers
// with its own Add (a residual connection, a tied weight). The set
// recognises those operators: Gorgonia runs them on the CPU, and a
// program's Layout gives device executors the registered op that computes
// the same in their place (TestRecognisedOperatorsComputeWhatGorgoniaComputes
// evaluates a Gorgonia-written model and its gradients with the
// recognised ops alone and gets Gorgonia's values). Each layer's nodes are
// checked as it is built; a node of any other Gorgonia operator is refused
// then, naming the layer, the operator and its inputs.
//
// Each op is registered once ([OpDef]: how to make it outside a graph,
// its cost in FLOPs; [LookupOp], [OpKinds], [NewOp], [OpFLOPs]), and
// gpu/executor registers a device lowering for each kind: its tests fail
// for a registered op without one.
//
// Linear and Conv2D carry a grad_x attribute: the first parametrised layer
// does not compute the gradient of its input (the data). The cross-entropy
// is computed with the log-sum-exp shift, so it stays finite for any
// logits. CPU kernels: matrix products through [cblas.Sgemm] (OpenBLAS,
// loaded at run time); convolutions sample by sample, the samples claimed
// one at a time by one worker per CPU. Where graph/kern's native kernels
// run (cgo, AVX2 and FMA; GOTRAIN_CPU_KERNELS=off turns them off), a 3x3
// convolution of stride 1 and padding 1 on planes at least 12 wide is a
// direct convolution (kern.Conv3: forward; the input gradient as the
// convolution of dY with the flipped filters; both gradients from one pass
// over each sample, kern.Conv3Bwd, whichever of the two ops runs first);
// on narrower planes (7x7) the same kernels take four samples side by
// side, a zero column between them; strided convolutions are kern.Conv;
// the others take each sample's
// im2col (in cache) and OpenBLAS, a stride-1 "same" convolution's im2col
// copied a plane at a time. BatchNorm's statistics are float64 sums in
// eight lanes, taken in one pass as moments about the running mean (a
// second pass where those cancel too much), its maps and ReLU vectorised;
// a BatchNorm whose output only a ReLU reads writes the ReLU's output in
// its one pass, and that ReLU's gradient takes the BatchNorm's gradient
// sums in its own (fuseBNReLU: a basic block's first BatchNorm, the
// stem's; the bits of the ops run apart);
// elementwise ops and pooling split across CPUs. Gorgonia's own Add runs
// on the programs' values through cpuEngine, split across CPUs in one
// pass. The loops split across CPUs run on a team of persistent workers
// that spin briefly between loops, as OpenMP's threads do (team.go),
// rather than on goroutines started for each loop.
//
// # Pipeline stages
//
// [Model.Stages] splits the layers of a model whose root module is an
// nn.Sequential into consecutive stages balanced by parameter count, for model (pipeline) parallelism. A [Stage] compiles
// its own programs: stage k takes stage k−1's output activations; a
// training program of a stage that is not the last has the cost
// Σ output·G, where G is the gradient that the next stage sent back, so
// that Gorgonia's Grad yields exactly the stage's parameter gradients and
// the gradient of its input (DX), which goes to the stage before. With
// micro-batches weighted by their size this gives the gradient of the
// whole batch (TestPipelineEqualsOneProcess: 2 and 4 stages, 50 SGD steps,
// max |Δ| 3e-8 against one process).
//
// # Example
//
//	m, err := graph.New(graph.Spec{Kind: "mlp"}, 1)
//	prog, err := m.Program(128, true)
//	copy(prog.X, batchPixels) // [128, 784], normalised
//	copy(prog.Y, batchLabels) // class indices as float32
//	loss, err := prog.Run(rng) // rng draws dropout masks
//	g := prog.Grad(0)          // gradient of m.Params[0], "fc1.weight"
//
// # Errors
//
// Building a model or program returns errors for bad specs and bad
// modules (unknown model or activation, shapes that do not fit, a
// parameter declared twice or never used). Running returns an error for bad
// input values (a label outside the classes). Ops panic only on programmer
// errors inside this package.
package graph
