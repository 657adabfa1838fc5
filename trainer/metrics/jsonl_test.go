package metrics

import (
	"bufio"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// readLines returns the lines of the file at path (without newlines).
func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	s := string(b)
	if s == "" {
		return nil
	}
	require.True(t, strings.HasSuffix(s, "\n"), "file must end in a newline: %q", s)
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

func decodeObject(t *testing.T, line string) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(line), &m), "line %q", line)
	return m
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func TestRecordsFieldNamesAndKind(t *testing.T) {
	tests := []struct {
		name string
		rec  any
		kind string
		keys []string
	}{
		{"train", Train{Epoch: 1, Step: 7, Loss: 0.5, LR: 0.01, SamplesPerSec: 1000},
			"train", []string{"data_wait_fraction", "epoch", "kind", "loss", "lr", "rank", "samples_per_sec", "step", "world_size"}},
		{"train pointer", &Train{Step: 1},
			"train", []string{"data_wait_fraction", "epoch", "kind", "loss", "lr", "rank", "samples_per_sec", "step", "world_size"}},
		{"train with wrong kind", Train{Kind: "eval"},
			"train", []string{"data_wait_fraction", "epoch", "kind", "loss", "lr", "rank", "samples_per_sec", "step", "world_size"}},
		{"eval", Eval{Epoch: 2, TestLoss: 0.3, TestAccuracy: 0.9},
			"eval", []string{"epoch", "kind", "rank", "test_accuracy", "test_loss", "world_size"}},
		{"eval zero", Eval{},
			"eval", []string{"epoch", "kind", "rank", "test_accuracy", "test_loss", "world_size"}},
		{"summary", Summary{TestAccuracy: 0.98, TrainSamplesPerSec: 5e4, WallSeconds: 12.5, PeakRSSBytes: 1 << 30},
			"summary", []string{"data_wait_fraction", "kind", "peak_rss_bytes", "rank", "rank_compute_samples_per_sec", "test_accuracy", "train_samples_per_sec", "wall_seconds", "world_size"}},
	}
	path := filepath.Join(t.TempDir(), "m.jsonl")
	j, err := CreateJSONL(path)
	require.NoError(t, err)
	for _, tt := range tests {
		require.NoError(t, j.Write(tt.rec), tt.name)
	}
	require.NoError(t, j.Close())

	lines := readLines(t, path)
	require.Len(t, lines, len(tests))
	for i, tt := range tests {
		m := decodeObject(t, lines[i])
		require.Equal(t, tt.keys, keys(m), tt.name)
		require.Equal(t, tt.kind, m["kind"], tt.name)
	}

	// The values round-trip.
	var tr Train
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &tr))
	require.Equal(t, Train{Kind: "train", Epoch: 1, Step: 7, Loss: 0.5, LR: 0.01, SamplesPerSec: 1000}, tr)
	var sum Summary
	require.NoError(t, json.Unmarshal([]byte(lines[5]), &sum))
	require.Equal(t, Summary{Kind: "summary", TestAccuracy: 0.98, TrainSamplesPerSec: 5e4, WallSeconds: 12.5, PeakRSSBytes: 1 << 30}, sum)
}

func TestJSONLFlushedAfterEachWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "dir", "m.jsonl") // parents are created
	j, err := CreateJSONL(path)
	require.NoError(t, err)
	defer j.Close()
	require.Equal(t, path, j.Path())
	require.Empty(t, readLines(t, path))

	for i := 1; i <= 3; i++ {
		j.Train(Train{Epoch: 1, Step: int64(i)})
		lines := readLines(t, path) // before Close: the line must be in the file
		require.Len(t, lines, i)
		require.Equal(t, float64(i), decodeObject(t, lines[i-1])["step"])
	}
	require.NoError(t, j.Err())
}

