// Package trainer is gotrain's training loop: configuration, data, the
// model's programs, the optimiser and schedule, evaluation, checkpoints
// and metrics, for one process or one rank of a job, on the CPU or a
// device.
//
// # A run
//
// [New] validates a [Config], loads the data (or takes it from
// [WithSource] or [WithData]), builds the model (or takes it from
// [WithModel]) and the optimiser and, with Config.Resume, restores a
// checkpoint. [Trainer.Run] then, for each epoch:
//
//  1. shuffles the training set with a permutation that depends only on
//     (seed, epoch) (trainer/data.PermutationInto);
//  2. for each batch (the last one holds the remainder: nothing is
//     dropped), fills the program's input and labels with the training
//     source's Fill for (seed, epoch), runs forward and
//     backward, stops with [ErrNonFinite] if the loss or a gradient is NaN
//     or Inf (before the parameters are touched), clips the gradients'
//     global norm if asked, and takes an optimiser step with the
//     schedule's learning rate for that step;
//  3. evaluates on the test split and writes a checkpoint when a
//     checkpoint directory is set.
//
// Time enters through [WithClock], metrics leave through a metrics.Sink
// ([WithSink]) and progress through [WithProgress], so tests drive the loop
// exactly.
//
// # Design: one loop, an executor and a strategy
//
// Every mode runs through three parts, and only two factories choose
// between them (strategy.go):
//
//   - The loop (loop.go) owns the epochs and the permutation, the
//     schedule, the clipping decision (from the step's global norm),
//     divergence ([ErrNonFinite]), the evaluation cadence, checkpoints
//     (save), metrics and progress. It never asks which executor or
//     strategy it drives.
//   - An executor (executor.go) owns the parameters where they train,
//     their gradients and the optimiser's state: it runs a (micro-)batch
//     forward and backward with its dropout masks, sums the squares of the
//     step's gradients, scales them, takes the optimiser step, brings its
//     state to the host (sync) and evaluates. cpuExec runs graph's
//     programs (dropout from Program.RunAt with the sample's place in the
//     global batch); devRun (device.go, WithDevice) runs gpu/executor's.
//     A pipeline stage's side of each is stageExec (cpuStage, devStage in
//     devstage.go), and a data-parallel step's gradient reduction is a
//     gradReducer the executor picks: host buckets (hostReducer, ddp.go)
//     or buckets in device memory reduced by NCCL during the backward pass
//     (devReducer, devreduce.go). newExecutor chooses (and refuses
//     --precision on the CPU).
//   - A strategy (strategy.go) is how this rank takes part: start (the
//     configuration check, rank 0's state to every rank: jobstart.go),
//     which rows it computes (beginEpoch: a device's prefetcher), step
//     (micro-batches, reduction or stage sends), update, the local SGD
//     synchronisation after a step (stepped), the re-plan of the balancer
//     (endStep), settle (one model on the host, replicas verified) before
//     evaluation, checkpoints and the end, evaluate, and its own part of a
//     checkpoint. single (single.go): one process; allReduce (ddp.go): data
//     parallelism with balanced shares and gradient accumulation, also in
//     one process; localSGD (localsgd.go): wraps single or allReduce with
//     the averaging and DiLoCo's outer optimiser; pipeline (pipeline.go):
//     pipeline stages; asyncPS (async.go): the asynchronous parameter
//     server's worker, which runs its own loop because the server, not
//     the epochs, hands out the batches and no checkpoint is kept.
//     newStrategy chooses; each strategy's start refuses, with
//     [ErrConfig], the combinations it does not support (--pipeline-stages
//     without a job, with checkpoints, accumulation, balancing or another
//     --sync; --sync async without a transport or a second rank).
//
// # Data and model
//
// The trainer reads a training and a test trainer/data.Source: what
// [LoadSources] loads for Config.Dataset (mnist, fashion-mnist, synthetic,
// csv: DIR/train.csv and DIR/test.csv of Config.DataDir, the class in
// column Config.Label, features standardised by the training split; or
// folder: the image folders DIR/train and DIR/test, one folder of PNG or
// JPEG files per class, standardised per channel by the training split,
// whose images Config.Augment crops (padded by Config.Pad) and flips), or
// what a program gives:
//
//	train, _ := data.LoadCSV("train.csv", data.CSVOptions{Label: "species"})
//	train.Standardize()
//	test, _ := data.LoadCSV("test.csv", data.CSVOptions{Label: "species", Classes: train.Classes})
//	_ = test.SetNorm(train.Mean, train.Std)
//	t, err := trainer.New(cfg, trainer.WithSource(train, test))
//
// The model cfg names takes its input shape from the training source's
// input field ([C H W]; [H W] is 1×H×W, [F] features 1×1×F) and its class
// count from the target's (unless Config.Classes sets it); [WithModel]
// trains a model of the caller's instead. New refuses, with [ErrConfig],
// nil or empty sources, a target that is not one class index per sample,
// a test source whose fields differ from the training source's, and a
// model whose input size or number of outputs does not fit the data.
// Normalisation belongs to the source: the trainer has no case for any
// dataset. The test split is filled as epoch 0 of seed 0 wherever it is
// read, so every evaluation sees the same samples.
//
// # BatchNorm across ranks
//
// A model's buffers (BatchNorm's running statistics) travel with the
// gradients: a training program's gradient slot for a buffer holds the
// buffer as the step left it, the reduction across ranks weights it by the
// rank's share of the batch like a gradient, and the optimiser sets the
// buffer to the result (optim.Param.Buffer), so that every rank ends each
// step with bitwise the same buffers, the share-weighted mean of the ranks'
// (TestResNetRanksKeepIdenticalBuffers). Each rank normalises by the
// statistics of its own samples, as PyTorch's DDP does. With
// Config.SyncBatchNorm (--sync-batchnorm) BatchNorm normalises by the
// statistics of the global batch: the channels' sums and squared
// deviations in the forward pass and the share-weighted sums of dY and
// dY·x̂ in the backward pass are summed across the ranks, so N ranks train
// as one process (TestSyncBatchNormRanksEqualOneProcess: 2 and 3 ranks,
// even and 0.7/0.3 shares, within 4e-6 after 20 SGD steps, on the CPU and
// on the host device). On a device the sums come down to the host, are
// summed across the ranks there and go back up (gpu/executor's
// Program.SyncBatchNorm). It is refused with local SGD, async, gradient
// accumulation and pipeline stages, which it does not support yet. Local SGD averages buffers
// with the parameters; checkpoints hold them, and a resumed run continues
// bit for bit.
//
// # Checkpoints and resume
//
// A checkpoint (trainer/checkpoint, safetensors) holds the weights under
// their parameter names, the optimiser state under "optimizer.<name>", and
// metadata: format, step, epoch and batch within it, the config as JSON, a
// "trajectory" string (model, widths, dataset, batch size, optimiser,
// seed), the RNG description, the identity of the data trained on
// ([DataIdentity], which 'gotrain eval' checks), the training source's
// Meta (its name and normalisation constants, which [LoadTestSource]
// applies to a CSV test split) and the model's input shape and classes
// (which [LoadModel] builds it with). The RNG is counter-based (shuffle from
// (seed, epoch), dropout masks from (seed, step)), so these numbers are its
// whole state and a resumed run continues bit for bit: 2 epochs straight
// equal 1 epoch, stop, resume, 1 epoch. A checkpoint whose trajectory,
// tensor names or shapes differ from the run is refused before anything is
// loaded ([ErrCheckpoint]). Checkpoints are written at each epoch end,
// every Config.CheckpointEvery steps, when the run ends, and when the
// context is cancelled (SIGINT or SIGTERM in the CLI).
//
// # Errors
//
// Configuration errors wrap [ErrConfig] and name the flag; checkpoint
// errors wrap [ErrCheckpoint] or trainer/checkpoint.ErrCorrupt and name the
// file and tensor; divergence wraps [ErrNonFinite] and names the step and
// the last good checkpoint. Nothing in this package panics on bad input.
package trainer
