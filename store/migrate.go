package store

import (
	"fmt"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// migrateBatch is how many values one migration transaction rewrites: enough to amortise the
// fsyncs, few enough that a transaction's dirty pages stay small.
const migrateBatch = 500

// migrateToSegments (schema 1 → 2) rewrites every sealed value of schema 1 that is long enough
// to gain: compressed, and into a segment when it stays large. The store does not know which
// record belongs to which scope, so it tries the data key and then the scope named by the key's
// first 8 bytes (how every scoped bucket is keyed); a value neither opens is left as it is,
// still readable the old way. Each batch commits on its own, and a value already rewritten is
// not of the old format any more, so a crash part-way only means the rest is done on the next
// start. Afterwards the file is compacted, since bbolt never gives freed pages back.
func migrateToSegments(db *DB) error {
	type item struct {
		bucket string
		key    []byte
	}
	var todo []item
	err := db.bolt.View(func(btx *bolt.Tx) error {
		return btx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if string(name) == metaBucket || string(name) == scopeBucket {
				return nil
			}
			return b.ForEach(func(k, v []byte) error {
				if len(v) >= sealOverhead+compressMin && v[0] == sealFormat {
					todo = append(todo, item{string(name), append([]byte(nil), k...)})
				}
				return nil
			})
		})
	})
	if err != nil || len(todo) == 0 {
		return err
	}
	for len(todo) > 0 {
		n := min(len(todo), migrateBatch)
		chunk := todo[:n]
		todo = todo[n:]
		err := db.Update(func(tx *Tx) error {
			for _, it := range chunk {
				v, err := tx.GetPlain(it.bucket, it.key)
				if err != nil {
					return err
				}
				if v == nil || v[0] != sealFormat {
					continue
				}
				s, scope, plain := tx.openLegacy(it.bucket, it.key, v)
				if s == nil {
					continue
				}
				if err := tx.putSealed(s, scope, it.bucket, it.key, plain); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return db.compactFile()
}

// openLegacy finds the key a schema-1 value was sealed with; nil when none opens it.
func (tx *Tx) openLegacy(bucket string, key, v []byte) (*sealer, uint64, []byte) {
	if plain, err := tx.db.data.open(v, ad(bucket, key, 0)); err == nil {
		return tx.db.data, 0, plain
	}
	if len(key) < 8 {
		return nil, 0, nil
	}
	scope := FromU64(key[:8])
	s, err := tx.scope(scope, false)
	if err != nil {
		return nil, 0, nil
	}
	plain, err := s.open(v, ad(bucket, key, scope))
	if err != nil {
		return nil, 0, nil
	}
	return s, scope, plain
}

// compactFile rewrites the database into a new file with only the live pages and renames it
// over the old one: after a migration moved most bytes out, the old file is mostly free pages.
func (db *DB) compactFile() error {
	path := db.bolt.Path()
	tmp := path + ".compact"
	os.Remove(tmp)
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		return err
	}
	if err := bolt.Compact(dst, db.bolt, 64<<20); err != nil {
		dst.Close()
		os.Remove(tmp)
		return fmt.Errorf("compact: %w", err)
	}
	if err := dst.Sync(); err != nil {
		dst.Close()
		os.Remove(tmp)
		return err
	}
	if err := dst.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	opts := *db.boltOpts
	if err := db.bolt.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return err
	}
	bdb, err := bolt.Open(path, 0o600, &opts)
	if err != nil {
		return err
	}
	db.bolt = bdb
	return nil
}
