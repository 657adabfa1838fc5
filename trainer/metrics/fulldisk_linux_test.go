package metrics

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/trainer/faulttest"
)

// A full disk under the metrics file: the failure is reported when it
// happens, the records wait, and they are all written, in order, once the
// disk has room again; a disk still full at Close loses the waiting
// records and says how many.
func TestJSONLFullDiskReportsAndRecovers(t *testing.T) {
	dir := faulttest.Tmpfs(t, "size=64k")
	path := filepath.Join(dir, "m.jsonl")
	j, err := CreateJSONL(path)
	require.NoError(t, err)
	type event struct {
		err     error
		pending int
	}
	var events []event
	j.OnError(func(err error, pending int) { events = append(events, event{err, pending}) })

	blocker := faulttest.Fill(t, dir)
	// The file's last page takes a few records more; then the disk is full.
	step := int64(0)
	for err == nil {
		step++
		require.Less(t, step, int64(1000), "the disk never filled")
		err = j.Write(Train{Step: step})
	}
	written := int(step - 1)
	require.ErrorIs(t, err, syscall.ENOSPC)
	require.Len(t, events, 1, "the failure is reported when it happens")
	require.ErrorIs(t, events[0].err, syscall.ENOSPC)
	require.Equal(t, 1, events[0].pending)
	for range 3 {
		step++
		require.Error(t, j.Write(Train{Step: step}))
	}
	require.Len(t, events, 1, "reported once, not at every record")
	st := j.Stats()
	require.Equal(t, 4, st.Pending)
	require.Zero(t, st.Lost)

	require.NoError(t, os.Remove(blocker))
	step++
	require.NoError(t, j.Write(Train{Step: step}))
	require.Len(t, events, 2)
	require.NoError(t, events[1].err, "the recovery is reported")
	st = j.Stats()
	require.Equal(t, 4, st.Late)
	require.Zero(t, st.Pending)
	lines := readLines(t, path)
	require.Len(t, lines, int(step), "every record once (%d before the disk filled)", written)
	for i, l := range lines {
		require.EqualValues(t, i+1, decodeObject(t, l)["step"], "records in order")
	}

	blocker = faulttest.Fill(t, dir)
	err = nil
	for err == nil {
		step++
		err = j.Write(Train{Step: step})
	}
	step++
	require.Error(t, j.Write(Train{Step: step}))
	err = j.Close()
	require.ErrorContains(t, err, "2 records could not be written")
	require.ErrorIs(t, err, syscall.ENOSPC)
	require.Equal(t, 2, j.Stats().Lost)
	require.NoError(t, os.Remove(blocker))
	lines = readLines(t, path)
	require.Len(t, lines, int(step)-2, "the file is whole: complete lines only, the lost two missing")
	for i, l := range lines {
		require.EqualValues(t, i+1, decodeObject(t, l)["step"])
	}
}
