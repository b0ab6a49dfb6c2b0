package hub

import (
	"math/rand"
	"testing"
)

func TestSeqSetMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	var q seqSet
	ref := map[uint64]bool{}
	for i := 0; i < 20000; i++ {
		s := uint64(rng.Intn(3000))
		if got, want := q.add(s), !ref[s]; got != want {
			t.Fatalf("add(%d) = %v, want %v", s, got, want)
		}
		ref[s] = true
	}
	for s := uint64(0); s < 3100; s++ {
		if got := q.has(s); got != ref[s] {
			t.Fatalf("has(%d) = %v, want %v", s, got, ref[s])
		}
	}
	for i := 1; i < len(q.r); i++ {
		if q.r[i-1][1]+1 >= q.r[i][0] {
			t.Fatalf("ranges %v and %v overlap or touch", q.r[i-1], q.r[i])
		}
	}
}

func TestSeqSetGaps(t *testing.T) {
	var q seqSet
	for _, s := range []uint64{1, 2, 3, 7, 8, 5} {
		q.add(s)
	}
	got := q.gaps(10)
	want := [][2]uint64{{4, 4}, {6, 6}, {9, 10}}
	if len(got) != len(want) {
		t.Fatalf("gaps = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("gaps = %v, want %v", got, want)
		}
	}
}
