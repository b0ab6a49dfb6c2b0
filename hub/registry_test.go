package hub

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestSessionsListsOpenSessionBeforeItsFolder: a session whose first round is being applied has
// no folder yet; Sessions must still report it active, or a /metrics scrape at that moment prunes
// the series its first batches just set (they would never come back). Sessions also lists the
// folder under the hub's lock, so a listing taken before a round cannot miss that round's session.
func TestSessionsListsOpenSessionBeforeItsFolder(t *testing.T) {
	m := NewMetrics()
	s, err := New(Config{DataDir: t.TempDir(), Listen: "127.0.0.1:-1", SessionIdle: time.Minute, Observe: m.Observe})
	if err != nil {
		t.Fatal(err)
	}
	m.Attach(s)
	s.mu.Lock()
	// Opened (as by a hello) and observed, not committed yet: no folder on disk.
	if _, err := s.openSession("S1"); err != nil {
		s.mu.Unlock()
		t.Fatal(err)
	}
	m.Observe(kvBatch("host-a", 7, 1))
	s.mu.Unlock()

	var found bool
	for _, si := range s.Sessions() {
		if si.Session == "S1" {
			found = true
			if si.Status != StatusActive {
				t.Fatalf("open session listed as %q", si.Status)
			}
		}
	}
	if !found {
		t.Fatalf("open session without a folder missing from Sessions(): %+v", s.Sessions())
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), `session="S1"`) {
		t.Fatalf("series of an active session pruned:\n%s", rec.Body.String())
	}
}
