// Command etcd is a wrapper so that etcd builds from the Go module proxy:
// the etcd server module has replace directives, which `go install` refuses,
// so a module of our own that requires it is the way to build it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
