package docker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/stretchr/testify/require"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/gotrain/gotrain/trainer/dist/rendezvous"
)

// repo is the repository root: the build context of both images.
const repo = ".."

func parseDockerfile(t *testing.T, path string) ([]instructions.Stage, []instructions.ArgCommand, []byte) {
	t.Helper()
	src, err := os.ReadFile(path)
	require.NoError(t, err)
	res, err := parser.Parse(bytes.NewReader(src))
	require.NoError(t, err, "%s does not parse", path)
	require.Empty(t, res.Warnings, "%s: parser warnings", path)
	stages, meta, err := instructions.Parse(res.AST, nil)
	require.NoError(t, err, "%s", path)
	return stages, meta, src
}

// argRef finds $NAME and ${NAME...} references.
var argRef = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`)

func TestDockerfiles(t *testing.T) {
	for _, tc := range []struct {
		file, runtimeBase string
	}{
		{"Dockerfile", "nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}"},
		{"Dockerfile.cpu", "debian:${DEBIAN_VERSION}-slim"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			stages, meta, src := parseDockerfile(t, tc.file)
			require.GreaterOrEqual(t, len(stages), 2, "a build stage and a runtime stage")
			// Every ARG is used somewhere after its declaration.
			refs := map[string]int{}
			for _, m := range argRef.FindAllStringSubmatch(string(src), -1) {
				refs[m[1]]++
			}
			defaults := map[string]string{}
			var args []string
			for _, a := range meta {
				for _, kv := range a.Args {
					args = append(args, kv.Key)
					if kv.Value != nil {
						defaults[kv.Key] = *kv.Value
					}
				}
			}
			for _, st := range stages {
				for _, c := range st.Commands {
					if a, ok := c.(*instructions.ArgCommand); ok {
						for _, kv := range a.Args {
							args = append(args, kv.Key)
						}
					}
				}
			}
			for _, a := range args {
				require.Positive(t, refs[a], "build argument %s is declared but never used", a)
			}
			// Base images: exact tags, never latest.
			stageNames := map[string]bool{}
			for _, st := range stages {
				if !stageNames[st.BaseName] {
					base := os.Expand(st.BaseName, func(k string) string { return defaults[k] })
					require.Regexp(t, `^[a-z0-9./-]+:[0-9][A-Za-z0-9._-]*$`, base, "base image %q is pinned to an exact version tag", st.BaseName)
				}
				stageNames[st.Name] = true
			}
			// Every path copied from the build context exists; COPY --from
			// names an earlier stage or image.
			for _, st := range stages {
				for _, c := range st.Commands {
					cp, ok := c.(*instructions.CopyCommand)
					if !ok {
						continue
					}
					if cp.From != "" {
						require.True(t, stageNames[cp.From] || strings.Contains(cp.From, ":"), "COPY --from=%s: no such stage", cp.From)
						continue
					}
					for _, p := range cp.SourcePaths {
						_, err := os.Stat(filepath.Join(repo, p))
						require.NoError(t, err, "COPY %s: not in the repository", p)
					}
				}
			}
			// Every package the binary imports is copied into the build.
			var copied []string
			for _, c := range stages[len(stages)-2].Commands {
				if cp, ok := c.(*instructions.CopyCommand); ok && cp.From == "" {
					copied = append(copied, cp.SourcePaths...)
				}
			}
			out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "../cmd/gotrain").Output()
			require.NoError(t, err)
			for _, pkg := range strings.Fields(string(out)) {
				rel, ok := strings.CutPrefix(pkg, "github.com/gotrain/gotrain/")
				if !ok {
					continue
				}
				top := strings.Split(rel, "/")[0]
				require.Contains(t, copied, top, "package %s is built but %s is not copied", pkg, top)
			}
			// The runtime stage: the documented base, a non-root user, the
			// binary as the entry point.
			rt := stages[len(stages)-1]
			require.Equal(t, tc.runtimeBase, rt.BaseName)
			var user string
			var entry []string
			for _, c := range rt.Commands {
				switch c := c.(type) {
				case *instructions.UserCommand:
					user = c.User
				case *instructions.EntrypointCommand:
					entry = c.CmdLine
					require.False(t, c.PrependShell, "ENTRYPOINT in exec form, so signals reach gotrain")
				}
			}
			require.NotEmpty(t, user, "the runtime stage sets a user")
			require.NotContains(t, []string{"root", "0"}, user)
			require.Equal(t, []string{"gotrain"}, entry)
			if tc.file == "Dockerfile" {
				require.Contains(t, string(src), "-tags gpu", "the GPU image is the gpu build")
				require.Contains(t, string(src), "libnccl.so.2", "the runtime image is checked for NCCL")
				require.NotContains(t, string(src), "-tags cuda", "never Gorgonia's cuda tag")
			}
		})
	}
}

// podEnv is the environment the container gets: its env values, and
// secret references resolved to a fake secret.
func podEnv(t *testing.T, c corev1.Container, extra map[string]string) func(string) string {
	t.Helper()
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			env[e.Name] = "secret-from-" + e.ValueFrom.SecretKeyRef.Name
		case e.ValueFrom != nil:
			t.Fatalf("env %s: only secret references are expected", e.Name)
		default:
			env[e.Name] = e.Value
		}
	}
	for k, v := range extra {
		env[k] = v
	}
	return func(k string) string { return env[k] }
}

// decodeStrict decodes one YAML document into v, refusing unknown fields.
func decodeStrict(t *testing.T, doc []byte, v any) {
	t.Helper()
	js, err := yaml.YAMLToJSON(doc)
	require.NoError(t, err)
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(v), "%s", doc)
}

func splitYAML(t *testing.T, path string) [][]byte {
	t.Helper()
	src, err := os.ReadFile(path)
	require.NoError(t, err)
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(src), -1) {
		if strings.TrimSpace(stripComments(d)) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// checkContainer: the gotrain image, args that the CLI takes, a GPU, the
// secret from a Secret, and the metrics port the pod annotates.
func checkContainer(t *testing.T, c corev1.Container, annotations map[string]string) {
	t.Helper()
	require.True(t, strings.HasPrefix(c.Image, "gotrain:"), c.Image)
	require.Equal(t, "train", c.Args[0])
	require.Equal(t, "1", c.Resources.Limits.Name("nvidia.com/gpu", "").String())
	secret := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "GOTRAIN_JOB_SECRET" })
	require.GreaterOrEqual(t, secret, 0, "the job secret is set")
	require.NotNil(t, c.Env[secret].ValueFrom.SecretKeyRef, "from a Kubernetes Secret")
	require.Equal(t, "true", annotations["prometheus.io/scrape"])
	port := annotations["prometheus.io/port"]
	require.Contains(t, c.Args, "--metrics-addr=:"+port, "the annotated port is the one gotrain serves")
	require.True(t, slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return fmt.Sprint(p.ContainerPort) == port }))
	// The flags are gotrain's: the real binary's help lists them.
	out := trainHelp(t)
	for _, a := range c.Args[1:] {
		name := strings.SplitN(strings.TrimPrefix(a, "--"), "=", 2)[0]
		require.Contains(t, string(out), "  -"+name+" ", "flag %s is a gotrain train flag", a)
	}
}

var (
	helpOnce sync.Once
	helpText string
	helpErr  error
)

// trainHelp is `gotrain train --help`, from a binary built once.
func trainHelp(t *testing.T) string {
	helpOnce.Do(func() {
		bin := filepath.Join(os.TempDir(), fmt.Sprintf("gotrain-docker-test-%d", os.Getpid()))
		if out, err := exec.Command("go", "build", "-o", bin, "../cmd/gotrain").CombinedOutput(); err != nil {
			helpErr = fmt.Errorf("go build: %v: %s", err, out)
			return
		}
		defer os.Remove(bin)
		out, _ := exec.Command(bin, "train", "--help").CombinedOutput()
		helpText = string(out)
	})
	require.NoError(t, helpErr)
	require.Contains(t, helpText, "-epochs")
	return helpText
}

func TestIndexedJob(t *testing.T) {
	docs := splitYAML(t, "k8s/indexed-job.yaml")
	require.Len(t, docs, 2)
	var svc corev1.Service
	var job batchv1.Job
	decodeStrict(t, docs[0], &svc)
	decodeStrict(t, docs[1], &job)
	require.Equal(t, "Service", svc.Kind)
	require.Equal(t, corev1.ClusterIPNone, svc.Spec.ClusterIP, "a headless Service gives each pod a DNS name")
	require.Equal(t, "Job", job.Kind)
	require.NotNil(t, job.Spec.CompletionMode)
	require.Equal(t, batchv1.IndexedCompletion, *job.Spec.CompletionMode)
	n := int(*job.Spec.Completions)
	require.Equal(t, n, int(*job.Spec.Parallelism), "every rank runs at once")
	pod := job.Spec.Template
	require.Equal(t, svc.Name, pod.Spec.Subdomain, "pods are <job>-<index>.<service>")
	require.Equal(t, job.Name, svc.Spec.Selector["job-name"])
	require.Len(t, pod.Spec.Containers, 1)
	c := pod.Spec.Containers[0]
	checkContainer(t, c, pod.Annotations)
	require.True(t, *pod.Spec.SecurityContext.RunAsNonRoot)
	// What gotrain makes of each pod's environment.
	for i := 0; i < n; i++ {
		env, err := rendezvous.FromEnv(podEnv(t, c, map[string]string{"JOB_COMPLETION_INDEX": fmt.Sprint(i)}))
		require.NoError(t, err)
		require.Equal(t, rendezvous.Env{Rank: i, WorldSize: n, LocalRank: 0, LocalWorldSize: 1,
			MasterAddr: fmt.Sprintf("%s-0.%s", job.Name, svc.Name), MasterPort: 29500, Source: "kubernetes"}, env)
	}
	require.True(t, slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == 29500 }))
}

// pytorchJob mirrors the fields of kubeflow.org/v1 PyTorchJob that the
// manifest uses; the pod templates are the Kubernetes core type.
type pytorchJob struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		PytorchReplicaSpecs map[string]struct {
			Replicas      int32                  `json:"replicas"`
			RestartPolicy string                 `json:"restartPolicy"`
			Template      corev1.PodTemplateSpec `json:"template"`
		} `json:"pytorchReplicaSpecs"`
	} `json:"spec"`
}

func TestPyTorchJob(t *testing.T) {
	docs := splitYAML(t, "k8s/pytorchjob.yaml")
	require.Len(t, docs, 1)
	var pj pytorchJob
	decodeStrict(t, docs[0], &pj)
	require.Equal(t, "kubeflow.org/v1", pj.APIVersion)
	require.Equal(t, "PyTorchJob", pj.Kind)
	specs := pj.Spec.PytorchReplicaSpecs
	require.ElementsMatch(t, []string{"Master", "Worker"}, slices.Collect(mapKeys(specs)))
	require.Equal(t, int32(1), specs["Master"].Replicas)
	world := int(specs["Master"].Replicas + specs["Worker"].Replicas)
	for role, s := range specs {
		require.Contains(t, []string{"Never", "OnFailure", "ExitCode", "Always"}, s.RestartPolicy, role)
		require.Len(t, s.Template.Spec.Containers, 1)
		c := s.Template.Spec.Containers[0]
		require.Equal(t, "pytorch", c.Name, "the operator sets its variables in the container named pytorch")
		checkContainer(t, c, s.Template.Annotations)
		// The operator's variables, as it sets them for rank 1 of this job.
		rank := 0
		if role == "Worker" {
			rank = 1
		}
		env, err := rendezvous.FromEnv(podEnv(t, c, map[string]string{"MASTER_ADDR": pj.Metadata.Name + "-master-0",
			"MASTER_PORT": "23456", "RANK": fmt.Sprint(rank), "WORLD_SIZE": fmt.Sprint(world)}))
		require.NoError(t, err)
		require.Equal(t, rank, env.Rank)
		require.Equal(t, world, env.WorldSize)
		require.Equal(t, "torchrun", env.Source)
	}
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func TestSlurmScript(t *testing.T) {
	const path = "slurm/train.sbatch"
	out, err := exec.Command("bash", "-n", path).CombinedOutput()
	require.NoError(t, err, "bash -n: %s", out)
	src, err := os.ReadFile(path)
	require.NoError(t, err)
	sb := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^#SBATCH --([a-z-]+)=(\S+)`).FindAllStringSubmatch(string(src), -1) {
		sb[m[1]] = m[2]
	}
	require.Equal(t, sb["ntasks-per-node"], sb["gpus-per-node"], "one task per GPU")
	require.Regexp(t, `(?m)^srun .*\$GOTRAIN train`, string(src), "srun starts gotrain itself, no launcher")
	require.NotContains(t, string(src), "gotrain launch")
	require.Contains(t, string(src), "GOTRAIN_JOB_SECRET_FILE")
	// What gotrain makes of the variables srun sets for the task with
	// SLURM_PROCID 9 of 2 nodes x 8 tasks.
	vars := map[string]string{"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
		"SLURM_NTASKS_PER_NODE": sb["ntasks-per-node"], "SLURM_JOB_NODELIST": "gpu[07-08]", "MASTER_PORT": "29500"}
	env, err := rendezvous.FromEnv(func(k string) string { return vars[k] })
	require.NoError(t, err)
	require.Equal(t, rendezvous.Env{Rank: 9, WorldSize: 16, LocalRank: 1, LocalWorldSize: 8, MasterAddr: "gpu07", MasterPort: 29500, Source: "slurm"}, env)
}
