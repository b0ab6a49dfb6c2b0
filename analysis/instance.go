package analysis

import (
	"sort"
	"strings"
)

// replicaHosts returns the name analyses give the hosts of a data-parallel replica. Hosts of one
// multi-node instance are one name, all of them sorted and joined by "+" ("hostA+hostB"), so a
// replica whose workers span hosts is one replica, not one per host; any other host is named as
// itself (separate deployments on different hosts each have their own dp 0). Two hosts are of one
// instance when their processes name the same instance key (Process.InstanceKey, metadata's
// instance_key); when at most one of them names one (a plugin learns processes from their event
// batches, which carry no key), when their workers' global ranks are disjoint: separate
// deployments each have a rank 0. "+" is outside the host-name grammar (proto/names.go), so the
// name splits back with splitHosts.
func replicaHosts(src Source) func(host string) string {
	keys := map[string]string{}          // host -> instance key
	ranks := map[string]map[int64]bool{} // host -> global worker ranks
	for _, p := range src.Processes() {
		if p.Host == "" {
			continue
		}
		if p.InstanceKey != "" && keys[p.Host] == "" {
			keys[p.Host] = p.InstanceKey
		}
		if p.Role == "worker" && p.Rank >= 0 {
			if ranks[p.Host] == nil {
				ranks[p.Host] = map[int64]bool{}
			}
			ranks[p.Host][p.Rank] = true
		}
	}
	hosts := make([]string, 0, len(ranks)+len(keys))
	for h := range ranks {
		hosts = append(hosts, h)
	}
	for h := range keys {
		if ranks[h] == nil {
			hosts = append(hosts, h)
		}
	}
	sort.Strings(hosts)
	type group struct {
		key   string
		ranks map[int64]bool
		hosts []string
	}
	var groups []*group
	disjoint := func(a, b map[int64]bool) bool {
		if len(a) == 0 || len(b) == 0 {
			return false
		}
		for r := range a {
			if b[r] {
				return false
			}
		}
		return true
	}
	for _, h := range hosts {
		var into *group
		for _, g := range groups {
			k := keys[h]
			if (k != "" && k == g.key) || ((k == "" || g.key == "") && disjoint(ranks[h], g.ranks)) {
				into = g
				break
			}
		}
		if into == nil {
			into = &group{ranks: map[int64]bool{}}
			groups = append(groups, into)
		}
		into.hosts = append(into.hosts, h)
		if into.key == "" {
			into.key = keys[h]
		}
		for r := range ranks[h] {
			into.ranks[r] = true
		}
	}
	name := map[string]string{}
	for _, g := range groups {
		for _, h := range g.hosts {
			name[h] = strings.Join(g.hosts, "+")
		}
	}
	return func(host string) string {
		if n, ok := name[host]; ok {
			return n
		}
		return host
	}
}

// splitHosts is the hosts a replicaHosts name stands for.
func splitHosts(name string) []string { return strings.Split(name, "+") }
