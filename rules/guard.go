package rules

import (
	"reflect"
	"unsafe"

	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/vm"
)

// A guard is the opening tests of a rule's condition that read only the
// event — `event.outgoing`, `event.kind == "transfer"`, `event.change in
// [...]` — checked natively before the VM runs. Most rules of an event type
// fail right there, and starting expr's VM costs more than the tests
// themselves. A guard never changes a result: it only answers false where
// one of the condition's "&&" operands is false.
type guard func(*EventView) bool

// eventStrings and eventBools give the offset of every string and bool field of
// EventView by its expression name.
var eventStrings, eventBools = func() (map[string]uintptr, map[string]uintptr) {
	strs, bools := map[string]uintptr{}, map[string]uintptr{}
	t := reflect.TypeFor[EventView]()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := f.Tag.Get("expr")
		switch {
		case name == "":
		case f.Type.Kind() == reflect.String:
			strs[name] = f.Offset
		case f.Type.Kind() == reflect.Bool:
			bools[name] = f.Offset
		}
	}
	return strs, bools
}()

func eventString(v *EventView, off uintptr) string {
	return *(*string)(unsafe.Add(unsafe.Pointer(v), off))
}

func eventBool(v *EventView, off uintptr) bool {
	return *(*bool)(unsafe.Add(unsafe.Pointer(v), off))
}

// guardOf derives the guard of a compiled condition from the tests that
// open its chain of "&&" and read only the event, or returns nil.
func guardOf(p *vm.Program) guard {
	var conj []ast.Node
	var flatten func(n ast.Node)
	flatten = func(n ast.Node) {
		if b, ok := n.(*ast.BinaryNode); ok && (b.Operator == "&&" || b.Operator == "and") {
			flatten(b.Left)
			flatten(b.Right)
			return
		}
		conj = append(conj, n)
	}
	flatten(p.Node())
	var tests []guard
	for _, n := range conj {
		g := testOf(n)
		if g == nil {
			break // what follows runs only if this held: its errors must stay errors
		}
		tests = append(tests, g)
	}
	switch len(tests) {
	case 0:
		return nil
	case 1:
		return tests[0]
	}
	return func(v *EventView) bool {
		for _, g := range tests {
			if !g(v) {
				return false
			}
		}
		return true
	}
}

// eventField names the event field n reads, if n is `event.<field>`.
func eventField(n ast.Node) (string, bool) {
	m, ok := n.(*ast.MemberNode)
	if !ok || m.Optional || m.Method {
		return "", false
	}
	if id, ok := m.Node.(*ast.IdentifierNode); !ok || id.Value != "event" {
		return "", false
	}
	prop, ok := m.Property.(*ast.StringNode)
	if !ok {
		return "", false
	}
	return prop.Value, true
}

// testOf turns one test on the event into a guard, or returns nil.
func testOf(n ast.Node) guard {
	if name, ok := eventField(n); ok {
		if off, ok := eventBools[name]; ok {
			return func(v *EventView) bool { return eventBool(v, off) }
		}
		return nil
	}
	if u, ok := n.(*ast.UnaryNode); ok && (u.Operator == "!" || u.Operator == "not") {
		if name, ok := eventField(u.Node); ok {
			if off, ok := eventBools[name]; ok {
				return func(v *EventView) bool { return !eventBool(v, off) }
			}
		}
		return nil
	}
	b, ok := n.(*ast.BinaryNode)
	if !ok {
		return nil
	}
	name, ok := eventField(b.Left)
	if !ok {
		return nil
	}
	off, ok := eventStrings[name]
	if !ok {
		return nil
	}
	switch b.Operator {
	case "==", "!=":
		lit, ok := b.Right.(*ast.StringNode)
		if !ok {
			return nil
		}
		want, eq := lit.Value, b.Operator == "=="
		return func(v *EventView) bool { return (eventString(v, off) == want) == eq }
	case "in":
		set := map[string]bool{}
		switch r := b.Right.(type) {
		case *ast.ArrayNode:
			for _, e := range r.Nodes {
				s, ok := e.(*ast.StringNode)
				if !ok {
					return nil
				}
				set[s.Value] = true
			}
		case *ast.ConstantNode:
			c, ok := r.Value.(map[string]struct{})
			if !ok {
				return nil
			}
			for s := range c {
				set[s] = true
			}
		default:
			return nil
		}
		return func(v *EventView) bool { return set[eventString(v, off)] }
	}
	return nil
}
