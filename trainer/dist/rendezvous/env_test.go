package rendezvous

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFromEnv(t *testing.T) {
	slurm := map[string]string{
		"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
		"SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "node[01-02]",
	}
	with := func(base map[string]string, kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	torch := map[string]string{"RANK": "3", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "1234"}
	k8s := map[string]string{"JOB_COMPLETION_INDEX": "2", "WORLD_SIZE": "4", "MASTER_ADDR": "train-0.train"}
	cases := []struct {
		name    string
		env     map[string]string
		want    Env
		errText string
	}{
		{name: "default", env: nil, want: Env{0, 1, 0, 1, "127.0.0.1", 29500, "default"}},
		{name: "default with master", env: map[string]string{"MASTER_ADDR": "h", "MASTER_PORT": "4000"}, want: Env{0, 1, 0, 1, "h", 4000, "default"}},
		{name: "torchrun", env: torch, want: Env{3, 16, 3, 8, "10.1.2.3", 1234, "torchrun"}},
		{name: "torchrun single node defaults", env: map[string]string{"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1"}, want: Env{1, 2, 1, 2, "127.0.0.1", 29500, "torchrun"}},
		{name: "torchrun beats slurm", env: with(slurm, "RANK", "0", "WORLD_SIZE", "2", "MASTER_ADDR", "m"), want: Env{0, 2, 0, 1, "m", 29500, "torchrun"}},
		{name: "torchrun beats kubernetes", env: with(k8s, "RANK", "1"), want: Env{1, 4, 0, 1, "train-0.train", 29500, "torchrun"}},
		{name: "torchrun needs RANK", env: map[string]string{"WORLD_SIZE": "2"}, errText: "RANK is not set"},
		{name: "torchrun needs WORLD_SIZE", env: map[string]string{"RANK": "0"}, errText: "WORLD_SIZE is not set"},
		{name: "torchrun multi-node needs MASTER_ADDR", env: map[string]string{"RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, errText: "MASTER_ADDR is not set"},
		{name: "rank too large", env: with(torch, "RANK", "16"), errText: "RANK=16 must be less than WORLD_SIZE=16"},
		{name: "rank not a number", env: with(torch, "RANK", "one"), errText: `RANK="one" is not an integer`},
		{name: "negative rank", env: with(torch, "RANK", "-1"), errText: "RANK=-1 must be at least 0"},
		{name: "world zero", env: with(torch, "WORLD_SIZE", "0"), errText: "WORLD_SIZE=0 must be at least 1"},
		{name: "local rank too large", env: with(torch, "LOCAL_RANK", "8"), errText: "LOCAL_RANK=8 must be less than LOCAL_WORLD_SIZE=8"},
		{name: "local world above world", env: with(torch, "LOCAL_WORLD_SIZE", "32", "LOCAL_RANK", "0"), errText: "LOCAL_WORLD_SIZE=32 exceeds WORLD_SIZE=16"},
		{name: "port too large", env: with(torch, "MASTER_PORT", "70000"), errText: "MASTER_PORT=70000"},
		{name: "port zero", env: with(torch, "MASTER_PORT", "0"), errText: "MASTER_PORT=0"},
		{name: "port not a number", env: with(torch, "MASTER_PORT", "http"), errText: "MASTER_PORT"},
		{name: "bad master addr", env: with(torch, "MASTER_ADDR", "a b"), errText: "MASTER_ADDR"},
		{name: "slurm", env: slurm, want: Env{5, 8, 1, 4, "node01", 29500, "slurm"}},
		{name: "slurm ntasks per node wins", env: with(slurm, "SLURM_NTASKS_PER_NODE", "2", "SLURM_LOCALID", "1"), want: Env{5, 8, 1, 2, "node01", 29500, "slurm"}},
		{name: "slurm uneven tasks per node", env: with(slurm, "SLURM_TASKS_PER_NODE", "6,2", "SLURM_LOCALID", "0"), want: Env{5, 8, 0, 2, "node01", 29500, "slurm"}},
		{name: "slurm master addr explicit", env: with(slurm, "MASTER_ADDR", "login", "MASTER_PORT", "6000"), want: Env{5, 8, 1, 4, "login", 6000, "slurm"}},
		{name: "slurm legacy nodelist", env: with(slurm, "SLURM_JOB_NODELIST", "", "SLURM_NODELIST", "gpu[7-9]"), want: Env{5, 8, 1, 4, "gpu7", 29500, "slurm"}},
		{name: "slurm beats kubernetes", env: with(slurm, "JOB_COMPLETION_INDEX", "0", "WORLD_SIZE", "99"), want: Env{5, 8, 1, 4, "node01", 29500, "slurm"}},
		{name: "slurm no nodelist", env: with(slurm, "SLURM_JOB_NODELIST", ""), errText: "SLURM_JOB_NODELIST"},
		{name: "slurm bad nodelist", env: with(slurm, "SLURM_JOB_NODELIST", "node[01-"), errText: "SLURM_JOB_NODELIST"},
		{name: "slurm bad tasks per node", env: with(slurm, "SLURM_TASKS_PER_NODE", "4(y2)"), errText: "SLURM_TASKS_PER_NODE"},
		{name: "slurm node beyond tasks per node", env: with(slurm, "SLURM_TASKS_PER_NODE", "4"), errText: "SLURM_TASKS_PER_NODE"},
		{name: "slurm rank too large", env: with(slurm, "SLURM_PROCID", "8"), errText: "SLURM_PROCID=8 must be less than SLURM_NTASKS=8"},
		{name: "slurm needs ntasks", env: with(slurm, "SLURM_NTASKS", ""), errText: "SLURM_NTASKS is not set"},
		{name: "slurm local rank", env: with(slurm, "SLURM_LOCALID", "4"), errText: "SLURM_LOCALID=4"},
		{name: "kubernetes", env: k8s, want: Env{2, 4, 0, 1, "train-0.train", 29500, "kubernetes"}},
		{name: "kubernetes needs WORLD_SIZE", env: with(k8s, "WORLD_SIZE", ""), errText: "WORLD_SIZE is not set"},
		{name: "kubernetes needs MASTER_ADDR", env: with(k8s, "MASTER_ADDR", ""), errText: "MASTER_ADDR is not set"},
		{name: "kubernetes index too large", env: with(k8s, "JOB_COMPLETION_INDEX", "4"), errText: "JOB_COMPLETION_INDEX=4 must be less than WORLD_SIZE=4"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FromEnv(func(k string) string { return tc.env[k] })
			if tc.errText != "" {
				require.ErrorContains(t, err, tc.errText)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestEnvAddr(t *testing.T) {
	require.Equal(t, "h:1", Env{MasterAddr: "h", MasterPort: 1}.Addr())
	require.Equal(t, "[::1]:29500", Env{MasterAddr: "::1", MasterPort: 29500}.Addr())
}

func TestExpandNodeList(t *testing.T) {
	cases := []struct {
		list    string
		limit   int
		want    []string
		errText string
	}{
		{list: "node[01-04,07],gpu5", want: []string{"node01", "node02", "node03", "node04", "node07", "gpu5"}},
		{list: "node[01-04,07],gpu5", limit: 1, want: []string{"node01"}},
		{list: "gpu5", want: []string{"gpu5"}},
		{list: "a,b,c", limit: 2, want: []string{"a", "b"}},
		{list: "n[8-11]", want: []string{"n8", "n9", "n10", "n11"}},
		{list: "n[098-101]", want: []string{"n098", "n099", "n100", "n101"}},
		{list: "r[1-2]n[1-2]", want: []string{"r1n1", "r1n2", "r2n1", "r2n2"}},
		{list: "r[1-2]-x", want: []string{"r1-x", "r2-x"}},
		{list: "n[0-99999999999]", limit: 3, want: []string{"n0", "n1", "n2"}},
		{list: "node-a,node[3]", want: []string{"node-a", "node3"}},
		{list: "", errText: "empty"},
		{list: "node[01-", errText: "unclosed"},
		{list: "node]", errText: "unbalanced"},
		{list: "n[[1]]", errText: "nested"},
		{list: "n[4-2]", errText: "descending"},
		{list: "n[a-b]", errText: "bad range"},
		{list: "n[]", errText: "bad range"},
		{list: "a,,b", errText: "empty host"},
	}
	for _, tc := range cases {
		t.Run(tc.list, func(t *testing.T) {
			got, err := ExpandNodeList(tc.list, tc.limit)
			if tc.errText != "" {
				require.ErrorContains(t, err, tc.errText)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
	first, err := FirstNode("node[01-04,07],gpu5")
	require.NoError(t, err)
	require.Equal(t, "node01", first)
}

func TestParseTasksPerNode(t *testing.T) {
	cases := []struct {
		s       string
		node    int
		want    int
		errText string
	}{
		{"4(x2)", 0, 4, ""}, {"4(x2)", 1, 4, ""}, {"4(x2),2", 2, 2, ""}, {"8", 0, 8, ""},
		{"4(x2)", 2, 0, "covers 2 nodes"}, {"x", 0, 0, "bad task count"}, {"4(x0)", 0, 0, "bad repetition"}, {"4(2)", 0, 0, "bad entry"},
	}
	for _, tc := range cases {
		got, err := parseTasksPerNode(tc.s, tc.node)
		if tc.errText != "" {
			require.ErrorContains(t, err, tc.errText, tc.s)
			continue
		}
		require.NoError(t, err, tc.s)
		require.Equal(t, tc.want, got, tc.s)
	}
}

// FuzzExpandNodeList: no panic, bounded output, and the first host agrees
// with the full expansion.
func FuzzExpandNodeList(f *testing.F) {
	for _, s := range []string{"node[01-04,07],gpu5", "a", "r[1-2]n[3-4]", "n[0-99999999999999]", "n[", "]", "a,,b", "n[9-1]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ExpandNodeList(s, 50)
		if err != nil {
			return
		}
		if len(got) == 0 || len(got) > 50 {
			t.Fatalf("%q expanded to %d names", s, len(got))
		}
		for _, h := range got {
			if h == "" || strings.ContainsAny(h, "[],") {
				t.Fatalf("%q expanded to bad host %q", s, h)
			}
		}
		first, err := FirstNode(s)
		if err != nil || first != got[0] {
			t.Fatalf("FirstNode(%q) = %q, %v; expansion starts with %q", s, first, err, got[0])
		}
	})
}

func TestDecodeRequest(t *testing.T) {
	reqs := []request{
		{op: opSet, id: 1, keys: []string{"k"}, value: []byte("value")},
		{op: opSet, id: 2, keys: []string{"k"}, value: []byte{}},
		{op: opGet, id: 3, keys: []string{"key"}, timeoutMS: 1500},
		{op: opAdd, id: 4, keys: []string{"c"}, delta: -7},
		{op: opWait, id: 5, keys: []string{"a", "bb", "ccc"}, timeoutMS: 0},
		{op: opCancel, id: 6},
	}
	for _, r := range reqs {
		got, err := decodeRequest(encodeRequest(r))
		require.NoError(t, err)
		if r.op == opSet && len(r.value) == 0 {
			require.Empty(t, got.value)
			got.value = r.value
		}
		require.Equal(t, r, got)
	}
}

// FuzzDecodeRequest: the decoder never panics, and whatever it accepts
// re-encodes to the same bytes.
func FuzzDecodeRequest(f *testing.F) {
	f.Add(encodeRequest(request{op: opSet, id: 1, keys: []string{"k"}, value: []byte("v")}))
	f.Add(encodeRequest(request{op: opWait, id: 2, keys: []string{"a", "b"}, timeoutMS: 9}))
	f.Add(encodeRequest(request{op: opAdd, id: 3, keys: []string{"n"}, delta: 1}))
	f.Add([]byte{opWait, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := decodeRequest(p)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeRequest(r), p) {
			t.Fatalf("round trip changed %x into %x", p, encodeRequest(r))
		}
		for _, k := range r.keys {
			if k == "" || len(k) > MaxKeyLen {
				t.Fatalf("accepted bad key %q", k)
			}
		}
	})
}
