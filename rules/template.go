package rules

import (
	"fmt"
	"strings"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/vm"
)

// template is a reason string with {expression} placeholders, compiled at
// load: "transfer {money(event.amount, event.currency)} to a new payee".
// "{{" and "}}" stand for literal braces.
type template []piece

type piece struct {
	text string
	prog *vm.Program
}

func parseTemplate(s string) (template, error) {
	var t template
	var lit strings.Builder
	opts := append([]expr.Option{expr.Env(Env{})}, functions()...)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '{' && i+1 < len(s) && s[i+1] == '{':
			lit.WriteByte('{')
			i++
		case c == '}' && i+1 < len(s) && s[i+1] == '}':
			lit.WriteByte('}')
			i++
		case c == '{':
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return nil, fmt.Errorf("unclosed { at column %d", i+1)
			}
			src := s[i+1 : i+end]
			p, err := expr.Compile(src, opts...)
			if err != nil {
				return nil, fmt.Errorf("placeholder at column %d: %s", i+1, exprError(err))
			}
			if lit.Len() > 0 {
				t = append(t, piece{text: lit.String()})
				lit.Reset()
			}
			t = append(t, piece{prog: p})
			i += end
		case c == '}':
			return nil, fmt.Errorf("unmatched } at column %d", i+1)
		default:
			lit.WriteByte(c)
		}
	}
	if lit.Len() > 0 {
		t = append(t, piece{text: lit.String()})
	}
	return t, nil
}

func (t template) render(m *vm.VM, env *Env) string {
	var b strings.Builder
	for _, p := range t {
		if p.prog == nil {
			b.WriteString(p.text)
			continue
		}
		v, err := m.Run(p.prog, env)
		if err != nil {
			b.WriteString("?")
			continue
		}
		switch x := v.(type) {
		case string:
			b.WriteString(x)
		case float64:
			b.WriteString(Num(x))
		case int:
			b.WriteString(Num(float64(x)))
		default:
			fmt.Fprint(&b, x)
		}
	}
	return b.String()
}
