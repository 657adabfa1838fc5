// Command gotrain trains deep-learning models written as Gorgonia graphs,
// on one CPU or across processes, nodes and GPUs; see the README and
// 'gotrain -h'. The command line itself is package cli, so that a program
// with its own models can be gotrain with them.
package main

import (
	"os"

	"github.com/gotrain/gotrain/cmd/gotrain/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr)) }
