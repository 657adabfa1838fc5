package metrics

import (
	"bytes"
	"encoding"
	"encoding/json"
	"math"
	"reflect"
	"strconv"
	"strings"
	"unsafe"
)

// maxSanitizeDepth bounds the fallback walk of marshalFinite, so that a
// pointer cycle ends in an error rather than a hang.
const maxSanitizeDepth = 200

var (
	jsonMarshalerType = reflect.TypeFor[json.Marshaler]()
	textMarshalerType = reflect.TypeFor[encoding.TextMarshaler]()
)

// encodeJSON is json.Marshal without HTML escaping ('<', '>' and '&' are
// written as themselves: the output is a log, not a web page).
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// marshalFinite encodes v like encoding/json, except that NaN and ±Inf
// floats (which encoding/json rejects) are written as null.
//
// The common case costs one ordinary encoding. Only when that fails is v
// walked with reflection and rebuilt with the non-finite floats replaced;
// the walk follows encoding/json's rules for field names, "-", omitempty,
// omitzero, string, embedded structs, and Marshaler/TextMarshaler values
// (which are encoded by their own methods, so a Marshaler that itself
// fails on NaN still fails). If the walk finds no non-finite float, the
// original error is returned.
func marshalFinite(v any) ([]byte, error) {
	b, err := encodeJSON(v)
	if err == nil {
		return b, nil
	}
	clean, changed, serr := sanitize(reflect.ValueOf(v), false, 0)
	if serr != nil || !changed {
		return nil, err
	}
	return encodeJSON(clean)
}

// errTooDeep stops the sanitizing walk (the original error is reported).
type errTooDeep struct{}

func (errTooDeep) Error() string { return "metrics: value too deep to encode" }

// sanitize returns a value that encodes like v but with non-finite floats
// replaced by nil, and whether any were replaced. addr says whether
// encoding/json would see v as addressable (reached through a pointer or
// a slice), which decides whether pointer-receiver marshalers apply; the
// walk itself may work on addressable copies.
func sanitize(v reflect.Value, addr bool, depth int) (any, bool, error) {
	if depth > maxSanitizeDepth {
		return nil, false, errTooDeep{}
	}
	if !v.IsValid() {
		return nil, false, nil
	}
	t := v.Type()
	// Values that encode themselves are left to their methods, keeping
	// addressability so pointer-receiver methods still apply.
	if t.Kind() != reflect.Pointer && addr && v.CanAddr() {
		pt := reflect.PointerTo(t)
		if pt.Implements(jsonMarshalerType) || pt.Implements(textMarshalerType) {
			return v.Addr().Interface(), false, nil
		}
	}
	if t.Implements(jsonMarshalerType) || t.Implements(textMarshalerType) {
		if t.Kind() == reflect.Pointer && v.IsNil() {
			return nil, false, nil
		}
		return v.Interface(), false, nil
	}
	switch t.Kind() {
	case reflect.Float32, reflect.Float64:
		if f := v.Float(); math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, true, nil
		}
		return v.Interface(), false, nil
	case reflect.Interface, reflect.Pointer:
		if v.IsNil() {
			return nil, false, nil
		}
		return sanitize(v.Elem(), t.Kind() == reflect.Pointer, depth+1)
	case reflect.Struct:
		return sanitizeStruct(v, addr, depth)
	case reflect.Map:
		return sanitizeMap(v, depth)
	case reflect.Slice:
		if v.IsNil() {
			return nil, false, nil
		}
		if t.Elem().Kind() == reflect.Uint8 {
			return v.Interface(), false, nil // []byte: base64
		}
		return sanitizeList(v, true, depth)
	case reflect.Array:
		return sanitizeList(v, addr, depth)
	default:
		return v.Interface(), false, nil
	}
}

func sanitizeList(v reflect.Value, addr bool, depth int) (any, bool, error) {
	out := make([]any, v.Len())
	changed := false
	for i := range out {
		e, c, err := sanitize(v.Index(i), addr, depth+1)
		if err != nil {
			return nil, false, err
		}
		out[i], changed = e, changed || c
	}
	return out, changed, nil
}

func sanitizeMap(v reflect.Value, depth int) (any, bool, error) {
	if v.IsNil() {
		return nil, false, nil
	}
	out := make(map[string]any, v.Len())
	changed := false
	iter := v.MapRange()
	for iter.Next() {
		k, ok := mapKey(iter.Key())
		if !ok {
			return nil, false, errTooDeep{} // unsupported key: keep the original error
		}
		e, c, err := sanitize(iter.Value(), false, depth+1)
		if err != nil {
			return nil, false, err
		}
		out[k], changed = e, changed || c
	}
	return out, changed, nil
}

// mapKey renders a map key as encoding/json does.
func mapKey(k reflect.Value) (string, bool) {
	if k.Kind() == reflect.String {
		return k.String(), true
	}
	if tm, ok := k.Interface().(encoding.TextMarshaler); ok {
		if k.Kind() == reflect.Pointer && k.IsNil() {
			return "", true
		}
		b, err := tm.MarshalText()
		return string(b), err == nil
	}
	switch k.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(k.Int(), 10), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return strconv.FormatUint(k.Uint(), 10), true
	}
	return "", false
}

