// Command pause is the real node's only other image: containerd's sandbox
// (pause) process, and the workload of test pods. It waits for SIGTERM, or
// for -for to pass, and exits 0.
package main

import (
	"flag"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	d := flag.Duration("for", 0, "Exit after this long (0: wait for SIGTERM).")
	flag.Parse()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	var after <-chan time.Time
	if *d > 0 {
		after = time.After(*d)
	}
	select {
	case <-sig:
	case <-after:
	}
}
