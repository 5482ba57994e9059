package filters

import (
	"fmt"
	"net/netip"
	"strings"

	flowtracev1 "github.com/flowtrace/flowtrace/proto/flowtrace/v1"
)

func buildIP(values []string, get func(*flowtracev1.IP) string) (predicate, error) {
	if len(values) == 0 {
		return nil, nil
	}
	prefixes := make([]netip.Prefix, 0, len(values))
	for _, v := range values {
		p, err := parseIPOrCIDR(v)
		if err != nil {
			return nil, err
		}
		prefixes = append(prefixes, p)
	}
	return func(f *flowtracev1.Flow) bool {
		s := get(f.GetIp())
		if s == "" {
			return false
		}
		// netip.ParseAddr does not allocate; the flow carries text addresses.
		a, err := netip.ParseAddr(s)
		if err != nil {
			return false
		}
		a = a.Unmap()
		for _, p := range prefixes {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}, nil
}

// parseIPOrCIDR returns a single-address prefix for a plain address.
func parseIPOrCIDR(v string) (netip.Prefix, error) {
	bad := fmt.Errorf("%q is not an IP address or CIDR", v)
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, bad
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			if p.Bits() < 0 {
				return netip.Prefix{}, bad
			}
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, bad
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
