package rules

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/vm"
)

// Values random environments draw from: around the thresholds rules use,
// with the edge cases of float arithmetic.
var (
	someInts    = []int{-1, 0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 20, 60, 120, 1000, math.MaxInt}
	someFloats  = []float64{0, -1, 0.3, 0.4, 1, 2.5, 3, 5, 8, 10, 100, 119.5, 500, 1000, 1440, 1e9, math.Inf(1), math.NaN()}
	someStrings = []string{"", "x", "SG", "ID", "payment", "transfer", "failed", "retrying", "succeeded", "success", "failure",
		"password_reset", "mfa_disabled", "payee_added", "APP_ERROR", "LIMIT_EXCEEDED", "payment_attempt"}
)

// randomEnv sets every field of env to a value drawn from the lists above.
func randomEnv(rng *rand.Rand, env *Env) {
	ev := reflect.ValueOf(env).Elem()
	for i := 0; i < ev.NumField(); i++ {
		view := ev.Field(i)
		for j := 0; j < view.NumField(); j++ {
			f := view.Field(j)
			switch f.Kind() {
			case reflect.Bool:
				f.SetBool(rng.IntN(2) == 0)
			case reflect.Int:
				f.SetInt(int64(someInts[rng.IntN(len(someInts))]))
			case reflect.Float64:
				f.SetFloat(someFloats[rng.IntN(len(someFloats))])
			case reflect.String:
				f.SetString(someStrings[rng.IntN(len(someStrings))])
			}
		}
	}
}

// TestNativeCompilesTheBuiltInRules: every condition of the built-in packs
// runs natively; one that falls back to the VM costs every event it sees.
func TestNativeCompilesTheBuiltInRules(t *testing.T) {
	set, err := Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range set.Rules {
		if vm := r.OnVM(); len(vm) > 0 {
			t.Errorf("rule %s: %v run on the VM", r.ID, vm)
		}
	}
	// And a condition outside the subset is named, not refused.
	slow, err := Load([]string{writeRule(t, `
rules:
  - id: every_third_attempt
    on: [payment_attempt]
    when: event.attempt % 3 == 0 && event.status == "failed"
    score: 5
`)})
	if err != nil {
		t.Fatal(err)
	}
	if vm := slow.Rules[0].OnVM(); len(vm) != 1 || vm[0] != "when" {
		t.Errorf("OnVM() = %v, want [when]", vm)
	}
}

