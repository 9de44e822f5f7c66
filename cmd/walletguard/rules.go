package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/walletguard/walletguard/rules"
	"github.com/walletguard/walletguard/rules/ruletest"
)

func cmdRules(args []string) int {
	if len(args) < 1 {
		fmt.Fprintln(os.Stderr, "usage: walletguard rules check FILE... | walletguard rules test DIR...")
		return 2
	}
	switch args[0] {
	case "check":
		if len(args) < 2 {
			fmt.Fprintln(os.Stderr, "usage: walletguard rules check FILE...")
			return 2
		}
		set, err := rules.Load(args[1:])
		if err != nil {
			fmt.Fprintf(os.Stderr, "%v\n", err)
			return 1
		}
		fmt.Printf("ok: %d rules, version %s\n", len(set.Rules), set.Version)
		for _, r := range set.Rules {
			if vm := r.OnVM(); len(vm) > 0 {
				verb := "runs"
				if len(vm) > 1 {
					verb = "run"
				}
				fmt.Printf("note: %s:%d: rule %s: %s %s on expr's VM, several times slower per event than compiled "+
					"(compiled: fields, constants, comparisons, && || !, + - * / **, in [list], ?: and distance_km)\n",
					r.File, r.Line, r.ID, strings.Join(vm, " and "), verb)
			}
		}
		return 0
	case "test":
		if len(args) < 2 {
			fmt.Fprintln(os.Stderr, "usage: walletguard rules test DIR...")
			return 2
		}
		failed := 0
		total := 0
		for _, dir := range args[1:] {
			results, err := ruletest.RunDir(dir)
			if err != nil {
				fmt.Fprintf(os.Stderr, "%v\n", err)
				return 1
			}
			for _, r := range results {
				total++
				if r.Err != nil {
					failed++
					fmt.Printf("FAIL %s\n%s\n", r.Name, indent(r.Err.Error()))
				} else {
					fmt.Printf("ok   %s (%d events)\n", r.Name, r.Events)
				}
			}
		}
		fmt.Printf("%d passed, %d failed\n", total-failed, failed)
		if failed > 0 {
			return 1
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "walletguard rules: unknown subcommand %q\n", args[0])
	return 2
}

func indent(s string) string {
	out := "    "
	for _, c := range s {
		out += string(c)
		if c == '\n' {
			out += "    "
		}
	}
	return out
}
