package kiln

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// DefaultDockerfile is the Dockerfile's name when none is given.
const DefaultDockerfile = "Dockerfile"

// Context is a packed build context: an uncompressed tar of the context
// directory, spooled to a temporary file. Close removes the file.
type Context struct {
	file       string
	digest     string
	size       int64
	files      int
	dockerfile string
	dir        string
}

// Digest returns the tar's digest, "sha256:<hex>".
func (c *Context) Digest() string { return c.digest }

// Size returns the tar's size in bytes.
func (c *Context) Size() int64 { return c.size }

// Files returns how many regular files and symlinks the tar holds.
func (c *Context) Files() int { return c.files }

// Dockerfile returns the Dockerfile's slash-separated path inside the context.
func (c *Context) Dockerfile() string { return c.dockerfile }

// Dir returns the absolute path of the context directory that was packed.
func (c *Context) Dir() string { return c.dir }

// Ref returns the reference StartBuild takes for this context.
func (c *Context) Ref() *kilnv1.ContextRef {
	return &kilnv1.ContextRef{
		Digest: c.protoDigest(),
		Format: kilnv1.ContextFormat_CONTEXT_FORMAT_TAR,
	}
}

func (c *Context) protoDigest() *kilnv1.Digest {
	return &kilnv1.Digest{Hash: c.digest, SizeBytes: c.size}
}

// Open returns a reader of the packed tar.
func (c *Context) Open() (io.ReadCloser, error) {
	f, err := os.Open(c.file)
	if err != nil {
		return nil, fmt.Errorf("opening packed context: %w", err)
	}
	return f, nil
}

// Close removes the spooled tar. The Context is unusable afterwards.
func (c *Context) Close() error {
	if c.file == "" {
		return nil
	}
	err := os.Remove(c.file)
	c.file = ""
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing packed context: %w", err)
	}
	return nil
}

// PackContext tars the build context dir into a temporary file, the way
// `docker build` sends it: .dockerignore is honoured with Docker's semantics
// (a "<dockerfile>.dockerignore" beside the Dockerfile takes precedence, as in
// BuildKit), and the Dockerfile and .dockerignore are always sent even when
// ignored. dockerfile is the Dockerfile's path relative to dir ("" means
// "Dockerfile"), or an absolute path inside dir.
//
// The tar is deterministic: entries in lexical walk order, uid/gid 0 and no
// owner names; file modes and mtimes (in whole seconds) are kept. Symlinks are
// stored as symlinks and never followed; sockets, devices and pipes are
// skipped. The tar is hashed while it is written, so memory stays flat
// whatever the context's size.
//
// Mistakes a user can fix (no such directory, Dockerfile missing or outside
// the context, bad .dockerignore pattern) are codes.InvalidArgument errors.
func PackContext(dir, dockerfile string) (*Context, error) {
	root, err := contextRoot(dir)
	if err != nil {
		return nil, err
	}
	rel, err := dockerfileInContext(root, dockerfile)
	if err != nil {
		return nil, err
	}
	ignore, err := loadIgnore(root, rel)
	if err != nil {
		return nil, err
	}

	spool, err := os.CreateTemp("", "kiln-context-*.tar")
	if err != nil {
		return nil, fmt.Errorf("packing build context %s: %w", root, err)
	}
	c := &Context{file: spool.Name(), dockerfile: rel, dir: root}
	ok := false
	defer func() {
		if !ok {
			_ = spool.Close()
			_ = c.Close()
		}
	}()

	h := sha256.New()
	counter := &countingWriter{w: io.MultiWriter(spool, h)}
	buf := bufio.NewWriterSize(counter, 256<<10)
	p := &packer{root: root, ignore: ignore, tw: tar.NewWriter(buf)}
	if err := p.walk(); err != nil {
		return nil, err
	}
	if err := p.tw.Close(); err != nil {
		return nil, fmt.Errorf("packing build context %s: %w", root, err)
	}
	if err := buf.Flush(); err != nil {
		return nil, fmt.Errorf("packing build context %s: %w", root, err)
	}
	if err := spool.Close(); err != nil {
		return nil, fmt.Errorf("packing build context %s: %w", root, err)
	}
	c.digest = digestString(h)
	c.size = counter.n
	c.files = p.files
	ok = true
	return c, nil
}

// contextRoot resolves dir to an absolute, symlink-free directory path.
func contextRoot(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("resolving build context %s: %w", dir, err)
	}
	root, err := filepath.EvalSymlinks(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return "", invalidArgumentf("build context %s does not exist", dir)
	}
	if err != nil {
		return "", fmt.Errorf("resolving build context %s: %w", dir, err)
	}
	fi, err := os.Stat(root)
	if err != nil {
		return "", fmt.Errorf("resolving build context %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return "", invalidArgumentf("build context %s is not a directory", dir)
	}
	return root, nil
}

// dockerfileInContext returns the Dockerfile's clean slash path inside root
// and checks that it exists there.
func dockerfileInContext(root, dockerfile string) (string, error) {
	if dockerfile == "" {
		dockerfile = DefaultDockerfile
	}
	rel := filepath.Clean(dockerfile)
	if filepath.IsAbs(rel) {
		// Compare against the context without symlinks, like the root.
		resolved := rel
		if dirPart, err := filepath.EvalSymlinks(filepath.Dir(rel)); err == nil {
			resolved = filepath.Join(dirPart, filepath.Base(rel))
		}
		r, err := filepath.Rel(root, resolved)
		if err != nil {
			return "", invalidArgumentf("Dockerfile %q is outside the build context %s", dockerfile, root)
		}
		rel = r
	}
	if rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", invalidArgumentf(
			"Dockerfile %q is outside the build context %s: kiln sends only the context, so move the Dockerfile into it",
			dockerfile, root)
	}
	fi, err := os.Stat(filepath.Join(root, rel))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return "", invalidArgumentf("Dockerfile %q not found in build context %s", filepath.ToSlash(rel), root)
	}
	if err != nil {
		return "", fmt.Errorf("reading Dockerfile %q in build context %s: %w", filepath.ToSlash(rel), root, err)
	}
	if fi.IsDir() {
		return "", invalidArgumentf("Dockerfile %q in build context %s is a directory", filepath.ToSlash(rel), root)
	}
	return filepath.ToSlash(rel), nil
}

func digestString(h hash.Hash) string {
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}
