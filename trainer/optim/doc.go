// Package optim provides optimisers, learning-rate schedules and gradient
// clipping for gotrain. Parameters and gradients are flat []float32 slices
// owned by the caller; the package reproduces PyTorch's semantics
// (torch.optim.SGD, Adam, AdamW, torch.nn.utils.clip_grad_norm_ and the
// StepLR / CosineAnnealingLR / LinearLR schedulers) and is tested against
// golden values produced by PyTorch (testdata/gen_golden.py, testdata/golden.json).
//
// # Parameters
//
// A [Param] is a named parameter: Data holds its values and Grad its
// gradient, both of the same length. Names must be non-empty and unique; they
// name the optimiser state in checkpoints.
//
// # Optimisers
//
// [New] builds an [Optimizer] from a [Config] and the parameter list. Its
// state buffers are allocated in New, so [Optimizer.Step] never allocates.
// Step(params, lr) must be given the same parameters (same order, names and
// lengths) on every call; lr is the learning rate for this step, typically
// Schedule.LR(step). For each parameter p with gradient g (element-wise, in
// float32 arithmetic like PyTorch on float32 tensors; scalar factors such as
// bias corrections are computed in float64 and then rounded to float32):
//
// "sgd" (torch.optim.SGD): with weight decay wd, momentum μ, dampening τ:
//
//	d = g + wd·p                   (only if wd ≠ 0)
//	b = d                          (first step: no dampening)
//	b = μ·b + (1−τ)·d              (later steps)
//	d = d + μ·b  if Nesterov, else d = b      (only if μ ≠ 0)
//	p = p − lr·d
//
// "adam" (torch.optim.Adam), step count t starting at 1, β1, β2, ε, coupled
// L2 weight decay wd:
//
//	g = g + wd·p                   (only if wd ≠ 0)
//	m = β1·m + (1−β1)·g
//	v = β2·v + (1−β2)·g²
//	denom = sqrt(v)/sqrt(1−β2^t) + ε
//	p = p − (lr/(1−β1^t))·m/denom
//
// "adamw" (torch.optim.AdamW): decoupled weight decay, applied to the
// parameter before the Adam update (with g not decayed):
//
//	p = p·(1 − lr·wd)
//	then as Adam, without the g + wd·p term.
//
// The element updates use fused multiply-adds where ATen's CPU kernels do
// (add with alpha, addcmul), so results agree with PyTorch 1.13 on x86-64
// bit for bit in the golden tests (the tests require 1e-6 relative).
//
// Defaults: Beta1 0.9, Beta2 0.999, Eps 1e-8 when the Config field is zero
// (so zero itself cannot be chosen for them); WeightDecay, Momentum and
// Dampening default to 0 (unlike PyTorch's AdamW, whose default weight decay
// is 0.01). Config fields the chosen optimiser does not use are ignored.
//
// # Checkpoint state
//
// [Optimizer.State] returns copies of the state tensors and the number of
// steps taken; [Optimizer.LoadState] restores them, after which Step continues
// exactly as an uninterrupted run would. Tensor names are the parameter name
// followed by PyTorch's state key:
//
//	sgd with Momentum > 0:  "<name>.momentum_buffer"
//	sgd with Momentum == 0: no tensors (only the step count)
//	adam, adamw:            "<name>.exp_avg", "<name>.exp_avg_sq"
//
// for example "fc1.weight.exp_avg". The step count is the number of Step
// calls (PyTorch's state["step"] for Adam; SGD counts too, and uses step 0 to
// know that the momentum buffer must be initialised from the gradient).
//
// # Schedules
//
// A [Schedule] maps a 0-based step to a learning rate with [Schedule.LR]:
//
//	warm-up (any kind, step < WarmupSteps): BaseLR·(step+1)/WarmupSteps
//	"constant": BaseLR
//	"step":     BaseLR·Gamma^floor(step/StepSize)     (step counted from 0, not from the end of warm-up)
//	"cosine":   MinLR + (BaseLR−MinLR)·(1+cos(π·t/T))/2, t = step−WarmupSteps, T = TotalSteps−WarmupSteps;
//	            MinLR for step ≥ TotalSteps
//
// The warm-up equals torch.optim.lr_scheduler.LinearLR(start_factor=1/W,
// total_iters=W−1); "step" equals StepLR; "cosine" equals CosineAnnealingLR
// with T_max = TotalSteps−WarmupSteps (chained after the warm-up as with
// SequentialLR), except that it holds MinLR after TotalSteps instead of
// rising again.
//
// # Gradient clipping
//
// [ClipGradNorm] computes the global L2 norm of all gradients, accumulating
// in float64, and scales them by maxNorm/(norm+1e-6) when that factor is
// below 1, like torch.nn.utils.clip_grad_norm_. maxNorm <= 0 only computes
// the norm. A NaN or +Inf norm means some gradient is not finite; the
// gradients are then left unchanged. [GradsFinite] checks the same without
// computing the norm.
//
// # Example
//
//	params := []optim.Param{
//		{Name: "fc1.weight", Data: w, Grad: gw},
//		{Name: "fc1.bias", Data: b, Grad: gb},
//	}
//	opt, err := optim.New(optim.Config{Name: "adamw", WeightDecay: 0.01}, params)
//	if err != nil {
//		return err
//	}
//	sched := optim.Schedule{Kind: "cosine", BaseLR: 1e-3, WarmupSteps: 100, TotalSteps: 10000}
//	if err := sched.Validate(); err != nil {
//		return err
//	}
//	for step := int64(0); step < sched.TotalSteps; step++ {
//		computeGradients(params) // fills gw, gb
//		if norm := optim.ClipGradNorm(params, 1.0); math.IsNaN(norm) || math.IsInf(norm, 0) {
//			continue // skip the update on non-finite gradients
//		}
//		opt.Step(params, sched.LR(step))
//	}
//	tensors, n := opt.State() // save with the checkpoint; later:
//	err = opt.LoadState(tensors, n)
//
// # Errors
//
// Configuration mistakes are errors: [New] rejects an unknown optimiser name
// (listing the valid ones), negative or non-finite momentum, dampening or
// weight decay, dampening above 1, Nesterov without momentum or with
// dampening, betas outside [0, 1), negative eps, an empty parameter list and
// parameters with empty or duplicate names or len(Grad) != len(Data).
// [Schedule.Validate] rejects an unknown kind (listing the valid ones) and
// out-of-range fields. [Optimizer.LoadState] returns an error naming the
// tensor that is missing, unexpected or of the wrong length (or a negative
// step) and then leaves the optimiser unchanged.
//
// An Optimizer is not safe for concurrent use.
//
// Programming errors in the training loop panic: Step with a negative, NaN
// or infinite learning rate, or with parameters that differ in number, name
// or length from those given to New. Step does not check gradients for
// NaN/Inf; use ClipGradNorm's result or GradsFinite to skip such steps.
package optim
