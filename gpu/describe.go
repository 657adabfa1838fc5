package gpu

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
)

// Describe writes the device table of `gotrain devices`: the driver line,
// then one row per GPU with its index, name, memory, compute capability
// and UUID.
func Describe(w io.Writer, m Monitor) error {
	if m == nil {
		return errors.New("gpu: Describe: no monitor")
	}
	devs := m.Devices()
	if len(devs) == 0 {
		_, err := fmt.Fprintln(w, "NVIDIA driver loaded, but no GPUs found")
		return err
	}
	d0 := devs[0]
	driver := d0.DriverVersion
	if driver == "" {
		driver = "unknown"
	}
	head := fmt.Sprintf("NVIDIA driver %s", driver)
	if v := d0.CUDAVersion(); v != "" {
		head += ", CUDA " + v
	}
	plural := "s"
	if len(devs) == 1 {
		plural = ""
	}
	head += fmt.Sprintf(", %d GPU%s", len(devs), plural)
	if _, err := fmt.Fprintln(w, head); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tNAME\tMEMORY\tCOMPUTE\tDRIVER\tUUID")
	for _, d := range devs {
		name := d.Name
		if name == "" {
			name = "?"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", d.Index, name, formatBytes(d.MemTotalBytes), d.ComputeCapability(), d.DriverVersion, d.UUID)
	}
	return tw.Flush()
}

// openNVML is OpenNVML, replaced in tests.
var openNVML = OpenNVML

// DescribeSystem writes what `gotrain devices` prints: the GPU table when
// the NVIDIA driver loads, otherwise the "no NVIDIA driver found: ..."
// message; then a line on the CPU (logical CPUs, model from /proc/cpuinfo).
// A missing driver is not an error: it returns nil. An NVML failure after
// the driver has loaded (enumerating the devices) is printed and returned.
func DescribeSystem(w io.Writer) error {
	m, err := openNVML()
	var gpuErr error
	switch {
	case err == nil:
		gpuErr = Describe(w, m)
		if cerr := m.Close(); gpuErr == nil {
			gpuErr = cerr
		}
	case errors.Is(err, ErrNoDriver):
		if _, werr := fmt.Fprintln(w, err); werr != nil {
			return werr
		}
	default:
		if _, werr := fmt.Fprintln(w, "NVIDIA driver loaded but the GPUs could not be listed:", err); werr != nil {
			return werr
		}
		gpuErr = err
	}
	if _, werr := fmt.Fprintln(w, CPUDescription()); werr != nil {
		return werr
	}
	return gpuErr
}

// CPUDescription returns "CPU: 2 logical CPUs, AMD EPYC 7B13 (linux/amd64)";
// the model is left out where /proc/cpuinfo cannot be read or names none.
func CPUDescription() string {
	model := ""
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		model = parseCPUModel(f)
		f.Close()
	}
	return cpuLine(runtime.NumCPU(), model)
}

func cpuLine(n int, model string) string {
	s := fmt.Sprintf("CPU: %d logical CPU", n)
	if n != 1 {
		s += "s"
	}
	if model != "" {
		s += ", " + model
	}
	return s + " (" + runtime.GOOS + "/" + runtime.GOARCH + ")"
}

// parseCPUModel returns the first model line of /proc/cpuinfo: "model name"
// on x86, "Model" or "Hardware" on Arm boards, "cpu model" or "cpu" on others.
func parseCPUModel(r io.Reader) string {
	keys := []string{"model name", "Model", "Hardware", "cpu model", "cpu"}
	found := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.Join(strings.Fields(v), " ")
		if v == "" {
			continue
		}
		if _, seen := found[k]; !seen {
			found[k] = v
		}
		if k == keys[0] {
			break
		}
	}
	for _, k := range keys {
		if v := found[k]; v != "" {
			return v
		}
	}
	return ""
}

// formatBytes writes a byte count in binary units: "80.0 GiB".
func formatBytes(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit && exp < 5; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}
