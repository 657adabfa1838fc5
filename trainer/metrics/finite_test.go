package metrics

import (
	"encoding/json"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type finiteInner struct {
	A float64 `json:"a"`
	B float32
}

type finiteHidden struct {
	H float64 `json:"h"`
}

type finiteOuter struct {
	finiteInner               // promoted: a, B
	*finiteHidden             // promoted through an unexported embedded pointer
	Name          string      `json:"name"`
	Skip          float64     `json:"-"`
	Empty         float64     `json:"empty,omitempty"`
	Zero          time.Time   `json:"zero,omitzero"`
	Quoted        float64     `json:"quoted,string"`
	Ptr           *float64    `json:"ptr"`
	List          []float64   `json:"list"`
	Arr           [2]float32  `json:"arr"`
	Any           any         `json:"any"`
	Map           map[int]any `json:"map"`
	Dur           time.Duration
	private       float64
	B             float32 `json:"b2"` // different name: both B (promoted) and b2 appear
}

// selfMarshaler encodes itself; its NaN must not be touched by the walk.
type selfMarshaler struct{ X float64 }

func (s selfMarshaler) MarshalJSON() ([]byte, error) { return []byte(`"custom"`), nil }

type cycle struct {
	F    float64
	Next *cycle
}

func TestMarshalFinite(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	two := 2.0
	nanp := nan
	tests := []struct {
		name string
		in   any
		want string
	}{
		{"nan", nan, `null`},
		{"float32 -inf", float32(math.Inf(-1)), `null`},
		{"finite unchanged", map[string]any{"a": 1.5, "b": "<x>"}, `{"a":1.5,"b":"<x>"}`},
		{"slice", []float64{1, nan, inf}, `[1,null,null]`},
		{"map", map[string]float64{"x": nan, "y": 2}, `{"x":null,"y":2}`},
		{"pointer", &nanp, `null`},
		{"nested any", map[string]any{"l": []any{nan, map[string]any{"z": inf}}}, `{"l":[null,{"z":null}]}`},
		{"marshaler left alone", []any{selfMarshaler{X: nan}, nan}, `["custom",null]`},
		{"struct rules", finiteOuter{
			finiteInner:  finiteInner{A: nan, B: 1},
			finiteHidden: &finiteHidden{H: inf},
			Name:         "n",
			Skip:         nan,
			Quoted:       2.5,
			Ptr:          &two,
			List:         []float64{nan},
			Arr:          [2]float32{float32(nan), 3},
			Any:          nan,
			Map:          map[int]any{7: nan},
			Dur:          time.Second,
			private:      nan,
			B:            4,
		}, `{"a":null,"B":1,"h":null,"name":"n","quoted":"2.5","ptr":2,"list":[null],"arr":[null,3],"any":null,"map":{"7":null},"Dur":1000000000,"b2":4}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := marshalFinite(tt.in)
			require.NoError(t, err)
			require.Equal(t, tt.want, string(got))
			require.True(t, json.Valid(got))
		})
	}
}

func TestMarshalFiniteMatchesEncodingJSON(t *testing.T) {
	// Without non-finite floats the walk must agree with encoding/json;
	// force the walk by comparing sanitize's output, encoded.
	two := 2.0
	v := finiteOuter{
		finiteInner:  finiteInner{A: 1, B: 1},
		finiteHidden: &finiteHidden{H: 3},
		Name:         "n",
		Quoted:       2.5,
		Ptr:          &two,
		List:         []float64{1},
		Map:          map[int]any{7: "x"},
		Dur:          time.Second,
		B:            4,
	}
	want, err := json.Marshal(v)
	require.NoError(t, err)
	clean, changed, err := sanitize(reflect.ValueOf(v), false, 0)
	require.NoError(t, err)
	require.False(t, changed)
	got, err := encodeJSON(clean)
	require.NoError(t, err)
	require.JSONEq(t, string(want), string(got))
	require.Equal(t, string(want), string(got), "same field order")
}

func TestMarshalFiniteErrors(t *testing.T) {
	c := &cycle{F: math.NaN()}
	c.Next = c
	tests := []struct {
		name string
		in   any
	}{
		{"channel", make(chan int)},
		{"cycle", c},
		{"func with nan", map[string]any{"f": func() {}, "x": math.NaN()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := marshalFinite(tt.in)
			require.Error(t, err)
		})
	}
}
