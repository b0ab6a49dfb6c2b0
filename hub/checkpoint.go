package hub

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/proto"
)

// Checkpoints: a session's folders (its own folder and its closed segments, segments.go) and the
// stream sequence through which they are complete,
// kept in the JetStream Object Store bucket CheckpointBucket so another hub can take the session
// over (restore, then consume from Seq+1) and any hub can serve it after its stream messages are
// gone. Whatever regular files the folders hold are kept, sub-folders included; a file's path in
// the manifest starts with its folder's name ("<session>/kv_cache_usage.csv",
// "<session>@000002/metadata.json").
//
// Objects of session S (E = proto.Escape(S)):
//   - "E/manifest": the manifest below (JSON), written last, so it only names parts already stored;
//   - "E/part/<epoch>-<n>": a byte range of one file. The epoch is the lease revision of the claim
//     that wrote it, unique to one owner's tenure: a hub that lost the lease and has not noticed
//     yet can never overwrite (or delete) a part its successor wrote.
//
// Files named *.csv are append-only while they stay the same file (the hub only appends rows): a
// checkpoint uploads only what was appended since the last one. Whether a file is still the one
// the previous checkpoint stored is checked, never assumed from its path and size: a rotation
// (segments.go) renames the live folder to a closed segment and opens a new live folder whose
// files have the same names, and a torn tail cut at reload rewrites a file's end. So each folder
// is stored with its generation (the segment index and start time from its metadata.json: a
// folder whose generation changed is a different folder, every file of it stored whole), and each
// append-only file with a fingerprint of its last bytes (CheckpointFile.Tail): when the bytes
// before the old end are not those the last checkpoint stored, the file is stored whole. A file
// whose folder generation, size and modification time are all unchanged is not read at all (closed
// segments, which never change, cost one stat per checkpoint).
// Ranges are merged like a binary counter (the newest part absorbs the ones before it that are
// not larger than it), so a file has O(log size) parts and each byte is uploaded O(log size)
// times over the session's life. Other files are uploaded whole when their size or time changed.

// CheckpointManifest is one session's latest checkpoint.
type CheckpointManifest struct {
	Session string `json:"session"`
	Hub     string `json:"hub"` // the hub that wrote it
	// Seq is the stream sequence through which every message of the session is in the files (the
	// files may hold more: replaying from Seq+1 skips what they have).
	Seq   uint64 `json:"seq"`
	NS    int64  `json:"ns"`    // when it was written, Unix ns
	Final bool   `json:"final"` // written after the session ended
	// Files by path relative to the sessions folder ("/"-separated), under the session's folders.
	Files map[string]*CheckpointFile `json:"files"`
	// Folders gives each stored folder's generation by folder name ("r2", "r2@000005"): its
	// segment index and start (folderGeneration), "" for a folder that was never rotated. A
	// folder whose generation differs from the previous checkpoint's is stored afresh.
	Folders  map[string]string `json:"folders,omitempty"`
	NextPart uint64            `json:"next_part"`
}

// CheckpointFile is one file of a checkpoint: its parts in order cover [0, Size).
type CheckpointFile struct {
	Size    int64            `json:"size"`
	ModNS   int64            `json:"mod_ns"`
	Parts   []CheckpointPart `json:"parts"`
	AppendO bool             `json:"append_only"`
	// Tail is the hex SHA-256 of the file's last min(Size, tailBytes) bytes (append-only files):
	// appending after Size is only trusted when the file still has those bytes there.
	Tail string `json:"tail,omitempty"`
}

// tailBytes is how many bytes before a file's end CheckpointFile.Tail covers.
const tailBytes = 4096

// tailOf returns the hex SHA-256 of f's bytes [max(0, end-tailBytes), end).
func tailOf(f io.ReaderAt, end int64) (string, error) {
	off := max(0, end-tailBytes)
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, off, end-off)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// folderGeneration identifies one segment folder's contents across renames: "<index>/<start_ns>"
// from its metadata.json's segment record, "" when it has none (rotation off, or no metadata
// yet). A rotation gives the live folder's name a new generation; a closed segment keeps the one
// it had while live.
func folderGeneration(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "metadata.json"))
	if err != nil {
		return ""
	}
	var m struct {
		Segment *struct {
			Index   int   `json:"index"`
			StartNS int64 `json:"start_ns"`
		} `json:"segment"`
	}
	if json.Unmarshal(b, &m) != nil || m.Segment == nil {
		return ""
	}
	return strconv.Itoa(m.Segment.Index) + "/" + strconv.FormatInt(m.Segment.StartNS, 10)
}

// CheckpointPart is the object holding bytes [Off, Off+Size) of a file.
type CheckpointPart struct {
	Object string `json:"object"`
	Off    int64  `json:"off"`
	Size   int64  `json:"size"`
}

// partObjects returns the objects holding f's parts.
func partObjects(f *CheckpointFile) []string {
	out := make([]string, 0, len(f.Parts))
	for _, p := range f.Parts {
		out = append(out, p.Object)
	}
	return out
}

