// Package sdnotify tells systemd that a long-running command is ready or stopping (Type=notify
// units: deploy/systemd/). Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.
package sdnotify

import "github.com/coreos/go-systemd/v22/daemon"

// Ready reports that the service is serving: systemd then starts the units ordered after it.
// Errors (a socket that went away) are ignored: readiness is advice, never a reason to stop.
func Ready() { _, _ = daemon.SdNotify(false, daemon.SdNotifyReady) }

// Stopping reports that the service began its shutdown (flushing what it holds).
func Stopping() { _, _ = daemon.SdNotify(false, daemon.SdNotifyStopping) }
