// Command etcd is etcd's own server main, built from go.etcd.io/etcd/server/v3 so
// that the test harness needs no downloaded binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
