package ifwatch

import "testing"

func TestMatcher(t *testing.T) {
	m, err := newMatcher(Config{Include: []string{"lxc*", "eth?", "veth[0-9]*"}, Exclude: []string{"lxc_health", "eth9"}})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{
		"lxc1234":    true,
		"lxc_health": false, // excluded wins over included
		"eth0":       true,
		"eth9":       false,
		"eth10":      false, // ? is one character
		"veth7abc":   true,
		"vethx":      false,
		"cni0":       false,
		"":           false,
	} {
		if got := m.match(name); got != want {
			t.Errorf("match(%q) = %v, want %v", name, got, want)
		}
	}

	all, err := newMatcher(Config{Exclude: []string{"docker*"}})
	if err != nil {
		t.Fatal(err)
	}
	if !all.match("eth0") || all.match("docker0") {
		t.Errorf("empty include must select everything not excluded")
	}
}

func TestMatcherBadPattern(t *testing.T) {
	for _, cfg := range []Config{{Include: []string{"eth["}}, {Exclude: []string{"[a-"}}} {
		if _, err := newMatcher(cfg); err == nil {
			t.Errorf("newMatcher(%+v) accepted a bad glob", cfg)
		}
	}
}
