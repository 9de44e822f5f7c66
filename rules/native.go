package rules

import (
	"math"
	"reflect"
	"unsafe"

	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/vm"
)

// Conditions are compiled a second time, from the syntax tree expr checked
// into Go closures over Env: a field is a load at a fixed offset and a
// comparison with a constant is one call, where expr's VM fetches every
// field through reflection and boxes every number it reads. That is most
// of what a rule costs, and every event pays it for each rule of its type.
//
// Only the part of the language conditions are written in is compiled:
// fields, constants, comparisons, "&&", "||", "!", arithmetic other than
// "%", "in" over a list of constants, "?:" and distance_km. None of those
// can fail at run time. A condition using anything else (a builtin, "%",
// a method) runs on the VM as before. Both give the same answer:
// TestNativeAgreesWithTheVM checks the built-in rules and random
// expressions on random values.

// OnVM names the rule's conditions that run on expr's VM because they use
// something outside the natively compiled subset: "when", "timer.until",
// "timer.confirm". Such a rule works the same, only slower for every event
// of its types; `walletguard rules check` says so.
func (r *Rule) OnVM() []string {
	var out []string
	if r.when != nil && r.whenFn == nil {
		out = append(out, "when")
	}
	if r.until != nil && r.untilFn == nil {
		out = append(out, "timer.until")
	}
	if r.confirm != nil && r.confirmFn == nil {
		out = append(out, "timer.confirm")
	}
	return out
}

// cond is a compiled condition.
type cond func(*Env) bool

// nativeCond compiles p natively, or returns nil if it uses anything that
// only the VM runs.
func nativeCond(p *vm.Program) cond {
	v, ok := compileNode(p.Node())
	if !ok || v.b == nil {
		return nil
	}
	return cond(v.b)
}

// value is a compiled sub-expression: exactly one of b, i, f and s is set,
// by its type. A field load or a constant also records which, so that the
// common "field <op> constant" compiles to a single closure.
type value struct {
	b func(*Env) bool
	i func(*Env) int
	f func(*Env) float64
	s func(*Env) string

	field   bool
	off     uintptr
	isConst bool
	c       any // bool, int, float64 or string
}

func (v value) numeric() bool { return v.i != nil || v.f != nil }

// float is v as a float64, an int converted as expr converts it.
func (v value) float() func(*Env) float64 {
	if v.f != nil {
		return v.f
	}
	i := v.i
	return func(e *Env) float64 { return float64(i(e)) }
}

// envFields maps "root.field" to its offset in Env and its kind.
var envFields = func() map[string]struct {
	off  uintptr
	kind reflect.Kind
} {
	out := map[string]struct {
		off  uintptr
		kind reflect.Kind
	}{}
	et := reflect.TypeFor[Env]()
	for i := 0; i < et.NumField(); i++ {
		root := et.Field(i)
		vt := root.Type
		for j := 0; j < vt.NumField(); j++ {
			f := vt.Field(j)
			out[root.Tag.Get("expr")+"."+f.Tag.Get("expr")] = struct {
				off  uintptr
				kind reflect.Kind
			}{root.Offset + f.Offset, f.Type.Kind()}
		}
	}
	return out
}()

func at(e *Env, off uintptr) unsafe.Pointer { return unsafe.Add(unsafe.Pointer(e), off) }

func constant(c any) (value, bool) {
	switch x := c.(type) {
	case bool:
		return value{b: func(*Env) bool { return x }, isConst: true, c: x}, true
	case int:
		return value{i: func(*Env) int { return x }, isConst: true, c: x}, true
	case float64:
		return value{f: func(*Env) float64 { return x }, isConst: true, c: x}, true
	case string:
		return value{s: func(*Env) string { return x }, isConst: true, c: x}, true
	}
	return value{}, false
}

func compileNode(n ast.Node) (value, bool) {
	switch n := n.(type) {
	case *ast.BoolNode:
		return constant(n.Value)
	case *ast.IntegerNode:
		return constant(n.Value)
	case *ast.FloatNode:
		return constant(n.Value)
	case *ast.StringNode:
		return constant(n.Value)
	case *ast.ConstantNode:
		return constant(n.Value)
	case *ast.MemberNode:
		return compileMember(n)
	case *ast.UnaryNode:
		return compileUnary(n)
	case *ast.BinaryNode:
		return compileBinary(n)
	case *ast.ConditionalNode:
		return compileConditional(n)
	case *ast.CallNode:
		return compileCall(n)
	}
	return value{}, false
}

