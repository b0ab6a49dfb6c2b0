package main

import (
	"errors"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// demoStopGrace is how long a demo agent's process group has between SIGTERM (the demo's
// --timeout ran out, or it was interrupted) and SIGKILL.
const demoStopGrace = 10 * time.Second

// adoptOrphans makes this process the reaper of its descendants whose parent exits
// (PR_SET_CHILD_SUBREAPER), so reapGroup can wait for a demo agent's grandchildren too: the
// simulated vLLM's processes outlive a killed pmagent otherwise. An error leaves them to init.
func adoptOrphans() error { return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }

// ownGroup starts cmd in a process group of its own, whose every member gets SIGTERM when cmd's
// context ends, and SIGKILL (the leader, by os/exec) demoStopGrace later.
func ownGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = demoStopGrace
}

// reapGroup, after cmd (started with ownGroup) was waited for, kills what is left of its process
// group and waits for every member: with adoptOrphans they are this process's children by then,
// so when it returns none of them runs or is left a zombie. Errors other than "no such
// process/child" are returned.
func reapGroup(cmd *exec.Cmd) error {
	if cmd.Process == nil {
		return nil
	}
	pgid := cmd.Process.Pid
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	for {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(-pgid, &ws, 0, nil)
		switch {
		case errors.Is(err, syscall.ECHILD):
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case err != nil:
			return err
		}
	}
}
