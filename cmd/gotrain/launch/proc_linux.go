//go:build linux

package launch

import "syscall"

// setDeathSignal has the kernel SIGKILL a worker when the launcher dies
// without stopping it (killed with SIGKILL itself, for instance).
func setDeathSignal(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
