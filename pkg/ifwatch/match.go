package ifwatch

import (
	"fmt"
	"path"
)

// Config selects interfaces by name.
type Config struct {
	// Include and Exclude are shell glob patterns on the interface name.
	// An empty Include selects every veth and NIC; Exclude wins over Include.
	Include, Exclude []string
	// NetnsPath watches another namespace (/run/netns/NAME or
	// /proc/PID/ns/net) instead of the one Run is called in.
	NetnsPath string
}

type matcher struct{ include, exclude []string }

func newMatcher(cfg Config) (matcher, error) {
	for _, p := range append(append([]string{}, cfg.Include...), cfg.Exclude...) {
		if _, err := path.Match(p, ""); err != nil {
			return matcher{}, fmt.Errorf("interface pattern %q: %w", p, err)
		}
	}
	return matcher{include: cfg.Include, exclude: cfg.Exclude}, nil
}

func (m matcher) match(name string) bool {
	for _, p := range m.exclude {
		if ok, _ := path.Match(p, name); ok {
			return false
		}
	}
	if len(m.include) == 0 {
		return true
	}
	for _, p := range m.include {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}
