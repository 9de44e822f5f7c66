package detector

import (
	"reflect"
	"testing"
	"unsafe"
)

// pointerFree reports whether t holds no pointers: such types are
// checkpointed as raw bytes.
func pointerFree(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Pointer, reflect.String, reflect.Slice, reflect.Map, reflect.Interface, reflect.Func, reflect.Chan, reflect.UnsafePointer:
		return false
	case reflect.Array:
		return pointerFree(t.Elem())
	case reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			if !pointerFree(t.Field(i).Type) {
				return false
			}
		}
	}
	return true
}

func TestRawEncodedStateHasNoPointers(t *testing.T) {
	for _, v := range []any{account{}, deviceState{}, payeeState{}, ipFlat{}, [64]seen{}} {
		if !pointerFree(reflect.TypeOf(v)) {
			t.Errorf("%T holds a pointer and cannot be checkpointed as raw bytes", v)
		}
	}
	// Rows are stored packed (pack.go): the fixed row is the most an
	// account can take, when every word of it is in use.
	t.Logf("account row: %d bytes", unsafe.Sizeof(account{}))
	if n := unsafe.Sizeof(account{}); n > 448 {
		t.Errorf("account row is %d bytes: a full one with its index entry no longer fits 512 bytes per account", n)
	}
	if !pointerFree(reflect.TypeOf(chain{})) {
		t.Error("a payment chain holds a pointer: the garbage collector would scan every chunk of chains")
	}
	// A payment chain is held per payment id: repeated names are symbols,
	// not strings, and the checkpoint flags are the table's.
	if n := unsafe.Sizeof(chain{}); n > 88 {
		t.Errorf("payment chain is %d bytes, was 88", n)
	}
}
