// Package scratch owns the temporary directories of development runs — the
// embedded broker's log, a demo's state, a bench's data — and their removal,
// also after a run that was killed and could not remove its own.
package scratch

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
)

// lockName is the file in a scratch directory that its process holds
// locked (flock) while it runs. The kernel drops the lock when the process
// ends, however it ends, which is how a later run tells a directory left by
// a killed one from a directory in use.
const lockName = "owner.lock"

// Dir is a temporary directory held by this process.
type Dir struct {
	Path string
	lock *os.File
}

// Make removes the directories in the system's temporary directory that
// earlier runs named by prefix left behind (see RemoveAbandoned), and makes
// a new one, held until Remove. The directory gets its final name only once
// it is locked, so that no one sees it unlocked meanwhile.
func Make(prefix string, log *slog.Logger) (*Dir, error) {
	RemoveAbandoned(os.TempDir(), prefix, log)
	making, err := os.MkdirTemp("", "."+prefix+"*")
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(making, lockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err == nil {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	}
	path := filepath.Join(filepath.Dir(making), filepath.Base(making)[1:])
	if err == nil {
		err = os.Rename(making, path)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		os.RemoveAll(making)
		return nil, fmt.Errorf("make a locked temporary directory %s: %w", making, err)
	}
	return &Dir{Path: path, lock: f}, nil
}

// Remove deletes the directory and lets go of it.
func (d *Dir) Remove() error {
	err := os.RemoveAll(d.Path)
	d.lock.Close()
	return err
}

// RemoveAbandoned removes the directories in tmpDir named prefix… whose
// process is gone: a demo, bench or broker killed with SIGKILL cannot remove
// its own, and a bench leaves gigabytes. A directory whose lock someone holds
// is in use and stays; so does one without a lock file, which Make did not
// make.
func RemoveAbandoned(tmpDir, prefix string, log *slog.Logger) {
	dirs, _ := filepath.Glob(filepath.Join(tmpDir, prefix+"*"))
	for _, dir := range dirs {
		f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR, 0)
		if err != nil {
			continue
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			err = os.RemoveAll(dir)
			if err == nil {
				log.Info("removed a temporary directory whose process is gone", "dir", dir)
			}
		} else if errors.Is(err, syscall.EWOULDBLOCK) {
			err = nil
		}
		f.Close()
		if err != nil {
			log.Warn("could not remove an abandoned temporary directory", "dir", dir, "err", err)
		}
	}
}
