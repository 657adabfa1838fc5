//go:build unix

package launch

import (
	"os"
	"syscall"
)

// sysProcAttr puts each worker in a process group of its own, so that a
// signal reaches everything the worker started, and a terminal's Ctrl-C
// reaches only the launcher, which forwards it.
func sysProcAttr() *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	setDeathSignal(a)
	return a
}

// signalGroup sends sig to p's process group (which p leads); errors (the
// group is gone) are ignored.
func signalGroup(p *os.Process, sig syscall.Signal) {
	if err := syscall.Kill(-p.Pid, sig); err != nil {
		_ = p.Signal(sig)
	}
}
