// Package kern holds gotrain's native CPU kernels: the few loops that Go,
// without vector instructions, runs several times slower than the
// machine can, written in C with AVX2 and FMA intrinsics.
//
// # What it has
//
// [Conv3] and [Conv3DW]: the forward pass and the weight gradient of a 3x3
// convolution of stride 1 and padding 1, one sample at a time, NCHW. They
// are the bulk of a ResNet's work (and the input gradient of such a
// convolution is itself one, with the filters flipped and transposed). The
// im2col route that graph takes for other convolutions copies each sample
// nine times and then OpenBLAS packs the copy again; these read the sample
// where it lies, once padded:
//
//   - the sample's planes are copied into a zeroed scratch with rows of
//     W+1 (one zero after each row, the right padding of its row and the
//     left padding of the next), so that output (y, x) on that
//     padded-width grid is Σ over c and the nine (i, j) of
//     w[k][c][i][j]·xp[c][(y+i)(W+1) + x+j]: a shift of the plane per
//     (i, j), with no bounds to test;
//   - Conv3 computes 4 filters × 24 consecutive positions at once in 12
//     vector registers, broadcasting a weight and loading three vectors of
//     the shifted plane per (c, i, j), then keeps the W real outputs of
//     each padded row;
//   - Conv3DW takes, per filter and channel, the nine dot products of dY
//     (on the same grid, zero in the padding columns) with the nine shifts
//     of the plane, in eight lanes each, then sums the lanes;
//   - Conv3Bwd does both gradients of a sample from one padded copy of dY:
//     its padded plane is the input of the input gradient's convolution
//     (with the filters flipped and transposed) and, Wp+1 values on, the
//     weight gradient's grid; each result has the separate calls' bits.
//
// [Conv] and [ConvDW]: any kernel size, stride and padding ([Geom]), for
// the convolutions Conv3 does not take. They are vectorised over the
// filters instead of the positions: 6 output positions × 16 filters at
// once in 12 registers, from two vectors of the filters (laid out as
// [C][KH·KW][K]) and one broadcast input value per position and (c, i, j);
// a position's window starts at its own offset in the padded plane, so a
// stride costs nothing. graph takes them for strided convolutions (a
// ResNet's downsampling 3x3 and 1x1), which im2col copies slowly, and for
// windows of 5x5 and more over several channels (a LeNet's second
// convolution), whose im2col copies each value 25 times and more; on
// other convolutions of stride 1 they lose to Conv3 (wide planes) and to
// im2col with OpenBLAS (small planes, where streaming the filters from L2
// for every block of 6 positions dominates).
//
// [Im2Col] and [Col2Im]: the im2col route's copy of a sample into
// columns, and its adjoint, for the convolutions that take it.
//
// [MaxPool2Grad]: a 2x2 max pooling's input gradient, each window's
// gradient to the first of its maxima, chosen by masks rather than by
// branches that the data decide.
//
// [AdamUpdate]: torch.optim.Adam's update of a parameter and its moments,
// with ATen's float32 operations in their order, eight values at a time.
//
// [ChanSum], [ChanSqDev], [ChanMoments], [ChanGradSums], [ChanReLUGradSums],
// [ChanAffine], [ChanAffineReLU], [ChanAffine2], [ReLU], [ReLUGrad], [Add]: BatchNorm's
// per-channel float64 sums (eight lanes a plane, folded in a fixed order;
// ChanMoments takes the sum and the sum of squares about a guess of the
// mean in one pass) and maps (ChanAffineReLU: the map and then ReLU, for a
// BatchNorm that computes the ReLU reading it), ReLU, and the elementwise
// sum Gorgonia's Add runs on, vectorised by the compiler; the C is built
// without fused multiply-adds (-std=c11), so that their Go fallbacks
// (elem_generic.go) give the same bits. The convolutions' short row copies
// stay loops rather than calls of memcpy (a pragma in conv.c and convk.c).
//
// # Results
//
// The sums run in a fixed order that depends only on the geometry, never
// on the batch or on how many goroutines share it: the same sample gives
// the same bits on every rank. They differ from the im2col and BLAS route
// in the last bits (another order of the same float32 sums).
//
// # Availability
//
// The kernels need cgo, amd64 and a CPU with AVX2 and FMA; [Available]
// says whether they run here, and [Why] why not. GOTRAIN_CPU_KERNELS=off
// turns them off (graph then takes its im2col route), for comparison.
// Callers check Available and take their own route otherwise (Im2Col,
// Col2Im, the elementwise kernels, MaxPool2Grad and AdamUpdate run their
// Go fallbacks themselves, with the same bits); the functions panic when
// called without it, or with slices too short for the geometry, as BLAS
// does on programmer errors.
package kern

// Available reports whether the native kernels run on this machine.
func Available() bool { return native }

// Why says why the native kernels are not available ("" when they are).
func Why() string { return why }
