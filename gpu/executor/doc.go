// Package executor runs graph/'s programs on a device (package gpu/device).
//
// # Ops
//
// [NewOp] implements one op of graph/'s set on a device: the kernels and
// GEMMs it runs, and the scratch memory it keeps (im2col columns, the
// loss's per-row terms), allocated once, by the lowering registered for
// its kind (lower, in ops.go: one registration per op). Every kind that
// graph/ registers has one: TestEveryRegisteredOpHasALowering fails for a
// kind without.
// conformance_test.go runs each one against graph/'s CPU op on fresh
// random inputs, with the output poisoned with NaN before every run, on
// every device the build has: the host always, a GPU in the gpu build
// where one is present (relative error at most 1e-4).
//
// # Programs
//
// [Compile] lays a graph.Program out on a device ([graph.Program.Layout]):
// one buffer per node value, allocated once (a Reshape shares its input's),
// the parameters shared by every program of the model ([Params]), and the
// ops in order. [Program.Run] uploads a batch, draws the dropout masks
// with the device's counter-based RNG, runs the ops and reads back the
// loss; the gradients stay on the device for [Optimizer], trainer/optim's
// optimisers as fused kernels with their state on the device. Training the
// MLP and the CNN this way on the host device ends where graph/'s CPU
// programs with trainer/optim end (exec_test.go). [Program.SyncBatchNorm]
// makes its BatchNorm ops normalise by the statistics of a batch split
// across ranks: each reads its float64 sums back, has them summed across
// the ranks (graph.BatchSync) and writes them back before the kernels
// that use them (trainer's TestSyncBatchNormRanksEqualOneProcess). A
// training BatchNorm keeps its statistics in memory of its own for the
// gradient ops of the same X in the same run, which read them instead of
// taking them again (and, synchronised, summing them across the ranks
// again), and unsynchronised they take the sums of dY once for both: the
// same values with a third of the statistics' launches.
//
// Stage programs: [CompileStage] lays out a pipeline stage's program
// (graph.StageProgram.Layout) with only the stage's parameters on the
// device ([UploadParamsOf]); [Program.RunStage] takes the stage's input,
// the labels on the last stage and the output's gradient on the others,
// and leaves the output ([Program.Out]) and the input's gradient
// ([Program.DX]) on the device. stage_test.go checks every stage of the
// MLP and the CNN cut in 2 and 3 against graph/'s CPU stages.
//
// Inputs in a device's page-locked memory (device.Pinner) go up with
// queued copies: a caller may prepare the next batch while the device
// computes, into another buffer.
//
// # Clipping
//
// [Clipper] clips gradients by their global L2 norm on the device, as
// trainer/optim.ClipGradNorm does on the host: each gradient's squares are
// summed in float64 by a fixed number of threads and then in order, one
// float64 per gradient comes back, and the factor is optim.ClipCoef's. The
// clipped gradients equal the host's (clip_test.go); a NaN or an infinity
// shows in the norm and leaves them untouched.
package executor
