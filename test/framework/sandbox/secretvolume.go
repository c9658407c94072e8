package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// secretVolume keeps a folder in step with a Secret the way the kubelet keeps
// a Secret volume: each version is written to a new timestamped folder, the
// `..data` symlink is swapped to it in one rename, and each key is a symlink
// through `..data`. A reader never sees a certificate from one version and a
// key from another, so the webhook's certificate reload is tested against
// what the kubelet really does.
type secretVolume struct {
	c      client.Reader
	secret types.NamespacedName
	dir    string
	seen   string // resourceVersion last written
}

// sync writes the Secret if it changed since the last sync.
func (v *secretVolume) sync(ctx context.Context) error {
	var s corev1.Secret
	if err := v.c.Get(ctx, v.secret, &s); err != nil {
		return fmt.Errorf("read Secret %s: %w", v.secret, err)
	}
	if s.ResourceVersion == v.seen {
		return nil
	}
	version := "..version-" + s.ResourceVersion
	if err := os.MkdirAll(filepath.Join(v.dir, version), 0o700); err != nil {
		return err
	}
	for key, value := range s.Data {
		if err := os.WriteFile(filepath.Join(v.dir, version, key), value, 0o600); err != nil {
			return err
		}
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(version, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		return err
	}
	for key := range s.Data {
		link := filepath.Join(v.dir, key)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", key), link); err != nil {
				return err
			}
		}
	}
	if v.seen != "" {
		if err := os.RemoveAll(filepath.Join(v.dir, "..version-"+v.seen)); err != nil {
			return err
		}
	}
	v.seen = s.ResourceVersion
	return nil
}

// every calls sync each period until ctx ends, passing its failures to
// onError: how the kubelet keeps volumes and devices in step.
func every(ctx context.Context, period time.Duration, sync func(context.Context) error, onError func(error)) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := sync(ctx); err != nil && ctx.Err() == nil {
				onError(err)
			}
		}
	}
}
