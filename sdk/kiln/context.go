package kiln

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildflags"
)

// DefaultDockerfile is the Dockerfile's name when none is given.
const DefaultDockerfile = "Dockerfile"

// Context is a packed build context: the manifest of what is sent (paths,
// types, modes, symlink targets, file digests) and where each file blob
// lives on disk, read again only if the farm lacks it. It holds no open
// files or temporary files.
type Context struct {
	dir        string
	dockerfile string
	// dockerfileData is the Dockerfile when it is sent apart from the
	// context (it lies outside it, or came from WithDockerfile); nil when
	// the context holds it.
	dockerfileData []byte
	manifest       *kilnv1.ContextManifest
	// blobs maps a file digest's hash to the first file entry with that
	// content: the file UploadContext reads when the farm lacks the blob.
	blobs map[string]*kilnv1.ContextEntry
	stats ContextStats
	// cacheFile is the stat cache PackContext used ("" for none);
	// UploadContext removes it when a file no longer matches its digest.
	cacheFile string

	mu  sync.Mutex // guards ref
	ref *kilnv1.ContextRef
}

// ContextStats counts what PackContext found and how much of it it read.
type ContextStats struct {
	// Files counts the regular files sent.
	Files int
	// Symlinks counts the symlinks sent (as symlinks, never followed).
	Symlinks int
	// HardLinks counts the files sent as hard links to an earlier file.
	HardLinks int
	// Dirs counts the directory entries sent.
	Dirs int
	// Bytes is the sum of the regular files' sizes.
	Bytes int64
	// Hashed counts the files read and hashed because the stat cache had
	// no digest for them or they changed since; Files - Hashed were not read.
	Hashed int
	// HashedBytes is the sum of the hashed files' sizes.
	HashedBytes int64
}

// ContextProgress is how far hashing or uploading a context has got: the
// files (blobs, when uploading) and bytes done out of the totals.
type ContextProgress struct {
	Files, TotalFiles int
	Bytes, TotalBytes int64
}

// Manifest returns the context's manifest, sorted by path. The caller must
// not modify it.
func (c *Context) Manifest() *kilnv1.ContextManifest { return c.manifest }

// Stats returns what PackContext found and hashed.
func (c *Context) Stats() ContextStats { return c.stats }

// Dockerfile returns the Dockerfile's slash-separated path inside the context.
func (c *Context) Dockerfile() string { return c.dockerfile }

// DockerfileInline returns the Dockerfile when it is sent apart from the
// context, as docker sends one that lies outside it or comes from standard
// input (-f -); Build puts it in the spec's dockerfile_inline. It is nil
// when the context holds the Dockerfile.
func (c *Context) DockerfileInline() []byte { return c.dockerfileData }

// Dir returns the absolute path of the context directory that was packed.
func (c *Context) Dir() string { return c.dir }

// Ref returns the reference StartBuild takes for this context: the digest
// the farm gave its manifest. It is nil until UploadContext succeeded.
func (c *Context) Ref() *kilnv1.ContextRef {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ref
}

func (c *Context) setRef(ref *kilnv1.ContextRef) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ref = ref
}

// PackOption configures PackContext.
type PackOption func(*packOptions)

type packOptions struct {
	progress func(ContextProgress)
	// dockerfile is WithDockerfile's data (nil: read the Dockerfile).
	dockerfile []byte
	// cacheDir holds the stat cache files; "" disables the cache.
	cacheDir string
	now      func() time.Time
	// named packs a named context (PackNamedContext): no Dockerfile.
	named bool
}

// WithHashProgress makes PackContext call fn as it hashes files that the
// stat cache could not vouch for. Calls never overlap.
func WithHashProgress(fn func(ContextProgress)) PackOption {
	return func(o *packOptions) { o.progress = fn }
}

