package cli

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/gotrain/gotrain/gpu/cuda"
	"github.com/gotrain/gotrain/gpu/device"
	"github.com/gotrain/gotrain/trainer"
)

// openDevice resolves --device for the rank with this LOCAL_RANK: nil
// means the CPU.
//
//	cpu   the CPU
//	gpu   GPU LOCAL_RANK; an error when this build has no GPU support or
//	      the machine has no such GPU
//	auto  GPU LOCAL_RANK when the build and the machine have it and the
//	      run is one the device path trains, else the CPU (said in the log)
//	host  the device path with the host device (the GPU's kernels compiled
//	      for the CPU): for tests; $GOTRAIN_HOST_FAULT injects faults
//	      into it (see gpu/device's Faults)
func openDevice(cfg trainer.Config, local int, log *slog.Logger) (device.Device, error) {
	switch cfg.Device {
	case "", "cpu":
		return nil, nil
	case "host":
		return device.HostFromEnv()
	case "gpu":
		d, err := cuda.Open(local)
		if err != nil {
			return nil, fmt.Errorf("--device gpu: %w", err)
		}
		return d, nil
	}
	// auto
	n, err := cuda.Count()
	switch {
	case errors.Is(err, cuda.ErrNotBuilt):
		return nil, nil // the CPU build: nothing to choose
	case err != nil || n == 0:
		log.Info("training on the CPU: no GPU found", "err", err)
		return nil, nil
	case local >= n:
		log.Warn("training on the CPU: this node has fewer GPUs than local ranks", "local_rank", local, "gpus", n)
		return nil, nil
	}
	d, err := cuda.Open(local)
	if err != nil {
		return nil, fmt.Errorf("--device auto: %w", err)
	}
	return d, nil
}
