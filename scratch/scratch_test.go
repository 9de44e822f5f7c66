package scratch

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

const testPrefix = "walletguard-scratch-test-"

// TestMakeRemovesDirectoriesOfKilledRuns: a run killed with SIGKILL cannot
// remove its temporary directory; the next Make with the same prefix does,
// and leaves alone the directory of a run still going and one it did not
// make.
func TestMakeRemovesDirectoriesOfKilledRuns(t *testing.T) {
	if os.Getenv("WALLETGUARD_SCRATCH_CHILD") == "1" {
		d, err := Make(testPrefix, slog.New(slog.DiscardHandler))
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		if err := os.WriteFile(filepath.Join(d.Path, "state"), []byte("some state"), 0o600); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println(d.Path)
		time.Sleep(time.Minute) // until killed
		runtime.KeepAlive(d)    // its lock stays held until then
		os.Exit(0)
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	child := func() (*exec.Cmd, string) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMakeRemovesDirectoriesOfKilledRuns$")
		cmd.Env = append(os.Environ(), "WALLETGUARD_SCRATCH_CHILD=1")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, filepath.Join(tmp, testPrefix)) {
			t.Fatalf("child said %q, %v; want its directory under %s", line, err, tmp)
		}
		return cmd, strings.TrimSpace(line)
	}
	killed, killedDir := child()
	_, runningDir := child()
	foreign := filepath.Join(tmp, testPrefix+"foreign")
	if err := os.Mkdir(foreign, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := killed.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed.Wait()
	if _, err := os.Stat(killedDir); err != nil {
		t.Fatalf("the killed run's directory should still be there before the next Make: %v", err)
	}

	d, err := Make(testPrefix, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(killedDir); !os.IsNotExist(err) {
		t.Errorf("directory of the killed run %s still there (%v)", killedDir, err)
	}
	for _, dir := range []string{runningDir, foreign, d.Path} {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("%s was removed (%v); it is in use or not made by Make", dir, err)
		}
	}
	if err := d.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.Path); !os.IsNotExist(err) {
		t.Errorf("%s still there after Remove (%v)", d.Path, err)
	}
}
