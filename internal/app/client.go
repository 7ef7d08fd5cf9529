package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"mailgate/config"
)

// DevDataDir is where dev mode keeps its data, relative to the working directory.
const DevDataDir = "mailgate-data"

// CommandConfig finds the config an admin command acts on: the file given with -config, or
// else the dev-mode data dir ./mailgate-data of a `mailgate serve` started here.
func CommandConfig(path string) (*config.Config, error) {
	if path != "" {
		return config.Load(path)
	}
	dir, err := filepath.Abs(DevDataDir)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("no -config given and no dev-mode data dir %s here: pass -config FILE, or run the command where `mailgate serve` runs in dev mode", dir)
	}
	return DevConfig(dir)
}

// Run executes an admin command: over the running daemon's control socket when it answers,
// else directly against the database (the daemon is stopped). Both paths run the same handler.
func Run(ctx context.Context, cfg *config.Config, req Request) (Response, error) {
	sock := SocketPath(cfg)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	resp, err := Call(cctx, sock, req)
	if err == nil || !errors.Is(err, ErrNoDaemon) {
		return resp, err
	}
	a, oerr := Open(cfg, Options{LockTimeout: 300 * time.Millisecond})
	if errors.Is(oerr, ErrRunning) {
		return Response{}, fmt.Errorf("the database is locked by another process, but no daemon answers on %s: if mailgate is running, wait until it has started, or check that it uses this data_dir; else another admin command holds it: try again", sock)
	}
	if oerr != nil {
		return Response{}, oerr
	}
	defer a.Close()
	return a.Dispatch(ctx, Caller{Remote: "ctl", Detail: fmt.Sprintf("direct uid=%d pid=%d", os.Getuid(), os.Getpid())}, req), nil
}
