package checkpoint

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const python = "/usr/bin/python3"

var (
	torchOnce    sync.Once
	torchMissing string // why the torch tests must skip; "" if available
)

// requireTorch skips the test unless /usr/bin/python3 can import torch.
func requireTorch(t *testing.T) {
	t.Helper()
	torchOnce.Do(func() {
		if _, err := os.Stat(python); err != nil {
			torchMissing = python + " is not available (" + err.Error() + ")"
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, python, "-c", "import torch").CombinedOutput()
		if err != nil {
			torchMissing = python + " cannot import torch (install python3-torch): " + err.Error() + ": " + string(bytes.TrimSpace(out))
		}
	})
	if torchMissing != "" {
		t.Skip(torchMissing)
	}
}

// runPython runs script with /usr/bin/python3 and decodes its JSON stdout.
func runPython(t *testing.T, script string, out any, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, append([]string{"-c", script}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "python failed:\n%s", stderr.String())
	dec := json.NewDecoder(&stdout)
	dec.UseNumber()
	require.NoError(t, dec.Decode(out), "python output: %s", stdout.String())
}

// pyRead parses a safetensors file exactly as the specification describes,
// checks its layout and prints the tensors as JSON.
const pyRead = `
import json, struct, sys, torch
buf = bytearray(open(sys.argv[1], 'rb').read())
(n,) = struct.unpack('<Q', bytes(buf[:8]))
assert n % 8 == 0, 'header length %d is not a multiple of 8' % n
header = json.loads(buf[8:8 + n].decode('utf-8'))
meta = header.pop('__metadata__', {})
assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
DT = {'F32': torch.float32, 'F64': torch.float64, 'I64': torch.int64, 'I32': torch.int32,
      'F16': torch.float16, 'BF16': torch.bfloat16, 'U8': torch.uint8}
entries = sorted(header.items(), key=lambda kv: kv[1]['data_offsets'])
pos, out = 0, {}
for name, info in entries:
    begin, end = info['data_offsets']
    assert begin == pos, '%s begins at %d, not %d' % (name, begin, pos)
    dtype, shape = DT[info['dtype']], info['shape']
    numel = 1
    for d in shape:
        numel *= d
    assert end - begin == numel * torch.empty((), dtype=dtype).element_size(), name
    t = torch.frombuffer(buf, dtype=dtype, count=numel, offset=8 + n + begin).reshape(shape)
    out[name] = {'dtype': info['dtype'], 'shape': list(t.shape), 'values': t.reshape(-1).tolist()}
    pos = end
assert pos == len(buf) - 8 - n, 'tensors cover %d of %d data bytes' % (pos, len(buf) - 8 - n)
print(json.dumps({'header_len': n, 'metadata': meta, 'order': [k for k, _ in entries], 'tensors': out}))
`

type pyTensor struct {
	DType  string        `json:"dtype"`
	Shape  []int         `json:"shape"`
	Values []json.Number `json:"values"`
	Hex    string        `json:"hex"`
}

