package job

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/nccl"
	"github.com/gotrain/gotrain/trainer/dist"
	"github.com/gotrain/gotrain/trainer/dist/rendezvous"
)

// joinNCCL makes the job's NCCL communicator: rank 0 creates the unique ID
// and publishes it in the rendezvous store, every rank reads it and calls
// ncclCommInitRank, on a GPU with that GPU's context current (NCCL takes
// the current device as the communicator's). NCCL's own environment
// (NCCL_DEBUG, NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...) reaches the library
// untouched. With a device, the collectives on host buffers (the
// parameters' broadcast, loss and evaluation sums, pipeline activations)
// go through two staging buffers on it (device.Staging), since NCCL on a
// GPU reads device memory only; the gradient buckets are device memory
// already. Without one the buffers are host memory, which only the test
// stand-in library serves.
func joinNCCL(ctx context.Context, env rendezvous.Env, store *rendezvous.Client, log *slog.Logger, dev device.Device) (dist.Communicator, error) {
	lib, err := nccl.Load("")
	if err != nil {
		return nil, fmt.Errorf("--backend nccl: %w", err)
	}
	major, minor, patch, _, err := lib.Version()
	if err != nil {
		return nil, err
	}
	log.Info("nccl", "library", lib.Path(), "version", fmt.Sprintf("%d.%d.%d", major, minor, patch))
	const key = "nccl/unique_id"
	var id nccl.UniqueID
	if env.Rank == 0 {
		if id, err = lib.GetUniqueID(); err != nil {
			return nil, err
		}
		b, _ := id.MarshalBinary()
		if err := store.Set(ctx, key, b); err != nil {
			return nil, fmt.Errorf("rank 0: publishing the NCCL unique ID: %w", err)
		}
	} else {
		b, err := store.Get(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("rank %d: reading the NCCL unique ID from rank 0: %w", env.Rank, err)
		}
		if err := id.UnmarshalBinary(b); err != nil {
			return nil, err
		}
	}
	var comm *nccl.Comm
	initRank := func() error {
		var err error
		comm, err = lib.InitRank(env.WorldSize, id, env.Rank)
		return err
	}
	if d, ok := dev.(interface{ Do(func() error) error }); ok {
		err = d.Do(initRank) // the GPU's context current on this thread
	} else {
		err = initRank()
	}
	if err != nil {
		return nil, fmt.Errorf("rank %d: ncclCommInitRank: %w", env.Rank, err)
	}
	c, err := nccl.NewCommunicator(comm)
	if err != nil {
		return nil, err
	}
	if dev != nil {
		c.UseStaging(device.NewStaging(dev))
		log.Info("nccl: host buffers staged through the device", "device", dev.Name())
	}
	return c, nil
}

var _ nccl.Staging = (*device.Staging)(nil)
