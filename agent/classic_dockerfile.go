package agent

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"time"
)

// dockerignoreName is the ignore file the classic builder reads from the
// root of a context.
const dockerignoreName = ".dockerignore"

// maxDockerignoreBytes bounds the .dockerignore read into memory to add
// the inline Dockerfile's name to it.
const maxDockerignoreBytes = 4 << 20

// inlineDockerfileName is a name for a Dockerfile sent apart from the
// context (BuildSpec.dockerfile_inline) that no context file takes, as the
// docker CLI names one: ".dockerfile." and 20 random hex digits.
func inlineDockerfileName() (string, error) {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("name the Dockerfile: %w", err)
	}
	return ".dockerfile." + hex.EncodeToString(b[:]), nil
}

// addInlineDockerfile streams the context tar r to the returned reader with
// dockerfile added as name, as the docker CLI adds a Dockerfile from
// outside the context (or stdin) for the classic builder: name comes last,
// mode 0600, and .dockerignore lists it (a context without one gets one
// listing itself and name), so the engine drops both before the build and
// COPY . sees the context as it was. The returned func stops the copy and
// waits for it; it returns why the copy failed, if it did.
func addInlineDockerfile(r io.Reader, dockerfile []byte, name string) (io.Reader, func() error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := copyWithDockerfile(pw, r, dockerfile, name, time.Now())
		pw.CloseWithError(err)
		done <- err
	}()
	return pr, func() error {
		pr.CloseWithError(errEngineStopped)
		err := <-done
		if errors.Is(err, errEngineStopped) {
			return nil
		}
		return err
	}
}

func copyWithDockerfile(w io.Writer, r io.Reader, dockerfile []byte, name string, now time.Time) error {
	tr, tw := tar.NewReader(r), tar.NewWriter(w)
	ignored := false
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read the build context: %w", err)
		}
		clean := path.Clean("/" + h.Name)[1:]
		if clean == name {
			continue // the context's own file of that name gives way, as with docker
		}
		if clean == dockerignoreName && (h.Typeflag == tar.TypeReg || h.Typeflag == 0) && !ignored {
			data, err := io.ReadAll(io.LimitReader(tr, maxDockerignoreBytes+1))
			if err != nil {
				return fmt.Errorf("read the build context's .dockerignore: %w", err)
			}
			if len(data) > maxDockerignoreBytes {
				return fmt.Errorf("the build context's .dockerignore is over %d bytes", maxDockerignoreBytes)
			}
			if err := writeTarFile(tw, h, append(data, "\n"+name+"\n"...)); err != nil {
				return err
			}
			ignored = true
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("write the build context: %w", err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return fmt.Errorf("copy the build context: %w", err)
		}
	}
	if !ignored {
		h := &tar.Header{Name: dockerignoreName, Mode: 0o600, ModTime: now, Typeflag: tar.TypeReg}
		if err := writeTarFile(tw, h, []byte(dockerignoreName+"\n"+name+"\n")); err != nil {
			return err
		}
	}
	h := &tar.Header{Name: name, Mode: 0o600, ModTime: now, Typeflag: tar.TypeReg}
	if err := writeTarFile(tw, h, dockerfile); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("finish the build context: %w", err)
	}
	return nil
}

// writeTarFile writes a regular file with header h (its size set to
// data's) and content data.
func writeTarFile(tw *tar.Writer, h *tar.Header, data []byte) error {
	h.Size = int64(len(data))
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("write %s to the build context: %w", h.Name, err)
	}
	if _, err := io.Copy(tw, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("write %s to the build context: %w", h.Name, err)
	}
	return nil
}
