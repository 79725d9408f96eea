// dockerfile-check: what `docker build --check` and the build context would say about
// deploy/Dockerfile, without a Docker daemon or a registry (validate-deploy.sh runs it).
//
//   - BuildKit's own parser and linter (dockerfile2llb.DockerfileLint, the code behind
//     `docker build --check`): syntax, instruction flags such as RUN --mount, and every lint
//     rule; base images are answered offline with an empty image config.
//   - The build context as BuildKit would send it, filtered by <Dockerfile>.dockerignore with
//     BuildKit's pattern matcher: every file a COPY takes from the context is in it, and so is
//     every file named by the -require arguments (the workspace's sources).
//
// Usage: dockerfile-check -context DIR -dockerfile FILE [-require PATH]...
package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	digest "github.com/opencontainers/go-digest"
)

// offline answers every base image with an empty Linux image config: the lint needs the
// images' configs only for their environment, and no registry is reachable here.
type offline struct{}

func (offline) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	cfg := []byte(`{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},"rootfs":{"type":"layers","diff_ids":[]}}`)
	return ref, digest.FromBytes(cfg), cfg, nil
}

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	contextDir := flag.String("context", ".", "the build context")
	dockerfile := flag.String("dockerfile", "Dockerfile", "the Dockerfile")
	var required list
	flag.Var(&required, "require", "a path (file or directory, relative to the context) the context must hold; repeatable")
	flag.Parse()

	problems := lint(*dockerfile)
	files, size, contextProblems := checkContext(*contextDir, *dockerfile, required)
	problems = append(problems, contextProblems...)
	for _, p := range problems {
		fmt.Println(p)
	}
	if len(problems) > 0 {
		os.Exit(1)
	}
	fmt.Printf("build context: %d files, %.1f MiB\n", files, float64(size)/(1<<20))
}

func lint(path string) []string {
	dt, err := os.ReadFile(path)
	if err != nil {
		return []string{err.Error()}
	}
	ctx := context.Background()
	src := llb.Local("dockerfile")
	def, err := src.Marshal(ctx)
	if err != nil {
		return []string{err.Error()}
	}
	smap := llb.NewSourceMap(&src, filepath.Base(path), "Dockerfile", dt)
	smap.Definition = def
	res, err := dockerfile2llb.DockerfileLint(ctx, dt, dockerfile2llb.ConvertOpt{SourceMap: smap, MetaResolver: offline{}})
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", path, err)}
	}
	var problems []string
	if res.Error != nil {
		problems = append(problems, fmt.Sprintf("%s: %s", path, res.Error.Message))
	}
	for _, w := range res.Warnings {
		line := 0
		if len(w.Location.Ranges) > 0 {
			line = int(w.Location.Ranges[0].Start.Line)
		}
		problems = append(problems, fmt.Sprintf("%s:%d: %s: %s", path, line, w.RuleName, w.Detail))
	}
	return problems
}

// copySources lists what the Dockerfile's COPY and ADD instructions take from the context.
func copySources(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		return nil, err
	}
	stages, _, err := instructions.Parse(res.AST, nil)
	if err != nil {
		return nil, err
	}
	var sources []string
	for _, stage := range stages {
		for _, cmd := range stage.Commands {
			switch c := cmd.(type) {
			case *instructions.CopyCommand:
				if c.From == "" {
					sources = append(sources, c.SourcePaths...)
				}
			case *instructions.AddCommand:
				sources = append(sources, c.SourcePaths...)
			}
		}
	}
	return sources, nil
}

// checkContext returns the context's size and what is missing from it.
func checkContext(dir, dockerfile string, required []string) (int, int64, []string) {
	ignorePath := dockerfile + ".dockerignore"
	if _, err := os.Stat(ignorePath); err != nil {
		ignorePath = filepath.Join(dir, ".dockerignore")
	}
	var patterns []string
	if f, err := os.Open(ignorePath); err == nil {
		patterns, err = ignorefile.ReadAll(f)
		f.Close()
		if err != nil {
			return 0, 0, []string{fmt.Sprintf("%s: %v", ignorePath, err)}
		}
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return 0, 0, []string{fmt.Sprintf("%s: %v", ignorePath, err)}
	}
	excluded := func(rel string) bool {
		ok, err := pm.MatchesOrParentMatches(rel)
		return err == nil && ok
	}
	sources, err := copySources(dockerfile)
	if err != nil {
		return 0, 0, []string{fmt.Sprintf("%s: %v", dockerfile, err)}
	}
	var problems []string
	for _, want := range append(sources, required...) {
		want = filepath.Clean(strings.TrimPrefix(want, "/"))
		if want == "." {
			continue // `COPY . .`: the context as it is; -require says what it must hold
		}
		root := filepath.Join(dir, want)
		info, err := os.Stat(root)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: not in the repository (%v)", want, err))
			continue
		}
		if !info.IsDir() {
			if excluded(want) {
				problems = append(problems, fmt.Sprintf("%s: excluded from the build context by %s", want, ignorePath))
			}
			continue
		}
		// A directory: every file under it, except build output, must reach the context.
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if d.IsDir() && d.Name() == "target" {
				return filepath.SkipDir
			}
			rel, _ := filepath.Rel(dir, p)
			if !d.IsDir() && excluded(rel) {
				problems = append(problems, fmt.Sprintf("%s: excluded from the build context by %s", rel, ignorePath))
			}
			return nil
		})
	}
	// What BuildKit would send.
	files, size := 0, int64(0)
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			// An excluded directory is skipped unless an exception (!pattern) may reach into it.
			if excluded(rel) && !pm.Exclusions() {
				return filepath.SkipDir
			}
			return nil
		}
		if !excluded(rel) {
			files++
			if info, err := d.Info(); err == nil {
				size += info.Size()
			}
		}
		return nil
	})
	return files, size, problems
}
