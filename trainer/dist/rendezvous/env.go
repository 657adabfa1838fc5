package rendezvous

import (
	"fmt"
	"strconv"
	"strings"
)

// DefaultMasterPort is the rendezvous port when MASTER_PORT is unset.
const DefaultMasterPort = 29500

// Env is where this process stands in the job.
type Env struct {
	Rank, WorldSize, LocalRank, LocalWorldSize int
	MasterAddr                                 string
	MasterPort                                 int
	Source                                     string // "torchrun", "slurm", "kubernetes", "default"
}

// Addr is MasterAddr:MasterPort.
func (e Env) Addr() string {
	return fmt.Sprintf("%s:%d", hostForAddr(e.MasterAddr), e.MasterPort)
}

func hostForAddr(h string) string {
	if strings.Contains(h, ":") && !strings.HasPrefix(h, "[") {
		return "[" + h + "]" // IPv6 literal
	}
	return h
}

// FromEnv reads the job's layout from the environment (see the package
// documentation for the precedence of the sources).
func FromEnv(getenv func(string) string) (Env, error) {
	get := func(k string) string { return strings.TrimSpace(getenv(k)) }
	var (
		e   Env
		err error
	)
	switch {
	case get("RANK") != "" || get("WORLD_SIZE") != "" && get("JOB_COMPLETION_INDEX") == "" && get("SLURM_PROCID") == "":
		e, err = fromTorchrun(get)
	case get("SLURM_PROCID") != "":
		e, err = fromSlurm(get)
	case get("JOB_COMPLETION_INDEX") != "":
		e, err = fromKubernetes(get)
	default:
		e = Env{Rank: 0, WorldSize: 1, LocalRank: 0, LocalWorldSize: 1, Source: "default"}
		e.MasterAddr = get("MASTER_ADDR")
		if e.MasterAddr == "" {
			e.MasterAddr = "127.0.0.1"
		}
	}
	if err != nil {
		return Env{}, err
	}
	if e.MasterPort, err = intVar(get, "MASTER_PORT", DefaultMasterPort, 1); err != nil {
		return Env{}, err
	}
	if err := e.validate(); err != nil {
		return Env{}, err
	}
	return e, nil
}

// intVar parses variable k; def when unset (required when def < 0).
func intVar(get func(string) string, k string, def, minimum int) (int, error) {
	v := get(k)
	if v == "" {
		if def < 0 {
			return 0, fmt.Errorf("rendezvous: %s is not set", k)
		}
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("rendezvous: %s=%q is not an integer", k, v)
	}
	if n < minimum {
		return 0, fmt.Errorf("rendezvous: %s=%d must be at least %d", k, n, minimum)
	}
	return n, nil
}

type intSpec struct {
	dst      *int
	name     string
	def, min int
}

func readInts(get func(string) string, specs ...intSpec) error {
	for _, s := range specs {
		v, err := intVar(get, s.name, s.def, s.min)
		if err != nil {
			return err
		}
		*s.dst = v
	}
	return nil
}

func fromTorchrun(get func(string) string) (Env, error) {
	e := Env{Source: "torchrun"}
	err := readInts(get,
		intSpec{&e.Rank, "RANK", -1, 0},
		intSpec{&e.WorldSize, "WORLD_SIZE", -1, 1},
		intSpec{&e.LocalRank, "LOCAL_RANK", 0, 0},
		intSpec{&e.LocalWorldSize, "LOCAL_WORLD_SIZE", 1, 1},
	)
	if err != nil {
		return Env{}, fmt.Errorf("%w (torchrun variables)", err)
	}
	e.MasterAddr = get("MASTER_ADDR")
	if e.MasterAddr == "" {
		if e.WorldSize > 1 && e.LocalWorldSize < e.WorldSize {
			return Env{}, fmt.Errorf("rendezvous: MASTER_ADDR is not set, and the job spans several nodes (WORLD_SIZE=%d, LOCAL_WORLD_SIZE=%d)", e.WorldSize, e.LocalWorldSize)
		}
		e.MasterAddr = "127.0.0.1"
	}
	return e, nil
}