func TestPythonReadsGoFile(t *testing.T) {
	requireTorch(t)
	want := &File{
		Tensors: []Tensor{
			F32("layer.weight", []int{2, 3}, []float32{0.1, -2.5, 1e-30, math.MaxFloat32, -0, 3}),
			F64("layer.bias", []int{3}, []float64{1.0 / 3, -2.5e-300, 1e300}),
			I64("counters", []int{2, 2}, []int64{math.MaxInt64, math.MinInt64, -1, 42}),
			F32("scale", nil, []float32{1.5}),
			I64("step", []int{1}, []int64{123}),
		},
		Metadata: map[string]string{"format": "pt", "step": "123", "note": "ünïcode \"quoted\" <html> & more"},
	}
	path := filepath.Join(t.TempDir(), "go.safetensors")
	require.NoError(t, WriteFileAtomic(path, want))

	var got struct {
		HeaderLen int                 `json:"header_len"`
		Metadata  map[string]string   `json:"metadata"`
		Order     []string            `json:"order"`
		Tensors   map[string]pyTensor `json:"tensors"`
	}
	runPython(t, pyRead, &got, path)

	require.Zero(t, got.HeaderLen%8)
	require.Equal(t, want.Metadata, got.Metadata)
	require.Equal(t, []string{"layer.weight", "layer.bias", "counters", "scale", "step"}, got.Order, "data must be laid out in the given order")
	require.Len(t, got.Tensors, len(want.Tensors))
	for _, w := range want.Tensors {
		g, ok := got.Tensors[w.Name]
		require.True(t, ok, "python did not see %q", w.Name)
		require.Equal(t, string(w.DType), g.DType)
		wantShape := w.Shape
		if wantShape == nil {
			wantShape = []int{}
		}
		require.Equal(t, wantShape, g.Shape, w.Name)
		switch w.DType {
		case DTypeF32:
			vals, err := w.Float32s()
			require.NoError(t, err)
			require.Len(t, g.Values, len(vals))
			for i, v := range vals {
				f, err := strconv.ParseFloat(string(g.Values[i]), 64)
				require.NoError(t, err)
				require.Equal(t, v, float32(f), "%s[%d]", w.Name, i)
			}
		case DTypeF64:
			vals, err := w.Float64s()
			require.NoError(t, err)
			require.Len(t, g.Values, len(vals))
			for i, v := range vals {
				f, err := strconv.ParseFloat(string(g.Values[i]), 64)
				require.NoError(t, err)
				require.Equal(t, v, f, "%s[%d]", w.Name, i)
			}
		case DTypeI64:
			vals, err := w.Int64s()
			require.NoError(t, err)
			require.Len(t, g.Values, len(vals))
			for i, v := range vals {
				n, err := strconv.ParseInt(string(g.Values[i]), 10, 64)
				require.NoError(t, err)
				require.Equal(t, v, n, "%s[%d]", w.Name, i)
			}
		default:
			t.Fatalf("unexpected dtype %s", w.DType)
		}
	}
}

// pyWrite writes a safetensors file the way the specification describes:
// its own JSON header with __metadata__, tensors sorted by name, header
// padded with spaces to a multiple of 8. It prints what it wrote.
const pyWrite = `
import json, struct, sys, torch
tensors = {
    'b.weight': torch.tensor([[1.5, -2.25], [3.0, 0.1]], dtype=torch.float32),
    'a.bias': torch.tensor([1 / 3, -1e300], dtype=torch.float64),
    'counter': torch.tensor([[-(2 ** 63)], [2 ** 63 - 1], [7]], dtype=torch.int64),
    'half': torch.tensor([1.0, -0.5, 65504.0], dtype=torch.float16),
    'bf': torch.tensor([1.0, 3.0], dtype=torch.bfloat16),
    'scalar': torch.tensor(2.5, dtype=torch.float32),
    'mask': torch.tensor([1, 0, 255], dtype=torch.uint8),
    'idx': torch.arange(6, dtype=torch.int32).reshape(3, 2).t().contiguous(),
}
NAMES = {torch.float32: 'F32', torch.float64: 'F64', torch.int64: 'I64', torch.int32: 'I32',
         torch.float16: 'F16', torch.bfloat16: 'BF16', torch.uint8: 'U8'}
header = {'__metadata__': {'format': 'pt', 'source': 'python', 'epochs': '3'}}
blobs, out, pos = [], {}, 0
for name in sorted(tensors):
    t = tensors[name].contiguous()
    raw = bytes(t.reshape(-1).view(torch.uint8).tolist())
    header[name] = {'dtype': NAMES[t.dtype], 'shape': list(t.shape), 'data_offsets': [pos, pos + len(raw)]}
    pos += len(raw)
    blobs.append(raw)
    vals = t.reshape(-1).tolist() if t.dtype in (torch.float32, torch.float64, torch.int64, torch.int32) else []
    out[name] = {'dtype': NAMES[t.dtype], 'shape': list(t.shape), 'hex': raw.hex(), 'values': vals}
hb = json.dumps(header, separators=(',', ':')).encode('utf-8')
hb += b' ' * ((8 - len(hb) % 8) % 8)
with open(sys.argv[1], 'wb') as f:
    f.write(struct.pack('<Q', len(hb)))
    f.write(hb)
    f.write(b''.join(blobs))
print(json.dumps({'metadata': header['__metadata__'], 'tensors': out}))
`