func compileMember(n *ast.MemberNode) (value, bool) {
	if n.Optional || n.Method {
		return value{}, false
	}
	root, ok := n.Node.(*ast.IdentifierNode)
	if !ok {
		return value{}, false
	}
	prop, ok := n.Property.(*ast.StringNode)
	if !ok {
		return value{}, false
	}
	f, ok := envFields[root.Value+"."+prop.Value]
	if !ok {
		return value{}, false
	}
	off := f.off
	v := value{field: true, off: off}
	switch f.kind {
	case reflect.Bool:
		v.b = func(e *Env) bool { return *(*bool)(at(e, off)) }
	case reflect.Int:
		v.i = func(e *Env) int { return *(*int)(at(e, off)) }
	case reflect.Float64:
		v.f = func(e *Env) float64 { return *(*float64)(at(e, off)) }
	case reflect.String:
		v.s = func(e *Env) string { return *(*string)(at(e, off)) }
	default:
		return value{}, false
	}
	return v, true
}

func compileUnary(n *ast.UnaryNode) (value, bool) {
	x, ok := compileNode(n.Node)
	if !ok {
		return value{}, false
	}
	switch n.Operator {
	case "!", "not":
		if b := x.b; b != nil {
			return value{b: func(e *Env) bool { return !b(e) }}, true
		}
	case "-":
		if i := x.i; i != nil {
			return value{i: func(e *Env) int { return -i(e) }}, true
		}
		if f := x.f; f != nil {
			return value{f: func(e *Env) float64 { return -f(e) }}, true
		}
	case "+":
		if x.numeric() {
			return value{i: x.i, f: x.f}, true
		}
	}
	return value{}, false
}

func compileConditional(n *ast.ConditionalNode) (value, bool) {
	c, ok1 := compileNode(n.Cond)
	a, ok2 := compileNode(n.Exp1)
	b, ok3 := compileNode(n.Exp2)
	if !ok1 || !ok2 || !ok3 || c.b == nil {
		return value{}, false
	}
	cb := c.b
	switch {
	case a.b != nil && b.b != nil:
		x, y := a.b, b.b
		return value{b: func(e *Env) bool {
			if cb(e) {
				return x(e)
			}
			return y(e)
		}}, true
	case a.i != nil && b.i != nil:
		x, y := a.i, b.i
		return value{i: func(e *Env) int {
			if cb(e) {
				return x(e)
			}
			return y(e)
		}}, true
	case a.f != nil && b.f != nil:
		x, y := a.f, b.f
		return value{f: func(e *Env) float64 {
			if cb(e) {
				return x(e)
			}
			return y(e)
		}}, true
	case a.s != nil && b.s != nil:
		x, y := a.s, b.s
		return value{s: func(e *Env) string {
			if cb(e) {
				return x(e)
			}
			return y(e)
		}}, true
	}
	// Branches of different types give an untyped result in expr.
	return value{}, false
}

func compileCall(n *ast.CallNode) (value, bool) {
	id, ok := n.Callee.(*ast.IdentifierNode)
	if !ok || id.Value != "distance_km" || len(n.Arguments) != 4 {
		return value{}, false
	}
	var args [4]func(*Env) float64
	for k, a := range n.Arguments {
		v, ok := compileNode(a)
		if !ok || v.f == nil {
			return value{}, false
		}
		args[k] = v.f
	}
	return value{f: func(e *Env) float64 {
		return DistanceKm(args[0](e), args[1](e), args[2](e), args[3](e))
	}}, true
}

func compileBinary(n *ast.BinaryNode) (value, bool) {
	l, ok := compileNode(n.Left)
	if !ok {
		return value{}, false
	}
	if n.Operator == "in" {
		return compileIn(l, n.Right)
	}
	r, ok := compileNode(n.Right)
	if !ok {
		return value{}, false
	}
	switch op := n.Operator; op {
	case "&&", "and":
		if l.b != nil && r.b != nil {
			a, b := l.b, r.b
			return value{b: func(e *Env) bool { return a(e) && b(e) }}, true
		}
	case "||", "or":
		if l.b != nil && r.b != nil {
			a, b := l.b, r.b
			return value{b: func(e *Env) bool { return a(e) || b(e) }}, true
		}
	case "==", "!=":
		if l.b != nil && r.b != nil {
			a, b, eq := l.b, r.b, op == "=="
			return value{b: func(e *Env) bool { return (a(e) == b(e)) == eq }}, true
		}
		return compileCompare(op, l, r)
	case "<", "<=", ">", ">=":
		return compileCompare(op, l, r)
	case "+", "-", "*":
		if op == "+" && l.s != nil && r.s != nil {
			a, b := l.s, r.s
			return value{s: func(e *Env) string { return a(e) + b(e) }}, true
		}
		if !l.numeric() || !r.numeric() {
			break
		}
		if l.i != nil && r.i != nil {
			return value{i: arith(op, l.i, r.i)}, true
		}
		return value{f: arith(op, l.float(), r.float())}, true
	case "/":
		// expr divides as float64, ints too, and by zero gives ±Inf or NaN.
		if l.numeric() && r.numeric() {
			a, b := l.float(), r.float()
			return value{f: func(e *Env) float64 { return a(e) / b(e) }}, true
		}
	case "**", "^":
		if l.numeric() && r.numeric() {
			a, b := l.float(), r.float()
			return value{f: func(e *Env) float64 { return math.Pow(a(e), b(e)) }}, true
		}
	}
	return value{}, false
}

