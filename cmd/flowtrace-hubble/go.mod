module github.com/flowtrace/flowtrace/cmd/flowtrace-hubble

go 1.26.8

require (
	github.com/cilium/cilium v1.20.2
	github.com/flowtrace/flowtrace v0.0.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/cilium/ebpf v0.22.0 // indirect
	github.com/stretchr/testify v1.12.1 // indirect
	github.com/vishvananda/netlink v1.3.2-0.20260624190457-bab08b3566fc // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
)

// The adapter is built from this repository's flowtrace packages; cilium's
// requirements stay in this module and never reach the main go.mod.
replace github.com/flowtrace/flowtrace => ../..