func manifestObject(session string) string { return proto.Escape(session) + "/manifest" }

func partObject(session string, epoch, n uint64) string {
	return proto.Escape(session) + "/part/" + strconv.FormatUint(epoch, 10) + "-" + strconv.FormatUint(n, 10)
}

// readManifest returns session's manifest, nil (no error) when it has none.
func readManifest(ctx context.Context, obs jetstream.ObjectStore, session string) (*CheckpointManifest, error) {
	b, err := obs.GetBytes(ctx, manifestObject(session))
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint manifest of %s: %w", session, err)
	}
	var m CheckpointManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("checkpoint manifest of %s: %w", session, err)
	}
	if m.Files == nil {
		m.Files = map[string]*CheckpointFile{}
	}
	return &m, nil
}

// checkpointer writes one session's checkpoints: its folders under root (a hub's sessions
// folder); prev is the last manifest stored (nil before the first). Not safe for concurrent use.
type checkpointer struct {
	obs     jetstream.ObjectStore
	session string
	root    string
	hub     string
	epoch   uint64 // the claim's lease revision: part names are unique to this owner
	prev    *CheckpointManifest
}

// checkpoint stores the folder's changes since the previous checkpoint and a manifest naming seq.
// fence, when set, is called right before the manifest is written: an error from it (the lease
// was lost) stops the checkpoint without a manifest. Parts replaced by the new manifest are
// deleted after it was written.
func (c *checkpointer) checkpoint(ctx context.Context, seq uint64, final bool, now time.Time, fence func() error) (*CheckpointManifest, error) {
	m := &CheckpointManifest{Session: c.session, Hub: c.hub, Seq: seq, NS: now.UnixNano(), Final: final,
		Files: map[string]*CheckpointFile{}, Folders: map[string]string{}}
	if c.prev != nil {
		m.NextPart = c.prev.NextPart
	}
	var obsolete []string
	var uploaded []string
	fail := func(err error) (*CheckpointManifest, error) {
		for _, o := range uploaded {
			_ = c.obs.Delete(ctx, o)
		}
		return nil, err
	}
	put := func(rel string, r io.Reader) (string, error) {
		name := partObject(c.session, c.epoch, m.NextPart)
		m.NextPart++
		if _, err := c.obs.Put(ctx, jetstream.ObjectMeta{Name: name}, r); err != nil {
			return "", fmt.Errorf("checkpoint %s/%s: %w", c.session, rel, err)
		}
		uploaded = append(uploaded, name)
		return name, nil
	}
	folders, err := segmentsIn(c.root, c.session)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail(fmt.Errorf("checkpoint %s: %w", c.session, err))
	}
	walk := func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(c.root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if strings.HasSuffix(rel, ".tmp") || strings.Contains(rel, "/.") {
			return nil // atomic-write temporaries, hidden files
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		var prev *CheckpointFile
		if c.prev != nil {
			prev = c.prev.Files[rel]
		}
		if top, _, _ := strings.Cut(rel, "/"); prev != nil && c.prev.Folders[top] != m.Folders[top] {
			// Another folder under the same name (a rotation opened it): nothing of the old
			// one's file applies, its parts go.
			obsolete = append(obsolete, partObjects(prev)...)
			prev = nil
		}
		appendOnly := strings.HasSuffix(rel, ".csv")
		size, mod := info.Size(), info.ModTime().UnixNano()
		if prev != nil && prev.Size == size && prev.ModNS == mod && (!appendOnly || prev.Tail != "") {
			// Unchanged, read nothing: closed segments (many, over a long session) cost a stat.
			m.Files[rel] = prev
			return nil
		}
		if prev != nil && appendOnly && prev.AppendO && prev.Tail != "" && size >= prev.Size {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			same, err := tailOf(f, prev.Size)
			if err != nil {
				return err
			}
			if same != prev.Tail {
				// Not the file the last checkpoint stored, grown: stored whole below.
			} else if size == prev.Size {
				m.Files[rel] = prev // unchanged
				return nil
			} else {
				parts := append([]CheckpointPart(nil), prev.Parts...)
				off, n := prev.Size, size-prev.Size
				var gone []string
				for len(parts) > 0 && parts[len(parts)-1].Size <= n {
					last := parts[len(parts)-1]
					gone = append(gone, last.Object)
					off, n = last.Off, n+last.Size
					parts = parts[:len(parts)-1]
				}
				tail, err := tailOf(f, size)
				if err != nil {
					return err
				}
				name, err := put(rel, io.NewSectionReader(f, off, n))
				if err != nil {
					return err
				}
				obsolete = append(obsolete, gone...)
				m.Files[rel] = &CheckpointFile{Size: size, ModNS: mod, AppendO: true, Tail: tail,
					Parts: append(parts, CheckpointPart{Object: name, Off: off, Size: n})}
				return nil
			}
		}
		if prev != nil {
			obsolete = append(obsolete, partObjects(prev)...)
		}
		var body []byte
		if appendOnly {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			body, err = io.ReadAll(io.NewSectionReader(f, 0, size))
			f.Close()
			if err != nil {
				return err
			}
		} else if body, err = os.ReadFile(path); err != nil {
			// Written by rename (metadata.json): read whole, and its length is its size.
			return err
		}
		size = int64(len(body))
		name, err := put(rel, bytes.NewReader(body))
		if err != nil {
			return err
		}
		cf := &CheckpointFile{Size: size, ModNS: mod, AppendO: appendOnly, Parts: []CheckpointPart{{Object: name, Size: size}}}
		if appendOnly {
			if cf.Tail, err = tailOf(bytes.NewReader(body), size); err != nil {
				return err
			}
		}
		m.Files[rel] = cf
		return nil
	}
	for _, dir := range folders {
		m.Folders[filepath.Base(dir)] = folderGeneration(dir)
	}
	for _, dir := range folders {
		// A closed segment renamed away by retention while this runs is simply not stored.
		if err := filepath.WalkDir(dir, walk); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fail(fmt.Errorf("checkpoint %s: %w", c.session, err))
		}
	}
	if c.prev != nil {
		for rel, f := range c.prev.Files {
			if m.Files[rel] == nil {
				obsolete = append(obsolete, partObjects(f)...)
			}
		}
	}
	if fence != nil {
		if err := fence(); err != nil {
			return fail(err)
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fail(err)
	}
	if _, err := c.obs.PutBytes(ctx, manifestObject(c.session), b); err != nil {
		return fail(fmt.Errorf("checkpoint manifest of %s: %w", c.session, err))
	}
	c.prev = m
	for _, o := range obsolete {
		if err := c.obs.Delete(ctx, o); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return m, fmt.Errorf("checkpoint %s: delete replaced part %s: %w", c.session, o, err)
		}
	}
	return m, nil
}