func fromSlurm(get func(string) string) (Env, error) {
	e := Env{Source: "slurm"}
	var node int
	err := readInts(get,
		intSpec{&e.Rank, "SLURM_PROCID", -1, 0},
		intSpec{&e.WorldSize, "SLURM_NTASKS", -1, 1},
		intSpec{&e.LocalRank, "SLURM_LOCALID", 0, 0},
		intSpec{&node, "SLURM_NODEID", 0, 0},
	)
	if err != nil {
		return Env{}, err
	}
	switch {
	case get("SLURM_NTASKS_PER_NODE") != "":
		if e.LocalWorldSize, err = intVar(get, "SLURM_NTASKS_PER_NODE", -1, 1); err != nil {
			return Env{}, err
		}
	case get("SLURM_TASKS_PER_NODE") != "":
		v := get("SLURM_TASKS_PER_NODE")
		if e.LocalWorldSize, err = parseTasksPerNode(v, node); err != nil {
			return Env{}, fmt.Errorf("rendezvous: SLURM_TASKS_PER_NODE=%q: %w", v, err)
		}
	default:
		e.LocalWorldSize = 1
	}
	e.MasterAddr = get("MASTER_ADDR")
	if e.MasterAddr == "" {
		name := "SLURM_JOB_NODELIST"
		list := get(name)
		if list == "" {
			name = "SLURM_NODELIST"
			list = get(name)
		}
		if list == "" {
			return Env{}, fmt.Errorf("rendezvous: under Slurm, set MASTER_ADDR or SLURM_JOB_NODELIST (neither is set)")
		}
		if e.MasterAddr, err = FirstNode(list); err != nil {
			return Env{}, fmt.Errorf("rendezvous: %s: %w", name, err)
		}
	}
	return e, nil
}

func fromKubernetes(get func(string) string) (Env, error) {
	e := Env{Source: "kubernetes"}
	err := readInts(get,
		intSpec{&e.Rank, "JOB_COMPLETION_INDEX", -1, 0},
		intSpec{&e.WorldSize, "WORLD_SIZE", -1, 1},
		intSpec{&e.LocalRank, "LOCAL_RANK", 0, 0},
		intSpec{&e.LocalWorldSize, "LOCAL_WORLD_SIZE", 1, 1},
	)
	if err != nil {
		return Env{}, fmt.Errorf("%w (Kubernetes Indexed Job: set WORLD_SIZE to the job's completions)", err)
	}
	e.MasterAddr = get("MASTER_ADDR")
	if e.MasterAddr == "" {
		return Env{}, fmt.Errorf("rendezvous: MASTER_ADDR is not set (Kubernetes Indexed Job: set it to index 0's host name, e.g. <job>-0.<service>)")
	}
	return e, nil
}

func (e Env) validate() error {
	rankVar, worldVar, localVar, localWorldVar := "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"
	switch e.Source {
	case "slurm":
		rankVar, worldVar, localVar, localWorldVar = "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE/SLURM_TASKS_PER_NODE"
	case "kubernetes":
		rankVar = "JOB_COMPLETION_INDEX"
	}
	switch {
	case e.Rank >= e.WorldSize:
		return fmt.Errorf("rendezvous: %s=%d must be less than %s=%d", rankVar, e.Rank, worldVar, e.WorldSize)
	case e.LocalRank >= e.LocalWorldSize:
		return fmt.Errorf("rendezvous: %s=%d must be less than %s=%d", localVar, e.LocalRank, localWorldVar, e.LocalWorldSize)
	case e.LocalWorldSize > e.WorldSize:
		return fmt.Errorf("rendezvous: %s=%d exceeds %s=%d", localWorldVar, e.LocalWorldSize, worldVar, e.WorldSize)
	case e.MasterPort < 1 || e.MasterPort > 65535:
		return fmt.Errorf("rendezvous: MASTER_PORT=%d is not a TCP port (1-65535)", e.MasterPort)
	case strings.ContainsAny(e.MasterAddr, " \t/"):
		return fmt.Errorf("rendezvous: MASTER_ADDR=%q is not a host name or address", e.MasterAddr)
	}
	return nil
}
