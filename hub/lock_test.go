package hub

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSecondHubOnOneDataFolderRefused: two Servers on one data folder (each with its own flock
// file description, as two processes would have) cannot both start; the second's error names the
// folder and the first one's pid, and starting the second leaves the first one's lock alone. Once
// the first closes, the folder is free again.
func TestSecondHubOnOneDataFolderRefused(t *testing.T) {
	data := t.TempDir()
	_, stop := runHub(t, Config{DataDir: data, SessionIdle: time.Hour})

	second, err := New(Config{DataDir: data, Listen: "127.0.0.1:-1"})
	if err != nil {
		t.Fatal(err)
	}
	err = second.Start(context.Background())
	if err == nil {
		second.Close()
		t.Fatal("a second hub started on a data folder another hub holds")
	}
	if !errors.Is(err, ErrDataInUse) {
		t.Fatalf("got %v, want ErrDataInUse", err)
	}
	for _, want := range []string{data, "pid " + strconv.Itoa(os.Getpid())} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	// The refused start must not have taken anything from the running one: a third try is refused too.
	third, _ := New(Config{DataDir: data, Listen: "127.0.0.1:-1"})
	if err := third.Start(context.Background()); !errors.Is(err, ErrDataInUse) {
		third.Close()
		t.Fatalf("third start: got %v, want ErrDataInUse", err)
	}

	stop()
	again, stopAgain := runHub(t, Config{DataDir: data, SessionIdle: time.Hour})
	if again.ClientURL() == "" {
		t.Fatal("hub on the released folder has no URL")
	}
	stopAgain()
}