// WithDockerfile makes PackContext take data as the Dockerfile, sent
// apart from the context (docker build -f - reads it from standard
// input); PackContext's dockerfile argument then only names it ("" for
// "Dockerfile"). At most buildflags.MaxDockerfileBytes.
func WithDockerfile(data []byte) PackOption {
	return func(o *packOptions) { o.dockerfile = data }
}

// PackContext lists the build context dir the way `docker build` would send
// it and hashes its files: .dockerignore is honoured with Docker's semantics
// (a "<dockerfile>.dockerignore" beside the Dockerfile takes precedence, as
// in BuildKit), and the Dockerfile and .dockerignore are always sent even
// when ignored. dockerfile is the Dockerfile's path relative to dir (""
// means "Dockerfile", or "dockerfile" when only that exists, as docker
// falls back), or an absolute path. As with docker, a symlinked
// Dockerfile is resolved here: the build names its target when that lies
// in the context, and a Dockerfile outside the context (or given with
// WithDockerfile) is sent apart from it (DockerfileInline).
//
// The result is a manifest, not an archive: one entry per directory, file
// and symlink sent, sorted by path, with permission bits (0o7777) and mtimes
// in whole seconds. Symlinks are kept as symlinks and never followed; hard
// links are kept as links (the first of them in path order is the file,
// the others link to it); a unix socket is sent as an empty file
// with its permission bits (as BuildKit sends it; a classic build leaves it
// out), devices and pipes are skipped.
// Each regular file is hashed with sha256 while it is read, so memory stays
// flat whatever the context's size. A stat cache (see below) skips files
// that did not change since an earlier PackContext.
//
// The stat cache lives under $KILN_CACHE_DIR/statcache, or
// os.UserCacheDir()/kiln/statcache when KILN_CACHE_DIR is unset: one file
// per context directory mapping each file's path, size, mtime, ctime, inode
// and device to its digest. A missing, unreadable or corrupt cache file is
// ignored, and so is a failure to write it: the cache only saves work.
//
// Mistakes a user can fix (no such directory, Dockerfile missing or outside
// the context, bad .dockerignore pattern, a file name the farm cannot take)
// are codes.InvalidArgument errors. A file that changes while it is hashed
// is a *FileChangedError. Cancelling ctx stops the walk and the hashing.
func PackContext(ctx context.Context, dir, dockerfile string, opts ...PackOption) (*Context, error) {
	o := packOptions{cacheDir: defaultStatCacheDir(), now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	start := o.now()
	root, err := contextRoot(dir)
	if err != nil {
		return nil, err
	}
	rel, dfData := dockerfile, o.dockerfile
	if o.named {
		rel, dfData = "", nil // a named context has no Dockerfile
	} else if dfData == nil {
		rel, dfData, err = locateDockerfile(root, dockerfile)
	} else {
		rel, err = dockerfileName(dockerfile, dfData)
	}
	if err != nil {
		return nil, err
	}
	ignore, err := loadIgnore(root, rel)
	if err != nil {
		return nil, err
	}

	p := &packer{ctx: ctx, root: root, ignore: ignore}
	if err := p.walk(); err != nil {
		return nil, err
	}
	slices.SortFunc(p.entries, func(a, b *kilnv1.ContextEntry) int { return strings.Compare(a.Path, b.Path) })
	p.linkHardLinks()

	cache := openStatCache(o.cacheDir, root)
	var toHash []*packedFile
	for _, f := range p.files {
		if sum, ok := cache.lookup(f.entry.Path, f.key); ok {
			f.setDigest(sum)
			continue
		}
		toHash = append(toHash, f)
	}
	if err := hashFiles(ctx, root, toHash, o.progress); err != nil {
		return nil, fmt.Errorf("hashing build context %s: %w", root, err)
	}
	// A file changed again within the filesystem's timestamp granularity
	// after it was hashed would keep its key: only files whose times are
	// clearly older than this run are remembered.
	settled := start.Add(-timestampGranularity).UnixNano()
	for _, f := range toHash {
		if f.key.mtime < settled && f.key.ctime < settled {
			cache.add(f.entry.Path, f.key, f.sum)
		}
	}
	_ = cache.save() // the cache only saves work; failing to write it is no error

	c := &Context{
		dir:            root,
		dockerfile:     rel,
		dockerfileData: dfData,
		manifest:       &kilnv1.ContextManifest{Entries: p.entries},
		blobs:          make(map[string]*kilnv1.ContextEntry, len(p.files)),
		cacheFile:      cache.file,
		stats:          ContextStats{Files: len(p.files), Symlinks: p.symlinks, HardLinks: p.hardLinks, Dirs: p.dirCount, Hashed: len(toHash)},
	}
	for _, f := range p.files {
		c.stats.Bytes += f.entry.Size
		if _, ok := c.blobs[f.entry.Digest.Hash]; !ok {
			c.blobs[f.entry.Digest.Hash] = f.entry
		}
	}
	for _, e := range p.sockets {
		if _, ok := c.blobs[e.Digest.Hash]; !ok {
			c.blobs[e.Digest.Hash] = e
		}
	}
	for _, f := range toHash {
		c.stats.HashedBytes += f.entry.Size
	}
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

// locateDockerfile finds the Dockerfile as docker does: dockerfile is
// relative to root or absolute; "" is "Dockerfile", or "dockerfile" when
// only that exists; symlinks are followed. It returns the Dockerfile's
// clean slash path inside root, or, for one outside root, its base name and
// content, to be sent apart from the context.
func locateDockerfile(root, dockerfile string) (string, []byte, error) {
	explicit := dockerfile != ""
	if !explicit {
		dockerfile = DefaultDockerfile
		_, err := os.Lstat(filepath.Join(root, DefaultDockerfile))
		if _, lowerErr := os.Lstat(filepath.Join(root, "dockerfile")); errors.Is(err, fs.ErrNotExist) && lowerErr == nil {
			dockerfile = "dockerfile"
		}
	}
	name := filepath.ToSlash(filepath.Clean(dockerfile))
	p := dockerfile
	if !filepath.IsAbs(p) {
		p = filepath.Join(root, p)
	}
	resolved, err := filepath.EvalSymlinks(p)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return "", nil, invalidArgumentf("Dockerfile %q not found in build context %s", name, root)
	}
	if err != nil {
		return "", nil, fmt.Errorf("reading Dockerfile %q in build context %s: %w", name, root, err)
	}
	fi, err := os.Stat(resolved)
	if err != nil {
		return "", nil, fmt.Errorf("reading Dockerfile %q in build context %s: %w", name, root, err)
	}
	if fi.IsDir() {
		return "", nil, invalidArgumentf("Dockerfile %q in build context %s is a directory", name, root)
	}
	if rel, err := filepath.Rel(root, resolved); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return filepath.ToSlash(rel), nil, nil
	}
	if fi.Size() > buildflags.MaxDockerfileBytes {
		return "", nil, invalidArgumentf("Dockerfile %s is %d bytes: one outside the build context travels with the build, at most %d bytes", dockerfile, fi.Size(), buildflags.MaxDockerfileBytes)
	}
	data, err := os.ReadFile(resolved)
	if err != nil {
		return "", nil, fmt.Errorf("reading Dockerfile %s: %w", dockerfile, err)
	}
	n, err := dockerfileName(filepath.Base(resolved), data)
	return n, data, err
}

// dockerfileName checks a Dockerfile sent apart from the context, data,
// and returns the name the build gives it: name's base, "Dockerfile" for "".
func dockerfileName(name string, data []byte) (string, error) {
	if len(data) > buildflags.MaxDockerfileBytes {
		return "", invalidArgumentf("the Dockerfile is %d bytes: one sent apart from the build context travels with the build, at most %d bytes", len(data), buildflags.MaxDockerfileBytes)
	}
	if name == "" || name == "-" {
		return DefaultDockerfile, nil
	}
	return path.Base(filepath.ToSlash(name)), nil
}