func writeRule(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "r.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestNativeAgreesWithTheVM: the built-in rules' conditions and thousands of
// random expressions give the same answer compiled natively as on expr's
// VM, over random values.
func TestNativeAgreesWithTheVM(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	set, err := Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	env := NewEnv()
	native, onVM := &Evaluator{}, &Evaluator{vmOnly: true}
	for i := 0; i < 20000; i++ {
		randomEnv(rng, env)
		for _, r := range set.Rules {
			for _, check := range []func(*Evaluator, *Rule, *Env) (bool, error){
				(*Evaluator).Match, (*Evaluator).Until, (*Evaluator).Confirm,
			} {
				got, err1 := check(native, r, env)
				want, err2 := check(onVM, r, env)
				if got != want || err1 != nil || err2 != nil {
					t.Fatalf("rule %s on %+v: native %v (%v), VM %v (%v)", r.ID, *env, got, err1, want, err2)
				}
			}
		}
	}

	opts := append([]expr.Option{expr.Env(Env{}), expr.AsBool()}, functions()...)
	g := exprGen{rng: rng}
	var m vm.VM
	compiled, nativeN := 0, 0
	for i := 0; i < 3000; i++ {
		src := g.boolean(4)
		p, err := expr.Compile(src, opts...)
		if err != nil {
			t.Fatalf("generated %q does not compile: %v", src, err)
		}
		compiled++
		c := nativeCond(p)
		if c == nil {
			continue
		}
		nativeN++
		for j := 0; j < 50; j++ {
			randomEnv(rng, env)
			out, err := m.Run(p, env)
			if err != nil {
				t.Fatalf("%q on the VM: %v", src, err)
			}
			if got, want := c(env), out.(bool); got != want {
				t.Fatalf("%q: native %v, VM %v, on %+v", src, got, want, *env)
			}
		}
	}
	// Left to the VM: "%" and "?:" between an int and a float.
	t.Logf("%d of %d random expressions compiled natively", nativeN, compiled)
	if nativeN < compiled*2/3 {
		t.Errorf("only %d of %d random expressions compiled natively", nativeN, compiled)
	}
}

// exprGen writes random well-typed expressions over Env.
type exprGen struct{ rng *rand.Rand }

func (g exprGen) pick(xs ...string) string { return xs[g.rng.IntN(len(xs))] }

// fieldsByKind lists Env's fields by kind, sorted: map order would make a
// run impossible to repeat.
var fieldsByKind = func() map[reflect.Kind][]string {
	out := map[reflect.Kind][]string{}
	for name, f := range envFields {
		out[f.kind] = append(out[f.kind], name)
	}
	for _, names := range out {
		slices.Sort(names)
	}
	return out
}()

func (g exprGen) field(kind reflect.Kind) string {
	names := fieldsByKind[kind]
	return names[g.rng.IntN(len(names))]
}

func (g exprGen) boolean(depth int) string {
	if depth == 0 {
		return g.pick(g.field(reflect.Bool), "true", "false")
	}
	d := depth - 1
	switch g.rng.IntN(12) {
	case 0:
		return "!" + g.field(reflect.Bool)
	case 1:
		return fmt.Sprintf("(%s && %s)", g.boolean(d), g.boolean(d))
	case 2:
		return fmt.Sprintf("(%s || %s)", g.boolean(d), g.boolean(d))
	case 3, 4:
		return fmt.Sprintf("(%s %s %s)", g.integer(d), g.pick("==", "!=", "<", "<=", ">", ">="), g.integer(d))
	case 5, 6:
		return fmt.Sprintf("(%s %s %s)", g.float(d), g.pick("==", "!=", "<", "<=", ">", ">="), g.pick(g.float(d), g.integer(d)))
	case 7:
		return fmt.Sprintf("(%s %s %s)", g.str(d), g.pick("==", "!=", "<", ">="), g.str(d))
	case 8:
		return fmt.Sprintf(`(%s in [%q, %q, %q])`, g.field(reflect.String), g.pick(someStrings...), g.pick(someStrings...), g.pick(someStrings...))
	case 9:
		return fmt.Sprintf(`(%s in [%d, %d])`, g.field(reflect.Int), someInts[g.rng.IntN(5)], someInts[g.rng.IntN(8)])
	case 10:
		return fmt.Sprintf("(%s ? %s : %s)", g.boolean(d), g.boolean(d), g.boolean(d))
	}
	return fmt.Sprintf("(%s == %s)", g.boolean(d), g.boolean(d))
}

func (g exprGen) integer(depth int) string {
	if depth == 0 || g.rng.IntN(3) == 0 {
		return g.pick(g.field(reflect.Int), fmt.Sprint(someInts[g.rng.IntN(len(someInts)-1)]))
	}
	d := depth - 1
	switch g.rng.IntN(5) {
	case 0:
		return fmt.Sprintf("(%s %s %s)", g.integer(d), g.pick("+", "-", "*"), g.integer(d))
	case 1:
		return "-" + g.field(reflect.Int)
	case 2:
		return fmt.Sprintf("(%s ? %s : %s)", g.boolean(d), g.integer(d), g.integer(d))
	case 3:
		return fmt.Sprintf("(%s %% %d)", g.field(reflect.Int), 1+g.rng.IntN(7)) // left to the VM
	}
	return g.field(reflect.Int)
}

func (g exprGen) float(depth int) string {
	if depth == 0 || g.rng.IntN(3) == 0 {
		return g.pick(g.field(reflect.Float64), fmt.Sprint(someFloats[g.rng.IntN(14)]))
	}
	d := depth - 1
	switch g.rng.IntN(6) {
	case 0:
		return fmt.Sprintf("(%s %s %s)", g.float(d), g.pick("+", "-", "*", "/"), g.pick(g.float(d), g.integer(d)))
	case 1:
		return fmt.Sprintf("(%s / %s)", g.integer(d), g.integer(d))
	case 2:
		return fmt.Sprintf("distance_km(%s, %s, %s, %s)", g.float(0), g.float(0), g.float(0), g.float(0))
	case 3:
		return fmt.Sprintf("(%s ** %s)", g.float(d), g.pick("2", "0.5", g.integer(0)))
	case 4:
		return fmt.Sprintf("(%s ? %s : %s)", g.boolean(d), g.float(d), g.float(d))
	}
	return "-" + g.field(reflect.Float64)
}

func (g exprGen) str(depth int) string {
	if depth == 0 || g.rng.IntN(2) == 0 {
		return g.pick(g.field(reflect.String), fmt.Sprintf("%q", g.pick(someStrings...)))
	}
	d := depth - 1
	if g.rng.IntN(2) == 0 {
		return fmt.Sprintf("(%s + %s)", g.str(d), g.str(d))
	}
	return fmt.Sprintf("(%s ? %s : %s)", g.boolean(d), g.str(d), g.str(d))
}