func TestGoReadsPythonFile(t *testing.T) {
	requireTorch(t)
	path := filepath.Join(t.TempDir(), "py.safetensors")
	var want struct {
		Metadata map[string]string   `json:"metadata"`
		Tensors  map[string]pyTensor `json:"tensors"`
	}
	runPython(t, pyWrite, &want, path)

	f, err := ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, map[string]string{"format": "pt", "source": "python", "epochs": "3"}, f.Metadata)
	var names []string
	for _, tensor := range f.Tensors {
		names = append(names, tensor.Name)
	}
	require.Equal(t, []string{"a.bias", "b.weight", "bf", "counter", "half", "idx", "mask", "scalar"}, names)

	for _, g := range f.Tensors {
		w := want.Tensors[g.Name]
		require.Equal(t, w.DType, string(g.DType), g.Name)
		require.Equal(t, w.Shape, g.Shape, g.Name)
		require.Equal(t, w.Hex, hex.EncodeToString(g.Data), g.Name)
		var got []string
		switch g.DType {
		case DTypeF32:
			vals, err := g.Float32s()
			require.NoError(t, err)
			for _, v := range vals {
				got = append(got, strconv.FormatFloat(float64(v), 'g', -1, 32))
			}
		case DTypeF64:
			vals, err := g.Float64s()
			require.NoError(t, err)
			for _, v := range vals {
				got = append(got, strconv.FormatFloat(v, 'g', -1, 64))
			}
		case DTypeI64:
			vals, err := g.Int64s()
			require.NoError(t, err)
			for _, v := range vals {
				got = append(got, strconv.FormatInt(v, 10))
			}
		case DTypeI32:
			vals, err := g.Int32s()
			require.NoError(t, err)
			for _, v := range vals {
				got = append(got, strconv.FormatInt(int64(v), 10))
			}
		default:
			continue // F16, BF16, U8: compared byte for byte above
		}
		var wantVals []string
		for _, v := range w.Values {
			switch g.DType {
			case DTypeF32:
				x, err := strconv.ParseFloat(string(v), 64)
				require.NoError(t, err)
				wantVals = append(wantVals, strconv.FormatFloat(float64(float32(x)), 'g', -1, 32))
			case DTypeF64:
				x, err := strconv.ParseFloat(string(v), 64)
				require.NoError(t, err)
				wantVals = append(wantVals, strconv.FormatFloat(x, 'g', -1, 64))
			default:
				wantVals = append(wantVals, string(v))
			}
		}
		require.Equal(t, wantVals, got, g.Name)
	}

	// The spot values are what the script put in, not just self-consistent.
	idx, _ := f.Get("idx")
	iv, err := idx.Int32s()
	require.NoError(t, err)
	require.Equal(t, []int{2, 3}, idx.Shape)
	require.Equal(t, []int32{0, 2, 4, 1, 3, 5}, iv, "row-major layout of a transposed tensor")
	counter, _ := f.Get("counter")
	cv, err := counter.Int64s()
	require.NoError(t, err)
	require.Equal(t, []int64{math.MinInt64, math.MaxInt64, 7}, cv)
	scalar, _ := f.Get("scalar")
	require.Equal(t, []int{}, scalar.Shape)
	sv, err := scalar.Float32s()
	require.NoError(t, err)
	require.Equal(t, []float32{2.5}, sv)
	half, _ := f.Get("half")
	require.Equal(t, "003c00b8ff7b", hex.EncodeToString(half.Data), "IEEE half 1.0, -0.5, 65504 little-endian")

	// Go re-encodes the python file to the same bytes modulo key order; the
	// re-encoded file decodes to the same tensors.
	var buf bytes.Buffer
	require.NoError(t, Encode(&buf, f))
	again, err := Decode(buf.Bytes())
	require.NoError(t, err)
	requireSameFile(t, f, again)
}
