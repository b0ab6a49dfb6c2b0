package hub

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// LockFile is the file in the data folder a running hub holds an exclusive flock(2) on, so two
// hubs never write one data folder (its sessions, its embedded JetStream store) at once. It holds
// the owner's pid as decimal text. The lock goes with the open file: Close releases it, and the
// kernel releases it when the process dies in any way (SIGKILL included), so a stale file never
// blocks a later start. The file itself is left in place.
const LockFile = "pmhub.lock"

// ErrDataInUse is wrapped by Start's error when another hub holds the data folder's LockFile.
var ErrDataInUse = errors.New("data folder in use by another hub")

// lockData takes the data folder's LockFile without waiting. Errors: ErrDataInUse (wrapped, with
// the folder and the holder's pid), or the file cannot be opened or written.
func lockData(dir string) (*os.File, error) {
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("hub: lock data folder: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &dataInUseError{dir: dir, pid: holderPID(path), lock: path}
		}
		return nil, fmt.Errorf("hub: lock %s: %w", path, err)
	}
	// The pid is written only while the lock is held, so the holder's pid is what a refused
	// second hub reads.
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("hub: write %s: %w", path, err)
	}
	return f, nil
}

// dataInUseError is Start's error when another hub holds the data folder; it wraps ErrDataInUse.
type dataInUseError struct{ dir, pid, lock string }

func (e *dataInUseError) Error() string {
	return fmt.Sprintf("hub: data folder %s is in use by another hub (pmhub pid %s holds %s); stop that hub or use another data folder",
		e.dir, e.pid, e.lock)
}

func (e *dataInUseError) Unwrap() error { return ErrDataInUse }

// holderPID is the pid recorded in a held lock file, or "unknown" when it cannot be read (the
// holder has locked but not yet written it).
func holderPID(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	if p := string(bytes.TrimSpace(b)); p != "" {
		if _, err := strconv.Atoi(p); err == nil {
			return p
		}
	}
	return "unknown"
}
