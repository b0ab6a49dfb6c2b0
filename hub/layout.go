package hub

import (
	"sort"
	"strconv"
)

// learnLayout takes the instance key and node rank a lifecycle record gives (agents set them on
// every record of a process of a multi-node instance) into the process's metadata, the session's
// instance keys and its host's node rank. An unknown value never overwrites a known one.
func (s *session) learnLayout(m *ProcMeta, l *Life) {
	changed := false
	if l.InstanceKey != "" && m.InstanceKey != l.InstanceKey {
		m.InstanceKey, changed = l.InstanceKey, true
		i := sort.SearchStrings(s.meta.Instances, l.InstanceKey)
		if i == len(s.meta.Instances) || s.meta.Instances[i] != l.InstanceKey {
			s.meta.Instances = append(s.meta.Instances, "")
			copy(s.meta.Instances[i+1:], s.meta.Instances[i:])
			s.meta.Instances[i] = l.InstanceKey
		}
	}
	if l.NodeRank >= 0 && (m.NodeRank == nil || *m.NodeRank != l.NodeRank) {
		n := l.NodeRank
		m.NodeRank, changed = &n, true
	}
	if !changed {
		return
	}
	s.metaDirty = true
	// The host's node rank: the one its processes agree on.
	var node *int64
	for _, q := range s.meta.Processes {
		if q.Host != m.Host || q.NodeRank == nil {
			continue
		}
		if node != nil && *node != *q.NodeRank {
			node = nil
			break
		}
		n := *q.NodeRank
		node = &n
	}
	s.host(m.Host).NodeRank = node
}

// layoutOf sets b's InstanceKey and NodeRank from what the session's metadata knows of its
// process (for /metrics labels; "" when unknown).
func (s *session) layoutOf(b *Batch) {
	b.InstanceKey, b.NodeRank = s.layoutKey(b.Host, b.PID, b.Instance)
}

func (s *session) layoutKey(host string, pid int64, instance string) (key, node string) {
	p := s.procs[procKey{host, pid, instance}]
	if p == nil {
		return "", ""
	}
	if p.meta.NodeRank != nil {
		node = strconv.FormatInt(*p.meta.NodeRank, 10)
	}
	return p.meta.InstanceKey, node
}
