package rules

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

//go:embed packs/*.yaml
var builtin embed.FS

// BuiltinSources returns the built-in rule packs.
func BuiltinSources() []Source {
	entries, _ := fs.ReadDir(builtin, "packs")
	var out []Source
	for _, e := range entries {
		b, _ := builtin.ReadFile("packs/" + e.Name())
		out = append(out, Source{Name: "builtin/" + e.Name(), Content: b})
	}
	return out
}

// ReadSources reads rule files; a directory contributes its *.yaml and *.yml
// files. No paths means the built-in packs.
func ReadSources(paths []string) ([]Source, error) {
	if len(paths) == 0 {
		return BuiltinSources(), nil
	}
	var out []Source
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("rules path: %w", err)
		}
		files := []string{p}
		if st.IsDir() {
			files = nil
			entries, err := os.ReadDir(p)
			if err != nil {
				return nil, fmt.Errorf("read rules dir %s: %w", p, err)
			}
			for _, e := range entries {
				if !e.IsDir() && (strings.HasSuffix(e.Name(), ".yaml") || strings.HasSuffix(e.Name(), ".yml")) {
					files = append(files, filepath.Join(p, e.Name()))
				}
			}
			sort.Strings(files)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("read rule file: %w", err)
			}
			out = append(out, Source{Name: f, Content: b})
		}
	}
	return out, nil
}

// Load reads and compiles the rule files at paths (built-in packs if none).
func Load(paths []string) (*Set, error) {
	src, err := ReadSources(paths)
	if err != nil {
		return nil, err
	}
	return Compile(src)
}
