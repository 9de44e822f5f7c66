package alerts

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/template"

	"gopkg.in/yaml.v3"
)

// The built-in wording, one file per language. A support lead edits copies
// in alerts.templates_dir, not code.
//
//go:embed templates/*.yaml
var builtinTemplates embed.FS

// Templates render an alert's title, summary and recommended actions in the
// languages they hold.
type Templates struct {
	langs map[string]*language
}

type language struct {
	words      map[string]*template.Template
	causes     map[string]cause
	categories map[string]*category
}

type cause struct {
	Name   string `yaml:"name"`
	Advice string `yaml:"advice"`
}

type category struct {
	title   *template.Template
	actions []*template.Template
}

type templateFile struct {
	Language   string            `yaml:"language"`
	Words      map[string]string `yaml:"words"`
	Causes     map[string]cause  `yaml:"causes"`
	Categories map[string]struct {
		Title   string   `yaml:"title"`
		Actions []string `yaml:"actions"`
	} `yaml:"categories"`
}

// view is what templates see.
type view struct {
	Subject, AccountID, MerchantID, AppVersion, IP string
	Reason, Cause, CauseName, Advice               string
	Affected, Findings                             int
	Frozen                                         bool
	Action, Severity                               string
}

// DefaultTemplates are the built-in languages: en, zh, id.
func DefaultTemplates() *Templates {
	t, err := LoadTemplates("")
	if err != nil {
		panic(fmt.Sprintf("built-in alert templates: %v", err)) // caught by the package's tests
	}
	return t
}

// LoadTemplates reads the built-in languages, then every *.yaml in dir (if
// set), which replaces or adds a language. Every template is parsed and run
// on a sample alert, so a typo is refused at start, not at the first alert.
func LoadTemplates(dir string) (*Templates, error) {
	t := &Templates{langs: map[string]*language{}}
	var errs []error
	load := func(fsys fs.FS, name string) {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			errs = append(errs, err)
			return
		}
		l, code, err := parseLanguage(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("alert templates %s: %w", name, err))
			return
		}
		t.langs[code] = l
	}
	builtin, _ := fs.Sub(builtinTemplates, "templates")
	names, _ := fs.Glob(builtin, "*.yaml")
	for _, n := range names {
		load(builtin, n)
	}
	if dir != "" {
		files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil || len(files) == 0 {
			return nil, fmt.Errorf("alerts.templates_dir %s: no *.yaml files", dir)
		}
		for _, f := range files {
			load(os.DirFS(filepath.Dir(f)), filepath.Base(f))
		}
	}
	return t, errors.Join(errs...)
}

func parseLanguage(b []byte) (*language, string, error) {
	var f templateFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, "", err
	}
	if f.Language == "" {
		return nil, "", errors.New("language: missing")
	}
	l := &language{words: map[string]*template.Template{}, causes: f.Causes, categories: map[string]*category{}}
	var errs []error
	parse := func(name, text string) *template.Template {
		tp, err := template.New(name).Option("missingkey=error").Parse(text)
		if err != nil {
			errs = append(errs, err)
			return nil
		}
		return tp
	}
	for _, w := range []string{"merchant", "app_version", "ip", "findings"} {
		if f.Words[w] == "" {
			errs = append(errs, fmt.Errorf("words.%s: missing", w))
			continue
		}
		l.words[w] = parse("words."+w, f.Words[w])
	}
	if _, ok := f.Causes[""]; !ok {
		errs = append(errs, errors.New(`causes."" (unknown cause): missing`))
	}
	if _, ok := f.Categories["default"]; !ok {
		errs = append(errs, errors.New("categories.default: missing"))
	}
	for name, c := range f.Categories {
		cat := &category{title: parse(name+".title", c.Title)}
		if c.Title == "" || len(c.Actions) == 0 {
			errs = append(errs, fmt.Errorf("categories.%s: title and actions are required", name))
		}
		for i, a := range c.Actions {
			cat.actions = append(cat.actions, parse(fmt.Sprintf("%s.actions[%d]", name, i), a))
		}
		l.categories[name] = cat
	}
	if err := errors.Join(errs...); err != nil {
		return nil, "", err
	}
	// Run everything once on a sample.
	sample := view{Subject: "acc-1", AccountID: "acc-1", MerchantID: "m-1", AppVersion: "5.3.0", IP: "1.2.3.4", Reason: "r",
		Cause: "network", CauseName: "network", Advice: "a", Affected: 2, Findings: 2, Frozen: true, Action: "freeze", Severity: "high"}
	for name, w := range l.words {
		if _, err := run(w, &sample); err != nil {
			errs = append(errs, fmt.Errorf("words.%s: %w", name, err))
		}
	}
	for name, c := range l.categories {
		for _, tp := range append([]*template.Template{c.title}, c.actions...) {
			if _, err := run(tp, &sample); err != nil {
				errs = append(errs, fmt.Errorf("categories.%s: %w", name, err))
			}
		}
	}
	return l, f.Language, errors.Join(errs...)
}

func run(t *template.Template, v *view) (string, error) {
	var b strings.Builder
	err := t.Execute(&b, v)
	return strings.TrimSpace(b.String()), err
}

// Languages lists the languages the templates hold.
func (t *Templates) Languages() []string {
	var out []string
	for k := range t.langs {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Has reports whether lang is available.
func (t *Templates) Has(lang string) bool { return t.langs[lang] != nil }

// Render writes an alert's title, summary and recommended actions in lang
// (English when lang is unknown).
func (t *Templates) Render(lang string, a *Alert) (title, summary string, actions []string) {
	l := t.langs[lang]
	if l == nil {
		l = t.langs["en"]
	}
	v := view{AccountID: a.AccountID, MerchantID: a.MerchantID, AppVersion: a.AppVersion, IP: a.IP, Reason: a.Reason,
		Cause: a.Cause, Affected: a.AffectedAccounts, Findings: a.Count, Frozen: a.Action == "freeze", Action: a.Action, Severity: a.Severity}
	c, ok := l.causes[a.Cause]
	if !ok {
		c = l.causes[""]
	}
	v.CauseName, v.Advice = c.Name, c.Advice
	switch {
	case a.AccountID != "":
		v.Subject = a.AccountID
	case a.AppVersion != "":
		v.Subject, _ = run(l.words["app_version"], &v)
	case a.IP != "":
		v.Subject, _ = run(l.words["ip"], &v)
	default:
		v.Subject, _ = run(l.words["merchant"], &v)
	}
	cat := l.categories[a.Category]
	if cat == nil {
		cat = l.categories["default"]
	}
	title, _ = run(cat.title, &v)
	summary = a.Reason
	if a.Count > 1 {
		summary, _ = run(l.words["findings"], &v)
	}
	for _, tp := range cat.actions {
		if s, _ := run(tp, &v); s != "" {
			actions = append(actions, s)
		}
	}
	return title, summary, actions
}