// object is a JSON object that keeps its keys in order.
type object []member

type member struct {
	name  string
	value any
}

func (o object) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, err := encodeJSON(m.name)
		if err != nil {
			return nil, err
		}
		val, err := encodeJSON(m.value)
		if err != nil {
			return nil, err
		}
		buf.Write(k)
		buf.WriteByte(':')
		buf.Write(val)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// field is one candidate JSON member of a struct, before resolving the
// embedding rules.
type field struct {
	name   string
	depth  int
	tagged bool
	value  any
	omit   bool // omitempty/omitzero applied: leave out
}

func sanitizeStruct(v reflect.Value, addr bool, depth int) (any, bool, error) {
	if !v.CanAddr() {
		// Work on an addressable copy, so that fields promoted from
		// unexported embedded structs can be read (see collectFields).
		c := reflect.New(v.Type()).Elem()
		c.Set(v)
		v = c
	}
	var fields []field
	changed, err := collectFields(v, addr, 0, depth, &fields, map[reflect.Type]bool{})
	if err != nil {
		return nil, false, err
	}
	// encoding/json's dominance rule: of the fields sharing a name, the
	// shallowest wins; at equal depth a single tagged one wins; otherwise
	// the name is dropped.
	byName := map[string][]int{}
	for i, f := range fields {
		byName[f.name] = append(byName[f.name], i)
	}
	var out object
	for i, f := range fields {
		idx := byName[f.name]
		if !dominant(fields, idx, i) || f.omit {
			continue
		}
		out = append(out, member{f.name, f.value})
	}
	return out, changed, nil
}

func dominant(fields []field, idx []int, i int) bool {
	minDepth := fields[i].depth
	for _, j := range idx {
		minDepth = min(minDepth, fields[j].depth)
	}
	if fields[i].depth != minDepth {
		return false
	}
	var atMin, tagged []int
	for _, j := range idx {
		if fields[j].depth == minDepth {
			atMin = append(atMin, j)
			if fields[j].tagged {
				tagged = append(tagged, j)
			}
		}
	}
	if len(atMin) == 1 {
		return true
	}
	return len(tagged) == 1 && tagged[0] == i
}

func collectFields(v reflect.Value, addr bool, level, depth int, out *[]field, seen map[reflect.Type]bool) (bool, error) {
	t := v.Type()
	if seen[t] { // embedded type cycle: encoding/json ignores the repeat
		return false, nil
	}
	seen[t] = true
	defer delete(seen, t)
	changed := false
	for i := range t.NumField() {
		sf := t.Field(i)
		tag := sf.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		fv := v.Field(i)
		if !fv.CanInterface() {
			// Reached through an unexported embedded struct: encoding/json
			// reads such promoted fields; reflection needs the address.
			fv = reflect.NewAt(sf.Type, unsafe.Pointer(fv.UnsafeAddr())).Elem()
		}
		if sf.Anonymous {
			ft := sf.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if !sf.IsExported() && ft.Kind() != reflect.Struct {
				continue
			}
			if name == "" && ft.Kind() == reflect.Struct {
				fieldAddr := addr
				if fv.Kind() == reflect.Pointer {
					if fv.IsNil() {
						continue
					}
					fv, fieldAddr = fv.Elem(), true
				}
				c, err := collectFields(fv, fieldAddr, level+1, depth+1, out, seen)
				if err != nil {
					return false, err
				}
				changed = changed || c
				continue
			}
		} else if !sf.IsExported() {
			continue
		}
		f := field{name: name, depth: level, tagged: name != ""}
		if f.name == "" {
			f.name = sf.Name
		}
		if hasOpt(opts, "omitempty") && isEmptyValue(fv) {
			f.omit = true
		}
		if hasOpt(opts, "omitzero") && isZeroValue(fv) {
			f.omit = true
		}
		val, c, err := sanitize(fv, addr, depth+1)
		if err != nil {
			return false, err
		}
		if hasOpt(opts, "string") && val != nil {
			switch fv.Kind() {
			case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
				reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
				reflect.Float32, reflect.Float64, reflect.String:
				b, err := encodeJSON(val)
				if err != nil {
					return false, err
				}
				val = string(b)
			}
		}
		f.value = val
		changed = changed || c
		*out = append(*out, f)
	}
	return changed, nil
}

func hasOpt(opts, want string) bool {
	for opts != "" {
		var o string
		o, opts, _ = strings.Cut(opts, ",")
		if o == want {
			return true
		}
	}
	return false
}

// isEmptyValue is encoding/json's definition of empty, for omitempty.
func isEmptyValue(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Array, reflect.Map, reflect.Slice, reflect.String:
		return v.Len() == 0
	case reflect.Bool,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64,
		reflect.Interface, reflect.Pointer:
		return v.IsZero()
	}
	return false
}

// isZeroValue is encoding/json's definition of zero, for omitzero.
func isZeroValue(v reflect.Value) bool {
	if z, ok := v.Interface().(interface{ IsZero() bool }); ok {
		if v.Kind() == reflect.Pointer && v.IsNil() {
			return true
		}
		return z.IsZero()
	}
	return v.IsZero()
}