func TestJSONLNonFinite(t *testing.T) {
	nan, inf := math.NaN(), math.Inf(1)
	tests := []struct {
		name  string
		rec   any
		nulls []string
		want  map[string]any // other fields that must keep their values
	}{
		{"nan loss", Train{Step: 3, Loss: nan, LR: 0.1}, []string{"loss"}, map[string]any{"step": 3.0, "lr": 0.1, "kind": "train"}},
		{"inf lr, -inf rate", Train{LR: inf, SamplesPerSec: -inf, Loss: 2}, []string{"lr", "samples_per_sec"}, map[string]any{"loss": 2.0}},
		{"eval nan", Eval{Epoch: 1, TestLoss: nan, TestAccuracy: 0.5}, []string{"test_loss"}, map[string]any{"test_accuracy": 0.5, "kind": "eval"}},
		{"summary inf", Summary{TrainSamplesPerSec: inf, PeakRSSBytes: 5}, []string{"train_samples_per_sec"}, map[string]any{"peak_rss_bytes": 5.0, "kind": "summary"}},
		{"map", map[string]any{"x": nan, "y": 1.5}, []string{"x"}, map[string]any{"y": 1.5}},
	}
	path := filepath.Join(t.TempDir(), "m.jsonl")
	j, err := CreateJSONL(path)
	require.NoError(t, err)
	for _, tt := range tests {
		require.NoError(t, j.Write(tt.rec), tt.name)
	}
	require.NoError(t, j.Close())
	lines := readLines(t, path)
	require.Len(t, lines, len(tests))
	for i, tt := range tests {
		m := decodeObject(t, lines[i])
		for _, k := range tt.nulls {
			v, ok := m[k]
			require.True(t, ok, "%s: field %q missing", tt.name, k)
			require.Nil(t, v, "%s: field %q", tt.name, k)
		}
		for k, v := range tt.want {
			require.Equal(t, v, m[k], "%s: field %q", tt.name, k)
		}
	}
	// A null decodes into the record types as 0.
	var tr Train
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &tr))
	require.Equal(t, 0.0, tr.Loss)
	require.Equal(t, int64(3), tr.Step)
}

func TestJSONLAppendAndTruncate(t *testing.T) {
	tests := []struct {
		name      string
		existing  string
		append    bool
		wantLines []string // prefix of the file before the new record
	}{
		{"create truncates", `{"kind":"train","step":1}` + "\n", false, []string{}},
		{"append keeps lines", `{"kind":"train","step":1}` + "\n", true, []string{`{"kind":"train","step":1}`}},
		{"append ends a partial line", `{"kind":"train","step":1}` + "\n" + `{"kind":"tr`, true,
			[]string{`{"kind":"train","step":1}`, `{"kind":"tr`}},
		{"append to empty file", "", true, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "m.jsonl")
			require.NoError(t, os.WriteFile(path, []byte(tt.existing), 0o644))
			j, err := OpenJSONL(path, tt.append)
			require.NoError(t, err)
			require.NoError(t, j.Write(Eval{Epoch: 9}))
			require.NoError(t, j.Close())
			lines := readLines(t, path)
			require.Len(t, lines, len(tt.wantLines)+1)
			require.Equal(t, tt.wantLines, lines[:len(tt.wantLines)])
			m := decodeObject(t, lines[len(lines)-1])
			require.Equal(t, "eval", m["kind"])
			require.Equal(t, 9.0, m["epoch"])
		})
	}
}

func TestJSONLErrors(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(blocker, nil, 0o644))
	_, err := CreateJSONL(filepath.Join(blocker, "m.jsonl")) // parent is a file
	require.Error(t, err)

	path := filepath.Join(dir, "m.jsonl")
	j, err := CreateJSONL(path)
	require.NoError(t, err)
	require.NoError(t, j.Err())

	bad := j.Write(map[string]any{"c": make(chan int)}) // not encodable
	require.Error(t, bad)
	require.ErrorContains(t, bad, "chan")
	require.Equal(t, bad, j.Err(), "the first error is remembered")

	j.Train(Train{Step: 1}) // later records are still written
	require.NoError(t, j.Write(Eval{Epoch: 1}))
	require.Len(t, readLines(t, path), 2)
	require.Equal(t, bad, j.Err(), "still the first error")

	err = j.Close()
	require.ErrorIs(t, err, bad, "Close reports the remembered error")
	require.NoError(t, j.Close(), "second Close")

	err = j.Write(Train{})
	require.ErrorIs(t, err, os.ErrClosed)
	require.ErrorIs(t, j.Sync(), os.ErrClosed)
	require.Len(t, readLines(t, path), 2)
}

func TestJSONLConcurrentWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.jsonl")
	j, err := CreateJSONL(path)
	require.NoError(t, err)
	const writers, each = 8, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				j.Train(Train{Epoch: w, Step: int64(i), Loss: 1.0 / float64(i+1)})
			}
		})
	}
	wg.Wait()
	require.NoError(t, j.Close())

	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	seen := map[[2]int64]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var tr Train
		require.NoError(t, json.Unmarshal(sc.Bytes(), &tr), "line %q", sc.Text())
		seen[[2]int64{int64(tr.Epoch), tr.Step}] = true
	}
	require.NoError(t, sc.Err())
	require.Len(t, seen, writers*each)
}
