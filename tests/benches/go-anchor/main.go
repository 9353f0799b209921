// go-anchor: times containernetworking's ns.Do() (Debian golang-github-containernetworking-plugins-dev)
// as a reference point that the Rust netns-core benchmark reports alongside its own numbers.
//
// Build (GOPATH mode against Debian's /usr/share/gocode/src; pass the file, since a directory
// outside GOPATH is rejected with "cannot import absolute path"):
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o OUT "$PWD/tests/benches/go-anchor/main.go"
//
// (from the workspace root; `./x bench` does this for you)
//
// Run: OUT -netns /run/netns/NAME [-iters 20000] [-rounds 1]
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

func main() {
	path := flag.String("netns", "", "network namespace file, e.g. /run/netns/NAME")
	iters := flag.Int("iters", 20000, "Do() calls per round")
	rounds := flag.Int("rounds", 1, "number of timed rounds")
	flag.Parse()
	if *path == "" || *iters <= 0 || *rounds <= 0 {
		fmt.Fprintln(os.Stderr, "go-anchor: -netns is required; -iters and -rounds must be > 0")
		os.Exit(1)
	}
	target, err := ns.GetNS(*path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-anchor:", err)
		os.Exit(1)
	}
	defer target.Close()
	noop := func(ns.NetNS) error { return nil }
	for i := 0; i < 1000; i++ { // warm-up
		if err := target.Do(noop); err != nil {
			fmt.Fprintln(os.Stderr, "go-anchor:", err)
			os.Exit(1)
		}
	}
	for r := 0; r < *rounds; r++ {
		start := time.Now()
		for i := 0; i < *iters; i++ {
			if err := target.Do(noop); err != nil {
				fmt.Fprintln(os.Stderr, "go-anchor:", err)
				os.Exit(1)
			}
		}
		fmt.Printf("go_do_ns_per_call: %.1f\n", float64(time.Since(start).Nanoseconds())/float64(*iters))
	}
}
