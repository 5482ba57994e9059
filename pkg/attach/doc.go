// Package attach hooks flowtrace's tc programs onto interfaces: TCX links on
// kernels that have them (6.6+), a clsact qdisc with direct-action bpf
// filters otherwise, and removal of filters a killed agent left behind.
package attach