func arith[T int | float64](op string, a, b func(*Env) T) func(*Env) T {
	switch op {
	case "+":
		return func(e *Env) T { return a(e) + b(e) }
	case "-":
		return func(e *Env) T { return a(e) - b(e) }
	}
	return func(e *Env) T { return a(e) * b(e) }
}

// compileCompare compiles a comparison of two numbers (an int with a float
// is compared as floats, as expr does) or two strings.
func compileCompare(op string, l, r value) (value, bool) {
	switch {
	case l.i != nil && r.i != nil:
		return value{b: compare(op, l, r, l.i, r.i)}, true
	case l.numeric() && r.numeric():
		lf, rf := l, r
		if l.i != nil {
			lf = value{f: l.float()}
			if l.isConst {
				lf.isConst, lf.c = true, float64(l.c.(int))
			}
		}
		if r.i != nil {
			rf = value{f: r.float()}
			if r.isConst {
				rf.isConst, rf.c = true, float64(r.c.(int))
			}
		}
		return value{b: compare(op, lf, rf, lf.f, rf.f)}, true
	case l.s != nil && r.s != nil:
		return value{b: compare(op, l, r, l.s, r.s)}, true
	}
	return value{}, false
}

// compare builds the comparison, as one closure when a field is compared
// with a constant.
func compare[T int | float64 | string](op string, l, r value, a, b func(*Env) T) func(*Env) bool {
	if l.field && r.isConst {
		off, c := l.off, r.c.(T)
		switch op {
		case "==":
			return func(e *Env) bool { return *(*T)(at(e, off)) == c }
		case "!=":
			return func(e *Env) bool { return *(*T)(at(e, off)) != c }
		case "<":
			return func(e *Env) bool { return *(*T)(at(e, off)) < c }
		case "<=":
			return func(e *Env) bool { return *(*T)(at(e, off)) <= c }
		case ">":
			return func(e *Env) bool { return *(*T)(at(e, off)) > c }
		default:
			return func(e *Env) bool { return *(*T)(at(e, off)) >= c }
		}
	}
	switch op {
	case "==":
		return func(e *Env) bool { return a(e) == b(e) }
	case "!=":
		return func(e *Env) bool { return a(e) != b(e) }
	case "<":
		return func(e *Env) bool { return a(e) < b(e) }
	case "<=":
		return func(e *Env) bool { return a(e) <= b(e) }
	case ">":
		return func(e *Env) bool { return a(e) > b(e) }
	}
	return func(e *Env) bool { return a(e) >= b(e) }
}

// compileIn compiles "x in [constants]" for strings and ints. A short list
// is searched in order: faster than hashing for the handful of values a
// rule lists.
func compileIn(l value, right ast.Node) (value, bool) {
	var items []any
	switch r := right.(type) {
	case *ast.ArrayNode:
		for _, n := range r.Nodes {
			c, ok := compileNode(n)
			if !ok || !c.isConst {
				return value{}, false
			}
			items = append(items, c.c)
		}
	case *ast.ConstantNode:
		switch set := r.Value.(type) {
		case map[string]struct{}:
			for s := range set {
				items = append(items, s)
			}
		case map[int]struct{}:
			for i := range set {
				items = append(items, i)
			}
		case []any: // a list expr did not turn into a set (negative numbers)
			items = set
		default:
			return value{}, false
		}
	default:
		return value{}, false
	}
	var b func(*Env) bool
	switch {
	case l.s != nil:
		b = member(l.s, items)
	case l.i != nil:
		b = member(l.i, items)
	}
	return value{b: b}, b != nil
}

func member[T int | string](x func(*Env) T, items []any) func(*Env) bool {
	var set []T
	for _, it := range items {
		v, ok := it.(T)
		if !ok {
			// A list of mixed types: expr compares each with ==, which
			// this does not reproduce.
			return nil
		}
		set = append(set, v)
	}
	return func(e *Env) bool {
		v := x(e)
		for _, s := range set {
			if s == v {
				return true
			}
		}
		return false
	}
}
