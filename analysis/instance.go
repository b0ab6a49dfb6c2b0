package analysis

import (
	"sort"
	"strings"
)

// replicaHosts returns the name analyses give the hosts of a data-parallel replica: a host whose
// processes share a multi-node instance key (Process.InstanceKey, metadata's instance_key) with
// processes of other hosts is named with all of them, sorted and joined by "+" ("hostA+hostB"),
// so a replica whose workers span hosts is one replica, not one per host; any other host is
// named as itself (separate deployments on different hosts each have their own dp 0). "+" is
// outside the host-name grammar (proto/names.go), so the name splits back with splitHosts.
func replicaHosts(src Source) func(host string) string {
	parent := map[string]string{}
	var find func(string) string
	find = func(h string) string {
		p, ok := parent[h]
		if !ok || p == h {
			return h
		}
		r := find(p)
		parent[h] = r
		return r
	}
	byKey := map[string]string{} // instance key -> a host of it
	for _, p := range src.Processes() {
		if p.InstanceKey == "" || p.Host == "" {
			continue
		}
		if _, ok := parent[p.Host]; !ok {
			parent[p.Host] = p.Host
		}
		if h, ok := byKey[p.InstanceKey]; ok {
			if a, b := find(h), find(p.Host); a != b {
				parent[b] = a
			}
		} else {
			byKey[p.InstanceKey] = p.Host
		}
	}
	members := map[string][]string{}
	for h := range parent {
		r := find(h)
		members[r] = append(members[r], h)
	}
	name := map[string]string{}
	for _, hs := range members {
		sort.Strings(hs)
		for _, h := range hs {
			name[h] = strings.Join(hs, "+")
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