// restoreCheckpoint writes session's latest checkpoint under root (a sessions folder), replacing
// the session's folders there (its own and its closed segments). It returns the manifest, or nil
// when the session has no checkpoint: its folders are then left as they are (a session written
// by a single-mode hub before, or by this hub before its first checkpoint: everything in them
// came from the stream, and replaying the stream from its start skips what they hold). The files
// are assembled in a sibling folder first, so no folder is ever half restored.
func restoreCheckpoint(ctx context.Context, obs jetstream.ObjectStore, session, root string) (*CheckpointManifest, error) {
	m, err := readManifest(ctx, obs, session)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*CheckpointManifest, error) { return nil, fmt.Errorf("restore %s: %w", session, err) }
	if err := os.MkdirAll(root, 0o750); err != nil {
		return fail(err)
	}
	old, err := segmentsIn(root, session)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail(err)
	}
	removeOld := func() error {
		for _, d := range old {
			if err := os.RemoveAll(d); err != nil {
				return err
			}
		}
		return nil
	}
	if m == nil {
		return nil, nil
	}
	tmp, err := os.MkdirTemp(root, "."+proto.Escape(session)+".restore-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp)
	if err := writeCheckpointFiles(ctx, obs, m, tmp); err != nil {
		return fail(err)
	}
	if err := removeOld(); err != nil {
		return fail(err)
	}
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return fail(err)
	}
	for _, e := range ents {
		if err := os.Rename(filepath.Join(tmp, e.Name()), filepath.Join(root, e.Name())); err != nil {
			return fail(err)
		}
	}
	return m, nil
}

func writeCheckpointFiles(ctx context.Context, obs jetstream.ObjectStore, m *CheckpointManifest, dir string) error {
	rels := sortedKeys(m.Files)
	sort.Strings(rels)
	for _, rel := range rels {
		cf := m.Files[rel]
		path := filepath.Join(dir, filepath.FromSlash(rel))
		top, _, _ := strings.Cut(rel, "/")
		if id, _, _ := SplitSegmentFolder(top); !filepath.IsLocal(filepath.FromSlash(rel)) || id != m.Session {
			return fmt.Errorf("manifest names %q outside the session's folders", rel)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			return err
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
		if err != nil {
			return err
		}
		var off int64
		for _, p := range cf.Parts {
			if p.Off != off {
				f.Close()
				return fmt.Errorf("%s: part %s starts at %d, want %d", rel, p.Object, p.Off, off)
			}
			r, err := obs.Get(ctx, p.Object)
			if err != nil {
				f.Close()
				return fmt.Errorf("%s: part %s: %w", rel, p.Object, err)
			}
			n, err := io.Copy(f, r)
			r.Close()
			if err != nil {
				f.Close()
				return fmt.Errorf("%s: part %s: %w", rel, p.Object, err)
			}
			if n != p.Size {
				f.Close()
				return fmt.Errorf("%s: part %s has %d bytes, manifest says %d", rel, p.Object, n, p.Size)
			}
			off += n
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		if cf.ModNS != 0 {
			t := time.Unix(0, cf.ModNS)
			_ = os.Chtimes(path, t, t)
		}
	}
	return nil
}
