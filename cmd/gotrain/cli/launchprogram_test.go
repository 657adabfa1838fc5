package cli

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gotrain/gotrain/cmd/gotrain/launch"
)

// TestLaunchRunsAProgram drives the binary: a program after "--" runs on
// every rank with the job's variables, a gotrain command still runs
// gotrain, and a program that is not there is a usage error.
func TestLaunchRunsAProgram(t *testing.T) {
	stdout, stderr, err := gotrain(t, "launch", "--standalone", "--nproc-per-node", "2", "--",
		"/bin/sh", "-c", `echo "RANK=$RANK WORLD_SIZE=$WORLD_SIZE LOCAL_RANK=$LOCAL_RANK MASTER=$MASTER_ADDR:$MASTER_PORT SECRET=${#GOTRAIN_JOB_SECRET}"`)
	require.NoError(t, err, stderr)
	for r := range 2 {
		require.Regexp(t, `(?m)^\[rank`+strconv.Itoa(r)+`\] RANK=`+strconv.Itoa(r)+` WORLD_SIZE=2 LOCAL_RANK=`+strconv.Itoa(r)+` MASTER=127\.0\.0\.1:\d+ SECRET=64$`, stdout)
	}

	stdout, stderr, err = gotrain(t, "launch", "--nproc-per-node", "1", "--", "version")
	require.NoError(t, err, stderr)
	require.Regexp(t, `^\[rank0\] gotrain .*BLAS`, stdout)

	for _, prog := range []string{"/nonexistent/myprog", "fly"} {
		stdout, stderr, err = gotrain(t, "launch", "--nproc-per-node", "2", "--", prog)
		var exit *exec.ExitError
		require.ErrorAs(t, err, &exit, stderr)
		require.Equal(t, 2, exit.ExitCode(), stderr)
		require.Contains(t, stderr, `gotrain launch: usage: "`+prog+`" after "--" is neither a gotrain command (train, eval, bench`)
		require.NotContains(t, stderr, "starting")
		require.Empty(t, stdout)
	}
}

// TestLaunchKnowsGotrainsCommands: the words that make 'gotrain launch'
// run gotrain itself are exactly the commands of run's switch (less the
// flags, which launch recognises by their "-").
func TestLaunchKnowsGotrainsCommands(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "main.go", nil, 0)
	require.NoError(t, err)
	var commands []string
	ast.Inspect(f, func(n ast.Node) bool {
		fn, ok := n.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "run" {
			return true
		}
		for _, st := range fn.Body.List {
			sw, ok := st.(*ast.SwitchStmt)
			if !ok {
				continue
			}
			if idx, ok := sw.Tag.(*ast.IndexExpr); !ok || indexText(idx) != "args[0]" {
				continue
			}
			for _, c := range sw.Body.List {
				for _, e := range c.(*ast.CaseClause).List {
					lit, ok := e.(*ast.BasicLit)
					require.True(t, ok, "a case of run's command switch is not a string literal")
					s, err := strconv.Unquote(lit.Value)
					require.NoError(t, err)
					if !strings.HasPrefix(s, "-") {
						commands = append(commands, s)
					}
				}
			}
		}
		return false
	})
	require.NotEmpty(t, commands, "no switch on args[0] in run (main.go)")
	slices.Sort(commands)
	known := launch.GotrainCommands()
	slices.Sort(known)
	require.Equal(t, commands, known, "launch.GotrainCommands must list gotrain's commands (cmd/gotrain/launch/launch.go)")
}

// indexText renders x[i] for a simple index expression.
func indexText(idx *ast.IndexExpr) string {
	x, ok1 := idx.X.(*ast.Ident)
	i, ok2 := idx.Index.(*ast.BasicLit)
	if !ok1 || !ok2 {
		return ""
	}
	return x.Name + "[" + i.Value + "]"
}
